"""Session 11's experiment: does a sharper CTC posterior help the backbone read user speech?

    python scripts/ctc_read_sharpness.py MODEL OUT --temperatures 1,0.5,0 [--limit 100]

The ``vocab_ctc`` adapter gives the backbone the posterior-weighted mix of its token embeddings.
Here the posterior is taken at temperature T before the mix (T = 0: the one-hot argmax, the greedy
transcript's tokens plus the blank vector), and ``funaudiochat eval`` scores spoken LLaMA-Questions
(s2t) for each T, one run folder per T under OUT.  The model's files are not changed: the
adapter module of the loaded model is swapped for one that reads with T.  Result:
docs/default-model-history.md ("Speech in without a rebuild").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from funaudiochat.modeling.vocab_adapter import VocabCTCAdapter


class TemperedVocabAdapter(VocabCTCAdapter):
    """The same three tensors; the posterior is taken at ``temperature`` (0: argmax)."""

    def __init__(self, base: VocabCTCAdapter, temperature: float) -> None:
        super().__init__(base.blank_query.numel())
        self.load_state_dict(base.state_dict())
        self.temperature = temperature

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x, table).float()
        if self.temperature == 0:
            post = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        else:
            post = (logits / self.temperature).softmax(dim=-1)
        return self.mix(post, table).to(x.dtype)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="'default' or a save_pretrained folder with the vocab_ctc adapter")
    p.add_argument("out", type=Path, help="one eval run folder per temperature is made here")
    p.add_argument("--temperatures", default="1,0.5,0", help="comma-separated; 0 = argmax")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--sets", default="llama_questions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from funaudiochat.chat import load_engine
    from funaudiochat.evaluation.runner import EvalConfig, EvalRunner

    temps = [float(t) for t in args.temperatures.split(",")]
    if any(t < 0 for t in temps):
        raise SystemExit(f"error: temperatures must be >= 0, got {args.temperatures}")
    engine = load_engine(args.model)
    base = engine.model.speech_vocab_adapter
    if base is None:
        raise SystemExit(f"error: {args.model} has the linear speech adapter; this needs 'vocab_ctc'")
    for t in temps:
        engine.model.speech_vocab_adapter = TemperedVocabAdapter(base, t)
        cfg = EvalConfig(model=args.model, sets=tuple(args.sets.split(",")), modes=("s2t",),
                         out=args.out / f"T{t:g}", limit=args.limit, batch_size=16, max_seconds=8,
                         progress=False, run_name=f"T={t:g}")
        EvalRunner(cfg, engine=engine).run()
        rows = [json.loads(x) for x in (cfg.out / "items.jsonl").read_text(encoding="utf-8").splitlines() if x]
        print(json.dumps({"temperature": t, "n": len(rows), "correct": sum(r["score"] for r in rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
