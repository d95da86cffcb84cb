"""Session 29: share of real LLaMA-Questions content words a readout heard, by how often the word
occurs in the CTC stage's training transcripts, and how often the rarely trained ones occur in the
vocabulary step's sentence pool.

    python docs/results/default-model/session29/heard_by_training_count.py ROWS.jsonl CTC.jsonl [CTC.jsonl ...]
"""
import collections
import json
import sys

sys.path.insert(0, "scripts")
from ctc_transcribe import FUNCTION_WORDS, heard_words  # noqa: E402

from funaudiochat.default_model.vocab_sentences import pool_sentences, words  # noqa: E402

counts = collections.Counter()
for path in sys.argv[2:]:
    for line in open(path):
        counts.update(words(json.loads(line)["text"]))
in_pool = collections.Counter(w for s in pool_sentences("../shared/benchdata") for w in words(s.text))
bins = {"0": (0, 1), "1-2": (1, 3), "3-9": (3, 10), "10-49": (10, 50), "50+": (50, 10**9)}
heard = {b: [0, 0] for b in bins}
rare_in_pool = collections.Counter()
for row in map(json.loads, open(sys.argv[1])):
    for word, hit in heard_words(row["reference"], row["ctc"]):
        if word in FUNCTION_WORDS:
            continue
        c = counts[word]
        b = next(b for b, (lo, hi) in bins.items() if lo <= c < hi)
        heard[b][0] += hit
        heard[b][1] += 1
        if c < 10:
            p = in_pool[word]
            rare_in_pool["0" if p == 0 else "1" if p == 1 else "2-9" if p < 10 else "10+"] += 1
print("| times in the training transcripts | content-word occurrences | heard |")
print("|---|---:|---:|")
for b, (h, n) in heard.items():
    print(f"| {b} | {n} | {h / n:.0%} |")
print("occurrences trained under 10 times, by count in the sentence pool:", dict(rare_in_pool))
