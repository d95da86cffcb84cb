"""Full-duplex training and evaluation records with synthesized audio (``docs/duplex.md``).

A dialogue (a list of :class:`~funaudiochat.duplex.timeline.Turn`) becomes one record:

1. every turn is spoken: user turns in one voice per dialogue, drawn like the default model's
   question voices (:func:`funaudiochat.default_model.speech_data.question_voice`: espeak-ng voices and
   piper "joe" at speeds 0.9 / 1.0 / 1.1), assistant turns in the assistant voice (piper "joe" at
   speed 1.0), turned into 25 Hz speech tokens with the shipped k-means speech tokenizer.  Leading and
   trailing silence is trimmed, so a clip's length is its speech;
2. the backchannels the timeline may insert are spoken too, the user's in the user's voice, the
   assistant's in the assistant voice (only the ones that are used are synthesized);
3. :func:`~funaudiochat.duplex.timeline.synthesize_timeline` lays the dialogue out with these measured
   durations (an assistant turn of ``n`` speech tokens lasts ``ceil((speech_delay + n + 1) / 5)`` steps);
4. the user's clips (turns and backchannels) are mixed into one 16 kHz mono track of exactly
   ``3200 * n_steps`` samples, and the record lists the assistant turns (speech tokens up to the cut
   for interrupted ones, with the dropped words), the user turns, the actions and the events.

Clips are cached under ``cache_dir`` (wav per text and voice, speech tokens per clip and tokenizer), so
a rerun synthesizes nothing and writes byte-identical output for the same seed.  Every file is written
atomically; an output wav is only rewritten when its content changes, and the JSONL (written last) is
removed before that happens, so it never points at audio it was not built with.

Command line::

    python -m funaudiochat.duplex.data --qa-questions questions.jsonl --qa-answers answers.jsonl --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from funaudiochat.default_model.questions import Question, clean_question
from funaudiochat.default_model.speech_data import (
    ASSISTANT_ENGINE,
    ASSISTANT_VOICE,
    TTSEngines,
    question_voice,
    safe_name,
    speak_cached,
    stable_hash,
)
from funaudiochat.duplex.timeline import (
    ACTIONS,
    ASSISTANT_BACKCHANNELS,
    STEP_SECONDS,
    USER_BACKCHANNELS,
    AssistantSpan,
    DuplexConfig,
    SpokenClip,
    Timeline,
    Turn,
    assistant_turn_steps,
    kept_speech_tokens,
    span_actions,
    synthesize_timeline,
)

logger = logging.getLogger("funaudiochat.duplex.data")  # also when run as __main__

__all__ = [
    "DUPLEX_TASK",
    "DEFAULT_SYSTEM",
    "SAMPLE_RATE",
    "SAMPLES_PER_STEP",
    "Dialogue",
    "build_duplex_data",
    "check_record",
    "dialogues_from_qa",
    "read_qa_files",
    "trim_silence",
    "main",
]

DUPLEX_TASK = "duplex"
DEFAULT_SYSTEM = "You are a helpful voice assistant in a live conversation."
SAMPLE_RATE = 16000
SAMPLES_PER_STEP = int(round(SAMPLE_RATE * STEP_SECONDS))  # 3200
ASSISTANT_SPEED = 1.0
_TIME_DIGITS = 6


@dataclass(frozen=True)
class Dialogue:
    """A dialogue to lay out: an id (names the record and its wav) and its turns."""

    id: str
    turns: tuple[Turn, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"a dialogue needs a non-empty string id, got {self.id!r}")
        object.__setattr__(self, "turns", tuple(self.turns))
        if not self.turns:
            raise ValueError(f"dialogue {self.id!r} has no turns")
        for i, turn in enumerate(self.turns):
            if not isinstance(turn, Turn):
                raise ValueError(f"dialogue {self.id!r}: turn {i} must be a Turn, got {type(turn).__name__}: {turn!r}")


# ----------------------------------------------------------------------------------------- audio


def trim_silence(audio: np.ndarray, sr: int = SAMPLE_RATE, threshold_db: float = -40.0,
                 margin: float = 0.03) -> np.ndarray:
    """``audio`` without its leading and trailing silence, keeping ``margin`` seconds on each side.

    Silence is any 10 ms frame whose RMS is ``threshold_db`` or more below the loudest frame's.
    Raises ``ValueError`` for audio without any sound.
    """
    x = np.asarray(audio, dtype=np.float32)
    hop = max(1, sr // 100)
    n = x.size // hop
    if n == 0:
        raise ValueError(f"audio of {x.size} samples is too short to trim")
    rms = np.sqrt(np.mean(x[: n * hop].astype(np.float64).reshape(n, hop) ** 2, axis=1))
    peak = float(rms.max())
    if peak <= 1e-6:
        raise ValueError("audio is silent")
    loud = np.flatnonzero(rms >= peak * 10.0 ** (threshold_db / 20.0))
    pad = int(round(margin * sr))
    start = max(0, int(loud[0]) * hop - pad)
    end = min(x.size, (int(loud[-1]) + 1) * hop + pad)
    return np.ascontiguousarray(x[start:end])


def _wav_bytes(audio: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0).astype(np.float32), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------- clips


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identifies the tokenizer whose ids are cached, without loading the shipped one."""
    if tokenizer is None:
        from funaudiochat.audio.tokenizer import default_tokenizer_dir

        manifest = json.loads((default_tokenizer_dir() / "tokenizer.json").read_text())
        return "kmeans-" + manifest["files"]["centroids.safetensors"]["sha256"][:16]
    manifest = getattr(tokenizer, "manifest", None)
    if manifest is not None and getattr(manifest, "sha256", None):
        return "kmeans-" + manifest.sha256[:16]
    return f"{type(tokenizer).__name__}-{getattr(tokenizer, 'codebook_size', 'x')}"


class _ClipStore:
    """Spoken clips (trimmed 16 kHz float32) and the assistant's speech tokens, cached on disk."""

    def __init__(self, root: Path, speech_tokenizer: Any = None) -> None:
        self.root = root
        self.engines = TTSEngines()
        self._tokenizer = speech_tokenizer
        self.fingerprint = _tokenizer_fingerprint(speech_tokenizer)
        self._audio: dict[tuple, np.ndarray] = {}
        self._tokens: dict[tuple, list[int]] = {}
        self.synthesized = 0  # clips made by TTS in this run (0 on a fully cached rerun)
        self.encoded = 0  # clips tokenized in this run

    def _key(self, text: str, engine: str, voice: str, speed: float) -> str:
        return hashlib.sha1(f"{engine}|{voice}|{speed:g}|{text}".encode("utf-8")).hexdigest()[:20]

    def audio(self, text: str, engine: str, voice: str, speed: float) -> np.ndarray:
        from funaudiochat.speech.audio import load_audio

        text = text.strip()
        key = (text, engine, voice, speed)
        if key not in self._audio:
            path = self.root / "clips" / engine / f"{self._key(text, engine, voice, speed)}.wav"
            if not path.is_file():
                speak_cached(self.engines, path, text, engine, voice, speed)
                self.synthesized += 1
            # always the samples read back from the file, so a rerun sees exactly the same audio
            try:
                self._audio[key] = trim_silence(load_audio(path))
            except ValueError as exc:
                raise ValueError(f"{engine} voice {voice!r} gave no usable audio for {text!r} ({path}): {exc}") from exc
            if len(self._audio) > 4096:  # bound the memory of long runs
                self._audio.pop(next(iter(self._audio)))
        return self._audio[key]

    def tokens(self, text: str) -> list[int]:
        """Speech tokens of ``text`` in the assistant voice (of the trimmed clip)."""
        text = text.strip()
        key = (text,)
        if key in self._tokens:
            return self._tokens[key]
        audio = self.audio(text, ASSISTANT_ENGINE, ASSISTANT_VOICE, ASSISTANT_SPEED)
        name = self._key(text, ASSISTANT_ENGINE, ASSISTANT_VOICE, ASSISTANT_SPEED)
        path = self.root / "tokens" / self.fingerprint / f"{name}.json"
        tokens = None
        if path.is_file():
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
                if obj.get("text") == text and obj.get("samples") == int(audio.size):
                    tokens = [int(t) for t in obj["tokens"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                tokens = None  # unreadable: encode again
        if tokens is None:
            if self._tokenizer is None:
                from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer

                self._tokenizer = KMeansSpeechTokenizer.from_pretrained()
            tokens = [int(t) for t in self._tokenizer.encode(audio)]
            if not tokens:
                raise ValueError(f"the speech tokenizer gave no tokens for {text!r}")
            _write_atomic(path, json.dumps({"text": text, "samples": int(audio.size), "tokens": tokens}).encode("utf-8"))
            self.encoded += 1
        self._tokens[key] = tokens
        if len(self._tokens) > 65536:
            self._tokens.pop(next(iter(self._tokens)))
        return tokens


class _LazyClips(Mapping):
    """text -> SpokenClip, synthesized on first access (only the backchannels used are spoken)."""

    def __init__(self, texts: Sequence[str], make: Callable[[str], SpokenClip]) -> None:
        self._texts = tuple(texts)
        self._make = make
        self._done: dict[str, SpokenClip] = {}

    def __getitem__(self, text: str) -> SpokenClip:
        if text not in self._texts:
            raise KeyError(text)
        if text not in self._done:
            self._done[text] = self._make(text)
        return self._done[text]

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)


# --------------------------------------------------------------------------------------- records


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, _TIME_DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _as_dialogues(dialogues: Sequence[Dialogue | Sequence[Turn]]) -> list[Dialogue]:
    if isinstance(dialogues, (str, bytes, Dialogue)) or not isinstance(dialogues, Sequence):
        raise ValueError(f"dialogues must be a list of Dialogue or of lists of Turn, got {type(dialogues).__name__}")
    out: list[Dialogue] = []
    for i, d in enumerate(dialogues):
        if isinstance(d, Dialogue):
            out.append(d)
        elif isinstance(d, Sequence) and not isinstance(d, (str, bytes)):
            out.append(Dialogue(f"dialogue{i:05d}", tuple(d)))
        else:
            raise ValueError(f"dialogue {i} must be a Dialogue or a list of Turn, got {type(d).__name__}: {d!r}")
    names: dict[str, str] = {}
    for d in out:
        name = safe_name(d.id)
        if name in names:
            raise ValueError(f"dialogue ids {names[name]!r} and {d.id!r} give the same file name {name!r}; ids must be unique")
        names[name] = d.id
    return out


def _record(d: Dialogue, index_seed: int, tl: Timeline, tokens: dict[int, list[int]],
            bc_tokens: dict[str, list[int]], user_offsets: list[tuple[int, int]], system: str, wav_rel: str,
            user_voice: tuple, config: DuplexConfig) -> dict:
    assistant = []
    for span in tl.assistant_spans:
        ids = tokens[span.turn] if span.kind == "turn" else bc_tokens[span.text]
        assistant.append({"start_step": span.start_step, "text": span.text, "speech_tokens": ids[: span.n_kept],
                          "kind": span.kind, "stop_step": span.stop_step, "dropped": list(span.dropped)})
    user = [{"start": a / SAMPLE_RATE, "end": b / SAMPLE_RATE, "text": u.text, "kind": u.kind}
            for u, (a, b) in zip(tl.user_spans, user_offsets)]
    # event times of user speech, on the samples where the clips were placed
    starts = {(u.turn, u.kind): a / SAMPLE_RATE for u, (a, _) in zip(tl.user_spans, user_offsets)}
    events = []
    for e in tl.events:
        e = dict(e)
        if e["type"] == "interruption":
            e["user_starts"] = starts[(e["turn"] + 1, "turn")]
        elif e["type"] == "user_backchannel":
            e["time"] = starts[(e["turn"], "backchannel")]
        events.append(e)
    return _rounded({
        "id": d.id, "task": DUPLEX_TASK, "system": system, "user_audio": wav_rel, "n_steps": tl.steps,
        "assistant": assistant, "user": user, "actions": tl.actions, "events": events,
        "meta": {"seed": index_seed, "user_voice": list(user_voice),
                 "assistant_voice": [ASSISTANT_ENGINE, ASSISTANT_VOICE, ASSISTANT_SPEED],
                 "speech_delay": config.speech_delay, **({"source": d.meta} if d.meta else {})},
    })


def build_duplex_data(
    dialogues: Sequence[Dialogue | Sequence[Turn]],
    out_dir: str | Path,
    config: DuplexConfig = DuplexConfig(),
    seed: int = 0,
    *,
    system: str = DEFAULT_SYSTEM,
    speech_tokenizer: Any = None,
    cache_dir: str | Path | None = None,
    jsonl_name: str = "duplex.jsonl",
    progress: bool = True,
) -> Path:
    """Synthesize, lay out and write one duplex record per dialogue; returns the JSONL's path.

    ``dialogues``: :class:`Dialogue` objects, or lists of Turn (named ``dialogue00000``, ...).
    Writes ``out_dir/jsonl_name`` and ``out_dir/wav/<id>.wav``; clips are cached under ``cache_dir``
    (default ``out_dir/cache``).  ``speech_tokenizer`` defaults to the shipped k-means tokenizer, loaded
    only when a clip's tokens are not cached.  The output is a function of the dialogues, ``config``
    and ``seed``.
    """
    items = _as_dialogues(dialogues)
    if not items:
        raise ValueError("no dialogues to build")
    if not isinstance(config, DuplexConfig):
        raise ValueError(f"config must be a DuplexConfig, got {type(config).__name__}")
    out = Path(out_dir)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out / jsonl_name
    store = _ClipStore(Path(cache_dir) if cache_dir is not None else out / "cache", speech_tokenizer)
    from tqdm import tqdm

    rows: list[str] = []
    changed = 0
    for d in tqdm(items, desc="duplex data", unit="dialogue", file=sys.stderr, disable=not progress):
        d_seed = stable_hash("duplex", seed, d.id) % 2**32
        user_voice = question_voice(f"{seed}:{d.id}")
        engine, voice, speed = user_voice

        def user_clip(text: str) -> SpokenClip:
            return SpokenClip(store.audio(text, engine, voice, speed).size / SAMPLE_RATE)

        def assistant_clip(text: str) -> SpokenClip:
            n = len(store.tokens(text))
            return SpokenClip(store.audio(text, ASSISTANT_ENGINE, ASSISTANT_VOICE, ASSISTANT_SPEED).size / SAMPLE_RATE, n)

        clips, tokens = [], {}
        for i, turn in enumerate(d.turns):
            if turn.speaker == "user":
                clips.append(user_clip(turn.text))
            else:
                tokens[i] = store.tokens(turn.text)
                clips.append(assistant_clip(turn.text))
        user_bc = _LazyClips(USER_BACKCHANNELS, user_clip)
        assistant_bc = _LazyClips(ASSISTANT_BACKCHANNELS, assistant_clip)
        try:
            tl = synthesize_timeline(list(d.turns), config, d_seed, clips=clips,
                                     user_backchannels=user_bc, assistant_backchannels=assistant_bc)
        except ValueError as exc:
            raise ValueError(f"dialogue {d.id!r}: {exc}") from exc
        bc_tokens = {s.text: store.tokens(s.text) for s in tl.assistant_spans if s.kind == "backchannel"}

        # the user's track: every user clip at its place, silence elsewhere
        track = np.zeros(SAMPLES_PER_STEP * tl.steps, dtype=np.float32)
        offsets = []
        for u in tl.user_spans:
            clip = store.audio(u.text, engine, voice, speed)
            a = int(round(u.start * SAMPLE_RATE))
            if a + clip.size > track.size:
                raise RuntimeError(f"dialogue {d.id!r}: user clip {u.text!r} ends after the last step (a bug)")
            track[a: a + clip.size] += clip
            offsets.append((a, a + clip.size))
        wav_rel = f"wav/{safe_name(d.id)}.wav"
        data = _wav_bytes(track)
        wav_path = out / wav_rel
        if not (wav_path.is_file() and wav_path.read_bytes() == data):
            if changed == 0:
                jsonl.unlink(missing_ok=True)  # it may describe the old audio; rewritten at the end
            _write_atomic(wav_path, data)
            changed += 1
        record = _record(d, d_seed, tl, tokens, bc_tokens, offsets, system, wav_rel, user_voice, config)
        check_record(record, root=None, speech_delay=config.speech_delay)
        rows.append(json.dumps(record, ensure_ascii=False) + "\n")
    _write_atomic(jsonl, "".join(rows).encode("utf-8"))
    logger.info("duplex data: %d records in %s (%d wavs written, %d clips synthesized, %d tokenized)",
                len(rows), jsonl, changed, store.synthesized, store.encoded)
    return jsonl


# ------------------------------------------------------------------------------------- checking


def _fail(rid: Any, msg: str) -> None:
    raise ValueError(f"duplex record {rid!r}: {msg}")


def check_record(record: Mapping, root: str | Path | None = None, speech_delay: int = 10) -> None:
    """Raise ``ValueError`` unless ``record`` is a consistent duplex record (``docs/duplex.md``).

    Checks the fields, that every assistant turn's step count matches its speech tokens
    (``ceil((speech_delay + n + 1) / 5)`` steps, or ``5 * (stop_step - start_step) - speech_delay``
    tokens for an interrupted one), that ``actions`` agree with the assistant turns, that user turns
    lie inside the record, and, given the JSONL's folder ``root``, that the wav has ``3200 * n_steps``
    samples of 16 kHz mono.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"a duplex record must be a JSON object, got {type(record).__name__}")
    rid = record.get("id")
    for key in ("id", "task", "system", "user_audio", "n_steps", "assistant", "user", "actions", "events"):
        if key not in record:
            _fail(rid, f"missing field {key!r}")
    if record["task"] != DUPLEX_TASK:
        _fail(rid, f"task must be {DUPLEX_TASK!r}, got {record['task']!r}")
    n_steps = record["n_steps"]
    if not isinstance(n_steps, int) or n_steps < 1:
        _fail(rid, f"n_steps must be a positive int, got {n_steps!r}")
    actions = record["actions"]
    if not isinstance(actions, list) or len(actions) != n_steps:
        _fail(rid, f"actions must be a list of n_steps = {n_steps} labels, got {len(actions) if isinstance(actions, list) else actions!r}")
    bad = sorted({a for a in actions if a not in ACTIONS})
    if bad:
        _fail(rid, f"unknown actions {bad}; known: {list(ACTIONS)}")
    spans = []
    for i, a in enumerate(record["assistant"]):
        where = f"assistant[{i}]"
        if not isinstance(a, Mapping) or not {"start_step", "text", "speech_tokens", "kind", "stop_step"} <= set(a):
            _fail(rid, f"{where} needs start_step, text, speech_tokens, kind and stop_step")
        start, stop, ids, kind = a["start_step"], a["stop_step"], a["speech_tokens"], a["kind"]
        if not isinstance(start, int) or start < 0:
            _fail(rid, f"{where}.start_step must be an int >= 0, got {start!r}")
        if kind not in ("turn", "backchannel"):
            _fail(rid, f"{where}.kind must be 'turn' or 'backchannel', got {kind!r}")
        if not isinstance(ids, list) or not all(isinstance(t, int) and t >= 0 for t in ids):
            _fail(rid, f"{where}.speech_tokens must be a list of non-negative ints")
        if stop is None:
            if not ids:
                _fail(rid, f"{where} has no speech tokens")
            end = start + assistant_turn_steps(len(ids), speech_delay)
        else:
            if kind != "turn" or not isinstance(stop, int) or stop <= start:
                _fail(rid, f"{where}.stop_step must be an int after start_step on a turn, got {stop!r}")
            want = kept_speech_tokens(start, stop, speech_delay)
            if len(ids) != want:
                _fail(rid, f"{where} is cut at step {stop} after starting at {start}, so it keeps {want} speech "
                           f"tokens, but has {len(ids)}")
            end = stop
        spans.append(AssistantSpan(i, kind, str(a["text"]), start, end, stop))
    try:
        expected = span_actions(spans, n_steps)
    except ValueError as exc:
        _fail(rid, str(exc))
    if expected != actions:
        step = next(s for s, (x, y) in enumerate(zip(expected, actions)) if x != y)
        _fail(rid, f"actions disagree with the assistant turns from step {step}: {actions[step]!r}, expected {expected[step]!r}")
    seconds = n_steps * STEP_SECONDS
    for i, u in enumerate(record["user"]):
        if not isinstance(u, Mapping) or not {"start", "end", "text", "kind"} <= set(u):
            _fail(rid, f"user[{i}] needs start, end, text and kind")
        if not (0 <= u["start"] < u["end"] <= seconds + 1e-6):
            _fail(rid, f"user[{i}] spans {u['start']}-{u['end']} s, outside the record's {seconds:g} s")
        if u["kind"] not in ("turn", "backchannel"):
            _fail(rid, f"user[{i}].kind must be 'turn' or 'backchannel', got {u['kind']!r}")
    if root is not None:
        import soundfile as sf

        path = Path(root) / record["user_audio"]
        if not path.is_file():
            _fail(rid, f"user_audio {path} not found")
        info = sf.info(str(path))
        if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames != SAMPLES_PER_STEP * n_steps:
            _fail(rid, f"{path}: {info.frames} samples at {info.samplerate} Hz, {info.channels} channel(s); "
                       f"expected {SAMPLES_PER_STEP * n_steps} samples of 16 kHz mono")


# --------------------------------------------------------------------------------- dialogues


def dialogues_from_qa(
    questions_and_answers: Sequence[tuple[Question | str, str]],
    turns_per_dialogue: int | tuple[int, int] = (1, 3),
    seed: int = 0,
) -> list[Dialogue]:
    """Chain question/answer pairs, in their order, into dialogues of ``turns_per_dialogue`` exchanges.

    Each pair is ``(question, answer)`` with a :class:`Question` (its id is kept) or a plain string
    (named ``qa<index>``).  Each dialogue takes the next ``k`` pairs, ``k`` drawn uniformly from
    ``turns_per_dialogue = (low, high)`` (or fixed when an int) with ``seed``; the last may be shorter.
    A dialogue is user question, assistant answer, user question, ... and its id is
    ``<first question id>/duplex<seed>``.
    """
    if isinstance(turns_per_dialogue, int):
        turns_per_dialogue = (turns_per_dialogue, turns_per_dialogue)
    lo, hi = turns_per_dialogue
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"turns_per_dialogue must be an int >= 1 or (low, high) with 1 <= low <= high, got {turns_per_dialogue!r}")
    pairs: list[tuple[str, str, str]] = []
    for i, item in enumerate(questions_and_answers):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"item {i} must be a (question, answer) pair, got {item!r}")
        q, answer = item
        qid, text = (q.id, q.text) if isinstance(q, Question) else (f"qa{i}", q)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"item {i} ({qid}): the question must be a non-empty string, got {text!r}")
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"item {i} ({qid}): the answer must be a non-empty string, got {answer!r}")
        pairs.append((qid, text.strip(), answer.strip()))
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(pairs):
        group = pairs[i: i + rng.randint(lo, hi)]
        i += len(group)
        turns = tuple(t for qid, q, a in group for t in (Turn("user", q), Turn("assistant", a)))
        out.append(Dialogue(f"{group[0][0]}/duplex{seed}", turns, {"questions": [qid for qid, _, _ in group]}))
    return out


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            yield n, obj


def read_qa_files(questions: str | Path, answers: str | Path | None = None) -> list[tuple[Question, str]]:
    """(question, answer) pairs from JSONL files.

    ``questions``: one object a line with ``id`` and ``text`` (the default-model build's
    ``questions.jsonl``) or ``question`` (the benchmark ``dev.jsonl`` files).  ``answers``: objects with
    ``id`` and ``answer`` (the build's ``answers.jsonl``); without it each question's first reference
    answer (``answers`` field) is used.  Questions without an answer are skipped with a warning.
    """
    qs: list[Question] = []
    for n, obj in _read_jsonl(Path(questions)):
        text = obj.get("text", obj.get("question"))
        if "id" not in obj or not isinstance(text, str):
            raise ValueError(f"{questions}:{n}: a question needs 'id' and 'text' (or 'question')")
        qs.append(Question(str(obj["id"]), clean_question(text), str(obj.get("source", Path(questions).parent.name)),
                           tuple(str(a) for a in obj.get("answers", ()))))
    if answers is not None:
        by_id: dict[str, str] = {}
        for n, obj in _read_jsonl(Path(answers)):
            if "id" not in obj or not isinstance(obj.get("answer"), str):
                raise ValueError(f"{answers}:{n}: an answer needs 'id' and 'answer'")
            by_id[str(obj["id"])] = obj["answer"]
    else:
        by_id = {q.id: q.answers[0] for q in qs if q.answers}
    pairs = [(q, by_id[q.id]) for q in qs if by_id.get(q.id, "").strip()]
    if len(pairs) < len(qs):
        logger.warning("%d of %d questions have no answer and are skipped", len(qs) - len(pairs), len(qs))
    if not pairs:
        raise ValueError(f"no question of {questions} has an answer" + (f" in {answers}" if answers else ""))
    return pairs


# ---------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = DuplexConfig()
    p = argparse.ArgumentParser(
        prog="python -m funaudiochat.duplex.data",
        description="Chain question/answer pairs into dialogues and write full-duplex records with synthesized "
                    "audio (docs/duplex.md). Prints the JSONL path on stdout; logs and progress go to stderr.",
    )
    p.add_argument("--qa-questions", required=True, type=Path, metavar="FILE",
                   help="JSONL of questions: {id, text} (a default-model build's questions.jsonl) or "
                        "{id, question, answers} (a benchmark dev.jsonl)")
    p.add_argument("--qa-answers", type=Path, metavar="FILE",
                   help="JSONL of {id, answer} (a build's answers.jsonl); default: each question's first "
                        "reference answer")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (JSONL, wav/, cache/)")
    p.add_argument("--n", type=int, metavar="N", help="build only the first N dialogues")
    p.add_argument("--seed", type=int, default=0, help="seed of the dialogue grouping, voices and events (default 0)")
    p.add_argument("--turns", type=int, nargs=2, default=(1, 3), metavar=("MIN", "MAX"),
                   help="question/answer exchanges per dialogue (default 1 3)")
    p.add_argument("--interruption-rate", type=float, metavar="P", default=d.interruption_rate,
                   help=f"chance the user barges into a reply that a user turn follows (default {d.interruption_rate})")
    p.add_argument("--overlap-rate", type=float, metavar="P", default=d.overlap_rate,
                   help=f"chance the next turn starts before a reply ends (default {d.overlap_rate})")
    p.add_argument("--user-backchannel-rate", type=float, metavar="P", default=d.user_backchannel_rate,
                   help=f"chance of a user 'mm-hm' during a reply of >= 2 s (default {d.user_backchannel_rate})")
    p.add_argument("--assistant-backchannel-rate", type=float, metavar="P", default=d.assistant_backchannel_rate,
                   help=f"chance of an assistant 'mm-hm' during a user turn of >= 3 s (default {d.assistant_backchannel_rate})")
    p.add_argument("--stop-steps", type=int, metavar="K", default=d.stop_steps,
                   help=f"steps after a barge-in begins at which the assistant is silent (default {d.stop_steps})")
    p.add_argument("--response-delay-steps", type=int, metavar="K", default=d.response_delay_steps,
                   help=f"steps between the end of the user's speech and the reply (default {d.response_delay_steps})")
    p.add_argument("--speech-delay", type=int, metavar="K", default=d.speech_delay,
                   help=f"the model's speech_delay in speech tokens (default {d.speech_delay})")
    p.add_argument("--system", default=DEFAULT_SYSTEM, help=f"system prompt of the records (default {DEFAULT_SYSTEM!r})")
    p.add_argument("--cache", type=Path, metavar="DIR", help="clip cache folder (default OUT/cache)")
    p.add_argument("--jsonl-name", default="duplex.jsonl", help="name of the JSONL in OUT (default duplex.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = DuplexConfig(interruption_rate=args.interruption_rate, overlap_rate=args.overlap_rate,
                              user_backchannel_rate=args.user_backchannel_rate,
                              assistant_backchannel_rate=args.assistant_backchannel_rate, stop_steps=args.stop_steps,
                              response_delay_steps=args.response_delay_steps, speech_delay=args.speech_delay)
        if args.n is not None and args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        pairs = read_qa_files(args.qa_questions, args.qa_answers)
        dialogues = dialogues_from_qa(pairs, tuple(args.turns), seed=args.seed)
        if args.n is not None:
            dialogues = dialogues[: args.n]
        logger.info("%d question/answer pairs -> %d dialogues; %s", len(pairs), len(dialogues),
                    json.dumps(asdict(config)))
        path = build_duplex_data(dialogues, args.out, config, seed=args.seed, system=args.system,
                                 cache_dir=args.cache, jsonl_name=args.jsonl_name, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
