"""Evaluate a full-duplex model in simulated live conversations (``funaudiochat eval-duplex``).

A scripted user talks to a :class:`~funaudiochat.duplex.engine.DuplexSession` on the model's 5 Hz
clock.  The evaluator pushes 200 ms of microphone audio, runs the step, reads its events and lets the
user react, so the user can interrupt the model at a chosen moment *of the model's own answer*,
which a fixed recording cannot do.  Each benchmark item (a short-answer question) is played in up to
three fresh conversations (``docs/evaluation.md``, "Full duplex"):

* ``answer``: the user asks and waits.  Success when the model takes the floor after the question
  has ended and within ``response_timeout``; its text (S2M-T) and speech (S2M-S) are scored.
* ``barge-in``: once the model has spoken for ``barge_in_after`` seconds, the user asks another
  question over it.  Success when the model falls silent within ``stop_tolerance_steps`` steps and
  does not take the floor again before the user has finished.
* ``backchannel``: once the model has spoken for ``backchannel_after`` seconds, the user says
  "mm-hm" (or another short acknowledgement).  A model that yields the floor makes a false barge-in.

Turn-taking success rate = successes / events over the ``answer`` and ``barge-in`` events.

Every time here is on the simulated clock, never wall time: step ``s`` covers the microphone samples
``3200 s`` to ``3200 (s + 1)`` and its decision is known at the end of that audio, ``0.2 (s + 1)`` s.

Run folder::

    run_config.json   settings that change results; resuming with other settings is refused
    items.jsonl       one line per item: every conversation's steps, turns and events, the verdicts
    summary.json      the metrics per set and overall (schema ``funaudiochat.eval.duplex/v1``)
    run.json          the scored items as ``funaudiochat.eval.run/v1`` (``funaudiochat eval-report`` reads it)
    report.md         the paper's Table 7 layout with our column, and the interaction details
    timeline.png      one item's conversations drawn on the clock (when matplotlib is installed)
    tts/              the user's synthesized speech (cache)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np

from funaudiochat.duplex.timeline import STEP_SECONDS, USER_BACKCHANNELS
from funaudiochat.evaluation.datasets import TaskType, load_jsonl_set
from funaudiochat.evaluation.report import ScoredItem, write_run_json
from funaudiochat.evaluation.runner import EvalSet, default_data_root, resolve_sets
from funaudiochat.evaluation.scoring import score_record

if TYPE_CHECKING:
    from funaudiochat.duplex.engine import DuplexEngine, DuplexEvent, DuplexSession

logger = logging.getLogger(__name__)

__all__ = [
    "SCENARIOS",
    "DEFAULT_SETS",
    "DUPLEX_SCHEMA",
    "PAPER_TABLE7",
    "NAMED_MODELS",
    "Clip",
    "UserSpan",
    "AssistantTurn",
    "Conversation",
    "ScenarioSettings",
    "AnswerVerdict",
    "BargeInVerdict",
    "BackchannelVerdict",
    "DatasetVoice",
    "UserVoice",
    "ClipUnavailable",
    "SpeechScorer",
    "DuplexEvalConfig",
    "DuplexEvaluator",
    "simulate",
    "judge_answer",
    "judge_barge_in",
    "judge_backchannel",
    "summarize_items",
    "format_table7",
    "format_interaction_table",
    "plot_timeline",
    "load_duplex_model",
    "add_eval_duplex_parser",
    "cmd_eval_duplex",
]

SAMPLE_RATE = 16_000
STEP = int(round(SAMPLE_RATE * STEP_SECONDS))  # 3200 samples: one step of the 5 Hz clock
SCENARIOS = ("answer", "barge-in", "backchannel")
DEFAULT_SETS = ("llama_questions", "web_questions", "triviaqa")
DUPLEX_SCHEMA = "funaudiochat.eval.duplex/v1"
LOG_FILE = "items.jsonl"
CONFIG_FILE = "run_config.json"
SUMMARY_JSON = "summary.json"
RUN_JSON = "run.json"
REPORT_MD = "report.md"
TIMELINE_PNG = "timeline.png"
#: Turn endings that are the model's own decision to fall silent (the head chose stop or listen,
#: or switched to a backchannel).  ``eos`` and ``max_length`` end a turn because its speech is over
#: or too long, which is no reaction to the user, so such events are left out of the rates.
_NOT_A_REACTION = frozenset({"eos", "max_length"})


# ------------------------------------------------------------------------------- the paper's numbers
@dataclass(frozen=True)
class PaperColumn:
    """One model of the paper's Table 7 (values in %): S2M-T and S2M-S per set, their average, TTSR."""

    model: str
    s2m: Mapping[str, tuple[float, float]]
    avg: tuple[float, float]
    turn_taking: float


#: Fun-Audio-Chat technical report, Table 7 (full-duplex UltraEval-Audio), as printed.
PAPER_TABLE7: tuple[PaperColumn, ...] = (
    PaperColumn("Moshi", MappingProxyType({
        "llama_questions": (65.67, 57.00), "alpaca_eval": (25.51, 25.08), "triviaqa": (18.46, 16.31),
        "web_questions": (23.03, 21.06)}), (33.17, 29.86), 99.77),
    PaperColumn("FreezeOmni", MappingProxyType({
        "llama_questions": (74.00, 58.00), "alpaca_eval": (47.39, 32.78), "triviaqa": (30.08, 20.31),
        "web_questions": (38.83, 26.87)}), (47.58, 34.49), 93.87),
    PaperColumn("Fun-Audio-Chat-Duplex-30B-A3B", MappingProxyType({
        "llama_questions": (81.00, 71.33), "alpaca_eval": (68.23, 59.65), "triviaqa": (41.70, 40.04),
        "web_questions": (28.64, 26.08)}), (54.89, 49.28), 100.00),
    PaperColumn("Fun-Audio-Chat-Duplex-8B", MappingProxyType({
        "llama_questions": (72.33, 64.33), "alpaca_eval": (68.03, 57.32), "triviaqa": (29.59, 27.73),
        "web_questions": (26.18, 24.36)}), (49.03, 43.44), 99.94),
)
#: Table 7's rows, in its order: (set name, label).
_TABLE7_ROWS = (("llama_questions", "Llama Q."), ("alpaca_eval", "AlpacaEval"), ("triviaqa", "TriviaQA"),
                ("web_questions", "Web Q."))


# ------------------------------------------------------------------------------- conversation records
@dataclass
class Clip:
    """Something the user says: 16 kHz mono float32 with the silence at both ends trimmed, so its
    length is its speech (the end of the clip is the end of the user's speech)."""

    samples: np.ndarray
    text: str
    source: str  # "dataset" (a recording), "tts" or "synthetic"
    voice: str = ""

    def __post_init__(self) -> None:
        x = np.asarray(self.samples, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"a clip must be non-empty mono audio, got shape {x.shape} for {self.text!r}")
        self.samples = x


@dataclass
class UserSpan:
    """Where a user clip sits on the clock (seconds from the start of the conversation)."""

    kind: str  # "question", "barge-in" or "backchannel"
    start: float
    end: float
    text: str
    source: str = ""

    @property
    def start_sample(self) -> int:
        return int(round(self.start * SAMPLE_RATE))

    @property
    def end_sample(self) -> int:
        return int(round(self.end * SAMPLE_RATE))


@dataclass
class AssistantTurn:
    """One turn (or backchannel) of the model: steps ``start_step`` to ``end_step - 1`` hold the floor.

    ``end_step`` is the step of the engine's ``TurnEnd`` (None while the turn is open).  A turn is
    open at the end of step ``s`` when ``start_step <= s < end_step``.
    """

    index: int
    kind: str  # "turn" or "backchannel"
    start_step: int
    end_step: int | None = None
    reason: str | None = None  # TurnEnd.reason: eos, listen, stop, max_length, replaced, closed
    text: str = ""
    speech_tokens: list[int] = field(default_factory=list)
    first_text_step: int | None = None
    first_audio_step: int | None = None

    def open_at_end_of(self, step: int) -> bool:
        return self.start_step <= step and (self.end_step is None or step < self.end_step)


@dataclass
class Conversation:
    """The full log of one simulated conversation: what the user said when, and every model step."""

    scenario: str
    seed: int
    react_after: float | None = None  # seconds of model speech before the user's reaction
    user: list[UserSpan] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # the model's action at each step
    forced_steps: list[int] = field(default_factory=list)  # steps where the engine overrode the head
    turns: list[AssistantTurn] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # turn_start / stopped / turn_end
    ended_by: str = ""  # why the simulation stopped (see simulate)

    @property
    def steps(self) -> int:
        return len(self.actions)

    def span(self, kind: str) -> UserSpan | None:
        return next((u for u in self.user if u.kind == kind), None)

    def first_turn(self) -> AssistantTurn | None:
        return next((t for t in self.turns if t.kind == "turn"), None)

    def speaking_at_end_of(self, step: int) -> bool:
        """Whether a turn of kind ``turn`` holds the floor after ``step`` (backchannels do not)."""
        return any(t.kind == "turn" and t.open_at_end_of(step) for t in self.turns)

    def open_turn(self) -> AssistantTurn | None:
        return next((t for t in reversed(self.turns) if t.end_step is None), None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Conversation":
        conv = cls(**{k: v for k, v in d.items() if k not in ("user", "turns")})
        conv.user = [UserSpan(**u) for u in d.get("user", [])]
        conv.turns = [AssistantTurn(**t) for t in d.get("turns", [])]
        return conv


def _step_end(step: int) -> int:
    """Sample at which step ``step``'s decision is known (the end of the audio it heard)."""
    return (step + 1) * STEP


def _samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def _seconds(samples: int) -> float:
    return samples / SAMPLE_RATE


# ------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ScenarioSettings:
    """How the scripted user behaves and how outcomes are judged (all times in seconds)."""

    lead_seconds: float = 0.6  # microphone noise before the question
    noise_db: float = -60.0  # RMS of the white noise floor in dBFS (-inf: digital silence)
    response_timeout: float = 3.0  # the answer must start within this after the question ends
    stop_tolerance_steps: int = 2  # a barge-in must silence the model within this many steps
    barge_in_after: tuple[float, float] = (0.6, 1.2)  # model speech before the barge-in (drawn)
    backchannel_after: tuple[float, float] = (0.6, 1.2)  # model speech before the backchannel (drawn)
    max_answer_seconds: float = 30.0  # an answer is cut after this long
    answer_gap: float = 1.0  # silence after a turn that ends the answer

    def __post_init__(self) -> None:
        object.__setattr__(self, "barge_in_after", tuple(float(x) for x in self.barge_in_after))
        object.__setattr__(self, "backchannel_after", tuple(float(x) for x in self.backchannel_after))
        for name in ("lead_seconds", "response_timeout", "answer_gap"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.max_answer_seconds) and self.max_answer_seconds > 0):
            raise ValueError(f"max_answer_seconds must be positive, got {self.max_answer_seconds}")
        if self.noise_db > 0 or math.isnan(self.noise_db):
            raise ValueError(f"noise_db must be <= 0 dBFS (or -inf for silence), got {self.noise_db}")
        if not isinstance(self.stop_tolerance_steps, int) or self.stop_tolerance_steps < 0:
            raise ValueError(f"stop_tolerance_steps must be an int >= 0, got {self.stop_tolerance_steps!r}")
        for name in ("barge_in_after", "backchannel_after"):
            pair = getattr(self, name)
            if not (len(pair) == 2 and 0 <= pair[0] <= pair[1] and math.isfinite(pair[1])):
                raise ValueError(f"{name} must be (min, max) seconds with 0 <= min <= max, got {getattr(self, name)}")

    @property
    def noise_rms(self) -> float:
        return 0.0 if self.noise_db == float("-inf") else 10.0 ** (self.noise_db / 20.0)


# ------------------------------------------------------------------------------- the user's voice
class ClipUnavailable(RuntimeError):
    """The user's speech for an item could not be made (no recording, and the TTS failed)."""


class UserVoice(Protocol):
    """Where the scripted user's speech comes from; tests pass synthetic bursts."""

    def question(self, set_name: str, folder: Path, record: Mapping[str, Any]) -> Clip: ...

    def backchannel(self, key: str, text: str) -> Clip: ...


class DatasetVoice:
    """A record's own recording when it has one (Llama Questions), else the duplex data's TTS voices.

    TTS uses the helpers of :mod:`funaudiochat.duplex.data`: the voice of ``question_voice(item id)``
    (an espeak-ng voice three times in four, piper "joe" otherwise, speed 0.9-1.1), cached as one wav
    per text, engine, voice and speed under ``cache_dir/clips/<engine>/``, the layout of the duplex
    data builder's cache (pointing ``--tts-cache`` at such a cache reuses its clips).  Leading and
    trailing silence is trimmed as in the training data.  Backchannels are spoken in the item's
    TTS voice, also for items with a real recording (no recording of "mm-hm" exists).
    """

    def __init__(self, cache_dir: Path, audio_root: Path | None = None, engines: Any = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.audio_root = audio_root
        self._engines = engines

    def _tts(self, text: str, key: str) -> Clip:
        from funaudiochat.default_model.speech_data import TTSEngines, question_voice, speak_cached
        from funaudiochat.duplex.data import trim_silence
        from funaudiochat.speech.audio import load_audio

        engine, voice, speed = question_voice(key)
        digest = hashlib.sha1(f"{engine}|{voice}|{speed:g}|{text}".encode("utf-8")).hexdigest()[:20]
        path = self.cache_dir / "clips" / engine / f"{digest}.wav"
        if self._engines is None:
            self._engines = TTSEngines()
        try:
            if not path.is_file():
                speak_cached(self._engines, path, text, engine, voice, speed)
            samples = trim_silence(load_audio(path))
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            raise ClipUnavailable(f"{engine} voice {voice!r} could not speak {text!r}: {exc}") from exc
        return Clip(samples, text, "tts", f"{engine}:{voice}@{speed:g}")

    def question(self, set_name: str, folder: Path, record: Mapping[str, Any]) -> Clip:
        from funaudiochat.default_model.questions import clean_question
        from funaudiochat.evaluation.inputs import AudioLookup

        text = clean_question(str(record.get("question", "")))
        if not text:
            raise ClipUnavailable(f"{set_name} item {record.get('id')!r} has no question text")
        roots = [folder] + ([Path(self.audio_root)] if self.audio_root else [])
        path = AudioLookup(roots).find(record)
        if path is not None:
            from funaudiochat.duplex.data import trim_silence
            from funaudiochat.speech.audio import load_audio

            try:
                return Clip(trim_silence(load_audio(path)), text, "dataset", "recording")
            except (OSError, RuntimeError, ValueError) as exc:
                raise ClipUnavailable(f"{path}: unusable recording ({exc})") from exc
        return self._tts(text, str(record["id"]))

    def backchannel(self, key: str, text: str) -> Clip:
        return self._tts(text, key)


# ------------------------------------------------------------------------------- the simulation
class _Microphone:
    """The user's microphone, read one step at a time: a noise floor plus the clips placed so far.

    Clips can only be placed at or after the samples already read, so the user's reactions are
    causal: what the model has heard never changes.
    """

    def __init__(self, noise_rms: float, rng: np.random.Generator) -> None:
        self.noise_rms = noise_rms
        self.rng = rng
        self.position = 0
        self.clips: list[tuple[int, np.ndarray]] = []

    def place(self, samples: np.ndarray, at: int) -> None:
        if at < self.position:
            raise ValueError(f"cannot place a clip at sample {at}: {self.position} samples were already heard")
        self.clips.append((at, samples))

    def read(self, n: int) -> np.ndarray:
        a, b = self.position, self.position + n
        out = np.zeros(n, dtype=np.float32)
        if self.noise_rms > 0:
            out += (self.rng.standard_normal(n) * self.noise_rms).astype(np.float32)
        for at, x in self.clips:
            lo, hi = max(a, at), min(b, at + x.size)
            if lo < hi:
                out[lo - a: hi - a] += x[lo - at: hi - at]
        self.position = b
        return np.clip(out, -1.0, 1.0)


def _record_events(conv: Conversation, events: Sequence["DuplexEvent"]) -> None:
    """Append one step's engine events to the conversation log."""
    from funaudiochat.duplex.engine import ActionEvent, AudioChunk, Stopped, TextDelta, TurnEnd, TurnStart

    by_index = {t.index: t for t in conv.turns}
    for e in events:
        if isinstance(e, ActionEvent):
            conv.actions.append(e.action)
            if e.forced:
                conv.forced_steps.append(e.step)
            continue
        time_s = round(_seconds(_step_end(e.step)), 6)
        if isinstance(e, TurnStart):
            turn = AssistantTurn(e.turn, e.kind, e.step)
            conv.turns.append(turn)
            by_index[e.turn] = turn
            conv.events.append({"type": "turn_start", "step": e.step, "time": time_s, "turn": e.turn, "kind": e.kind})
        elif isinstance(e, TextDelta):
            turn = by_index[e.turn]
            if turn.first_text_step is None:
                turn.first_text_step = e.step
        elif isinstance(e, AudioChunk):
            turn = by_index[e.turn]
            if turn.first_audio_step is None and e.tokens:
                turn.first_audio_step = e.step
        elif isinstance(e, Stopped):
            conv.events.append({"type": "stopped", "step": e.step, "time": time_s, "turn": e.turn})
        elif isinstance(e, TurnEnd):
            turn = by_index[e.turn]
            turn.end_step, turn.reason, turn.text = e.step, e.reason, e.text
            turn.speech_tokens = [int(t) for t in e.speech_tokens]
            conv.events.append({"type": "turn_end", "step": e.step, "time": time_s, "turn": e.turn,
                                "reason": e.reason, "interrupted": e.interrupted})


def simulate(
    engine: "DuplexEngine",
    scenario: str,
    question: Clip,
    follow_up: Clip | None = None,
    *,
    settings: ScenarioSettings = ScenarioSettings(),
    react_after: float | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
    on_session: Callable[["DuplexSession", Conversation], None] | None = None,
) -> Conversation:
    """Play one scripted conversation against a fresh session, step by step; its full log.

    The user waits ``lead_seconds``, asks ``question`` and stays silent (noise floor).  In the
    ``barge-in`` and ``backchannel`` scenarios the user says ``follow_up`` ``react_after`` seconds
    after the end of the model's first ``start`` step (not before the question has ended), provided
    the model is speaking a turn at that moment; otherwise the conversation ends (``ended_by``
    ``"not_speaking"``).  ``ended_by`` says why the simulation stopped: ``no_response`` (no turn
    within ``response_timeout``), ``answer_done`` (``answer_gap`` of silence after the model's last
    turn, once the question is over), ``max_answer``, ``not_speaking``, ``window`` (the reaction's
    observation window is over: for a barge-in when the model answers it or ``response_timeout``
    after it, for a backchannel ``stop_tolerance_steps`` after its last step), ``context_full`` or
    ``step_limit`` (a safety bound, never reached by a working simulation).  ``on_session(session,
    conversation)`` is called before the first step (diagnostics, tests).  The session and the noise
    are seeded with ``seed``.
    """
    from funaudiochat.duplex.engine import ContextFullError

    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    if scenario != "answer" and (follow_up is None or react_after is None):
        raise ValueError(f"the {scenario} scenario needs follow_up and react_after")
    conv = Conversation(scenario, seed, react_after if scenario != "answer" else None)
    mic = _Microphone(settings.noise_rms, np.random.default_rng(seed))
    q_start = _samples(settings.lead_seconds)
    q_end = q_start + question.samples.size
    mic.place(question.samples, q_start)
    conv.user.append(UserSpan("question", _seconds(q_start), _seconds(q_end), question.text, question.source))
    timeout = _samples(settings.response_timeout)
    tolerance = settings.stop_tolerance_steps
    follow_len = follow_up.samples.size if follow_up is not None else 0
    reaction = _samples(react_after or 0.0) + follow_len + timeout
    limit = math.ceil((q_end + timeout + _samples(settings.max_answer_seconds) + reaction) / STEP) + tolerance + 10
    due: int | None = None  # sample at which the user reacts
    follow_end: int | None = None
    session = engine.session(system_prompt, seed=seed)
    if on_session is not None:
        on_session(session, conv)
    try:
        step = 0
        while True:
            session.push_audio(mic.read(STEP))
            try:
                events = session.process()
            except ContextFullError as exc:
                logger.warning("%s conversation stopped at step %d: %s", scenario, step, exc)
                conv.ended_by = "context_full"
                break
            _record_events(conv, events)
            end = _step_end(step)
            first = conv.first_turn()
            reason = ""
            if first is None:
                if end >= q_end + timeout:
                    reason = "no_response"
            elif scenario == "answer":
                last = conv.turns[-1]
                if end - _step_end(first.start_step) >= _samples(settings.max_answer_seconds):
                    reason = "max_answer"
                elif (last.end_step is not None and end >= q_end
                      and end - _step_end(last.end_step) >= _samples(settings.answer_gap)):
                    reason = "answer_done"
            elif follow_end is None:
                if due is None:
                    due = max(_step_end(first.start_step) + _samples(react_after), q_end, end)
                if due < end + STEP:  # the reaction begins within the next step
                    if conv.speaking_at_end_of(step):
                        mic.place(follow_up.samples, due)
                        follow_end = due + follow_len
                        conv.user.append(UserSpan(scenario, _seconds(due), _seconds(follow_end), follow_up.text,
                                                  follow_up.source))
                    else:
                        reason = "not_speaking"
            elif scenario == "barge-in":
                replied = any(t.kind == "turn" and t.start_step >= due // STEP and _step_end(t.start_step) >= follow_end
                              for t in conv.turns)
                if replied or end >= follow_end + timeout:
                    reason = "window"
            elif step >= (follow_end - 1) // STEP + tolerance:
                reason = "window"
            if not reason and step + 1 >= limit:
                logger.warning("%s conversation hit the step limit (%d steps)", scenario, limit)
                reason = "step_limit"
            if reason:
                conv.ended_by = reason
                break
            step += 1
    finally:
        _record_events(conv, session.close())
    return conv


# ------------------------------------------------------------------------------- verdicts
@dataclass
class AnswerVerdict:
    """Scenario ``answer``.  ``outcome``: ``success``, ``started_early`` (the first turn started
    before the question ended), ``late`` (after ``response_timeout``) or ``no_response``.
    ``latency`` (s): end of the first ``start`` step minus the end of the question."""

    outcome: str
    success: bool
    latency: float | None
    start_step: int | None
    text: str
    speech_tokens: list[int]


@dataclass
class BargeInVerdict:
    """Scenario ``barge-in``.  ``outcome``: ``stopped`` (success), ``stopped_late``, ``no_stop`` (kept
    speaking until the window ended, its speech ran out or the engine's turn limit cut it),
    ``resumed`` (stopped in time but took the floor again before the user finished) - these are
    events - or ``ended_naturally`` (the turn's speech ended by itself within the tolerance) and
    ``not_applicable`` (no barge-in happened), which are not events.  ``stop_steps``: stop step minus
    the step in which the barge-in began; ``stop_latency`` (s): end of the stop step minus the
    barge-in's first sample; ``reply_latency`` (s): from the end of the barge-in to the end of the
    model's next ``start`` step, if it answered within the window."""

    outcome: str
    event: bool
    success: bool | None
    barge_step: int | None = None
    stop_step: int | None = None
    stop_steps: int | None = None
    stop_latency: float | None = None
    reply_latency: float | None = None


@dataclass
class BackchannelVerdict:
    """Scenario ``backchannel``.  ``outcome``: ``kept_speaking`` or ``false_barge_in`` (events), or
    ``ended_naturally`` / ``not_applicable`` (not events).  The window runs from the step in which
    the backchannel begins to ``stop_tolerance_steps`` steps after the step of its last sample."""

    outcome: str
    event: bool
    false_barge_in: bool | None
    backchannel_step: int | None = None
    stop_step: int | None = None


def judge_answer(conv: Conversation, settings: ScenarioSettings) -> AnswerVerdict:
    """Did the model take the floor after the question and in time; what did it say."""
    question = conv.span("question")
    if question is None:
        raise ValueError("the conversation has no question")
    turns = [t for t in conv.turns if t.kind == "turn"]
    text = " ".join(t.text for t in turns if t.text).strip()
    tokens = [tok for t in turns for tok in t.speech_tokens]
    first = conv.first_turn()
    if first is None:
        return AnswerVerdict("no_response", False, None, None, text, tokens)
    gap = _step_end(first.start_step) - question.end_sample
    if gap < 0:
        return AnswerVerdict("started_early", False, None, first.start_step, text, tokens)
    latency = round(_seconds(gap), 6)
    if gap > _samples(settings.response_timeout):
        return AnswerVerdict("late", False, latency, first.start_step, text, tokens)
    return AnswerVerdict("success", True, latency, first.start_step, text, tokens)


def _first_yield(conv: Conversation, first_step: int, last_step: int) -> tuple[int | None, str | None]:
    """The first step in ``[first_step, last_step]`` after which no turn holds the floor, and the
    reason the turn that held it ended (None, None if the model kept speaking)."""
    for s in range(first_step, min(last_step, conv.steps - 1) + 1):
        if not conv.speaking_at_end_of(s):
            closing = [t for t in conv.turns if t.kind == "turn" and t.end_step == s]
            return s, (closing[-1].reason if closing else None)
    return None, None


def judge_barge_in(conv: Conversation, settings: ScenarioSettings) -> BargeInVerdict:
    """Did the model fall silent within the tolerance, and stay silent while the user spoke."""
    span = conv.span("barge-in")
    if span is None:
        return BargeInVerdict("not_applicable", False, None)
    b = span.start_sample // STEP
    tol = settings.stop_tolerance_steps
    stop, reason = _first_yield(conv, b, conv.steps - 1)
    if stop is None:
        return BargeInVerdict("no_stop", True, False, b)
    steps = stop - b
    latency = round(_seconds(_step_end(stop) - span.start_sample), 6)
    reply = next((t for t in conv.turns if t.kind == "turn" and t.start_step > stop
                  and _step_end(t.start_step) >= span.end_sample), None)
    reply_latency = round(_seconds(_step_end(reply.start_step) - span.end_sample), 6) if reply else None
    if reason in _NOT_A_REACTION:  # its speech ran out (or the engine cut it): not a reaction
        outcome, event = ("ended_naturally", False) if steps <= tol else ("no_stop", True)
        return BargeInVerdict(outcome, event, None if not event else False, b, stop, steps, latency, reply_latency)
    if steps > tol:
        return BargeInVerdict("stopped_late", True, False, b, stop, steps, latency, reply_latency)
    resumed = any(t.kind == "turn" and t.start_step > stop and _step_end(t.start_step) < span.end_sample
                  for t in conv.turns)
    if resumed:
        return BargeInVerdict("resumed", True, False, b, stop, steps, latency, reply_latency)
    return BargeInVerdict("stopped", True, True, b, stop, steps, latency, reply_latency)


def judge_backchannel(conv: Conversation, settings: ScenarioSettings) -> BackchannelVerdict:
    """Did the model yield the floor because the user said "mm-hm" (a false barge-in)."""
    span = conv.span("backchannel")
    if span is None:
        return BackchannelVerdict("not_applicable", False, None)
    c = span.start_sample // STEP
    last = (span.end_sample - 1) // STEP + settings.stop_tolerance_steps
    stop, reason = _first_yield(conv, c, last)
    if stop is None:
        return BackchannelVerdict("kept_speaking", True, False, c)
    if reason in _NOT_A_REACTION:
        return BackchannelVerdict("ended_naturally", False, None, c, stop)
    return BackchannelVerdict("false_barge_in", True, True, c, stop)


_JUDGES: Mapping[str, Callable[[Conversation, ScenarioSettings], Any]] = MappingProxyType({
    "answer": judge_answer, "barge-in": judge_barge_in, "backchannel": judge_backchannel})


# ------------------------------------------------------------------------------- speech scoring
class SpeechScorer:
    """Spoken answer -> text: the speech detokenizer, then the ASR that ``funaudiochat eval`` s2s uses."""

    def __init__(self, detokenizer: Any, asr: Any, asr_model: str = "base") -> None:
        self.detokenizer = detokenizer
        self.asr = asr
        self.asr_model = asr_model

    def transcribe(self, tokens: Sequence[int]) -> str:
        if not tokens:
            return ""
        from funaudiochat.speech.audio import TARGET_SR, resample

        audio, sr = self.detokenizer.synthesize(list(tokens))
        return self.asr.transcribe(resample(np.asarray(audio, dtype=np.float32), sr, TARGET_SR), model=self.asr_model)


# ------------------------------------------------------------------------------- models
def _load_checkpoint(name: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer

    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {name!r} is not a model directory (no config.json) and not one of: "
                         f"{', '.join(NAMED_MODELS)}")
    model = FunAudioChatForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
    return model, AutoTokenizer.from_pretrained(path)


def _load_default_duplex(dtype: str) -> tuple[Any, Any]:
    """The embedded default model with its duplex extra, refused unless it carries a duplex head."""
    import torch

    from funaudiochat.default_model.package import load_default_model
    from funaudiochat.duplex.model import has_duplex

    model, tokenizer = load_default_model(duplex=True)
    if not has_duplex(model):
        raise ValueError("the embedded default model (funaudiochat-tiny) has no duplex head yet; pass a "
                         "duplex-trained checkpoint folder with --model")
    return model.to(getattr(torch, dtype)), tokenizer


#: Model names ``--model`` accepts besides checkpoint folders: name -> loader(dtype).
NAMED_MODELS: Mapping[str, Callable[[str], tuple[Any, Any]]] = MappingProxyType({
    "default-duplex": _load_default_duplex,
})


def load_duplex_model(name: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) for ``--model``: a name of :data:`NAMED_MODELS` or a checkpoint folder."""
    loader = NAMED_MODELS.get(name)
    return loader(dtype) if loader is not None else _load_checkpoint(name, dtype)


# ------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class DuplexEvalConfig:
    """Everything one ``funaudiochat eval-duplex`` invocation needs."""

    model: str
    out: Path
    sets: tuple[str, ...] = DEFAULT_SETS
    scenarios: tuple[str, ...] = SCENARIOS
    settings: ScenarioSettings = ScenarioSettings()
    data_root: Path | None = None
    split: str = "dev"
    audio_root: Path | None = None
    limit: int | None = None
    exclude_ids: frozenset[str] = frozenset()
    system_prompt: str | None = None  # default: the duplex training data's system prompt
    action_temperature: float = 0.0
    min_start_prob: float = 0.0
    start_prob: float | None = None
    stop_prob: float | None = None
    asr: str = "base"  # "base", "tiny.en" or "none"
    detokenizer: str = "flow"  # "flow", "cosyvoice" or "none"
    detokenizer_path: str | None = None
    tts_cache: Path | None = None
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    run_name: str | None = None
    progress: bool = True
    plot: bool = True
    plot_id: str | None = None

    def __post_init__(self) -> None:
        scenarios = tuple(dict.fromkeys(self.scenarios))
        bad = [s for s in scenarios if s not in SCENARIOS]
        if bad or not scenarios:
            raise ValueError(f"--scenarios must list some of {', '.join(SCENARIOS)}, got {','.join(self.scenarios)!r}")
        object.__setattr__(self, "scenarios", scenarios)
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {self.limit}")
        if self.asr not in ("base", "tiny.en", "none"):
            raise ValueError(f"--asr must be base, tiny.en or none, got {self.asr!r}")
        if self.detokenizer not in ("flow", "cosyvoice", "none"):
            raise ValueError(f"--detokenizer must be flow, cosyvoice or none, got {self.detokenizer!r}")
        if self.action_temperature < 0 or not 0 <= self.min_start_prob <= 1:
            raise ValueError("--action-temperature must be >= 0 and --min-start-prob in [0, 1]")

    def result_settings(self) -> dict[str, Any]:
        """Settings that change results; a resumed run must keep them."""
        model = self.model if self.model in NAMED_MODELS else str(Path(self.model).resolve())
        return {"model": model, "scenarios": list(self.scenarios), "settings": asdict(self.settings),
                "system_prompt": self.system_prompt, "action_temperature": self.action_temperature,
                "min_start_prob": self.min_start_prob, "start_prob": self.start_prob, "stop_prob": self.stop_prob, "asr": self.asr, "detokenizer": self.detokenizer,
                "detokenizer_path": self.detokenizer_path, "dtype": self.dtype, "seed": self.seed,
                "split": self.split}


def _stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).digest()[:4], "big")


class DuplexEvaluator:
    """Runs the scripted conversations of every selected item, scores and writes the run folder.

    ``engine`` (a :class:`~funaudiochat.duplex.engine.DuplexEngine`), ``loader`` (``name, dtype ->
    (model, tokenizer)``, default :func:`load_duplex_model`), ``voice`` (a :class:`UserVoice`),
    ``asr`` and ``detokenizer`` may be passed in (tests, a model under development); otherwise they are
    loaded on first need.  ``on_session`` is handed to :func:`simulate`.
    """

    def __init__(self, config: DuplexEvalConfig, engine: "DuplexEngine | None" = None,
                 loader: Callable[[str, str], tuple[Any, Any]] | None = None, voice: UserVoice | None = None,
                 asr: Any = None, detokenizer: Any = None,
                 on_session: Callable[["DuplexSession", Conversation], None] | None = None) -> None:
        self.config = config
        self.root = Path(config.data_root) if config.data_root is not None else default_data_root()
        self.sets = resolve_sets(self.root, config.sets, config.split)
        for eset in self.sets:
            if eset.info.task is not TaskType.SHORT_QA:
                raise ValueError(f"eval-duplex scores short-answer QA sets ({', '.join(DEFAULT_SETS)}); "
                                 f"{eset.name} is a {eset.info.task.value} set")
        self.out = Path(config.out)
        self._engine = engine
        self._loader = loader or load_duplex_model
        self._voice = voice
        self._asr = asr
        self._detok = detokenizer
        self._scorer: SpeechScorer | None = None
        self._scorer_note: str | None = None
        self._scorer_ready = False
        self.on_session = on_session
        self.skipped: list[str] = []
        self.steps_run = 0

    # ------------------------------------------------------------------ lazily loaded parts
    @property
    def engine(self) -> "DuplexEngine":
        if self._engine is None:
            from funaudiochat.duplex.engine import DuplexEngine, DuplexOptions

            c = self.config
            model, tokenizer = self._loader(c.model, c.dtype)
            if c.device != "cpu":
                model = model.to(c.device)
            options = DuplexOptions(action_temperature=c.action_temperature, min_start_prob=c.min_start_prob, start_prob=c.start_prob, stop_prob=c.stop_prob,
                                    max_turn_seconds=max(60.0, c.settings.max_answer_seconds + 1.0),
                                    warn_lag_steps=10**6)
            try:
                self._engine = DuplexEngine(model, tokenizer, options=options)
            except ValueError as exc:
                raise ValueError(f"eval-duplex needs a full-duplex model: {exc}") from exc
        return self._engine

    @property
    def voice(self) -> UserVoice:
        if self._voice is None:
            cache = Path(self.config.tts_cache) if self.config.tts_cache else self.out / "tts"
            self._voice = DatasetVoice(cache, self.config.audio_root)
        return self._voice

    def speech_scorer(self) -> tuple[SpeechScorer | None, str | None]:
        """The S2M-S transcriber, or None and the reason it is skipped (said once, then kept)."""
        if self._scorer_ready:
            return self._scorer, self._scorer_note
        self._scorer_ready = True
        c = self.config
        detok, asr, note = self._detok, self._asr, None
        if detok is None and c.detokenizer == "none":
            note = "S2M-S skipped: --detokenizer none"
        elif asr is None and c.asr == "none":
            note = "S2M-S skipped: --asr none"
        if note is None and detok is None:
            try:
                from funaudiochat.audio.detokenizer import load_detokenizer

                detok = load_detokenizer(c.detokenizer, c.detokenizer_path)
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                note = f"S2M-S skipped: the {c.detokenizer} speech detokenizer could not be loaded ({exc})"
        if note is None:
            vocab = self.engine.model.config.audio_config.bos_token_id
            size = getattr(detok, "codebook_size", None)
            if size is not None and vocab is not None and size < vocab:
                note = (f"S2M-S skipped: the model speaks tokens from a codebook of {vocab}, the {c.detokenizer} "
                        f"detokenizer knows {size} (use --detokenizer cosyvoice --detokenizer-path DIR for 6561)")
        if note is None and asr is None:
            try:
                from funaudiochat.speech.asr import LocalASR

                asr = LocalASR(language="en")
                asr.model(c.asr)  # load now: a missing Whisper is said before the run, not per item
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                note = f"S2M-S skipped: the local Whisper {c.asr} could not be loaded ({exc})"
        if note is not None:
            logger.warning("%s", note)
        else:
            self._scorer = SpeechScorer(detok, asr, c.asr if c.asr != "none" else "base")
        self._scorer_note = note
        return self._scorer, note

    # ------------------------------------------------------------------ run folder
    def _check_run_folder(self) -> None:
        from funaudiochat.training.fsutil import check_settings_file

        want = json.loads(json.dumps(self.config.result_settings()))  # as it reads back (tuples -> lists)
        check_settings_file(self.out / CONFIG_FILE, want, "use a fresh --out")

    def _records(self, eset: EvalSet) -> list[dict[str, Any]]:
        """The set's records minus the excluded ids, then the first ``limit`` of them."""
        records = [r for r in load_jsonl_set(eset.path) if str(r["id"]) not in self.config.exclude_ids]
        return records if self.config.limit is None else records[: self.config.limit]

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        """Evaluate every selected item (resuming a previous run); returns the summary."""
        from tqdm import tqdm

        from funaudiochat.speech.jsonl_log import JsonlAppender, load_log

        self._check_run_folder()
        done: dict[tuple[str, str], dict[str, Any]] = {}
        for rec in load_log(self.out / LOG_FILE):
            done[(str(rec["set"]), str(rec["id"]))] = rec
        selected: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        with JsonlAppender(self.out / LOG_FILE) as log:
            for eset in self.sets:
                all_records = load_jsonl_set(eset.path)
                records = self._records(eset)
                todo = [r for r in records if (eset.name, str(r["id"])) not in done]
                bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=f"{eset.name} [duplex]",
                           unit="item", file=sys.stderr, disable=not self.config.progress)
                with bar:
                    for record in todo:
                        item = self.run_item(eset, record, all_records)
                        if item is not None:
                            log.append(item)
                            done[(eset.name, str(record["id"]))] = item
                        bar.update(1)
                selected += [done[(eset.name, str(r["id"]))] for r in records if (eset.name, str(r["id"])) in done]
        return self._write_outputs(selected, time.perf_counter() - t0)

    def run_item(self, eset: EvalSet, record: Mapping[str, Any], all_records: Sequence[Mapping[str, Any]]
                 ) -> dict[str, Any] | None:
        """Every scenario of one item and its scores, as the JSON line logged for it (None if skipped)."""
        c, rid = self.config, str(record["id"])
        try:
            question = self.voice.question(eset.name, eset.folder, record)
        except ClipUnavailable as exc:
            self._skip(f"{eset.name} {rid}: skipped, {exc}")
            return None
        rng = random.Random(_stable_seed(c.seed, eset.name, rid))
        item: dict[str, Any] = {"set": eset.name, "id": rid, "question": question.text,
                                "answers": list(record.get("answers", [])), "audio_source": question.source,
                                "voice": question.voice, "question_seconds": round(_seconds(question.samples.size), 6),
                                "scenarios": {}, "notes": []}
        for scenario in c.scenarios:
            follow_up, react_after = None, None
            if scenario != "answer":
                low, high = c.settings.barge_in_after if scenario == "barge-in" else c.settings.backchannel_after
                react_after = round(rng.uniform(low, high), 3)
                try:
                    follow_up = self._follow_up(eset, record, all_records, scenario, rng)
                except ClipUnavailable as exc:
                    note = f"{scenario} skipped: {exc}"
                    logger.warning("%s %s: %s", eset.name, rid, note)
                    item["notes"].append(note)
                    continue
            conv = simulate(self.engine, scenario, question, follow_up, settings=c.settings, react_after=react_after,
                            seed=c.seed, system_prompt=c.system_prompt, on_session=self.on_session)
            self.steps_run += conv.steps
            verdict = _JUDGES[scenario](conv, c.settings)
            item["scenarios"][scenario] = {"conversation": asdict(conv), "verdict": asdict(verdict)}
            if scenario == "answer":
                self._score_knowledge(eset, record, verdict, item)
        return item

    def _follow_up(self, eset: EvalSet, record: Mapping[str, Any], all_records: Sequence[Mapping[str, Any]],
                   scenario: str, rng: random.Random) -> Clip:
        """The barge-in is the next question of the set file (cyclic); the backchannel a short
        acknowledgement drawn from the duplex data's list."""
        if scenario == "backchannel":
            return self.voice.backchannel(str(record["id"]), rng.choice(USER_BACKCHANNELS))
        ids = [str(r["id"]) for r in all_records]
        nxt = all_records[(ids.index(str(record["id"])) + 1) % len(all_records)]
        return self.voice.question(eset.name, eset.folder, nxt)

    def _score_knowledge(self, eset: EvalSet, record: Mapping[str, Any], verdict: AnswerVerdict,
                         item: dict[str, Any]) -> None:
        item["s2m_t"] = score_record(record, verdict.text, eset.name, "s2m-t", TaskType.SHORT_QA).score
        scorer, note = self.speech_scorer()
        if scorer is None:
            item["s2m_s"], item["s2m_s_note"] = None, note
            return
        transcript = scorer.transcribe(verdict.speech_tokens)
        item["s2m_s_transcript"] = transcript
        item["s2m_s"] = score_record(record, transcript, eset.name, "s2m-s", TaskType.SHORT_QA).score

    def _skip(self, message: str) -> None:
        logger.warning("%s", message)
        self.skipped.append(message)

    # ------------------------------------------------------------------ outputs
    def _meta(self, seconds: float) -> dict[str, Any]:
        c = self.config
        meta: dict[str, Any] = {
            "model": c.model, "sets": ",".join(s.name for s in self.sets), "split": c.split,
            "data_root": str(self.root), "limit": c.limit, "excluded_ids": len(c.exclude_ids),
            "scenarios": ",".join(c.scenarios), "asr": c.asr, "detokenizer": c.detokenizer, "dtype": c.dtype,
            "device": c.device, "seed": c.seed, "simulated_steps_this_call": self.steps_run,
            "simulated_seconds_this_call": round(self.steps_run * STEP_SECONDS, 1),
            "wall_seconds_this_call": round(seconds, 2),
        }
        if self.skipped:
            meta["skipped"] = "; ".join(self.skipped)
        return meta

    def _write_outputs(self, items: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
        run_name = self.config.run_name or self.out.resolve().name
        summary = summarize_items(items, [s.name for s in self.sets])
        summary.update(schema=DUPLEX_SCHEMA, run_name=run_name,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       meta=self._meta(seconds), settings=asdict(self.config.settings),
                       paper_table7=[{"model": col.model, "s2m": {k: list(v) for k, v in col.s2m.items()},
                                      "avg": list(col.avg), "turn_taking": col.turn_taking} for col in PAPER_TABLE7])
        _write_text(self.out / SUMMARY_JSON, json.dumps(summary, ensure_ascii=False, indent=1) + "\n")
        write_run_json(self.out / RUN_JSON, _scored_items(items), run_name, summary["meta"])
        png = None
        if self.config.plot and items:
            wanted = self.config.plot_id
            pick = next((it for it in items if it["id"] == wanted), None) if wanted else items[0]
            if pick is None:
                logger.warning("--plot-id %s is not among the evaluated items; plotting %s", self.config.plot_id,
                               items[0]["id"])
                pick = items[0]
            png = plot_timeline(pick, self.out / TIMELINE_PNG, self.config.settings)
        _write_text(self.out / REPORT_MD, format_report(summary, png.name if png else None))
        return summary


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _scored_items(items: Sequence[Mapping[str, Any]]) -> list[ScoredItem]:
    """The run as ``funaudiochat.eval.run/v1`` items: S2M-T, S2M-S, one per turn-taking event and one per
    backchannel event (so ``funaudiochat eval-report`` can put duplex runs side by side)."""
    out: list[ScoredItem] = []
    for it in items:
        sc = it["scenarios"]
        if "answer" in sc:
            answer = sc["answer"]["verdict"]
            out.append(ScoredItem(it["id"], it["set"], "s2m-t", answer["text"], it.get("s2m_t")))
            if it.get("s2m_s") is not None:
                out.append(ScoredItem(it["id"], it["set"], "s2m-s", it.get("s2m_s_transcript", ""), it["s2m_s"]))
        for name in ("answer", "barge-in"):
            v = sc.get(name, {}).get("verdict")
            if v is not None and (name == "answer" or v["event"]):
                out.append(ScoredItem(f"{it['id']}/{name}", it["set"], "duplex", v["outcome"], float(v["success"]),
                                      metric="turn_taking_success"))
        v = sc.get("backchannel", {}).get("verdict")
        if v is not None and v["event"]:
            out.append(ScoredItem(f"{it['id']}/backchannel", it["set"], "duplex", v["outcome"],
                                  float(v["false_barge_in"]), metric="false_barge_in"))
    return out


# ------------------------------------------------------------------------------- summary
def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "p90": None}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"n": len(values), "mean": round(statistics.fmean(values), 4),
            "median": round(statistics.median(values), 4), "p90": round(p90, 4)}


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def _summarize_group(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    answer = [it["scenarios"]["answer"]["verdict"] for it in items if "answer" in it["scenarios"]]
    barge = [it["scenarios"]["barge-in"]["verdict"] for it in items if "barge-in" in it["scenarios"]]
    back = [it["scenarios"]["backchannel"]["verdict"] for it in items if "backchannel" in it["scenarios"]]
    a_ok = sum(v["success"] for v in answer)
    b_events = [v for v in barge if v["event"]]
    b_ok = sum(bool(v["success"]) for v in b_events)
    reactions = [v for v in b_events if v["outcome"] in ("stopped", "stopped_late", "resumed")]
    c_events = [v for v in back if v["event"]]
    c_false = sum(bool(v["false_barge_in"]) for v in c_events)
    s2m_t = [it["s2m_t"] for it in items if it.get("s2m_t") is not None]
    s2m_s = [it["s2m_s"] for it in items if it.get("s2m_s") is not None]
    notes = sorted({it["s2m_s_note"] for it in items if it.get("s2m_s_note")})
    return {
        "items": len(items),
        "s2m_t": {"value": _rate(sum(s2m_t), len(s2m_t)), "n": len(s2m_t)},
        "s2m_s": {"value": _rate(sum(s2m_s), len(s2m_s)), "n": len(s2m_s), **({"notes": notes} if notes else {})},
        "answer": {"events": len(answer), "successes": a_ok, "rate": _rate(a_ok, len(answer)),
                   "outcomes": dict(Counter(v["outcome"] for v in answer)),
                   "latency_s": _stats([v["latency"] for v in answer if v["success"]])},
        "barge_in": {"events": len(b_events), "successes": b_ok, "rate": _rate(b_ok, len(b_events)),
                     "played": len(barge), "outcomes": dict(Counter(v["outcome"] for v in barge)),
                     "stop_latency_s": _stats([v["stop_latency"] for v in reactions]),
                     "stop_steps": _stats([v["stop_steps"] for v in reactions])},
        "backchannel": {"events": len(c_events), "false_barge_ins": c_false, "rate": _rate(c_false, len(c_events)),
                        "played": len(back), "outcomes": dict(Counter(v["outcome"] for v in back))},
        "turn_taking": {"events": len(answer) + len(b_events), "successes": a_ok + b_ok,
                        "rate": _rate(a_ok + b_ok, len(answer) + len(b_events))},
    }


def summarize_items(items: Sequence[Mapping[str, Any]], sets: Sequence[str]) -> dict[str, Any]:
    """Metrics per set and overall.  Rates are pooled over events; the overall S2M-T / S2M-S ``avg``
    is the mean of the per-set accuracies, as the paper's "Avg." row."""
    per_set = {name: _summarize_group([it for it in items if it["set"] == name]) for name in sets}
    overall = _summarize_group(items)
    for key in ("s2m_t", "s2m_s"):
        values = [s[key]["value"] for s in per_set.values() if s[key]["value"] is not None]
        overall[key]["avg"] = statistics.fmean(values) if values else None
        overall[key]["avg_over"] = [n for n, s in per_set.items() if s[key]["value"] is not None]
    notes = Counter(note for it in items for note in it.get("notes", []))
    overall["notes"] = [f"{note} ({k} item{'s' if k > 1 else ''})" for note, k in notes.most_common(10)]
    return {"sets": per_set, "overall": overall}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def format_table7(summary: Mapping[str, Any], run_name: str | None = None) -> str:
    """The paper's Table 7 layout: a column pair per model, the paper's models marked as reported."""
    name = run_name or summary.get("run_name") or "ours"
    cols = [f"{c.model}†" for c in PAPER_TABLE7] + [f"ours: {name}"]
    head = "| | " + " | ".join(f"{c} S2M-T | {c} S2M-S" for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(cols))]
    sets = summary["sets"]
    for key, label in _TABLE7_ROWS:
        cells = [f"{c.s2m[key][0]:.2f} | {c.s2m[key][1]:.2f}" for c in PAPER_TABLE7]
        if key in sets:
            cells.append(f"{_pct(sets[key]['s2m_t']['value'])} | {_pct(sets[key]['s2m_s']['value'])}")
        else:
            cells.append("- | -")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    overall = summary["overall"]
    avg = [f"{c.avg[0]:.2f} | {c.avg[1]:.2f}" for c in PAPER_TABLE7]
    avg.append(f"{_pct(overall['s2m_t'].get('avg'))} | {_pct(overall['s2m_s'].get('avg'))}")
    lines.append("| Avg. | " + " | ".join(avg) + " |")
    tt = [f"{c.turn_taking:.2f} | " for c in PAPER_TABLE7] + [f"{_pct(overall['turn_taking']['rate'])} | "]
    lines.append("| Turn-taking Success Rate | " + " | ".join(tt) + " |")
    over = overall["s2m_t"].get("avg_over") or []
    lines += ["", "† reported by the paper (Fun-Audio-Chat technical report, Table 7: the full-duplex variant of "
              "UltraEval-Audio, its full test sets and its own protocol); not rerun here. Ours: the dev split, "
              "this repository's scripted-user protocol (docs/evaluation.md), so the numbers are not directly "
              f"comparable. Our Avg. is the mean over the sets we ran ({', '.join(over) or 'none'}); the paper "
              "averages four sets including AlpacaEval, which needs a judge and is not run here."]
    notes = overall["s2m_s"].get("notes")
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(lines)


def _fmt_s(stats: Mapping[str, Any]) -> str:
    return "n/a" if not stats.get("n") else f"{stats['mean']:.2f} / {stats['median']:.2f}"


def format_interaction_table(summary: Mapping[str, Any]) -> str:
    """Per set and overall: event counts, rates and latencies of the three scenarios."""
    lines = ["| set | items | answer ok | barge-in ok | turn-taking success (%) | false barge-in | "
             "response latency mean / median (s) | stop latency mean / median (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups = list(summary["sets"].items()) + [("all", summary["overall"])]
    for name, s in groups:
        a, b, c, tt = s["answer"], s["barge_in"], s["backchannel"], s["turn_taking"]
        false = f"{c['false_barge_ins']}/{c['events']} ({_pct(c['rate'])}%)" if c["events"] else "n/a"
        lines.append(f"| {name} | {s['items']} | {a['successes']}/{a['events']} | {b['successes']}/{b['events']} | "
                     f"{_pct(tt['rate'])} | {false} | {_fmt_s(a['latency_s'])} | {_fmt_s(b['stop_latency_s'])} |")
    return "\n".join(lines)


def format_report(summary: Mapping[str, Any], png: str | None = None) -> str:
    """report.md: meta, the Table 7 layout, the interaction details, outcome counts and the timeline."""
    lines = [f"# Full-duplex evaluation: {summary.get('run_name', '')}", ""]
    if summary.get("created"):
        lines += [f"Created: {summary['created']}", ""]
    meta = summary.get("meta") or {}
    if meta:
        lines += ["| meta | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in meta.items()] + [""]
    lines += ["## Knowledge and turn-taking (layout of the paper's Table 7, values in %)", "",
              format_table7(summary), "", "## Interaction", "", format_interaction_table(summary), "",
              "Turn-taking success = (answer successes + barge-in successes) / (answer events + barge-in events). "
              "Latencies are on the simulated clock: response latency from the end of the question to the end of "
              "the model's first `start` step (successes only), stop latency from the barge-in's first sample "
              "to the end of the step after which the model was silent. Definitions: docs/evaluation.md.", "",
              "| set | scenario | outcomes |", "|---|---|---|"]
    for name, s in list(summary["sets"].items()) + [("all", summary["overall"])]:
        for key in ("answer", "barge_in", "backchannel"):
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s[key]["outcomes"].items())) or "-"
            lines.append(f"| {name} | {key.replace('_', '-')} | {outcomes} |")
    lines.append("")
    if summary["overall"].get("notes"):
        lines += ["Scenarios not played:", ""] + [f"- {n}" for n in summary["overall"]["notes"]] + [""]
    if png:
        lines += ["## One conversation on the clock", "", f"![timeline]({png})", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- timeline figure
_ACTION_COLORS = MappingProxyType({"start": "#2ca02c", "speak": "#1f77b4", "stop": "#d62728",
                                   "backchannel": "#ff7f0e"})
_USER_COLORS = MappingProxyType({"question": "#7f7f7f", "barge-in": "#d62728", "backchannel": "#ff7f0e"})


def _verdict_label(scenario: str, v: Mapping[str, Any]) -> str:
    if scenario == "answer":
        return f"answer: {v['outcome']}" + (f", latency {v['latency']:.2f} s" if v.get("latency") is not None else "")
    if scenario == "barge-in":
        extra = (f", silent {v['stop_steps']} step(s) after the barge-in began ({v['stop_latency']:.2f} s)"
                 if v.get("stop_steps") is not None else "")
        return f"barge-in: {v['outcome']}{extra}"
    return f"backchannel: {v['outcome']}"


def plot_timeline(item: Mapping[str, Any], out_png: str | Path, settings: ScenarioSettings = ScenarioSettings()
                  ) -> Path | None:
    """One item's conversations on the clock, a row each: the user's speech above, the model's action
    per step below.  Returns the PNG, or None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        logger.info("matplotlib is not installed; no timeline figure")
        return None
    scenarios = [s for s in SCENARIOS if s in item.get("scenarios", {})]
    if not scenarios:
        return None
    convs = {s: Conversation.from_dict(item["scenarios"][s]["conversation"]) for s in scenarios}
    horizon = max(max(c.steps * STEP_SECONDS, max((u.end for u in c.user), default=0.0)) for c in convs.values())
    width = min(18.0, 4.0 + 0.6 * horizon)
    fig = Figure(figsize=(width, 1.4 + 1.5 * len(scenarios)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(scenarios), 1, squeeze=False)[:, 0]
    chars_per_second = 0.85 * width * 72 / (horizon + 0.2) / (0.5 * 7)  # 7 pt labels that fit in their bar

    def label(ax: Any, x: float, y: float, seconds: float, text: str) -> None:
        n = int(seconds * chars_per_second) - 1
        if n >= 2:
            ax.text(x + 0.03, y, text if len(text) <= n else text[: n - 1] + "…", va="center", fontsize=7,
                    color="white", clip_on=True)

    for ax, scenario in zip(axes, scenarios):
        conv = convs[scenario]
        for u in conv.user:
            ax.broken_barh([(u.start, u.end - u.start)], (1.1, 0.8), color=_USER_COLORS.get(u.kind, "#7f7f7f"))
            label(ax, u.start, 1.5, u.end - u.start, u.text)
        s = 0
        while s < conv.steps:  # runs of one action as one bar
            e = s
            while e + 1 < conv.steps and conv.actions[e + 1] == conv.actions[s]:
                e += 1
            color = _ACTION_COLORS.get(conv.actions[s])
            if color:
                ax.broken_barh([(s * STEP_SECONDS, (e - s + 1) * STEP_SECONDS)], (0.1, 0.8), color=color)
            s = e + 1
        for t in conv.turns:
            if t.kind == "turn" and t.text:
                steps = (t.end_step if t.end_step is not None else conv.steps) - t.start_step
                label(ax, t.start_step * STEP_SECONDS, 0.5, steps * STEP_SECONDS, t.text)
        q = conv.span("question")
        if q is not None:
            ax.axvline(q.end, color="black", lw=0.8, ls="--")
        ax.set_xlim(0, horizon + 0.2)
        ax.set_ylim(0, 2)
        ax.set_yticks([0.5, 1.5])
        ax.set_yticklabels(["model", "user"])
        ax.set_xticks(np.arange(0, horizon + 0.2, 1.0))
        ax.set_xticks(np.arange(0, horizon + 0.2, STEP_SECONDS), minor=True)
        ax.grid(True, axis="x", which="major", alpha=0.3)
        ax.set_title(_verdict_label(scenario, item["scenarios"][scenario]["verdict"]), fontsize=9, loc="left")
    axes[-1].set_xlabel("time on the simulated clock (s); dashed: end of the question")
    handles = [Patch(color=c, label=f"model {a}") for a, c in _ACTION_COLORS.items()]
    handles += [Patch(color=c, label=f"user {k}") for k, c in _USER_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", fontsize=7, ncol=4, frameon=False)
    fig.suptitle(f"{item['set']} {item['id']}: {item.get('question', '')}"[:120], fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 0.97))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


# ------------------------------------------------------------------------------- command line
def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def cmd_eval_duplex(args: argparse.Namespace, out: TextIO | None = None,
                    loader: Callable[[str, str], tuple[Any, Any]] | None = None) -> int:
    """``funaudiochat eval-duplex``: run, then print the Table 7 layout and the interaction table."""
    from funaudiochat.evaluation.cli import read_ids

    settings = ScenarioSettings(
        lead_seconds=args.lead_seconds, noise_db=args.noise_db, response_timeout=args.response_timeout,
        stop_tolerance_steps=args.stop_tolerance_steps, barge_in_after=tuple(args.barge_in_after),
        backchannel_after=tuple(args.backchannel_after), max_answer_seconds=args.max_answer_seconds,
        answer_gap=args.answer_gap)
    config = DuplexEvalConfig(
        model=args.model, out=Path(args.out), sets=_csv(args.sets), scenarios=_csv(args.scenarios), settings=settings,
        data_root=Path(args.data_root) if args.data_root else None, split=args.split,
        audio_root=Path(args.audio_root) if args.audio_root else None, limit=args.limit,
        exclude_ids=read_ids(args.exclude_ids) if args.exclude_ids else frozenset(), system_prompt=args.system,
        action_temperature=args.action_temperature, min_start_prob=args.min_start_prob, start_prob=args.start_prob, stop_prob=args.stop_prob, asr=args.asr,
        detokenizer=args.detokenizer, detokenizer_path=args.detokenizer_path,
        tts_cache=Path(args.tts_cache) if args.tts_cache else None, dtype=args.dtype, device=args.device,
        seed=args.seed, run_name=args.name, progress=not args.no_progress, plot=not args.no_plot,
        plot_id=args.plot_id)
    summary = DuplexEvaluator(config, loader=loader).run()
    out = out or sys.stdout
    out.write(format_table7(summary) + "\n\n" + format_interaction_table(summary) + "\n")
    out.flush()
    logger.warning("wrote %s, %s and %s", Path(args.out) / SUMMARY_JSON, Path(args.out) / LOG_FILE,
                   Path(args.out) / REPORT_MD)
    return 0


def add_eval_duplex_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``eval-duplex`` on the ``funaudiochat`` subcommands."""
    d = ScenarioSettings()
    p = sub.add_parser(
        "eval-duplex",
        help="evaluate a full-duplex model in simulated live conversations",
        description="A scripted user asks each benchmark question to a full-duplex model on its 5 Hz clock, waits "
        "for the answer, barges in on it, or says 'mm-hm' over it. Writes RUN_DIR/items.jsonl (every event time), "
        "summary.json, run.json, report.md (the paper's Table 7 layout) and timeline.png; prints the tables. "
        "Re-run with the same --out to resume. Definitions: docs/evaluation.md.",
    )
    p.add_argument("--model", default="default-duplex",
                   help="duplex checkpoint folder, or 'default-duplex' for the embedded model with its duplex extra "
                   "(default)")
    p.add_argument("--sets", default=",".join(DEFAULT_SETS),
                   help=f"comma list of short-answer QA sets (default {','.join(DEFAULT_SETS)})")
    p.add_argument("--out", required=True, help="run folder (re-run with the same one to resume)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma list from {', '.join(SCENARIOS)} (default all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each set")
    p.add_argument("--exclude-ids", help="skip these item ids (a JSONL file with an 'id' per line, or one id per "
                   "line), e.g. the questions the model was trained on")
    p.add_argument("--data-root", default=None,
                   help="benchmark folder (default $FUNAUDIOCHAT_BENCHDATA, else ../shared/benchdata)")
    p.add_argument("--split", default="dev", help="file name of each set without .jsonl (default dev)")
    p.add_argument("--audio-root", default=None, help="extra folder in which to look for records' audio_file")
    g = p.add_argument_group("the scripted user (seconds on the simulated clock)")
    g.add_argument("--lead-seconds", type=float, default=d.lead_seconds,
                   help=f"noise before the question (default {d.lead_seconds})")
    g.add_argument("--noise-db", type=float, default=d.noise_db,
                   help=f"microphone noise floor, RMS in dBFS; --noise-db=-inf for digital silence "
                   f"(default {d.noise_db:g})")
    g.add_argument("--response-timeout", type=float, default=d.response_timeout,
                   help=f"the answer must start within this after the question ends (default {d.response_timeout})")
    g.add_argument("--stop-tolerance-steps", type=int, default=d.stop_tolerance_steps,
                   help=f"steps of 0.2 s the model may take to stop at a barge-in (default {d.stop_tolerance_steps})")
    g.add_argument("--barge-in-after", type=float, nargs=2, default=d.barge_in_after, metavar=("MIN", "MAX"),
                   help="model speech before the user barges in, drawn per item (default %(default)s)")
    g.add_argument("--backchannel-after", type=float, nargs=2, default=d.backchannel_after, metavar=("MIN", "MAX"),
                   help="model speech before the user says 'mm-hm', drawn per item (default %(default)s)")
    g.add_argument("--max-answer-seconds", type=float, default=d.max_answer_seconds,
                   help=f"longest answer (default {d.max_answer_seconds:g})")
    g.add_argument("--answer-gap", type=float, default=d.answer_gap,
                   help=f"silence after a turn that ends the answer (default {d.answer_gap})")
    m = p.add_argument_group("the model")
    m.add_argument("--system", default=None, help="system prompt (default: the duplex training data's)")
    m.add_argument("--action-temperature", type=float, default=0.0, help="0 takes the likeliest action (default)")
    m.add_argument("--min-start-prob", type=float, default=0.0, help="least probability to take the floor")
    m.add_argument("--start-prob", type=float, default=None,
                   help="take the floor once p(start) reaches this, even if another action is likelier (default off)")
    m.add_argument("--stop-prob", type=float, default=None,
                   help="yield once p(stop) reaches this while speaking (default off)")
    m.add_argument("--asr", choices=("base", "tiny.en", "none"), default="base",
                   help="Whisper model that transcribes the spoken answers for S2M-S (default base, as eval s2s)")
    m.add_argument("--detokenizer", choices=("flow", "cosyvoice", "none"), default="flow",
                   help="speech detokenizer for S2M-S (default flow; cosyvoice for a 6561-token codebook)")
    m.add_argument("--detokenizer-path", default=None, help="detokenizer folder (required for cosyvoice)")
    m.add_argument("--tts-cache", default=None, help="folder of the user's synthesized speech (default RUN_DIR/tts)")
    m.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights dtype")
    m.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    m.add_argument("--seed", type=int, default=0, help="seed of each conversation (sampling, noise, reaction times)")
    p.add_argument("--name", default=None, help="run name in reports (default: the run folder's name)")
    p.add_argument("--plot-id", default=None, help="item drawn in timeline.png (default: the first one)")
    p.add_argument("--no-plot", action="store_true", help="no timeline figure")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_eval_duplex)
