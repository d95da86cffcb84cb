"""Speech tokens for training data, computed once and cached.

Training records give spoken assistant replies as precomputed 25 Hz ``speech_tokens``.  This step
turns a JSONL whose assistant turns carry ``audio`` (a wav) into one whose assistant turns carry
``speech_tokens``, running the speech tokenizer once per distinct audio file: results are cached by
the file's content hash and the tokenizer's identity, so re-runs, other datasets reusing the same
wavs, and interrupted runs cost nothing twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funaudiochat.packages import sha256_file

logger = logging.getLogger(__name__)


@dataclass
class TokenizeStats:
    records: int = 0
    turns: int = 0
    computed: int = 0
    cached: int = 0


def tokenizer_identity(tokenizer: Any) -> str:
    """A short id that changes whenever the tokenizer's output could change."""
    manifest = getattr(tokenizer, "manifest", None)
    key = json.dumps(manifest.to_json(), sort_keys=True) if manifest is not None else type(tokenizer).__name__
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def tokenize_dataset(
    in_path: str | Path,
    out_path: str | Path,
    tokenizer: Any,
    cache_dir: str | Path,
    audio_root: str | Path | None = None,
    progress: bool = True,
) -> TokenizeStats:
    """Fill ``speech_tokens`` of every assistant turn (and DPO reply) that has ``audio``.

    The output is written atomically and validated with :func:`funaudiochat.training.data.validate_jsonl`.
    """
    from tqdm import tqdm

    from funaudiochat.audio.io import load_audio
    from funaudiochat.training.data import load_jsonl
    from funaudiochat.training.pacing import word_starts_from_audio

    in_path, out_path = Path(in_path), Path(out_path)
    root = Path(audio_root) if audio_root is not None else in_path.parent
    cache = Path(cache_dir) / tokenizer_identity(tokenizer)
    cache.mkdir(parents=True, exist_ok=True)
    stats = TokenizeStats()
    # split on "\n" only: JSON strings may hold U+0085 or U+2028, which splitlines() breaks on
    lines = in_path.read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out_lines = []
    for number, line in enumerate(tqdm(lines, desc="speech tokens", disable=not progress, unit="rec"), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{in_path}:{number}: malformed JSON: {err.msg}") from err
        turns = [t for t in record.get("messages", []) if isinstance(t, dict)]
        turns += [record[k] for k in ("chosen", "rejected") if isinstance(record.get(k), dict)]
        for turn in turns:
            if turn.get("role") != "assistant" or "audio" not in turn:
                continue
            wav = Path(turn["audio"])
            wav = wav if wav.is_absolute() else root / wav
            if not wav.is_file():
                raise FileNotFoundError(f"{in_path}:{number}: assistant audio not found: {wav}")
            entry = cache / f"{sha256_file(wav)}.json"
            audio = None
            if entry.is_file():
                tokens = json.loads(entry.read_text())
                stats.cached += 1
            else:
                audio = load_audio(wav)
                tokens = [int(t) for t in tokenizer.encode(audio)]
                _write_atomic(entry, json.dumps(tokens))
                stats.computed += 1
            turn["speech_tokens"] = tokens
            if isinstance(turn.get("content"), str) and turn["content"].strip() and "word_starts" not in turn:
                # for models with the paced text layout (training/pacing.py); others ignore it
                starts = word_starts_from_audio(turn["content"], load_audio(wav) if audio is None else audio, len(tokens))
                if starts is not None:
                    turn["word_starts"] = starts
            del turn["audio"]
            stats.turns += 1
        stats.records += 1
        out_lines.append(json.dumps(record, ensure_ascii=False))
    _write_atomic(out_path, "\n".join(out_lines) + "\n")
    load_jsonl(out_path, audio_root=root)  # raises, listing every bad line, if the result is not valid
    logger.info("%d records, %d spoken replies (%d tokenized, %d from cache)", stats.records, stats.turns,
                stats.computed, stats.cached)
    return stats


def add_tokenize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize-data",
        help="compute (and cache) speech tokens of the spoken assistant replies in a training JSONL",
        description="Reads a training JSONL whose assistant turns have 'audio' (wav paths), writes one whose "
        "assistant turns have 'speech_tokens' instead (and 'word_starts' estimated from the recording, for "
        "models with the paced text layout). Each distinct wav is tokenized once; results are "
        "cached by content hash and tokenizer, so re-runs and interrupted runs redo nothing.",
    )
    p.add_argument("input", type=Path, help="JSONL with assistant 'audio' fields")
    p.add_argument("output", type=Path, help="JSONL to write (atomically)")
    p.add_argument("--tokenizer", default="kmeans", choices=["kmeans", "s3"], help="speech tokenizer backend")
    p.add_argument("--tokenizer-path", help="tokenizer weights folder (default: the shipped k-means tokenizer)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: $FUNAUDIOCHAT_CACHE/speech-tokens)")
    p.add_argument("--audio-root", type=Path, help="folder that relative audio paths start from (default: the input's)")
    p.set_defaults(func=_cmd_tokenize)


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from funaudiochat.audio.tokenizer import load_tokenizer
    from funaudiochat.packages import cache_root

    tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_path)
    stats = tokenize_dataset(args.input, args.output, tokenizer, args.cache or cache_root() / "speech-tokens",
                             args.audio_root)
    print(json.dumps(stats.__dict__))
    return 0
