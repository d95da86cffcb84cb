# Session 24: cache the SRH inputs with backbone state and text embedding apart (paced layout), for srh_variants.py --hs/--ts.
"""Cache the SRH inputs with backbone state and text embedding kept apart (paced layout)."""
import copy, json, sys, torch
sys.path.insert(0, "/work/main/scripts")
from pathlib import Path
from transformers import AutoTokenizer
from srh_layout_experiment import _items, _encode
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor
from funaudiochat.modeling.targets import srh_teacher_inputs
torch.set_num_threads(2)
M = "/work/main/build/s22/runs/dpo/final"
model = FunAudioChatForConditionalGeneration.from_pretrained(M, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(M)
cfg = copy.deepcopy(model.config); cfg.text_layout = "paced"
proc = FunAudioChatProcessor(tok, cfg)
train, val = _items(Path("/work/main/build/s22"), 1200, 60)
k, ignore = model.group_size, model.config.ignore_index
for split, items in (("val", val), ("train", train)):
    exs, ids = [], []
    for it in items:
        try:
            exs.append(_encode(proc, it)); ids.append(it["id"])
        except ValueError:
            pass
    rows = []
    for i in range(0, len(exs), 8):
        batch = {kk: v for kk, v in proc.collate(exs[i:i + 8]).items() if kk != "tasks"}
        with torch.no_grad():
            out = model(**batch, compute_speech_logits=False)
        prev, targets = srh_teacher_inputs(out.speech_labels, k, ignore)
        for r in range(out.last_hidden_state.shape[0]):
            spoken = torch.nonzero(targets[r] != ignore).flatten()
            s, e = max(0, int(spoken[0]) // k - 4), int(spoken[-1]) // k + 1
            rows.append({"hidden": out.last_hidden_state[r, s:e].half().clone(), "text": out.text_embeds[r, s:e].half().clone(),
                         "prev": prev[r, k*s:k*e].clone(), "targets": targets[r, k*s:k*e].clone()})
    torch.save({"ids": ids, "rows": rows}, f"/tmp/srh/split_{split}.pt")
    h = torch.cat([r["hidden"].float() for r in rows]); t = torch.cat([r["text"].float() for r in rows])
    print(split, len(rows), "hidden norm %.2f text norm %.2f" % (h.norm(dim=1).mean(), t.norm(dim=1).mean()), flush=True)
