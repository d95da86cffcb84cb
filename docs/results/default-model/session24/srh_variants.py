# Session 24 SRH-only variants (throwaway diagnostic, kept for the record; docs/default-model-history.md "Session 24").
# Cache first: python scripts/srh_layout_experiment.py cache --work build/s22 --model build/s22/runs/dpo/final --out /tmp/srh --n-train 1200 --n-val 60 --layouts ahead paced
# and python docs/results/default-model/session24/cache_split.py (for --hs/--ts). Then e.g.:
#   python docs/results/default-model/session24/srh_variants.py --variant untied --table-scale 30 --steps 300 --tag _t30
"""SRH-only diagnosis: does the frozen, barely trained speech table hold the head back?"""
import argparse, json, logging, sys, torch, copy
sys.path.insert(0, "/work/main/scripts")
from srh_layout_experiment import _rows, _fresh_head
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.training.srh_refine import evaluate_srh, train_srh, SRHRow
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
ap = argparse.ArgumentParser()
ap.add_argument("--variant", required=True)  # shipped | frozen | untied | untied_nocond | frozen_nocond
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--lr-max", type=float, default=1e-3)
ap.add_argument("--pre-scale", type=float, default=1.0)
ap.add_argument("--tag", default="")
ap.add_argument("--standardize", action="store_true")
ap.add_argument("--table-scale", type=float, default=1.0)
ap.add_argument("--layout", default="ahead")
ap.add_argument("--hs", type=float, default=None)
ap.add_argument("--ts", type=float, default=1.0)
ap.add_argument("--prev-scale", type=float, default=1.0)
a = ap.parse_args()
torch.set_num_threads(a.threads)
model = FunAudioChatForConditionalGeneration.from_pretrained("/work/main/build/s22/runs/dpo/final", dtype=torch.float32).eval()
_, tr = _rows(f"/tmp/srh/{a.layout}_train.pt"); _, va = _rows(f"/tmp/srh/{a.layout}_val.pt")
head = model.audio_invert_tower
if a.hs is not None:
    def mk(split):
        o = torch.load(f"/tmp/srh/split_{split}.pt", weights_only=True)
        return [SRHRow((a.hs * r["hidden"].float() + a.ts * r["text"].float()).half(), r["prev"], r["targets"]) for r in o["rows"]]
    tr, va = mk("train"), mk("val")
if a.variant == "shipped":
    print(json.dumps(evaluate_srh(model, va)))
    with torch.no_grad():
        c = torch.stack([r.conditions.float().mean(0) for r in va[:8]])
        pm = head.pre_matching(c)
        print("cond norm", c.norm(dim=-1).mean().item(), "pre_matching sub-frame norm", pm.view(8,5,-1).norm(dim=-1).mean().item(),
              "table row norm", head.lm_head.weight[:1024].norm(dim=-1).mean().item())
    # how much does the shipped head use its previous token?
    rnd = [SRHRow(r.conditions, torch.where(r.prev >= 0, torch.randint(0, 1024, r.prev.shape), r.prev), r.targets) for r in va]
    print("prev randomised", json.dumps(evaluate_srh(model, rnd)))
    zc = [SRHRow(torch.zeros_like(r.conditions), r.prev, r.targets) for r in va]
    print("conditions zeroed", json.dumps(evaluate_srh(model, zc)))
    sys.exit()
_fresh_head(model, 0)
if a.prev_scale != 1.0:
    _orig = head.embed_previous
    head.embed_previous = lambda ids: a.prev_scale * _orig(ids)
if a.variant.startswith("untied"):
    head.lm_head.weight = torch.nn.Parameter(head.lm_head.weight.detach().clone())
with torch.no_grad():
    head.lm_head.weight.mul_(a.table_scale); head.output_matching.weight.div_(a.table_scale)
    head.pre_matching.weight.mul_(a.pre_scale); head.pre_matching.bias.mul_(a.pre_scale)
if a.standardize:
    allc = torch.cat([r.conditions.float() for r in tr]); mu, sd = allc.mean(0), allc.std(0)
    fix = lambda rows: [SRHRow(((r.conditions.float() - mu) / sd).half(), r.prev, r.targets) for r in rows]
    tr, va = fix(tr), fix(va)
if a.variant.endswith("nocond"):
    tr = [SRHRow(torch.zeros_like(r.conditions), r.prev, r.targets) for r in tr]
    va = [SRHRow(torch.zeros_like(r.conditions), r.prev, r.targets) for r in va]
log = train_srh(model, tr, a.steps, 16, a.lr_max, a.lr_max / 10, val_rows=va, eval_every=100,
                metrics_path=f"/tmp/srh/{a.variant}{a.tag}.jsonl")
print(a.variant, a.tag, json.dumps([(e["step"], round(e["val_loss"], 3), round(e["val_accuracy"], 4)) for e in log if "val_loss" in e]))
torch.save(head.state_dict(), f"/tmp/srh/{a.variant}{a.tag}_head.pt")
