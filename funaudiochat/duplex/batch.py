"""Duplex training records (docs/duplex.md, "Training data") -> checked, teacher-forced batches.

A record is a whole conversation on the 5 Hz clock: the user's waveform, the assistant's turns
(text, speech tokens, start step, optional stop step) and one action label per step.  This module
turns it into per-step targets and inputs and refuses any record whose parts disagree:

* an assistant turn starting at step ``a`` lays its text out one token per step and its speech as
  ``speech_delay`` BOS tokens, the tokens and a speech EOS, ``k`` = 5 per step (the last step's
  group filled up with EOS, as in half duplex); it lasts ``ceil((speech_delay + n_speech + 1) / 5)``
  steps and longer text is truncated to that many tokens, with a warning;
* a turn cut by the user (``stop_step`` set) emits nothing from its stop step on;
* step ``t`` is fed what the assistant emitted at step ``t - 1`` (``<|sil|>`` and speech pads after
  a silent step); its targets are the action, the text token and the speech group of step ``t``.

Records are validated twice: their structure and audio file when the data is loaded (before any
model exists), their layout against the actions once ``speech_delay`` is known, and the waveform's
length again when it is read.  Every error names the record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from funaudiochat.duplex.model import ACTIONS, SAMPLE_RATE, STEP_SAMPLES
from funaudiochat.duplex.timeline import assistant_turn_steps

logger = logging.getLogger(__name__)

IGNORE = -100
TURN_KINDS = ("turn", "backchannel")
#: Speech ids a record may carry (the S3 codebook; larger ids are model-side control tokens).
SPEECH_VOCAB_SIZE = 6561


class DuplexRecordError(ValueError):
    """A duplex record that cannot be used; the message names the record and the problem."""


@dataclass(frozen=True)
class AssistantTurn:
    start_step: int
    text: str
    speech_tokens: tuple[int, ...]
    kind: str = "turn"
    stop_step: int | None = None


@dataclass(frozen=True)
class DuplexRecord:
    """A parsed record; ``user_audio`` is resolved against the JSONL's folder (or ``audio_root``)."""

    id: str
    system: str
    user_audio: Path
    n_steps: int
    assistant: tuple[AssistantTurn, ...]
    actions: tuple[str, ...]
    source: str = ""  # "file:line", for messages

    @property
    def name(self) -> str:
        return f"record {self.id!r}" + (f" ({self.source})" if self.source else "")


@dataclass
class StepTargets:
    """Per-step tensors of one record (all of length ``n_steps``)."""

    actions: torch.Tensor  # [T] action ids
    text: torch.Tensor  # [T] text ids on start/speak/backchannel steps, else IGNORE
    speech: torch.Tensor  # [T, k] speech ids on those steps, else IGNORE
    prev_text: torch.Tensor  # [T] text fed at each step (output of the step before, or <|sil|>)
    prev_speech: torch.Tensor  # [T, k] speech fed at each step (output of the step before, or pads)


# ----------------------------------------------------------------------------------- parsing
def _fail(rid: str, where: str, message: str) -> DuplexRecordError:
    return DuplexRecordError(f"duplex record {rid!r}{f' ({where})' if where else ''}: {message}")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_record(
    obj: Any, base_dir: str | os.PathLike[str] = ".", where: str = "", check_audio: bool = True
) -> DuplexRecord:
    """Check the structure of one JSON record and return it parsed; raises :class:`DuplexRecordError`.

    With ``check_audio`` the wav file must exist, be 16 kHz and hold exactly ``3200 * n_steps``
    samples (read from its header only).
    """
    if not isinstance(obj, Mapping):
        raise _fail("?", where, f"must be a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if not isinstance(rid, str | int) or isinstance(rid, bool) or rid == "":
        raise _fail("?", where, f"'id' must be a non-empty string, got {rid!r}")
    rid = str(rid)

    def fail(message: str) -> DuplexRecordError:
        return _fail(rid, where, message)

    task = obj.get("task", "duplex")
    if task != "duplex":
        raise fail(f"task must be 'duplex', got {task!r}")
    system = obj.get("system")
    if not isinstance(system, str) or not system.strip():
        raise fail(f"'system' must be a non-empty string (the system prompt), got {system!r}")
    n_steps = obj.get("n_steps")
    if not _int(n_steps) or n_steps < 1:
        raise fail(f"'n_steps' must be a positive integer, got {n_steps!r}")
    actions = obj.get("actions")
    if not isinstance(actions, list):
        raise fail(f"'actions' must be a list of action names, got {type(actions).__name__}")
    if len(actions) != n_steps:
        raise fail(f"'actions' has {len(actions)} entries but n_steps is {n_steps}")
    unknown = sorted({repr(a) for a in actions if a not in ACTIONS})
    if unknown:
        first = next(i for i, a in enumerate(actions) if a not in ACTIONS)
        raise fail(f"unknown action(s) {', '.join(unknown)} (first at step {first}); known: {', '.join(ACTIONS)}")
    raw_turns = obj.get("assistant")
    if not isinstance(raw_turns, list):
        raise fail(f"'assistant' must be a list of turns, got {type(raw_turns).__name__}")
    turns = [_parse_turn(t, i, n_steps, fail) for i, t in enumerate(raw_turns)]
    audio = obj.get("user_audio")
    if not isinstance(audio, str) or not audio:
        raise fail(f"'user_audio' must be a wav path, got {audio!r}")
    path = Path(audio)
    if not path.is_absolute():
        path = Path(base_dir) / path
    if check_audio:
        _check_audio_file(path, n_steps, fail)
    return DuplexRecord(rid, system, path, n_steps, tuple(turns), tuple(actions), where)


def _parse_turn(obj: Any, i: int, n_steps: int, fail) -> AssistantTurn:
    field = f"assistant[{i}]"
    if not isinstance(obj, Mapping):
        raise fail(f"{field} must be an object, got {type(obj).__name__}")
    start = obj.get("start_step")
    if not _int(start) or not 0 <= start < n_steps:
        raise fail(f"{field}.start_step must be an integer step in [0, {n_steps}), got {start!r}")
    stop = obj.get("stop_step")
    if stop is not None and (not _int(stop) or not start < stop < n_steps):
        raise fail(f"{field}.stop_step must be null or a step in ({start}, {n_steps}), got {stop!r}")
    # a turn cut during its delay may have spoken nothing yet
    text = obj.get("text")
    if not isinstance(text, str) or (stop is None and not text.strip()):
        raise fail(f"{field}.text must be a non-empty string, got {text!r}")
    tokens = obj.get("speech_tokens")
    if not isinstance(tokens, list) or (stop is None and not tokens):
        raise fail(f"{field}.speech_tokens must be a non-empty list of speech ids")
    bad = [t for t in tokens if not _int(t) or not 0 <= t < SPEECH_VOCAB_SIZE]
    if bad:
        raise fail(
            f"{field}.speech_tokens: {bad[:5]} not in [0, {SPEECH_VOCAB_SIZE}) (no delay BOS/EOS: the collator adds them)"
        )
    kind = obj.get("kind", "turn")
    if kind not in TURN_KINDS:
        raise fail(f"{field}.kind must be one of {', '.join(TURN_KINDS)}, got {kind!r}")
    return AssistantTurn(start, text, tuple(tokens), kind, stop)


def _check_audio_file(path: Path, n_steps: int, fail) -> None:
    import soundfile as sf

    if not path.is_file():
        raise fail(f"user_audio not found: {path}")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise fail(f"user_audio {path} is not a readable audio file ({exc})") from exc
    if info.samplerate != SAMPLE_RATE:
        raise fail(f"user_audio {path} is {info.samplerate} Hz; duplex records need {SAMPLE_RATE} Hz")
    if info.frames != STEP_SAMPLES * n_steps:
        raise fail(
            f"user_audio {path} has {info.frames} samples but {n_steps} steps need exactly "
            f"{STEP_SAMPLES * n_steps} ({STEP_SAMPLES} per step)"
        )


def load_duplex_records(
    paths: Sequence[str | os.PathLike[str]],
    audio_root: str | os.PathLike[str] | None = None,
    check_audio: bool = True,
) -> list[DuplexRecord]:
    """Parse every line of every JSONL file; raises one :class:`DuplexRecordError` listing all problems."""
    if not paths:
        raise ValueError("no training data files given")
    records: list[DuplexRecord] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        base = Path(audio_root) if audio_root is not None else path.resolve().parent
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                where = f"{path}:{lineno}"
                if not line.strip():
                    problems.append(f"{where}: empty line")
                    continue
                try:
                    obj = json.loads(line)
                    rec = parse_record(obj, base, where, check_audio)
                except json.JSONDecodeError as exc:
                    problems.append(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})")
                    continue
                except DuplexRecordError as exc:
                    problems.append(str(exc))
                    continue
                if rec.id in seen:
                    problems.append(f"{where}: duplicate id {rec.id!r} (first at {seen[rec.id]})")
                    continue
                seen[rec.id] = where
                records.append(rec)
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DuplexRecordError(f"{len(problems)} problem(s) in the duplex training data:\n{shown}{more}")
    if not records:
        raise ValueError(f"no duplex records in {', '.join(map(str, paths))}")
    return records


# ----------------------------------------------------------------------------------- layout
def turn_steps(n_speech: int, speech_delay: int, k: int = 5) -> int:
    """Steps an uninterrupted turn lasts: its delay BOS tokens, speech and EOS, ``k`` = 5 per step."""
    if k != 5:
        raise ValueError(f"duplex turns have 5 speech tokens per step, got k={k}")
    return assistant_turn_steps(n_speech, speech_delay)


def expected_actions(record: DuplexRecord, speech_delay: int, k: int = 5) -> list[str]:
    """The action of every step implied by the assistant turns (``listen`` where none speaks)."""
    actions = ["listen"] * record.n_steps
    owner: list[int | None] = [None] * record.n_steps
    for i, turn in enumerate(record.assistant):
        length = turn_steps(len(turn.speech_tokens), speech_delay, k)
        end = turn.start_step + length
        if turn.stop_step is not None:
            if turn.stop_step > end:
                raise _fail(
                    record.id, record.source,
                    f"assistant[{i}] lasts steps {turn.start_step}..{end - 1} but its stop_step is {turn.stop_step}; "
                    "a turn can only be stopped while (or right after) it speaks",
                )
            end = turn.stop_step
        elif end > record.n_steps:
            raise _fail(
                record.id, record.source,
                f"assistant[{i}] needs steps {turn.start_step}..{end - 1} ({len(turn.speech_tokens)} speech tokens "
                f"+ {speech_delay} delay + EOS) but the record has {record.n_steps} steps",
            )
        claimed = list(range(turn.start_step, end)) + ([turn.stop_step] if turn.stop_step is not None else [])
        for step in claimed:
            if owner[step] is not None:
                raise _fail(
                    record.id, record.source,
                    f"assistant[{i}] overlaps assistant[{owner[step]}] at step {step}",
                )
            owner[step] = i
        for step in range(turn.start_step, end):
            if turn.kind == "backchannel":
                actions[step] = "backchannel"
            else:
                actions[step] = "start" if step == turn.start_step else "speak"
        if turn.stop_step is not None:
            actions[turn.stop_step] = "stop"
    return actions


def check_actions(record: DuplexRecord, speech_delay: int, k: int = 5) -> None:
    """Raise :class:`DuplexRecordError` unless the record's actions match its assistant turns."""
    want = expected_actions(record, speech_delay, k)
    bad = [t for t, (w, g) in enumerate(zip(want, record.actions)) if w != g]
    if bad:
        shown = ", ".join(f"step {t}: {record.actions[t]!r} (expected {want[t]!r})" for t in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise _fail(
            record.id, record.source,
            f"the actions disagree with the assistant turns at {len(bad)} step(s): {shown}{more} "
            f"(turns last ceil((speech_delay={speech_delay} + n_speech + 1) / {k}) steps)",
        )


def layout_targets(
    record: DuplexRecord,
    turn_text_ids: Sequence[Sequence[int]],
    *,
    speech_delay: int,
    sil_id: int,
    speech_bos_id: int,
    speech_eos_id: int,
    speech_pad_id: int,
    k: int = 5,
    warn: bool = True,
) -> StepTargets:
    """Per-step targets and teacher-forced inputs of a record (checks its actions first).

    ``turn_text_ids[i]`` are the text ids of ``record.assistant[i]``; ``warn`` logs text truncation.
    """
    check_actions(record, speech_delay, k)
    if len(turn_text_ids) != len(record.assistant):
        raise ValueError(f"{len(turn_text_ids)} tokenised texts for {len(record.assistant)} turns")
    n = record.n_steps
    text = torch.full((n,), IGNORE, dtype=torch.long)
    speech = torch.full((n, k), IGNORE, dtype=torch.long)
    for i, (turn, ids) in enumerate(zip(record.assistant, turn_text_ids)):
        length = turn_steps(len(turn.speech_tokens), speech_delay, k)
        ids = list(ids)
        if len(ids) > length and warn:
            logger.warning(
                "%s: assistant[%d]'s text has %d tokens but its speech lasts %d steps; truncating the text",
                record.name, i, len(ids), length,
            )
            ids = ids[:length]
        slots = ids + [sil_id] * (length - len(ids))
        stream = [speech_bos_id] * speech_delay + list(turn.speech_tokens) + [speech_eos_id]
        stream += [speech_eos_id] * (length * k - len(stream))  # complete the last group, as in half duplex
        emitted = length if turn.stop_step is None else min(length, turn.stop_step - turn.start_step)
        a = turn.start_step
        text[a : a + emitted] = torch.tensor(slots[:emitted])
        speech[a : a + emitted] = torch.tensor(stream[: emitted * k]).view(emitted, k)
    silent = text == IGNORE
    prev_text = torch.full((n,), sil_id, dtype=torch.long)
    prev_text[1:] = torch.where(silent[:-1], sil_id, text[:-1])
    prev_speech = torch.full((n, k), speech_pad_id, dtype=torch.long)
    prev_speech[1:] = torch.where(silent[:-1, None], speech_pad_id, speech[:-1])
    actions = torch.tensor([ACTIONS.index(a) for a in record.actions], dtype=torch.long)
    return StepTargets(actions, text, speech, prev_text, prev_speech)


# ----------------------------------------------------------------------------------- batching
@dataclass
class DuplexExample:
    """One encoded record: prompt ids, step targets and the user's waveform."""

    id: str
    prefix_ids: list[int]
    targets: StepTargets
    audio: np.ndarray  # float32, exactly STEP_SAMPLES * n_steps samples


class DuplexCollator:
    """Records (+ their waveforms) -> the batch that ``duplex_forward`` takes.

    ``processor`` is a :class:`funaudiochat.processing.FunAudioChatProcessor` (backbone tokenizer
    and model config).  Call it with :class:`DuplexExample` items (from :meth:`encode`, which the
    dataset runs in its workers) or with ``(record, waveform)`` pairs.  Batch keys, right-padded:

    ``input_ids``/``prefix_lengths`` [B, P]/[B]: the ChatML system prompt; ``prev_text`` [B, T],
    ``prev_speech`` [B, T, k]: the step inputs; ``action_labels``, ``text_labels`` [B, T] and
    ``speech_labels`` [B, T, k] (-100 where there is no target); ``step_mask`` [B, T];
    ``attention_mask`` [B, P + T] over prompt and steps; ``user_audio`` [B, 3200 T] and ``n_steps`` [B].
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        self._seen: set[str] = set()  # records already encoded once (truncation is warned about once)
        cfg = processor.config
        self.k = cfg.audio_config.group_size
        if self.k != 5:
            raise ValueError(f"duplex training needs group_size 5 (one 200 ms step), got {self.k}")

    def encode(self, record: DuplexRecord, audio: np.ndarray | torch.Tensor) -> DuplexExample:
        from funaudiochat.processing import Message

        cfg = self.processor.config
        a = cfg.audio_config
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.shape[0] != STEP_SAMPLES * record.n_steps:
            raise _fail(
                record.id, record.source,
                f"the user waveform has shape {tuple(audio.shape)} but {record.n_steps} steps need "
                f"{STEP_SAMPLES * record.n_steps} mono samples at {SAMPLE_RATE} Hz",
            )
        texts = [self.processor.text(t.text) for t in record.assistant]
        targets = layout_targets(
            record, texts, speech_delay=cfg.speech_delay, sil_id=cfg.sil_id, speech_bos_id=a.bos_token_id,
            speech_eos_id=a.eos_token_id, speech_pad_id=a.pad_token_id, k=self.k, warn=record.id not in self._seen,
        )
        self._seen.add(record.id)
        prefix = self.processor.encode([Message(role="system", text=record.system)]).input_ids
        return DuplexExample(record.id, prefix, targets, audio)

    def __call__(self, items: Sequence[DuplexExample | tuple[DuplexRecord, np.ndarray]]) -> dict[str, Any]:
        if not items:
            raise ValueError("the duplex collator needs at least one record")
        examples = [x if isinstance(x, DuplexExample) else self.encode(*x) for x in items]
        b, k = len(examples), self.k
        tok = self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        sil, speech_pad = self.processor.config.sil_id, self.processor.config.audio_config.pad_token_id
        p_max = max(len(e.prefix_ids) for e in examples)
        t_max = max(len(e.targets.actions) for e in examples)
        input_ids = torch.full((b, p_max), pad_id, dtype=torch.long)
        prefix_lengths = torch.zeros(b, dtype=torch.long)
        n_steps = torch.zeros(b, dtype=torch.long)
        prev_text = torch.full((b, t_max), sil, dtype=torch.long)
        prev_speech = torch.full((b, t_max, k), speech_pad, dtype=torch.long)
        action_labels = torch.full((b, t_max), IGNORE, dtype=torch.long)
        text_labels = torch.full((b, t_max), IGNORE, dtype=torch.long)
        speech_labels = torch.full((b, t_max, k), IGNORE, dtype=torch.long)
        step_mask = torch.zeros(b, t_max, dtype=torch.long)
        attention = torch.zeros(b, max(len(e.prefix_ids) + len(e.targets.actions) for e in examples), dtype=torch.long)
        audio = torch.zeros(b, STEP_SAMPLES * t_max, dtype=torch.float32)
        for r, e in enumerate(examples):
            p, t = len(e.prefix_ids), len(e.targets.actions)
            input_ids[r, :p] = torch.tensor(e.prefix_ids, dtype=torch.long)
            prefix_lengths[r], n_steps[r] = p, t
            prev_text[r, :t] = e.targets.prev_text
            prev_speech[r, :t] = e.targets.prev_speech
            action_labels[r, :t] = e.targets.actions
            text_labels[r, :t] = e.targets.text
            speech_labels[r, :t] = e.targets.speech
            step_mask[r, :t] = 1
            attention[r, : p + t] = 1
            audio[r, : e.audio.shape[0]] = torch.from_numpy(e.audio)
        return {
            "input_ids": input_ids,
            "prefix_lengths": prefix_lengths,
            "prev_text": prev_text,
            "prev_speech": prev_speech,
            "action_labels": action_labels,
            "text_labels": text_labels,
            "speech_labels": speech_labels,
            "step_mask": step_mask,
            "attention_mask": attention,
            "user_audio": audio,
            "n_steps": n_steps,
        }


class DuplexDataset(Dataset):
    """Items are :class:`DuplexExample`; the layout of every record is checked when it is built."""

    def __init__(
        self, records: Sequence[DuplexRecord], collator: DuplexCollator, max_audio_seconds: float | None = None
    ) -> None:
        if not records:
            raise ValueError("the dataset has no records")
        self.records = list(records)
        self.collator = collator
        self.max_audio_seconds = max_audio_seconds
        cfg = collator.processor.config
        problems = []
        for rec in self.records:
            try:
                check_actions(rec, cfg.speech_delay, collator.k)
            except DuplexRecordError as exc:
                problems.append(str(exc))
        if problems:
            shown = "\n".join(f"  {p}" for p in problems[:50])
            more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
            raise DuplexRecordError(f"{len(problems)} duplex record(s) do not match their actions:\n{shown}{more}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DuplexExample:
        from funaudiochat.audio.io import load_audio

        rec = self.records[index]
        audio = load_audio(rec.user_audio, max_seconds=self.max_audio_seconds, name=f"{rec.name}: {rec.user_audio}")
        return self.collator.encode(rec, audio)
