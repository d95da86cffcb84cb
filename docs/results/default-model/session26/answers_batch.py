"""The answers stage at another batch size: the same answers as the build's, and how long (session 26).

Usage, from the repo root after the build: python docs/results/default-model/session26/answers_batch.py 64 OUT.jsonl
"""
import json, sys, time
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from funaudiochat.default_model.answers import generate_answers, read_answer_cache
from funaudiochat.default_model.questions import read_questions
from funaudiochat.pretrained import smollm2_backbone_dir

batch, out = int(sys.argv[1]), Path(sys.argv[2])
qs = read_questions(Path("build/s26/questions.jsonl"))
bdir = smollm2_backbone_dir()
lm = AutoModelForCausalLM.from_pretrained(bdir, dtype=torch.float32)
t = time.perf_counter()
got = generate_answers(lm, AutoTokenizer.from_pretrained(bdir), qs, out, batch, 40)
dt = time.perf_counter() - t
ref = read_answer_cache(Path("build/s26/answers.jsonl"))
diff = [q.id for q in qs if got[q.id] != ref[q.id]]
print(json.dumps({"batch": batch, "seconds": round(dt, 1), "questions": len(qs), "different": len(diff), "first_different": diff[:5]}))
