"""Does a Speech Refined Head use its previous token?  (docs/default-model-history.md, session 24)

On cached held-out rows (``scripts/srh_layout_experiment.py cache``), the head's teacher-forced loss
and accuracy are measured three ways: as trained; with every previous token replaced by a random id;
and with the 5 Hz conditions zeroed.  A head that reads its previous token loses accuracy in the
second case.  The sizes of the two summed inputs (a sub-frame condition after ``pre_matching`` and a
scaled previous-token embedding) are printed too.  Output: one JSON object on stdout.

    python scripts/srh_prev_token_probe.py --model build/s22/runs/dpo/final --rows CACHE/ahead_val.pt
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.training.srh_refine import SRHRow, evaluate_srh

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder (its config sets srh_prev_scale)")
    p.add_argument("--rows", required=True, help="a cached <layout>_val.pt file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random previous tokens")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = FunAudioChatForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    rows = [SRHRow(**r) for r in torch.load(args.rows, weights_only=True)["rows"]]
    head, audio = model.audio_invert_tower, model.config.audio_config
    gen = torch.Generator().manual_seed(args.seed)
    n_codes = audio.bos_token_id  # the speech codebook proper, without its special ids

    def random_prev(r: SRHRow) -> SRHRow:
        noise = torch.randint(0, n_codes, r.prev.shape, generator=gen)
        return SRHRow(r.conditions, torch.where(r.prev >= 0, noise, r.prev), r.targets)

    with torch.no_grad():
        cond = torch.cat([head.pre_matching(r.conditions.float()) for r in rows])
        prev = torch.cat([head.embed_previous(r.prev[r.prev >= 0]) for r in rows])
    report = {
        "model": args.model, "rows": len(rows), "srh_prev_scale": audio.srh_prev_scale,
        "condition_norm": float(cond.view(cond.shape[0], audio.group_size, -1).norm(dim=-1).mean()),
        "previous_token_norm": float(prev.norm(dim=-1).mean()),
        "as_trained": evaluate_srh(model, rows),
        "previous_tokens_random": evaluate_srh(model, [random_prev(r) for r in rows]),
        "conditions_zeroed": evaluate_srh(model, [SRHRow(torch.zeros_like(r.conditions), r.prev, r.targets)
                                                  for r in rows]),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
