"""Session 24: how predictable are the build's answer speech tokens from the previous token alone?

Run from the repo root: python docs/results/default-model/session24/token_stats.py build/s22
(80/20 split of the spoken answers by a seeded shuffle; add-one unigram, interpolated bigram).
"""
import collections
import json
import math
import random
import sys

work = sys.argv[1]
tok = {json.loads(x)["id"]: json.loads(x)["tokens"] for x in open(f"{work}/data/answer_tokens.jsonl")}
ids = sorted(tok)
random.Random(0).shuffle(ids)
train, test = ids[: int(0.8 * len(ids))], ids[int(0.8 * len(ids)):]
V = 1024
uni = collections.Counter(t for i in train for t in tok[i])
big = collections.defaultdict(collections.Counter)
for i in train:
    for a, b in zip(tok[i], tok[i][1:]):
        big[a][b] += 1
n = sum(uni.values())
h1 = h2 = hits = rep = m = 0
for i in test:
    for a, b in zip(tok[i], tok[i][1:]):
        pu = (uni[b] + 1) / (n + V)
        c = big[a]
        tot = sum(c.values())
        lam = tot / (tot + 20)
        h1 -= math.log(pu)
        h2 -= math.log(lam * c[b] / max(tot, 1) + (1 - lam) * pu)
        hits += bool(c) and c.most_common(1)[0][0] == b
        rep += a == b
        m += 1
print(json.dumps({"answers": len(ids), "test_pairs": m, "unigram_nats": h1 / m, "bigram_nats": h2 / m,
                  "bigram_top1": hits / m, "repeat_previous": rep / m}, indent=2))
