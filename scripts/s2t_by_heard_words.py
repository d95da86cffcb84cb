"""Spoken-QA accuracy by how many of the question's content words the CTC readout heard.

    python scripts/s2t_by_heard_words.py ITEMS.jsonl CTC_ROWS.jsonl [--set llama_questions]

ITEMS is a ``funaudiochat eval`` ``items.jsonl`` holding the same questions in ``text`` and ``s2t``
mode; CTC_ROWS is ``scripts/ctc_transcribe.py --out`` for the same recordings.  Each question is put
in a band by the share of its content words that appear in its transcript
(``ctc_transcribe.heard_share``); for each band the report gives the questions, those answered right when typed,
and of those the ones answered right when spoken.  If spoken answers fail where typed ones succeed
even with every content word heard, the backbone does not read its input; if they succeed there,
recognition is the limit (session 17, docs/default-model-history.md).  JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BANDS = (("none", 0.0, 0.0), ("under half", 1e-9, 0.5 - 1e-9), ("half or more, not all", 0.5, 1 - 1e-9), ("all", 1.0, 1.0))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("items", type=Path, help="funaudiochat eval items.jsonl with text and s2t rows")
    p.add_argument("ctc_rows", type=Path, help="scripts/ctc_transcribe.py --out rows (id, reference, ctc)")
    p.add_argument("--set", default="llama_questions", help="the eval set to read from ITEMS")
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ctc_transcribe import heard_share

    rows = read_jsonl(args.items)
    by_mode = {m: {r["id"]: r for r in rows if r["set"] == args.set and r["mode"] == m} for m in ("text", "s2t")}
    ctc = {r["id"]: r for r in read_jsonl(args.ctc_rows)}
    ids = [i for i in by_mode["s2t"] if i in by_mode["text"] and i in ctc]
    if not ids:
        raise SystemExit(f"error: no {args.set!r} question has text and s2t rows in {args.items} and a transcript in {args.ctc_rows}")
    share = {i: heard_share(ctc[i]["reference"], ctc[i]["ctc"]) for i in ids}
    bands = []
    for name, lo, hi in BANDS:
        sel = [i for i in ids if lo <= share[i] <= hi]
        typed = [i for i in sel if by_mode["text"][i]["score"] == 1]
        bands.append({"heard": name, "n": len(sel), "text_right": len(typed),
                      "s2t_right_of_text_right": sum(by_mode["s2t"][i]["score"] == 1 for i in typed),
                      "s2t_right": sum(by_mode["s2t"][i]["score"] == 1 for i in sel)})
    print(json.dumps({"items": str(args.items), "ctc_rows": str(args.ctc_rows), "set": args.set, "n": len(ids),
                      "bands": bands}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
