"""Which content words does a CTC readout hear: by how many backbone tokens the target spells them.

    python scripts/heard_by_pieces.py CTC_ROWS.jsonl [CTC_ROWS.jsonl ...] [--tokenizer DIR]

CTC_ROWS are ``reference`` + ``ctc`` rows (``scripts/ctc_transcribe.py --out``, or a probe's
``transcripts.jsonl``).  Each content word of a reference (``ctc_transcribe.FUNCTION_WORDS`` left
out) is counted as heard when its normalised form is anywhere in the transcript, and is put in a
class: a name (written capitalised inside its sentence) or another word, and how many tokens its
lower-cased form takes in the backbone's tokenizer (1, 2, 3 or more).  Session 19 found that the
words the lower-case readout hears are almost all one-token words, and that lowering a name splits
it into rare pieces (" France" is one token, " france" two); ``training.ctc``'s ``transcript_case:
proper`` is the response (docs/default-model-history.md).  One JSON line per file on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctc_transcribe import FUNCTION_WORDS, heard_set  # noqa: E402  (a sibling script, not a package)
from s2t_by_heard_words import read_jsonl  # noqa: E402

_WORD = re.compile(r"[A-Za-z0-9']+")


def word_classes(reference: str, transcript: str, pieces) -> list[tuple[str, int, int, bool]]:
    """(kind, lower-case and as-written token counts capped at 3, heard) for each content word of ``reference``.

    ``pieces(word)`` is the number of backbone tokens of `` word``.  A word after the first that is
    written with a capital is a name.
    """
    from funaudiochat.evaluation.normalize import normalize_text

    heard = heard_set(transcript)
    out = []
    for i, word in enumerate(_WORD.findall(reference)):
        norm = normalize_text(word)
        if not norm or norm in FUNCTION_WORDS:
            continue
        kind = "name" if i > 0 and word[0].isupper() else "other"
        out.append((kind, min(3, pieces(word.lower())), min(3, pieces(word)), norm in heard))
    return out


def _tokens(n: int) -> str:
    return "1 token" if n == 1 else f"{n}{'+' if n == 3 else ''} tokens"


def report(rows: list[dict], pieces) -> dict:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        for kind, n, n_written, hit in word_classes(row["reference"], row["ctc"], pieces):
            keys = [kind, f"{kind}, {_tokens(n)} lower-cased"]
            if kind == "name":
                keys.append(f"name, {_tokens(n)} lower-cased, {_tokens(n_written)} as written")
            for key in keys:
                counts[key][0] += hit
                counts[key][1] += 1
    return {key: {"heard": h, "of": n, "share": round(h / n, 3)} for key, (h, n) in sorted(counts.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", type=Path, nargs="+", help="JSONL rows with 'reference' and 'ctc'")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the SmolLM2 backbone's)")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    if args.tokenizer is None:
        from funaudiochat.pretrained import smollm2_backbone_dir

        args.tokenizer = smollm2_backbone_dir()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)

    def pieces(word: str) -> int:
        return len(tok(" " + word, add_special_tokens=False)["input_ids"])

    for path in args.rows:
        print(json.dumps({"rows": str(path), **report(read_jsonl(path), pieces)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
