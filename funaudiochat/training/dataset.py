"""Torch datasets over validated conversation JSONL files (SFT and DPO), and their collators.

Records are checked in full when the dataset is built (``training/data.py`` plus the checks below), so
a bad line stops the run before the first step, with its file and line number.  Audio is decoded
lazily in ``__getitem__`` (so DataLoader workers do it), with :func:`load_audio` and relative paths
resolved against the JSONL's folder.

Spoken assistant replies must carry precomputed ``speech_tokens``: speech tokenisation (and its
cache) belongs to the audio stack, not to the training loop, which never runs a speech tokenizer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from funaudiochat.audio.io import audio_seconds, load_audio
from funaudiochat.processing import EncodedExample, FunAudioChatProcessor, Message
from funaudiochat.training import data as jsonl

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Problems in one or more data files; ``errors`` holds ``(path, DataError)`` pairs."""

    def __init__(self, errors: Sequence[tuple[Path, jsonl.DataError]]) -> None:
        self.errors = list(errors)
        shown = self.errors[:50]
        lines = "\n".join(f"  {path}:{e.line}: {e.field}: {e.message}" for path, e in shown)
        more = f"\n  ... and {len(self.errors) - len(shown)} more" if len(self.errors) > len(shown) else ""
        super().__init__(f"{len(self.errors)} problem(s) in the training data:\n{lines}{more}")


@dataclass
class DPOExample:
    chosen: EncodedExample
    rejected: EncodedExample
    task: str | None


def _model_side_errors(record: jsonl.Record) -> list[jsonl.DataError]:
    """What the JSONL format allows but the processor cannot use."""
    errors = []
    turns = [(f"messages[{i}]", m) for i, m in enumerate(record.messages)]
    turns += [(k, m) for k, m in (("chosen", record.chosen), ("rejected", record.rejected)) if m is not None]
    for field, m in turns:
        if m.role == "assistant" and m.audio is not None:
            errors.append(jsonl.DataError(
                record.line, f"{field}.audio",
                "assistant speech must be given as precomputed speech_tokens, not a wav (tokenize it first)",
            ))
        if m.role == "user" and m.speech_tokens is not None:
            errors.append(jsonl.DataError(
                record.line, f"{field}.speech_tokens",
                "user speech enters the model as a waveform: give 'audio', not speech_tokens",
            ))
    return errors


def load_records(
    paths: Sequence[str | os.PathLike[str]],
    mode: Literal["sft", "dpo"],
    audio_root: str | os.PathLike[str] | None = None,
    allowed_tasks: Sequence[str] | None = None,
) -> list[tuple[Path, jsonl.Record]]:
    """Validate every file fully and return all records, or raise :class:`DatasetError` with all problems."""
    if not paths:
        raise ValueError("no training data files given")
    records: list[tuple[Path, jsonl.Record]] = []
    errors: list[tuple[Path, jsonl.DataError]] = []
    for raw in paths:
        path = Path(raw)
        recs, errs = jsonl.validate_jsonl(path, mode=mode, audio_root=audio_root, allowed_tasks=allowed_tasks)
        errors += [(path, e) for e in errs]
        for rec in recs:
            extra = _model_side_errors(rec)
            errors += [(path, e) for e in extra]
            if not extra:
                records.append((path, rec))
    if errors:
        errors.sort(key=lambda pe: (str(pe[0]), pe[1].line))
        raise DatasetError(errors)
    return records


class ConversationDataset(Dataset):
    """Items are :class:`EncodedExample` (``sft``) or :class:`DPOExample` (``dpo``).

    Build it from :func:`load_records` output (validation can then run before the model is loaded)
    or with :meth:`from_files`.
    """

    def __init__(
        self,
        records: Sequence[tuple[Path, jsonl.Record]],
        processor: FunAudioChatProcessor,
        mode: Literal["sft", "dpo"] = "sft",
        max_audio_seconds: float | None = 360.0,
    ) -> None:
        if mode not in ("sft", "dpo"):
            raise ValueError(f"mode must be 'sft' or 'dpo', got {mode!r}")
        if not records:
            raise ValueError("the dataset has no records")
        self.mode = mode
        self.processor = processor
        self.max_audio_seconds = max_audio_seconds
        self.records = list(records)

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        processor: FunAudioChatProcessor,
        mode: Literal["sft", "dpo"] = "sft",
        audio_root: str | os.PathLike[str] | None = None,
        max_audio_seconds: float | None = 360.0,
        allowed_tasks: Sequence[str] | None = None,
    ) -> ConversationDataset:
        records = load_records(paths, mode, audio_root, allowed_tasks)
        logger.info("%d %s record(s) from %s", len(records), mode, ", ".join(map(str, paths)))
        return cls(records, processor, mode, max_audio_seconds)

    def __len__(self) -> int:
        return len(self.records)

    def _message(self, m: jsonl.Message, where: str) -> Message:
        audio = None
        if m.audio is not None:
            audio = load_audio(m.audio, max_seconds=self.max_audio_seconds, name=f"{where}: {m.audio}")
        return Message(role=m.role, text=m.content, audio=audio, speech_tokens=m.speech_tokens, word_starts=m.word_starts)

    def _encode(self, messages: Sequence[Message], where: str) -> EncodedExample:
        try:
            return self.processor.encode(messages)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc

    def __getitem__(self, index: int) -> EncodedExample | DPOExample:
        path, rec = self.records[index]
        where = f"{path}:{rec.line}"
        prompt = [self._message(m, where) for m in rec.messages]
        if self.mode == "sft":
            return self._encode(prompt, where)
        chosen = self._message(rec.chosen, where)
        rejected = self._message(rec.rejected, where)
        return DPOExample(self._encode([*prompt, chosen], where), self._encode([*prompt, rejected], where), rec.task)

    def lengths(self) -> list[float]:
        """Estimated backbone positions per item, to batch items of similar length (``data.group_by_length``).

        Text counts a position per 4 characters, user audio 5 per second (the 5 Hz groups), a spoken
        reply the larger of its text and its speech tokens / 5; a DPO pair counts its longer reply.
        Audio lengths come from file headers, so nothing is decoded.
        """
        def positions(m: jsonl.Message) -> float:
            text = len(m.content or "") / 4
            if m.speech_tokens is not None:
                text = max(text, len(m.speech_tokens) / 5)
            return text + (5 * audio_seconds(m.audio) if m.audio is not None else 0.0)

        out = []
        for _, rec in self.records:
            n = sum(positions(m) for m in rec.messages)
            if self.mode == "dpo":
                n += max(positions(rec.chosen), positions(rec.rejected))
            out.append(n)
        return out

    def tasks(self) -> list[str | None]:
        return [rec.task for _, rec in self.records]


class SFTCollator:
    """List of examples -> the model's forward keywords (labels included)."""

    def __init__(self, processor: FunAudioChatProcessor) -> None:
        self.processor = processor

    def __call__(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        return self.processor.collate(examples)


class DPOCollator:
    """Pairs -> one batch of 2B rows (B chosen, then B rejected) plus ``tasks`` (a list, not a tensor).

    One forward pass over both halves keeps the policy's and the reference's work to one call each.
    """

    def __init__(self, processor: FunAudioChatProcessor) -> None:
        self.processor = processor

    def __call__(self, examples: Sequence[DPOExample]) -> dict:
        batch: dict = self.processor.collate([e.chosen for e in examples] + [e.rejected for e in examples])
        batch["tasks"] = [e.task for e in examples]
        return batch
