"""Type the speech-in path's own transcript as the question: does the model lose more than its ears do?

    python scripts/typed_transcripts.py make DATA/SET/dev.jsonl CTC_ROWS.jsonl OUT_DIR
    python scripts/typed_transcripts.py overlap ITEMS_A.jsonl:MODE ITEMS_B.jsonl:MODE [...]

``make`` writes two copies of a benchmark set (``funaudiochat eval --sets OUT_DIR/ctc/SET.jsonl``; the
file is named after the set's folder, because eval picks a set's scorer by its name):
``ctc/`` with each question replaced by the CTC readout's greedy transcript of its recording
(``scripts/ctc_transcribe.py --out``), and ``plain/`` with the written question in the transcript's
form (lower case, no punctuation), the control for that form, and ``proper/`` with the written question
cased as ``training.ctc`` cases targets with ``transcript_case: proper`` (names keep their capital).  If typing the transcript answers as
many questions as speaking does, the backbone reads the speech path as well as it reads text, and
what is missing is recognition (docs/default-model-history.md, "Session 18").

``overlap`` prints, as JSON, how many questions each of several runs got right and how many each
pair got right together.  Each argument is an eval ``items.jsonl`` and the mode to read from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s2t_by_heard_words import read_jsonl  # noqa: E402  (a sibling script, not a package)


def plain(text: str) -> str:
    """The written question as the CTC readout spells its transcripts: lower case, words only."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def make(set_path: Path, ctc_path: Path, out_dir: Path, name: str | None = None) -> dict[str, int]:
    records = read_jsonl(set_path)
    ctc = {r["id"]: r["ctc"] for r in read_jsonl(ctc_path)}
    missing = [r["id"] for r in records if r["id"] not in ctc]
    if missing:
        raise SystemExit(f"error: {len(missing)} questions of {set_path} have no transcript in {ctc_path} "
                         f"(first: {missing[0]})")
    from funaudiochat.training.ctc import normalize_transcript

    forms = (("ctc", lambda r: ctc[r["id"]]), ("plain", lambda r: plain(r["question"])),
             ("proper", lambda r: normalize_transcript(r["question"], "proper")))
    for form, question in forms:
        rows = [{**{k: v for k, v in r.items() if k != "audio_file"}, "question": question(r)} for r in records]
        (out_dir / form).mkdir(parents=True, exist_ok=True)
        (out_dir / form / f"{name or set_path.parent.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"questions": len(records)}


def overlap(runs: list[str]) -> dict:
    scores = {}
    for spec in runs:
        path, _, mode = spec.rpartition(":")
        if not path:
            raise SystemExit(f"error: {spec!r}: give ITEMS.jsonl:MODE")
        scores[spec] = {r["id"]: r["score"] == 1 for r in read_jsonl(Path(path)) if r["mode"] == mode}
        if not scores[spec]:
            raise SystemExit(f"error: {path} has no {mode!r} rows")
    ids = set.intersection(*(set(s) for s in scores.values()))
    return {"n": len(ids),
            "right": {k: sum(s[i] for i in ids) for k, s in scores.items()},
            "right_in_both": [{"runs": [a, b], "n": sum(scores[a][i] and scores[b][i] for i in ids)}
                              for a, b in itertools.combinations(scores, 2)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the ctc/ and plain/ copies of a set")
    m.add_argument("set", type=Path)
    m.add_argument("ctc_rows", type=Path)
    m.add_argument("out_dir", type=Path)
    m.add_argument("--name", help="set name of the copies (default: the name of SET's folder)")
    o = sub.add_parser("overlap", help="right answers of several runs, alone and in pairs")
    o.add_argument("runs", nargs="+", help="ITEMS.jsonl:MODE")
    args = p.parse_args(argv)
    result = make(args.set, args.ctc_rows, args.out_dir, args.name) if args.command == "make" else overlap(args.runs)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
