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

Word timings are estimated from a speaking rate unless given; the synthesis is deterministic for a
seed.  Nothing is lost silently: user words are always all present, and assistant words cut by an
interruption are listed in :attr:`Timeline.dropped`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

STEP_SECONDS = 0.2
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

    words_per_second: float = 2.6
    rate_jitter: float = 0.15
    pause_range: tuple[float, float] = (0.2, 0.8)
    overlap_rate: float = 0.15  # the user starts before the assistant finished its last word(s)
    overlap_range: tuple[float, float] = (0.2, 0.6)
    interruption_rate: float = 0.2  # the user barges in mid-reply (the assistant must stop)
    user_backchannel_rate: float = 0.3  # per assistant turn of >= 2 s
    assistant_backchannel_rate: float = 0.2  # per user turn of >= 3 s
    stop_steps: int = 1  # steps the assistant may take to fall silent after a barge-in begins
    response_delay_steps: int = 1  # steps between the end of user speech and the assistant's start

    def __post_init__(self) -> None:
        for name in ("overlap_rate", "interruption_rate", "user_backchannel_rate", "assistant_backchannel_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.words_per_second <= 0:
            raise ValueError("words_per_second must be positive")
        if self.stop_steps < 1:
            raise ValueError("stop_steps must be >= 1")


@dataclass
class Timeline:
    """Two word streams, per-step assistant actions and the list of inserted events."""

    user: list[Word] = field(default_factory=list)
    assistant: list[Word] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # assistant words cut by interruptions

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


def synthesize_timeline(dialogue: list[Turn], config: DuplexConfig | None = None, seed: int = 0) -> Timeline:
    """Lay out ``dialogue`` on two streams with pauses, overlaps, interruptions and backchannels."""
    cfg = config or DuplexConfig()
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
                words = kept
                t = cut_at
            else:
                end = words[-1].end
                if words[-1].end - words[0].start >= 2.0 and rng.random() < cfg.user_backchannel_rate:
                    mid = words[len(words) // 2]
                    bc = rng.choice(USER_BACKCHANNELS)
                    tl.user.append(Word(bc, mid.start, min(mid.start + 0.4, end), kind="backchannel"))
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
                tl.events.append({"type": "assistant_backchannel", "turn": index, "time": mid.start, "text": bc})
            tl.user.extend(words)
            speaking_until["user"] = words[-1].end
            t = words[-1].end + rng.uniform(*cfg.pause_range)
    tl.user.sort(key=lambda w: w.start)
    tl.assistant.sort(key=lambda w: w.start)
    end = max([w.end for w in tl.user + tl.assistant] + [0.0])
    n_steps = _step(end) + 2
    tl.actions = label_actions(tl, n_steps)
    return tl


def label_actions(tl: Timeline, n_steps: int) -> list[str]:
    """The assistant's action at every step, from its stream and the interruptions."""
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
