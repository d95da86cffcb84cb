"""Full-duplex training timelines synthesised from half-duplex dialogues (paper Sec. 2.4).

Following the OmniFlatten recipe, a turn-based dialogue is laid out on two parallel streams (user and
assistant) on the model's 5 Hz clock, and the natural events of spoken conversation are inserted:
pauses, overlaps at turn ends, interruptions (barge-in) and backchannels ("mm-hm").  Every 200 ms step
gets the assistant's action label, which is what the duplex model learns to predict:

``listen``       the user has the floor (or nobody speaks) and the assistant stays silent
``start``        the assistant takes the turn at this step
``speak``        the assistant keeps speaking
``stop``         the assistant yields because the user barged in
``backchannel``  the assistant keeps listening but utters a short acknowledgement

Two layouts:

* **estimated** (no ``clips``): word timings come from a speaking rate (``DuplexConfig.words_per_second``)
  and the assistant speaks as long as its words last;
* **measured** (``clips``, one :class:`SpokenClip` per turn, from synthesized audio): user turns last
  as long as their audio, and an assistant turn with ``n_speech`` 25 Hz speech tokens starts on a step
  and lasts exactly ``ceil((speech_delay + n_speech + 1) / 5)`` steps, the layout of ``docs/duplex.md``
  (``speech_delay`` BOS tokens, the speech tokens, the speech EOS, five per step).  Its words are
  heard ``speech_delay / 25`` seconds after its first step.  An interruption cuts the turn on a step
  boundary: the turn keeps ``5 * (stop_step - start_step) - speech_delay`` speech tokens.

The synthesis is deterministic for a seed.  Nothing is lost silently: user words are always all
present, and assistant words cut by an interruption are listed in :attr:`Timeline.dropped` (and per
turn in :attr:`AssistantSpan.dropped`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

STEP_SECONDS = 0.2
SPEECH_TOKEN_RATE = 25  # speech tokens per second (the 25 Hz speech tokenizer)
TOKENS_PER_STEP = 5  # speech tokens per 200 ms step (the model's group size)
ACTIONS = ("listen", "start", "speak", "stop", "backchannel")
USER_BACKCHANNELS = ("mm-hm", "right", "yeah", "okay", "uh-huh", "I see")
ASSISTANT_BACKCHANNELS = ("mm-hm", "I see", "right")


@dataclass(frozen=True)
class Turn:
    """A half-duplex turn: who speaks and what."""

    speaker: str  # "user" or "assistant"
    text: str

    def __post_init__(self) -> None:
        if self.speaker not in ("user", "assistant"):
            raise ValueError(f"speaker must be 'user' or 'assistant', got {self.speaker!r}")
        if not self.text.strip():
            raise ValueError("a turn needs text")


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    kind: str = "turn"  # "turn" or "backchannel"


@dataclass(frozen=True)
class DuplexConfig:
    """Rates of the inserted events, and timing.  Rates are probabilities per eligible place."""

    words_per_second: float = 2.6  # speaking rate of estimated layouts (measured ones use the clips)
    rate_jitter: float = 0.15  # per-turn relative change of that rate (estimated layouts)
    pause_range: tuple[float, float] = (0.2, 0.8)
    overlap_rate: float = 0.15  # the user starts before the assistant finished its last word(s)
    overlap_range: tuple[float, float] = (0.2, 0.6)
    interruption_rate: float = 0.2  # the user barges in mid-reply (the assistant must stop)
    user_backchannel_rate: float = 0.3  # per assistant turn of >= 2 s
    assistant_backchannel_rate: float = 0.2  # per user turn of >= 3 s
    stop_steps: int = 1  # steps the assistant may take to fall silent after a barge-in begins
    response_delay_steps: int = 1  # steps between the end of user speech and the assistant's start
    speech_delay: int = 10  # speech BOS tokens before an assistant turn's speech (FunAudioChatConfig.speech_delay)

    def __post_init__(self) -> None:
        for name in ("overlap_rate", "interruption_rate", "user_backchannel_rate", "assistant_backchannel_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.words_per_second <= 0:
            raise ValueError("words_per_second must be positive")
        if self.stop_steps < 1:
            raise ValueError("stop_steps must be >= 1")
        if self.response_delay_steps < 0:
            raise ValueError("response_delay_steps must be >= 0")
        if self.speech_delay < 0:
            raise ValueError("speech_delay must be >= 0")
        for name in ("pause_range", "overlap_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {(lo, hi)}")


def assistant_turn_steps(n_speech: int, speech_delay: int = 10) -> int:
    """Steps an assistant turn of ``n_speech`` speech tokens lasts: ``ceil((speech_delay + n_speech + 1) / 5)``."""
    if n_speech < 0 or speech_delay < 0:
        raise ValueError(f"n_speech and speech_delay must be >= 0, got {n_speech} and {speech_delay}")
    return -(-(speech_delay + n_speech + 1) // TOKENS_PER_STEP)


def kept_speech_tokens(start_step: int, stop_step: int, speech_delay: int = 10) -> int:
    """Speech tokens an assistant turn that starts at ``start_step`` emits before it stops at ``stop_step``."""
    return max(0, TOKENS_PER_STEP * (stop_step - start_step) - speech_delay)


@dataclass(frozen=True)
class SpokenClip:
    """The measured audio of one turn (or one backchannel), for measured layouts.

    ``seconds``: how long the speech lasts (silence trimmed).  ``n_speech``: its 25 Hz speech tokens;
    required for assistant speech, whose length on the clock comes from it.  ``word_times``: optional
    ``(start, end)`` of each word in seconds from the clip's start; without them the words share the
    clip's time in proportion to their length.
    """

    seconds: float
    n_speech: int | None = None
    word_times: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"a clip must last a positive, finite number of seconds, got {self.seconds!r}")
        if self.n_speech is not None and (not isinstance(self.n_speech, int) or self.n_speech < 1):
            raise ValueError(f"n_speech must be a positive int, got {self.n_speech!r}")
        if self.word_times is not None:
            last = 0.0
            for start, end in self.word_times:
                if not (last - 1e-9 <= start <= end):
                    raise ValueError(f"word_times must be ordered, non-overlapping (start, end) pairs, got {self.word_times}")
                last = end


@dataclass(frozen=True)
class AssistantSpan:
    """Where one assistant turn or backchannel sits on the clock.

    It has outputs (text, speech) on steps ``start_step`` to ``end_step - 1``; an interrupted turn has
    ``stop_step == end_step``, the step of its ``stop`` action.  ``text`` is what was spoken (the words
    before the cut), ``dropped`` the words that were not.  ``n_speech`` is the whole clip's speech token
    count and ``n_kept`` how many of them were spoken (both ``None`` in estimated layouts).
    """

    turn: int  # index of the dialogue turn (for a backchannel: the user turn it acknowledges)
    kind: str  # "turn" or "backchannel"
    text: str
    start_step: int
    end_step: int
    stop_step: int | None = None
    n_speech: int | None = None
    n_kept: int | None = None
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserSpan:
    """One stretch of user speech: a turn, or a backchannel (``turn`` is then the assistant turn it acknowledges)."""

    turn: int
    kind: str  # "turn" or "backchannel"
    text: str
    start: float
    end: float


@dataclass
class Timeline:
    """Two word streams, per-step assistant actions and the list of inserted events."""

    user: list[Word] = field(default_factory=list)
    assistant: list[Word] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # assistant words cut by interruptions
    assistant_spans: list[AssistantSpan] = field(default_factory=list)  # in time order
    user_spans: list[UserSpan] = field(default_factory=list)  # in time order
    measured: bool = False  # laid out from SpokenClip durations (actions follow assistant_spans)

    @property
    def steps(self) -> int:
        return len(self.actions)

    def speaking(self, stream: list[Word], step: int, kinds: tuple[str, ...] = ("turn", "backchannel")) -> bool:
        t0, t1 = step * STEP_SECONDS, (step + 1) * STEP_SECONDS
        return any(w.start < t1 and w.end > t0 and w.kind in kinds for w in stream)


def _words(text: str, start: float, rate: float) -> list[Word]:
    out, t = [], start
    for token in text.split():
        dur = max(0.12, len(token) / 5.0 / rate)  # an average 5-letter word lasts 1 / rate
        out.append(Word(token, t, t + dur))
        t += dur
    return out


def _step(t: float) -> int:
    return int(t / STEP_SECONDS + 1e-9)


def _check_dialogue(dialogue: Sequence[Turn]) -> None:
    if isinstance(dialogue, (str, bytes)) or not isinstance(dialogue, Sequence) or len(dialogue) == 0:
        raise ValueError(f"a dialogue must be a non-empty sequence of Turn, got {type(dialogue).__name__}")
    for i, turn in enumerate(dialogue):
        if not isinstance(turn, Turn):
            raise ValueError(f"dialogue turn {i} must be a Turn, got {type(turn).__name__}: {turn!r}")


def _ceil_step(t: float) -> int:
    return math.ceil(t / STEP_SECONDS - 1e-9)


def _place(text: str, start: float, clip: SpokenClip, seconds: float, kind: str = "turn") -> list[Word]:
    """The words of ``text`` on the clock, the clip starting at ``start`` and lasting ``seconds``."""
    tokens = text.split()
    if clip.word_times is not None:
        if len(clip.word_times) != len(tokens):
            raise ValueError(f"clip has {len(clip.word_times)} word_times for {len(tokens)} words: {text!r}")
        return [Word(tok, start + min(a, seconds), start + min(b, seconds), kind)
                for tok, (a, b) in zip(tokens, clip.word_times)]
    weights = [len(tok) + 1 for tok in tokens]  # a word's share of the clip: its letters and a gap
    total, acc, out = float(sum(weights)), 0.0, []
    for tok, w in zip(tokens, weights):
        a = start + seconds * acc / total
        acc += w
        out.append(Word(tok, a, start + seconds * acc / total, kind))
    return out


def _measured_timeline(
    dialogue: Sequence[Turn],
    cfg: DuplexConfig,
    rng: random.Random,
    clips: Sequence[SpokenClip],
    user_bc: Mapping[str, SpokenClip] | None,
    assistant_bc: Mapping[str, SpokenClip] | None,
) -> Timeline:
    """The layout from measured clips (see :func:`synthesize_timeline`)."""
    if len(clips) != len(dialogue):
        raise ValueError(f"need one clip per turn: {len(dialogue)} turns but {len(clips)} clips")
    for i, (turn, clip) in enumerate(zip(dialogue, clips)):
        if not isinstance(clip, SpokenClip):
            raise ValueError(f"clip {i} must be a SpokenClip, got {type(clip).__name__}")
        if turn.speaker == "assistant" and clip.n_speech is None:
            raise ValueError(f"clip {i} is an assistant turn's and needs n_speech (its speech token count)")
    if cfg.user_backchannel_rate > 0 and not user_bc:
        raise ValueError("user_backchannel_rate > 0 needs user_backchannels clips (or set the rate to 0)")
    if cfg.assistant_backchannel_rate > 0 and not assistant_bc:
        raise ValueError("assistant_backchannel_rate > 0 needs assistant_backchannels clips (or set the rate to 0)")
    for text, clip in (assistant_bc or {}).items():
        if clip.n_speech is None:
            raise ValueError(f"assistant backchannel {text!r} needs n_speech")
    delay = cfg.speech_delay
    delay_s = delay / SPEECH_TOKEN_RATE
    tl = Timeline(measured=True)
    t = 0.0  # when the next turn may start
    user_end = 0.0  # end of the latest user turn
    free_step = 0  # first step the assistant may use for a new turn or backchannel
    for index, turn in enumerate(dialogue):
        clip = clips[index]
        nxt = dialogue[index + 1] if index + 1 < len(dialogue) else None
        if turn.speaker == "assistant":
            a = max(free_step, _ceil_step(max(t, user_end + cfg.response_delay_steps * STEP_SECONDS)))
            n = clip.n_speech
            seconds = n / SPEECH_TOKEN_RATE
            heard = a * STEP_SECONDS + delay_s  # its first speech token is heard after the delay
            words = _place(turn.text, heard, clip, seconds)
            span = None
            if nxt is not None and nxt.speaker == "user" and len(words) >= 4 and rng.random() < cfg.interruption_rate:
                cut_at = words[rng.randrange(1, len(words) - 2)].start
                stop = _step(cut_at) + cfg.stop_steps
                n_kept = kept_speech_tokens(a, stop, delay)
                if n_kept < n:  # the cut falls inside the speech (else the turn ends unharmed)
                    stop_time = stop * STEP_SECONDS
                    kept = [w for w in words if w.end <= stop_time + 1e-9]
                    dropped = tuple(w.text for w in words[len(kept):])
                    tl.dropped.extend(dropped)
                    tl.events.append({"type": "interruption", "turn": index, "user_starts": cut_at,
                                      "assistant_stops": stop_time})
                    span = AssistantSpan(index, "turn", " ".join(w.text for w in kept), a, stop, stop, n, n_kept, dropped)
                    words, t, free_step = kept, cut_at, stop + 1
            if span is None:
                end = heard + seconds
                if nxt is not None and rng.random() < cfg.overlap_rate:
                    overlap = min(rng.uniform(*cfg.overlap_range), seconds / 2)
                    t = end - overlap
                    tl.events.append({"type": "overlap", "turn": index, "seconds": overlap})
                else:
                    t = end + rng.uniform(*cfg.pause_range)
                if user_bc and seconds >= 2.0 and rng.random() < cfg.user_backchannel_rate:
                    mid = words[len(words) // 2]
                    bc = rng.choice(sorted(user_bc))
                    bc_end = mid.start + user_bc[bc].seconds
                    if bc_end <= (min(end, t) if nxt is not None else end):  # over the reply, before the next turn
                        tl.user.append(Word(bc, mid.start, bc_end, kind="backchannel"))
                        tl.user_spans.append(UserSpan(index, "backchannel", bc, mid.start, bc_end))
                        tl.events.append({"type": "user_backchannel", "turn": index, "time": mid.start, "text": bc})
                span = AssistantSpan(index, "turn", turn.text.strip(), a, a + assistant_turn_steps(n, delay), None, n, n)
                free_step = span.end_step
            tl.assistant.extend(words)
            tl.assistant_spans.append(span)
        else:
            start = max(t, 0.0)
            words = _place(turn.text, start, clip, clip.seconds)
            end = start + clip.seconds
            tl.user_spans.append(UserSpan(index, "turn", turn.text.strip(), start, end))
            if assistant_bc and clip.seconds >= 3.0 and rng.random() < cfg.assistant_backchannel_rate:
                mid = words[len(words) // 2]
                bc = rng.choice(sorted(assistant_bc))
                n = assistant_bc[bc].n_speech
                b = max(free_step, _ceil_step(mid.start))
                steps = assistant_turn_steps(n, delay)
                if (b + steps) * STEP_SECONDS <= end:  # the acknowledgement ends while the user still speaks
                    heard = b * STEP_SECONDS + delay_s
                    tl.assistant.append(Word(bc, heard, heard + n / SPEECH_TOKEN_RATE, kind="backchannel"))
                    tl.assistant_spans.append(AssistantSpan(index, "backchannel", bc, b, b + steps, None, n, n))
                    tl.events.append({"type": "assistant_backchannel", "turn": index, "time": heard, "text": bc,
                                      "step": b})
                    free_step = b + steps
            tl.user.extend(words)
            user_end = end
            t = end + rng.uniform(*cfg.pause_range)
    tl.user.sort(key=lambda w: w.start)
    tl.assistant.sort(key=lambda w: w.start)
    tl.user_spans.sort(key=lambda u: u.start)
    tl.assistant_spans.sort(key=lambda a: a.start_step)
    last = [_ceil_step(u.end) for u in tl.user_spans] + [a.end_step + (a.stop_step is not None) for a in tl.assistant_spans]
    tl.actions = span_actions(tl.assistant_spans, max(last) + 1)  # one silent step at the end
    return tl


def synthesize_timeline(
    dialogue: Sequence[Turn],
    config: DuplexConfig | None = None,
    seed: int = 0,
    *,
    clips: Sequence[SpokenClip] | None = None,
    user_backchannels: Mapping[str, SpokenClip] | None = None,
    assistant_backchannels: Mapping[str, SpokenClip] | None = None,
) -> Timeline:
    """Lay out ``dialogue`` on two streams with pauses, overlaps, interruptions and backchannels.

    Without ``clips`` word timings are estimated from ``config.words_per_second``.  With ``clips`` (one
    per turn, in order) the layout uses the measured durations and the assistant turns take the exact
    step counts of their speech tokens (module docstring).  Backchannels are then drawn from the keys
    of ``user_backchannels`` (text -> clip in the user's voice) and ``assistant_backchannels`` (text ->
    clip with ``n_speech``), which are required while their rate is above zero.
    """
    cfg = config or DuplexConfig()
    _check_dialogue(dialogue)
    if clips is not None:
        return _measured_timeline(dialogue, cfg, random.Random(seed), clips, user_backchannels, assistant_backchannels)
    rng = random.Random(seed)
    tl = Timeline()
    t = 0.0
    speaking_until = {"user": 0.0, "assistant": 0.0}
    for index, turn in enumerate(dialogue):
        rate = cfg.words_per_second * (1 + rng.uniform(-cfg.rate_jitter, cfg.rate_jitter))
        if turn.speaker == "assistant":
            # the assistant answers a short while after the user stops
            start = max(t, speaking_until["user"] + cfg.response_delay_steps * STEP_SECONDS)
            start = STEP_SECONDS * math.ceil(start / STEP_SECONDS - 1e-9)  # the model speaks on its clock
            words = _words(turn.text, start, rate)
            nxt = dialogue[index + 1] if index + 1 < len(dialogue) else None
            if nxt is not None and nxt.speaker == "user" and len(words) >= 4 and rng.random() < cfg.interruption_rate:
                # barge-in: the user starts mid-reply; the assistant stops within stop_steps
                cut_at = words[rng.randrange(1, len(words) - 2)].start
                stop_time = STEP_SECONDS * (_step(cut_at) + cfg.stop_steps)
                kept = [w for w in words if w.end <= stop_time]
                if not kept:
                    kept = words[:1]
                    stop_time = kept[0].end
                tl.dropped.extend(w.text for w in words[len(kept):])
                tl.events.append({"type": "interruption", "turn": index, "user_starts": cut_at, "assistant_stops": kept[-1].end})
                end_step = _step(kept[-1].end - 1e-9) + 1
                tl.assistant_spans.append(AssistantSpan(index, "turn", " ".join(w.text for w in kept), _step(kept[0].start),
                                                        end_step, end_step, dropped=tuple(w.text for w in words[len(kept):])))
                words = kept
                t = cut_at
            else:
                tl.assistant_spans.append(AssistantSpan(index, "turn", turn.text.strip(), _step(words[0].start),
                                                        _step(words[-1].end - 1e-9) + 1))
                end = words[-1].end
                if words[-1].end - words[0].start >= 2.0 and rng.random() < cfg.user_backchannel_rate:
                    mid = words[len(words) // 2]
                    bc = rng.choice(USER_BACKCHANNELS)
                    tl.user.append(Word(bc, mid.start, min(mid.start + 0.4, end), kind="backchannel"))
                    tl.user_spans.append(UserSpan(index, "backchannel", bc, mid.start, min(mid.start + 0.4, end)))
                    tl.events.append({"type": "user_backchannel", "turn": index, "time": mid.start, "text": bc})
                if nxt is not None and rng.random() < cfg.overlap_rate:
                    overlap = min(rng.uniform(*cfg.overlap_range), (end - words[0].start) / 2)
                    t = end - overlap
                    tl.events.append({"type": "overlap", "turn": index, "seconds": overlap})
                else:
                    t = end + rng.uniform(*cfg.pause_range)
            tl.assistant.extend(words)
            speaking_until["assistant"] = words[-1].end
        else:
            start = max(t, 0.0)
            words = _words(turn.text, start, rate)
            if words[-1].end - words[0].start >= 3.0 and rng.random() < cfg.assistant_backchannel_rate:
                mid = words[len(words) // 2]
                bc = rng.choice(ASSISTANT_BACKCHANNELS)
                tl.assistant.append(Word(bc, mid.start, mid.start + 0.4, kind="backchannel"))
                tl.assistant_spans.append(AssistantSpan(index, "backchannel", bc, _step(mid.start),
                                                        _step(mid.start + 0.4 - 1e-9) + 1))
                tl.events.append({"type": "assistant_backchannel", "turn": index, "time": mid.start, "text": bc})
            tl.user.extend(words)
            tl.user_spans.append(UserSpan(index, "turn", turn.text.strip(), words[0].start, words[-1].end))
            speaking_until["user"] = words[-1].end
            t = words[-1].end + rng.uniform(*cfg.pause_range)
    tl.user.sort(key=lambda w: w.start)
    tl.assistant.sort(key=lambda w: w.start)
    tl.user_spans.sort(key=lambda u: u.start)
    tl.assistant_spans.sort(key=lambda a: a.start_step)
    end = max([w.end for w in tl.user + tl.assistant] + [0.0])
    n_steps = _step(end) + 2
    tl.actions = label_actions(tl, n_steps)
    return tl


def span_actions(spans: Sequence[AssistantSpan], n_steps: int) -> list[str]:
    """The action at every step from assistant spans: ``start`` then ``speak`` over a turn's steps,
    ``backchannel`` over a backchannel's, ``stop`` at a cut turn's ``stop_step``, else ``listen``.

    Raises ``ValueError`` when spans overlap or do not fit in ``n_steps``.
    """
    actions = ["listen"] * n_steps
    for span in spans:
        last = span.stop_step if span.stop_step is not None else span.end_step - 1
        if not 0 <= span.start_step < span.end_step or last >= n_steps:
            raise ValueError(f"assistant span of turn {span.turn} (steps {span.start_step}-{span.end_step}, "
                             f"stop {span.stop_step}) does not fit in {n_steps} steps")
        if span.stop_step is not None and span.stop_step != span.end_step:
            raise ValueError(f"assistant span of turn {span.turn}: stop_step {span.stop_step} != end_step {span.end_step}")
        for step in range(span.start_step, last + 1):
            if actions[step] != "listen":
                raise ValueError(f"assistant span of turn {span.turn} overlaps another at step {step}")
            if step == span.stop_step:
                actions[step] = "stop"
            elif span.kind == "backchannel":
                actions[step] = "backchannel"
            else:
                actions[step] = "start" if step == span.start_step else "speak"
    return actions


def label_actions(tl: Timeline, n_steps: int) -> list[str]:
    """The assistant's action at every step, from its stream and the interruptions.

    A measured timeline is labelled from its spans (:func:`span_actions`).
    """
    if tl.measured:
        return span_actions(tl.assistant_spans, n_steps)
    # the first silent step after an interrupted reply is where the assistant yields
    yields = {_step(e["assistant_stops"] - 1e-9) + 1 for e in tl.events if e["type"] == "interruption"}
    actions = []
    was_speaking = False
    for step in range(n_steps):
        talking = tl.speaking(tl.assistant, step, ("turn",))
        backchannel = tl.speaking(tl.assistant, step, ("backchannel",))
        if talking:
            actions.append("speak" if was_speaking else "start")
        elif step in yields:
            actions.append("stop")
        elif backchannel:
            actions.append("backchannel")
        else:
            actions.append("listen")
        was_speaking = talking
    return actions
