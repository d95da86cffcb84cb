"""The streaming full-duplex engine: microphone audio in, actions, text and speech out (docs/duplex.md).

Every 200 ms of microphone audio is one step of the model's 5 Hz clock.  Step ``t`` computes the
user's features ``U[t]`` (:func:`~funaudiochat.duplex.model.user_step_features`, the function training
uses), adds the embeddings of what the assistant emitted at step ``t - 1``, runs one backbone position
on the conversation's KV cache and reads the action head.  On ``start``, ``speak`` and
``backchannel`` steps the assistant also emits a text token (``lm_head``) and 5 speech tokens (the
Speech Refined Head, conditioned on the hidden state and the new text token); on ``listen`` and
``stop`` steps it emits nothing and the next step is fed ``<|sil|>`` and speech pads.

Threads.  :meth:`DuplexSession.push_audio` only validates and appends the chunk to a locked buffer,
so a microphone callback never waits for the model.  :meth:`DuplexSession.process` computes every
whole step that has arrived; :class:`DuplexRunner` calls it on a background thread as audio comes
in and hands the events to a callback or a queue.

Falling behind.  When a step takes longer than 200 ms the audio keeps arriving and the backlog grows.
The policy is to never drop user audio: every step is computed, in order, from its own audio; the
assistant's reaction is late, not wrong.  :class:`DuplexStats` counts such late steps and the largest
backlog, and a warning is logged when the backlog exceeds ``DuplexOptions.warn_lag_steps``.

State.  Everything of one conversation lives in its :class:`DuplexSession` (audio, caches, previous
outputs, the turn being spoken, the random generator, statistics); the engine holds the read-only
model and the backbone states of system prompts, which sessions share (caches grow by
concatenation, so the shared tensors are never written).

The Speech Refined Head sees every step (not the system prompt), as in training
(:func:`~funaudiochat.duplex.model.duplex_forward`): on speaking steps it samples the 5 tokens one
sub-frame at a time; silent steps, where nobody needs its output, are queued and fed to it in one
call when a turn starts, or every ``DuplexOptions.srh_flush_steps`` steps so that the queue stays
short.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from funaudiochat.duplex.data import DEFAULT_SYSTEM as DEFAULT_SYSTEM_PROMPT
from funaudiochat.duplex.model import (
    ACTIONS,
    SAMPLE_RATE,
    STEP_SAMPLES,
    WINDOW_SECONDS,
    action_logits,
    has_duplex,
    step_inputs,
    user_step_features,
)
from funaudiochat.generation.cache import PackedCache, merge_caches, split_cache
from funaudiochat.generation.sampling import (
    DEFAULT_SPEECH_SAMPLING,
    GREEDY,
    SamplingConfig,
    sample_speech_token,
    sample_token,
)
from funaudiochat.processing import FunAudioChatProcessor, Message

logger = logging.getLogger(__name__)

__all__ = [
    "ActionEvent",
    "AudioChunk",
    "ContextFullError",
    "DEFAULT_SYSTEM_PROMPT",
    "DuplexEngine",
    "DuplexEvent",
    "DuplexOptions",
    "DuplexRunner",
    "DuplexSession",
    "DuplexStats",
    "SessionError",
    "StepTrace",
    "Stopped",
    "TextDelta",
    "TurnEnd",
    "TurnStart",
]

STEP_SECONDS = STEP_SAMPLES / SAMPLE_RATE
#: Audio kept before the current step: the encoder window of ``U[t]``, in whole steps.
_WINDOW_STEPS = math.ceil(WINDOW_SECONDS * SAMPLE_RATE / STEP_SAMPLES)

LISTEN, START, SPEAK, STOP, BACKCHANNEL = (
    ACTIONS.index(a) for a in ("listen", "start", "speak", "stop", "backchannel")
)
_SPEAKING_ACTIONS = frozenset({START, SPEAK, BACKCHANNEL})


# ---------------------------------------------------------------------- events
@dataclass
class ActionEvent:
    """The assistant's action at ``step`` (one per step); ``prob`` is the head's probability of it.

    ``prob`` is over the actions allowed in the current state (see :class:`DuplexOptions`);
    ``forced`` says the engine overrode the head (an :meth:`DuplexSession.interrupt`, the turn
    length limit, ``min_start_prob``).
    """

    step: int
    action: str
    prob: float
    forced: bool = False


@dataclass
class TurnStart:
    """The assistant takes the floor at ``step``; ``kind`` is ``"turn"`` or ``"backchannel"``."""

    step: int
    turn: int
    kind: str


@dataclass
class TextDelta:
    """New text of the current turn (decoded, special tokens removed)."""

    step: int
    turn: int
    text: str
    token_ids: list[int]


@dataclass
class AudioChunk:
    """The assistant's speech of one step.

    ``tokens`` are the new 25 Hz speech tokens (delay and end tokens removed).  With a detokenizer,
    ``samples`` holds the audio that became final (possibly empty while the detokenizer buffers) at
    ``sample_rate``; without one both are None.  The last chunk of a turn that ends normally carries
    the detokenizer's remaining audio and no tokens.
    """

    step: int
    turn: int
    tokens: list[int]
    samples: np.ndarray | None = None
    sample_rate: int | None = None


@dataclass
class Stopped:
    """The user barged in and the assistant fell silent at ``step``.

    Audio of ``turn`` that a player has queued but not played must be dropped: the engine emits no
    more of it, and :class:`DuplexRunner` removes its not yet delivered chunks.
    """

    step: int
    turn: int


@dataclass
class TurnEnd:
    """A turn is over.  ``reason``: ``"eos"`` (its speech ended), ``"listen"`` (the head yielded the
    floor), ``"stop"`` (barge-in), ``"max_length"`` (``max_turn_seconds``), ``"replaced"`` (a new
    turn started at once) or ``"closed"`` (the session was closed)."""

    step: int
    turn: int
    text: str
    interrupted: bool
    reason: str
    speech_tokens: list[int] = field(default_factory=list)


@dataclass
class SessionError:
    """The background runner failed; ``error`` is the exception (the runner stops)."""

    step: int
    message: str
    error: BaseException | None = None


DuplexEvent = ActionEvent | TurnStart | TextDelta | AudioChunk | Stopped | TurnEnd | SessionError


class ContextFullError(RuntimeError):
    """The conversation reached the model's longest context; open a new session."""


# ---------------------------------------------------------------------- options and statistics
@dataclass(frozen=True)
class DuplexOptions:
    """How the engine decides and samples.

    ``action_temperature`` 0 takes the most likely action, above 0 samples it.  ``min_start_prob``
    is the least probability ``start`` (or ``backchannel``) needs to take the floor; below it the
    assistant keeps listening.  With ``constrain_actions`` the head only chooses among the actions
    that make sense in the current state (silent: listen, start, backchannel; in a turn: speak, stop,
    listen; in a backchannel: backchannel, listen, stop, start), renormalised.
    ``start_prob`` / ``stop_prob`` (None: off) are decision thresholds for the two rare actions: a
    silent assistant takes the floor once ``start`` reaches ``start_prob`` and a speaking one yields
    once ``stop`` reaches ``stop_prob``, even when another action is more likely.  They exist because
    ``start`` and ``stop`` are a few percent of the training steps, so a small model rarely ranks
    them first even when it is right to act.
    ``max_turn_seconds`` stops a turn that runs away (an untrained or confused head).
    ``srh_flush_steps`` bounds how many silent positions wait for the Speech Refined Head.
    ``trace`` keeps every step's logits in :attr:`DuplexSession.trace` (tests, diagnostics).
    """

    action_temperature: float = 0.0
    min_start_prob: float = 0.0
    start_prob: float | None = None
    stop_prob: float | None = None
    constrain_actions: bool = True
    text_sampling: SamplingConfig = GREEDY
    speech_sampling: SamplingConfig = DEFAULT_SPEECH_SAMPLING
    force_delay: bool = True
    voice: str | None = None
    max_turn_seconds: float = 60.0
    srh_flush_steps: int = 25
    warn_lag_steps: int = 5
    trace: bool = False

    def __post_init__(self) -> None:
        if self.action_temperature < 0:
            raise ValueError(f"action_temperature must be >= 0, got {self.action_temperature}")
        if not 0 <= self.min_start_prob <= 1:
            raise ValueError(f"min_start_prob must be in [0, 1], got {self.min_start_prob}")
        for name in ("start_prob", "stop_prob"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1] or None, got {value}")
        if self.max_turn_seconds <= 0:
            raise ValueError(f"max_turn_seconds must be positive, got {self.max_turn_seconds}")
        if self.srh_flush_steps < 1:
            raise ValueError(f"srh_flush_steps must be >= 1, got {self.srh_flush_steps}")
        if self.warn_lag_steps < 1:
            raise ValueError(f"warn_lag_steps must be >= 1, got {self.warn_lag_steps}")

    @property
    def max_turn_steps(self) -> int:
        return max(1, round(self.max_turn_seconds / STEP_SECONDS))


@dataclass
class DuplexStats:
    """Timing of one session.  ``rtf`` (real-time factor) is compute time over audio time: below 1
    the engine keeps up.  A step is *late* when more audio than that step was already waiting."""

    steps: int = 0
    compute_seconds: float = 0.0
    last_step_ms: float = 0.0
    max_step_ms: float = 0.0
    late_steps: int = 0
    lag_steps: int = 0  # whole steps of audio waiting after the last processed step
    max_lag_steps: int = 0
    recent_step_ms: list[float] = field(default_factory=list)  # up to the last 100 steps

    @property
    def audio_seconds(self) -> float:
        return self.steps * STEP_SECONDS

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.steps else 0.0

    @property
    def mean_step_ms(self) -> float:
        return 1000 * self.compute_seconds / self.steps if self.steps else 0.0


@dataclass
class StepTrace:
    """What one step computed (kept with ``DuplexOptions.trace``); logits are float32 on the CPU."""

    step: int
    action: str
    action_logits: torch.Tensor  # [n_actions], the raw head output
    text_id: int  # the text token emitted (``<|sil|>`` on silent steps)
    speech: list[int]  # the 5 speech ids emitted (pads on silent steps)
    text_logits: torch.Tensor | None = None  # [V] on speaking steps
    speech_logits: torch.Tensor | None = None  # [5, V_speech] on speaking steps


@dataclass(eq=False)
class _Turn:
    """The assistant turn being spoken."""

    index: int
    kind: str  # "turn" or "backchannel"
    start_step: int
    steps: int = 0
    groups: int = 0
    text_ids: list[int] = field(default_factory=list)
    visible: list[int] = field(default_factory=list)
    text: str = ""
    speech: list[int] = field(default_factory=list)
    audio: object | None = None  # the detokenizer's stream


# ---------------------------------------------------------------------- engine
class DuplexEngine:
    """Runs full-duplex sessions with one shared, read-only duplex model.

    ``tokenizer`` is the model's tokenizer or a :class:`FunAudioChatProcessor`.  ``detokenizer``
    (optional) turns speech tokens into audio: an object with ``sample_rate`` and ``stream(voice)``
    returning a stream with ``push(tokens) -> list[np.ndarray]`` and ``flush() -> np.ndarray``.
    """

    MAX_PREFIXES = 8

    def __init__(self, model, tokenizer, detokenizer=None, options: DuplexOptions | None = None) -> None:
        if not has_duplex(model):
            kind = type(model).__name__
            raise ValueError(
                f"this {kind} has no duplex action head (config.duplex is not set): it is a half-duplex "
                "checkpoint and cannot run full duplex. Load a duplex-trained checkpoint; "
                "funaudiochat.duplex.model.enable_duplex only adds an untrained head for training."
            )
        if model.audio_invert_tower is None:
            raise ValueError(
                "the duplex engine needs the Speech Refined Head (audio_invert_tower), which this model lacks"
            )
        self.model = model.eval()
        self.processor = (
            tokenizer
            if isinstance(tokenizer, FunAudioChatProcessor)
            else FunAudioChatProcessor(tokenizer, model.config)
        )
        self.detokenizer = detokenizer
        self.options = options or DuplexOptions()
        cfg = model.config
        self.k = model.group_size
        self.sil_id = cfg.sil_id
        a = cfg.audio_config
        self.speech_bos, self.speech_eos, self.speech_pad = a.bos_token_id, a.eos_token_id, a.pad_token_id
        self.delay_groups = -(-cfg.speech_delay // self.k)
        dev = model.device
        tok = self.processor.tokenizer
        banned = {
            self.processor.im_start, self.processor.im_end, cfg.audio_token_index, cfg.audio_bos_id, cfg.audio_eos_id
        }
        pad_text = tok.convert_tokens_to_ids("<|audio_pad|>")
        if pad_text is not None and pad_text != tok.unk_token_id:
            banned.add(pad_text)
        for special in (cfg.text_config.eos_token_id, cfg.text_config.pad_token_id):
            for i in special if isinstance(special, (list, tuple)) else [special]:
                if isinstance(i, int):
                    banned.add(i)
        banned.discard(self.sil_id)
        # The text stream of a turn is words and <|sil|>: no chat markers, no audio markers.
        self.ban_text = torch.tensor(sorted(banned), dtype=torch.long, device=dev)
        self.ban_speech = torch.tensor([self.speech_bos, self.speech_pad], dtype=torch.long, device=dev)
        self.hidden_text = banned | {self.sil_id}
        #: Longest conversation, in backbone positions (prompt + steps) and in steps (the SRH sees
        #: 5 sub-frames a step); a session that reaches either raises ContextFullError.
        self.max_positions = cfg.text_config.max_position_embeddings
        self.max_steps = model.audio_invert_tower.crq_transformer.config.max_position_embeddings // self.k
        self._prefixes: dict[str, PackedCache] = {}
        self._prefix_lock = threading.Lock()

    def session(
        self, system_prompt: str | None = None, seed: int | None = 0, options: DuplexOptions | None = None
    ) -> "DuplexSession":
        """A new live conversation (``seed=None`` draws a random seed)."""
        return DuplexSession(self, system_prompt or DEFAULT_SYSTEM_PROMPT, seed, options or self.options)

    def runner(self, session: "DuplexSession", on_event: Callable[[DuplexEvent], None] | None = None) -> "DuplexRunner":
        """A started background runner for ``session``."""
        return DuplexRunner(session, on_event).start()

    def prefix(self, system_prompt: str) -> PackedCache:
        """Backbone cache of the ChatML system prompt (computed once, shared by sessions)."""
        with self._prefix_lock:
            found = self._prefixes.get(system_prompt)
        if found is not None:
            return found
        model, dev = self.model, self.model.device
        ids = torch.tensor([self.processor.encode([Message("system", system_prompt)]).input_ids], device=dev)
        n = ids.shape[1]
        with torch.inference_mode():
            embeds = model.get_input_embeddings()(ids)
            out = model.backbone()(inputs_embeds=embeds, position_ids=torch.arange(n, device=dev)[None], use_cache=True)
            found = split_cache(out.cache, torch.ones(1, n, dtype=torch.long, device=dev))[0]
        with self._prefix_lock:
            self._prefixes[system_prompt] = found
            while len(self._prefixes) > self.MAX_PREFIXES:
                self._prefixes.pop(next(iter(self._prefixes)))
        return found


# ---------------------------------------------------------------------- session
class DuplexSession:
    """All state of one live conversation; the model holds none of it.

    Feed microphone audio with :meth:`push_audio` (any thread, never blocks on the model) and run the
    model with :meth:`process` (one thread at a time; :class:`DuplexRunner` does it in the background).
    """

    def __init__(self, engine: DuplexEngine, system_prompt: str, seed: int | None, options: DuplexOptions) -> None:
        self.engine = engine
        self.model = engine.model
        self.options = options
        self.system_prompt = system_prompt
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        # microphone side (guarded by _audio)
        self._audio = threading.Condition()
        self._pending: list[np.ndarray] = []
        self._received = 0  # samples pushed so far
        self._closed = False
        self._loud_warned = False
        # compute side (guarded by _compute)
        self._compute = threading.Lock()
        self._history = np.zeros(0, dtype=np.float32)  # samples from absolute index _history_start
        self._history_start = 0
        self.step = 0  # the next step to compute
        prefix = engine.prefix(system_prompt)
        self.cache: DynamicCache | None = merge_caches([prefix])[0]
        self.positions = prefix.length  # backbone positions cached
        self.srh_cache = None
        self.srh_frames = 0  # SRH sub-frames cached (5 per step)
        # silent steps the SRH has not seen yet: (h + E(<|sil|>) [1, H], previous speech ids [5])
        self._srh_queue: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.prev_text = engine.sil_id
        self.prev_speech = [engine.speech_pad] * engine.k
        self.turn: _Turn | None = None
        self.turns = 0
        self._interrupt = False
        self._failed: BaseException | None = None
        self._lagging = False
        self._stats = DuplexStats()
        self._recent: collections.deque[float] = collections.deque(maxlen=100)
        self.trace: list[StepTrace] = []

    # ------------------------------------------------------------------ microphone side
    def push_audio(self, chunk: np.ndarray) -> None:
        """Append microphone audio (16 kHz mono float samples, any length) and return at once."""
        if not isinstance(chunk, np.ndarray):
            raise TypeError(f"push_audio expects a numpy array of 16 kHz float32 samples, got {type(chunk).__name__}")
        if chunk.ndim != 1:
            raise ValueError(f"push_audio expects mono audio as a 1-D array, got shape {chunk.shape}")
        if not np.issubdtype(chunk.dtype, np.floating):
            raise ValueError(
                f"push_audio expects float samples in [-1, 1], got dtype {chunk.dtype} "
                "(convert 16-bit PCM with samples.astype(np.float32) / 32768)"
            )
        samples = np.array(chunk, dtype=np.float32, copy=True)
        if not np.isfinite(samples).all():
            raise ValueError("push_audio got NaN or infinite samples")
        if samples.size and not self._loud_warned and float(np.abs(samples).max()) > 1.5:
            self._loud_warned = True
            logger.warning("push_audio got samples up to %.1f; expected floats in [-1, 1] (unscaled PCM?)",
                           float(np.abs(samples).max()))
        with self._audio:
            if self._closed:
                raise RuntimeError("push_audio on a closed duplex session")
            if samples.size:
                self._pending.append(samples)
                self._received += samples.size
                self._audio.notify_all()

    @property
    def samples_received(self) -> int:
        with self._audio:
            return self._received

    @property
    def steps_available(self) -> int:
        """Whole steps of audio received so far (computed or not)."""
        with self._audio:
            return self._received // STEP_SAMPLES

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_for_audio(self, timeout: float | None = None) -> bool:
        """Wait until a step is ready to compute (or :meth:`wake`); True when one is."""
        with self._audio:
            if not self._ready():
                self._audio.wait(timeout)
            return self._ready()

    def wait_processed(self, steps: int | None = None, timeout: float | None = None) -> bool:
        """Wait until ``steps`` steps (default: all received so far) are computed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._audio:
            target = self._received // STEP_SAMPLES if steps is None else steps
            while self.step < target and not self._closed and self._failed is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._audio.wait(left)
            return self.step >= target

    def wake(self) -> None:
        """Wake threads blocked in :meth:`wait_for_audio` (used to stop a runner)."""
        with self._audio:
            self._audio.notify_all()

    def _ready(self) -> bool:
        return not self._closed and self._failed is None and self._received // STEP_SAMPLES > self.step

    def interrupt(self) -> None:
        """Make the assistant stop at the next step if it is speaking (an outside barge-in signal,
        e.g. a button or a voice-activity detector that the caller trusts more than the head)."""
        self._interrupt = True

    def stats(self) -> DuplexStats:
        """A snapshot of the session's timing."""
        with self._audio:
            s = DuplexStats(**{**self._stats.__dict__, "recent_step_ms": list(self._recent)})
            s.lag_steps = self._received // STEP_SAMPLES - self.step
            return s

    @property
    def speaking(self) -> bool:
        """Whether the assistant holds the floor (a turn or a backchannel is in progress)."""
        return self.turn is not None

    # ------------------------------------------------------------------ compute side
    def process(self, max_steps: int | None = None) -> list[DuplexEvent]:
        """Compute every whole step received so far (at most ``max_steps``), in order; their events."""
        events: list[DuplexEvent] = []
        with self._compute:
            if self._closed:
                raise RuntimeError("process on a closed duplex session")
            if self._failed is not None:
                raise RuntimeError(f"this duplex session failed at step {self.step} ({self._failed!r}); open a new one")
            done = 0
            while max_steps is None or done < max_steps:
                with self._audio:
                    waiting = self._received // STEP_SAMPLES - self.step
                    if waiting <= 0:
                        break
                    if self._pending:
                        self._history = np.concatenate([self._history, *self._pending])
                        self._pending = []
                self._note_lag(waiting)
                t0 = time.perf_counter()
                try:
                    with torch.inference_mode():
                        self._step(events)
                except BaseException as exc:
                    with self._audio:
                        self._failed = exc  # the caches may hold half a step: the session cannot go on
                        self._audio.notify_all()
                    raise
                self._trim_history()
                elapsed = time.perf_counter() - t0
                with self._audio:
                    self.step += 1
                    self._record(elapsed, waiting)
                    self._audio.notify_all()
                done += 1
        return events

    def close(self) -> list[DuplexEvent]:
        """End the session: the turn in progress ends (reason ``"closed"``, its queued audio dropped)
        and the caches are freed.  Audio pushed afterwards is refused."""
        with self._compute:
            events: list[DuplexEvent] = []
            if self._closed:
                return events
            if self.turn is not None:
                self._end_turn(events, self.step, "closed", flush=False)
            with self._audio:
                self._closed = True
                self._pending = []
                self._audio.notify_all()
            self.cache = self.srh_cache = None
            self._srh_queue = []
            self._history = np.zeros(0, dtype=np.float32)
            return events

    def _note_lag(self, waiting: int) -> None:
        if waiting > self.options.warn_lag_steps and not self._lagging:
            self._lagging = True
            logger.warning(
                "duplex session is %.1f s behind real time (%d steps waiting); catching up in order, no audio is dropped",
                (waiting - 1) * STEP_SECONDS, waiting,
            )
        elif waiting <= 1 and self._lagging:
            self._lagging = False
            logger.info("duplex session caught up with real time")

    def _record(self, elapsed: float, waiting: int) -> None:
        s = self._stats
        s.steps += 1
        s.compute_seconds += elapsed
        s.last_step_ms = 1000 * elapsed
        s.max_step_ms = max(s.max_step_ms, s.last_step_ms)
        self._recent.append(s.last_step_ms)
        if waiting > 1:
            s.late_steps += 1
        s.max_lag_steps = max(s.max_lag_steps, waiting - 1)

    def _trim_history(self) -> None:
        """Keep the audio of the next step's encoder window only (memory stays bounded)."""
        keep_from = STEP_SAMPLES * max(0, self.step + 2 - _WINDOW_STEPS)
        if keep_from - self._history_start >= SAMPLE_RATE:  # trim in 1 s pieces, not every step
            self._history = self._history[keep_from - self._history_start :]
            self._history_start = keep_from

    # ------------------------------------------------------------------ one step
    def _step(self, events: list[DuplexEvent]) -> None:
        model, engine, opts, dev = self.model, self.engine, self.options, self.model.device
        t = self.step
        if self.positions + 1 > engine.max_positions or t + 1 > engine.max_steps:
            raise ContextFullError(
                f"the duplex session reached the model's context ({engine.max_positions} backbone positions, "
                f"{engine.max_steps} steps for the Speech Refined Head) after {t * STEP_SECONDS:.0f} s; "
                "open a new session"
            )
        first = self._history_start // STEP_SAMPLES
        u = user_step_features(model, self._history, n_steps=1, start_step=t - first)
        prev_text = torch.tensor([[self.prev_text]], dtype=torch.long, device=dev)
        prev_speech = torch.tensor([[self.prev_speech]], dtype=torch.long, device=dev)
        embeds = step_inputs(model, u[None].to(dev), prev_text, prev_speech)
        out = model.backbone()(
            inputs_embeds=embeds,
            position_ids=torch.tensor([[self.positions]], dtype=torch.long, device=dev),
            cache=self.cache,
            use_cache=True,
        )
        self.cache = out.cache
        self.positions += 1
        hidden = out.last_hidden_state[:, -1]  # [1, H]
        logits = action_logits(model, hidden)[0].float()
        action, prob, forced, why = self._choose_action(logits)
        events.append(ActionEvent(t, ACTIONS[action], prob, forced))
        trace = None
        if opts.trace:
            trace = StepTrace(t, ACTIONS[action], logits.detach().cpu(), engine.sil_id, [engine.speech_pad] * engine.k)

        turn = self.turn
        if turn is not None and (action == LISTEN or action == STOP or action == START
                                 or (action == BACKCHANNEL and turn.kind == "turn")):
            if action == STOP:
                events.append(Stopped(t, turn.index))
                self._end_turn(events, t, why or "stop", flush=False)
            else:
                self._end_turn(events, t, "listen" if action == LISTEN else "replaced", flush=True)
        if action in _SPEAKING_ACTIONS:
            if self.turn is None:
                self.turns += 1
                kind = "backchannel" if action == BACKCHANNEL else "turn"
                audio = engine.detokenizer.stream(opts.voice) if engine.detokenizer is not None else None
                self.turn = _Turn(self.turns, kind, t, audio=audio)
                events.append(TurnStart(t, self.turns, kind))
            self._speak(hidden, events, trace)
        else:
            self._silent(hidden)
        if trace is not None:
            self.trace.append(trace)

    def _choose_action(self, logits: torch.Tensor) -> tuple[int, float, bool, str]:
        """The action index, its probability, whether the engine forced it, and why."""
        opts = self.options
        turn = self.turn
        allowed = torch.ones(len(ACTIONS), dtype=torch.bool)
        if opts.constrain_actions:
            if turn is None:
                ok = (LISTEN, START, BACKCHANNEL)
            elif turn.kind == "turn":
                ok = (SPEAK, STOP, LISTEN)
            else:
                ok = (BACKCHANNEL, LISTEN, STOP, START)
            allowed[:] = False
            allowed[list(ok)] = True
        masked = logits.cpu().masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(masked, dim=-1)
        interrupt, self._interrupt = self._interrupt, False
        if turn is not None and interrupt:
            return STOP, float(probs[STOP]), True, "stop"
        if turn is not None and turn.steps >= opts.max_turn_steps:
            logger.warning(
                "duplex turn %d reached max_turn_seconds=%.1f; stopping it", turn.index, opts.max_turn_seconds
            )
            return STOP, float(probs[STOP]), True, "max_length"
        if opts.action_temperature == 0:
            action = int(torch.argmax(masked))
        else:
            dist = torch.softmax(masked / opts.action_temperature, dim=-1)
            action = int(torch.multinomial(dist, 1, generator=self.generator))
        if opts.start_prob is not None and turn is None and float(probs[START]) >= opts.start_prob:
            action = START
        elif opts.stop_prob is not None and turn is not None and turn.kind == "turn" \
                and float(probs[STOP]) >= opts.stop_prob:
            action = STOP
        if turn is None and action in (START, BACKCHANNEL) and float(probs[action]) < opts.min_start_prob:
            return LISTEN, float(probs[LISTEN]), True, ""
        return action, float(probs[action]), False, ""

    def _speak(self, hidden: torch.Tensor, events: list[DuplexEvent], trace: StepTrace | None) -> None:
        """A speaking step: one text token from ``lm_head``, then 5 speech tokens from the SRH."""
        model, engine, opts, dev = self.model, self.engine, self.options, self.model.device
        turn = self.turn
        assert turn is not None
        t = self.step
        text_logits = model.get_output_embeddings()(hidden)[0].float()
        previous = torch.tensor(turn.text_ids, dtype=torch.long, device=dev)
        text = sample_token(text_logits, opts.text_sampling, self.generator, previous, engine.ban_text)
        pre = hidden + model.get_input_embeddings()(torch.tensor([text], device=dev))  # [1, H]
        self._flush_srh()
        group, speech_logits = self._speech_group(pre)
        turn.steps += 1
        turn.groups += 1
        turn.text_ids.append(text)
        if text not in engine.hidden_text:
            turn.visible.append(text)
            decoded = engine.processor.tokenizer.decode(turn.visible, skip_special_tokens=True)
            if decoded.startswith(turn.text) and len(decoded) > len(turn.text):
                events.append(TextDelta(t, turn.index, decoded[len(turn.text) :], [text]))
                turn.text = decoded
        real = [s for s in group if s < engine.speech_bos]
        turn.speech.extend(real)
        samples = None
        if turn.audio is not None and real:
            pieces = turn.audio.push(real)
            samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        if real:
            rate = engine.detokenizer.sample_rate if engine.detokenizer is not None else None
            events.append(AudioChunk(t, turn.index, real, samples, rate))
        self.prev_text, self.prev_speech = text, group
        if trace is not None:
            trace.text_id, trace.speech = text, list(group)
            trace.text_logits = text_logits.detach().cpu()
            trace.speech_logits = speech_logits.detach().float().cpu()
        if engine.speech_eos in group:
            self._end_turn(events, t, "eos", flush=True)

    def _silent(self, hidden: torch.Tensor) -> None:
        """A listen or stop step: nothing is emitted; the SRH will see the position later."""
        engine, dev = self.engine, self.model.device
        pre = hidden + self.model.get_input_embeddings()(torch.tensor([engine.sil_id], device=dev))
        prev = torch.tensor([self.prev_speech[-1]] + [engine.speech_pad] * (engine.k - 1), dtype=torch.long, device=dev)
        self._srh_queue.append((pre, prev))
        if sum(p.shape[0] for p, _ in self._srh_queue) >= self.options.srh_flush_steps:
            self._flush_srh()
        self.prev_text, self.prev_speech = engine.sil_id, [engine.speech_pad] * engine.k

    def _end_turn(self, events: list[DuplexEvent], step: int, reason: str, flush: bool) -> None:
        """Close the current turn; a cut turn's audio is dropped (its detokenizer stream discarded)."""
        turn = self.turn
        assert turn is not None
        if turn.audio is not None and flush:
            tail = turn.audio.flush()
            if len(tail):
                events.append(AudioChunk(step, turn.index, [], tail, self.engine.detokenizer.sample_rate))
        elif turn.audio is not None and callable(getattr(turn.audio, "close", None)):
            turn.audio.close()  # a stream that holds outside state (a vocoder cache) may free it unsynthesised
        turn.audio = None
        interrupted = reason in ("stop", "max_length", "closed")
        events.append(TurnEnd(step, turn.index, turn.text.strip(), interrupted, reason, list(turn.speech)))
        self.turn = None

    # ------------------------------------------------------------------ Speech Refined Head
    def _srh(self, conditions: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Feed sub-frames [1, n, H] with their previous tokens [1, n] to the SRH; logits [1, n, V]."""
        n = conditions.shape[1]
        positions = torch.arange(self.srh_frames, self.srh_frames + n, device=conditions.device)[None]
        logits, self.srh_cache = self.model.audio_invert_tower(
            conditions, prev, position_ids=positions, cache=self.srh_cache, use_cache=True
        )
        self.srh_frames += n
        return logits

    def _flush_srh(self) -> None:
        """Let the SRH see the queued silent steps in one call."""
        if not self._srh_queue:
            return
        pre = torch.cat([p for p, _ in self._srh_queue])
        prev = torch.cat([q for _, q in self._srh_queue])
        self._srh_queue = []
        srh = self.model.audio_invert_tower
        conditions = srh.pre_matching(pre).reshape(1, pre.shape[0] * self.engine.k, pre.shape[-1])
        self._srh(conditions, prev[None])

    def _speech_group(self, pre: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """The SRH's inner loop for one step: k speech tokens and their logits [k, V]."""
        engine, opts, k, dev = self.engine, self.options, self.engine.k, self.model.device
        turn = self.turn
        assert turn is not None
        srh = self.model.audio_invert_tower
        conditions = srh.pre_matching(pre).reshape(1, k, pre.shape[-1])
        last = self.prev_speech[-1]
        if opts.force_delay and turn.groups < engine.delay_groups:
            # the delay tokens are known: one SRH call for the k sub-frames
            prev = torch.tensor([[last] + [engine.speech_bos] * (k - 1)], dtype=torch.long, device=dev)
            return [engine.speech_bos] * k, self._srh(conditions, prev)[0]
        group: list[int] = []
        logits: list[torch.Tensor] = []
        ended = False
        for j in range(k):
            out = self._srh(conditions[:, j : j + 1], torch.tensor([[last]], dtype=torch.long, device=dev))[0, 0]
            logits.append(out)
            if ended:
                tok = engine.speech_eos
            else:
                tok = sample_speech_token(
                    out, opts.speech_sampling, self.generator, turn.speech, engine.ban_speech
                )
                ended = tok == engine.speech_eos
            group.append(tok)
            last = tok
        return group, torch.stack(logits)


# ---------------------------------------------------------------------- background runner
class DuplexRunner:
    """Computes a session's steps on a background thread as audio arrives.

    Events go to ``on_event`` (called on the runner thread, in order; keep it quick) or, without a
    callback, to a queue read with :meth:`get` / :meth:`drain`.  When a :class:`Stopped` event
    arrives, chunks of the cut turn's audio still waiting in the queue are removed, so a reader that
    lags behind never plays speech the assistant already took back.  An exception in the model
    stops the runner and is delivered as a :class:`SessionError` (and kept in :attr:`error`).
    """

    def __init__(self, session: DuplexSession, on_event: Callable[[DuplexEvent], None] | None = None,
                 poll_seconds: float = 0.1) -> None:
        self.session = session
        self.on_event = on_event
        self.poll_seconds = poll_seconds
        self.error: BaseException | None = None
        self._queue: collections.deque[DuplexEvent] = collections.deque()
        self._queue_cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "DuplexRunner":
        if self._thread is not None:
            raise RuntimeError("runner already started")
        self._thread = threading.Thread(target=self._run, name=f"duplex-runner-{id(self.session):x}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread after the step in progress (audio not yet computed stays in the session)."""
        self._stopping.set()
        self.session.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("duplex runner did not stop within %.1f s", timeout)
        with self._queue_cond:
            self._queue_cond.notify_all()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "DuplexRunner":
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_processed(self, timeout: float | None = None) -> bool:
        """Wait until every step received so far is computed (False on timeout or error)."""
        return self.session.wait_processed(timeout=timeout) and self.error is None

    def get(self, timeout: float | None = None) -> DuplexEvent | None:
        """The next queued event, or None after ``timeout`` seconds (queue mode only)."""
        with self._queue_cond:
            if not self._queue:
                self._queue_cond.wait_for(lambda: self._queue or not self.running, timeout)
            return self._queue.popleft() if self._queue else None

    def drain(self) -> list[DuplexEvent]:
        """Every queued event, without waiting."""
        with self._queue_cond:
            out = list(self._queue)
            self._queue.clear()
            return out

    def events(self, timeout: float | None = None) -> Iterator[DuplexEvent]:
        """Queued events as they come, until the runner stops or ``timeout`` passes with none."""
        while True:
            event = self.get(timeout)
            if event is None:
                return
            yield event

    def _deliver(self, event: DuplexEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
            return
        with self._queue_cond:
            if isinstance(event, Stopped):
                kept = [e for e in self._queue if not (isinstance(e, AudioChunk) and e.turn == event.turn)]
                if len(kept) != len(self._queue):
                    logger.debug(
                        "dropped %d queued audio chunks of interrupted turn %d", len(self._queue) - len(kept), event.turn
                    )
                self._queue = collections.deque(kept)
            self._queue.append(event)
            self._queue_cond.notify_all()

    def _run(self) -> None:
        session = self.session
        try:
            while not self._stopping.is_set() and not session.closed:
                if not session.wait_for_audio(self.poll_seconds):
                    continue
                # one step at a time: its events go out before the next step is computed
                while not self._stopping.is_set():
                    events = session.process(max_steps=1)
                    if not events:
                        break
                    for event in events:
                        self._deliver(event)
        except BaseException as exc:  # delivered to the consumer, not lost on a thread
            self.error = exc
            logger.exception("duplex runner failed at step %d", session.step)
            try:
                self._deliver(SessionError(session.step, f"{type(exc).__name__}: {exc}", exc))
            except Exception:
                logger.exception("the event consumer failed on the SessionError too")
        finally:
            session.wake()
            with self._queue_cond:
                self._queue_cond.notify_all()
