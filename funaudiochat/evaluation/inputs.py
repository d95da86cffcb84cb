"""Turning a benchmark record into what the model is given: system prompt, history, user turn, audio.

Kept apart from the runner so that the exact wording fed to the model is in one place and can be
tested without a model.  Speech input comes from the set's own audio files when it has them
(``audio_file`` relative to ``<set dir>/audio``, the set dir or ``--audio-root``), otherwise from the
offline TTS pipeline (:func:`funaudiochat.speech.synthesize.synthesize_dataset`), whose WER filter
drops utterances that Whisper cannot understand.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from funaudiochat.evaluation.datasets import TaskType

logger = logging.getLogger(__name__)

__all__ = ["Prompt", "build_prompt", "FUNCTION_TASKS", "AudioLookup", "tts_audio"]

FUNCTION_TASKS = frozenset({TaskType.BFCL, TaskType.SPEECHFC, TaskType.ACEBENCH})
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_INSTRUCTION = "Answer with the letter of the correct option."
_ACE_TURN = re.compile(r"^(user|system|assistant):\s*", re.MULTILINE)


@dataclass
class Prompt:
    """One record as model input.  ``spoken`` is the text that speech input says (the last user turn)."""

    system: str | None
    history: list[tuple[str, str]] = field(default_factory=list)  # (role, text) turns before the last one
    user: str = ""
    spoken: str = ""
    instruction: str | None = None  # text that stays written even when the user turn is spoken


def _dialogue(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The record's conversation as (role, text), ending with the user turn to answer."""
    messages = record.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        turns = [(str(m.get("role", "user")), str(m.get("content", ""))) for m in messages]
    else:
        question = str(record.get("question", ""))
        parts = _ACE_TURN.split(question)
        if len(parts) > 1 and not parts[0].strip():  # ACEBench: "user: ...\nsystem: ...\nuser: ..."
            turns = [("user" if r == "user" else "assistant", t.strip()) for r, t in zip(parts[1::2], parts[2::2])]
        else:
            turns = [("user", question.strip())]
    turns = [(r if r in ("user", "assistant", "system") else "user", t) for r, t in turns if t.strip()]
    if not turns or turns[-1][0] != "user":
        raise ValueError(f"record {record.get('id')!r}: the conversation does not end with a user turn")
    return turns


def _function_system(record: Mapping[str, Any], base: str) -> str:
    from funaudiochat.prompts import function_calling_prompt

    text = function_calling_prompt(record["tools"], base=base)
    if record.get("time"):
        text += f"\n\nThe current date is {record['time']}."
    if record.get("profile"):
        profile = record["profile"]
        if not isinstance(profile, str):
            profile = json.dumps(profile, ensure_ascii=False)
        text += f"\n\nUser profile: {profile}"
    return text


def build_prompt(record: Mapping[str, Any], task: TaskType, speech_out: bool) -> Prompt:
    """Model input for one record; ``speech_out`` picks the spoken-reply system prompt."""
    from funaudiochat.prompts import TRANSCRIBE_INSTRUCTION, system_prompt

    base = system_prompt("s2s" if speech_out else "s2t")
    if task is TaskType.ASR:
        return Prompt(system=base, user=TRANSCRIBE_INSTRUCTION, spoken="", instruction=TRANSCRIBE_INSTRUCTION)
    if task is TaskType.MULTIPLE_CHOICE:
        question = str(record["question"]).strip()
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(record["choices"]))
        # read aloud as "Option A: ...", which TTS says and Whisper hears more reliably than "A."
        spoken = " ".join([question, *(f"Option {LETTERS[i]}: {str(c).strip().rstrip('.')}."
                                       for i, c in enumerate(record["choices"]))])
        return Prompt(system=base, user=f"{question}\n{options}\n{MC_INSTRUCTION}", spoken=spoken,
                      instruction=MC_INSTRUCTION)
    turns = _dialogue(record)
    system = _function_system(record, base) if task in FUNCTION_TASKS else base
    history = [(r, t) for r, t in turns[:-1] if r != "system"]
    extra_system = [t for r, t in turns[:-1] if r == "system"]
    if extra_system:
        system = "\n\n".join([system, *extra_system])
    last = turns[-1][1]
    return Prompt(system=system, history=history, user=last, spoken=last)


@dataclass
class AudioLookup:
    """Finds a record's own audio file: ``audio_file`` under the roots tried in order."""

    roots: Sequence[Path]

    def find(self, record: Mapping[str, Any]) -> Path | None:
        name = record.get("audio_file")
        if not name:
            return None
        p = Path(str(name))
        if p.is_absolute():
            return p if p.is_file() else None
        for root in self.roots:
            for candidate in (root / "audio" / p, root / p, root / "audio" / p.name):
                if candidate.is_file():
                    return candidate
        return None


def tts_audio(set_name: str, records: Sequence[Mapping[str, Any]], texts: Mapping[str, str], cache_dir: Path,
              tts: Sequence[str], asr_model: str, engines=None, asr=None, progress: bool = True,
              max_wer: float = 0.2) -> dict[str, Path | None]:
    """Synthesize ``texts`` (id -> text) with the offline TTS; id -> accepted wav, or None if rejected.

    ``tts`` lists the engines whose voices are tried (up to 3 attempts per item, see
    :func:`funaudiochat.speech.synthesize.plan_attempts`).  The cache folder is per (set, engines, ASR
    model): finished items are reused by later runs.
    """
    from funaudiochat.speech.jsonl_log import load_log
    from funaudiochat.speech.synthesize import MANIFEST_FILE, SynthConfig, synthesize_dataset

    folder = cache_dir / f"{set_name}-{'+'.join(tts)}-{asr_model}" if max_wer == 0.2 else \
        cache_dir / f"{set_name}-{'+'.join(tts)}-{asr_model}-wer{max_wer:g}"
    folder.mkdir(parents=True, exist_ok=True)
    todo = [r for r in records if str(r["id"]) in texts]
    if not todo:
        return {}
    src = folder / "input.jsonl"
    tmp = src.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in todo:
            fh.write(json.dumps({"id": str(r["id"]), "question": texts[str(r["id"])]}, ensure_ascii=False) + "\n")
    tmp.replace(src)
    config = SynthConfig(engines=tuple(tts), asr_model=asr_model, wer_threshold=max_wer)
    synthesize_dataset(src, folder, config, engines=engines, asr=asr, progress=progress)
    manifest = {rec["id"]: rec for rec in load_log(folder / MANIFEST_FILE)}
    out: dict[str, Path | None] = {}
    for r in todo:
        rec = manifest.get(str(r["id"]))
        out[str(r["id"])] = folder / rec["path"] if rec and rec.get("accepted") and rec.get("path") else None
    return out
