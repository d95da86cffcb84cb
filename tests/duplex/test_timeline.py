"""Duplex timeline synthesis: no lost words, correct labels, configurable event rates, measured layouts."""

import math
import random

import pytest

from funaudiochat.duplex.timeline import (
    ACTIONS,
    ASSISTANT_BACKCHANNELS,
    STEP_SECONDS,
    USER_BACKCHANNELS,
    AssistantSpan,
    DuplexConfig,
    SpokenClip,
    Turn,
    assistant_turn_steps,
    kept_speech_tokens,
    span_actions,
    synthesize_timeline,
)

DIALOGUE = [
    Turn("user", "hi there can you tell me how far away the moon is from the earth"),
    Turn("assistant", "sure the moon is about three hundred and eighty four thousand kilometres away from the earth on average"),
    Turn("user", "and how long would it take to drive there at highway speed"),
    Turn("assistant", "at one hundred kilometres per hour it would take about five and a half months of driving without any stops"),
    Turn("user", "wow that is a long road trip"),
    Turn("assistant", "it certainly is so pack plenty of snacks"),
]


def step_of(t):
    return int(t / STEP_SECONDS + 1e-9)


@pytest.mark.parametrize("seed", range(25))
def test_invariants_hold_for_any_seed(seed):
    cfg = DuplexConfig(interruption_rate=0.5, overlap_rate=0.5, user_backchannel_rate=0.5, assistant_backchannel_rate=0.5)
    tl = synthesize_timeline(DIALOGUE, cfg, seed=seed)
    # no lost user words, in order, no overlap within the user's own turns
    user_turn_words = [w for w in tl.user if w.kind == "turn"]
    assert [w.text for w in user_turn_words] == [x for t in DIALOGUE if t.speaker == "user" for x in t.text.split()]
    assert all(a.end <= b.start + 1e-9 for a, b in zip(user_turn_words, user_turn_words[1:]))
    # assistant words are kept or listed as dropped, never lost
    said = [w.text for w in tl.assistant if w.kind == "turn"]
    expected = [x for t in DIALOGUE if t.speaker == "assistant" for x in t.text.split()]
    assert len(said) + len(tl.dropped) == len(expected)
    assert set(tl.actions) <= set(ACTIONS)
    # labels agree with the streams
    for step, action in enumerate(tl.actions):
        assert (action in ("start", "speak")) == tl.speaking(tl.assistant, step, ("turn",))
    # every barge-in: the assistant falls silent within stop_steps, and a 'stop' marks it
    for e in (e for e in tl.events if e["type"] == "interruption"):
        assert step_of(e["assistant_stops"] - 1e-9) <= step_of(e["user_starts"]) + cfg.stop_steps
        assert tl.actions[step_of(e["assistant_stops"] - 1e-9) + 1] == "stop"
    # backchannels from the user never interrupt: the assistant keeps speaking through them
    for e in (e for e in tl.events if e["type"] == "user_backchannel"):
        assert tl.actions[step_of(e["time"])] in ("start", "speak")


def test_no_events_gives_clean_turn_taking():
    cfg = DuplexConfig(interruption_rate=0, overlap_rate=0, user_backchannel_rate=0, assistant_backchannel_rate=0)
    tl = synthesize_timeline(DIALOGUE, cfg, seed=3)
    assert tl.events == [] and tl.dropped == [] and "stop" not in tl.actions
    assert tl.actions.count("start") == 3  # one per assistant turn
    # the assistant starts only after the user has finished
    for step, action in enumerate(tl.actions):
        if action == "start":
            assert not tl.speaking(tl.user, step)


def test_interruptions_always_when_rate_is_one():
    cfg = DuplexConfig(interruption_rate=1.0)
    tl = synthesize_timeline(DIALOGUE, cfg, seed=0)
    assert [e["turn"] for e in tl.events if e["type"] == "interruption"] == [1, 3]  # the last reply has no next user turn
    assert tl.dropped and tl.actions.count("stop") == 2


def test_deterministic_and_validated():
    assert synthesize_timeline(DIALOGUE, seed=7) == synthesize_timeline(DIALOGUE, seed=7)
    with pytest.raises(ValueError, match="interruption_rate"):
        DuplexConfig(interruption_rate=1.5)
    with pytest.raises(ValueError, match="speaker"):
        Turn("narrator", "hello")


# ---------------------------------------------------------------- measured durations (from real audio)


def measured_clips(dialogue, seed):
    """Plausible clip lengths (12-16 characters a second, 25 speech tokens a second)."""
    rng = random.Random(seed)
    clips = []
    for turn in dialogue:
        seconds = len(turn.text) / rng.uniform(12, 16)
        n = max(1, int(seconds * 25)) if turn.speaker == "assistant" else None
        clips.append(SpokenClip(seconds, n))
    return clips


USER_BC = {t: SpokenClip(0.45) for t in USER_BACKCHANNELS}
ASSISTANT_BC = {t: SpokenClip(0.4, n_speech=10) for t in ASSISTANT_BACKCHANNELS}
BUSY = DuplexConfig(interruption_rate=0.5, overlap_rate=0.5, user_backchannel_rate=0.5, assistant_backchannel_rate=0.5)


def measured(seed, cfg=BUSY, dialogue=DIALOGUE):
    clips = measured_clips(dialogue, seed)
    return clips, synthesize_timeline(dialogue, cfg, seed=seed, clips=clips, user_backchannels=USER_BC,
                                      assistant_backchannels=ASSISTANT_BC)


def test_assistant_turn_steps_follow_the_speech_stream():
    # speech_delay BOS + n tokens + EOS, five per step
    assert [assistant_turn_steps(n) for n in (1, 4, 5, 9, 10, 40)] == [3, 3, 4, 4, 5, 11]
    assert assistant_turn_steps(4, speech_delay=0) == 1 and assistant_turn_steps(5, speech_delay=0) == 2
    assert kept_speech_tokens(10, 13) == 5 and kept_speech_tokens(10, 11) == 0
    with pytest.raises(ValueError):
        assistant_turn_steps(-1)


@pytest.mark.parametrize("seed", range(25))
def test_measured_layout_invariants(seed):
    cfg = BUSY
    clips, tl = measured(seed)
    assert tl.measured
    delay = cfg.speech_delay
    # no lost user words, in order, each user turn lasts exactly its clip
    user_turn_words = [w for w in tl.user if w.kind == "turn"]
    assert [w.text for w in user_turn_words] == [x for t in DIALOGUE if t.speaker == "user" for x in t.text.split()]
    assert all(a.end <= b.start + 1e-9 for a, b in zip(user_turn_words, user_turn_words[1:]))
    for u in (u for u in tl.user_spans if u.kind == "turn"):
        assert u.text == DIALOGUE[u.turn].text and u.end - u.start == pytest.approx(clips[u.turn].seconds)
    # assistant words: spoken or listed as dropped, per turn and in total
    turns = [s for s in tl.assistant_spans if s.kind == "turn"]
    assert [s.turn for s in turns] == [i for i, t in enumerate(DIALOGUE) if t.speaker == "assistant"]
    for s in turns:
        assert s.text.split() + list(s.dropped) == DIALOGUE[s.turn].text.split()
    said = [w.text for w in tl.assistant if w.kind == "turn"]
    assert said == [x for s in turns for x in s.text.split()]
    assert tl.dropped == [x for s in turns for x in s.dropped]
    # the labels are the spans' and the spans have the exact step counts of their speech tokens
    assert tl.actions == span_actions(tl.assistant_spans, tl.steps)
    for s in tl.assistant_spans:
        assert s.n_speech == (clips[s.turn].n_speech if s.kind == "turn" else ASSISTANT_BC[s.text].n_speech)
        if s.stop_step is None:
            assert s.end_step - s.start_step == assistant_turn_steps(s.n_speech, delay) and s.n_kept == s.n_speech
        else:
            assert s.end_step == s.stop_step and tl.actions[s.stop_step] == "stop"
            assert s.n_kept == 5 * (s.stop_step - s.start_step) - delay and 0 < s.n_kept < s.n_speech
        labels = tl.actions[s.start_step:s.end_step]
        if s.kind == "turn":
            assert labels == ["start"] + ["speak"] * (len(labels) - 1)
        else:
            assert set(labels) == {"backchannel"}
        # its words are heard after the speech delay and before the turn's end (or the cut)
        inside = [w.text for w in tl.assistant if w.kind == s.kind
                  and s.start_step * STEP_SECONDS + delay / 25 - 1e-9 <= w.start
                  and w.end <= s.end_step * STEP_SECONDS + 1e-9]
        assert inside == (s.text.split() if s.kind == "turn" else [s.text])
    # every barge-in: the next user turn starts at the cut, the assistant stops stop_steps later
    for e in (e for e in tl.events if e["type"] == "interruption"):
        span = next(s for s in turns if s.turn == e["turn"])
        nxt = next(u for u in tl.user_spans if u.turn == e["turn"] + 1)
        assert nxt.start == e["user_starts"] and span.stop_step == step_of(e["user_starts"]) + cfg.stop_steps
        assert e["assistant_stops"] == pytest.approx(span.stop_step * STEP_SECONDS)
        assert span.start_step < step_of(e["user_starts"]) < span.stop_step
    # user backchannels fall inside the reply they acknowledge; assistant ones inside a user turn
    for u in (u for u in tl.user_spans if u.kind == "backchannel"):
        assert tl.actions[step_of(u.start)] in ("start", "speak") and tl.actions[step_of(u.end - 1e-9)] in ("start", "speak")
    for s in (s for s in tl.assistant_spans if s.kind == "backchannel"):
        owner = next(u for u in tl.user_spans if u.turn == s.turn and u.kind == "turn")
        assert owner.start <= s.start_step * STEP_SECONDS and s.end_step * STEP_SECONDS <= owner.end + 1e-9
    # a reply starts on a step, response_delay_steps after its question ended (when not after a cut)
    for s in turns:
        before = [u for u in tl.user_spans if u.kind == "turn" and u.turn < s.turn]
        if before:
            assert s.start_step * STEP_SECONDS >= before[-1].end + cfg.response_delay_steps * STEP_SECONDS - 1e-9
    # the record ends with a silent step after the last speech
    assert tl.actions[-1] == "listen" and all(u.end <= tl.steps * STEP_SECONDS for u in tl.user_spans)


def test_measured_exact_steps_without_events():
    cfg = DuplexConfig(interruption_rate=0, overlap_rate=0, user_backchannel_rate=0, assistant_backchannel_rate=0,
                       pause_range=(0.0, 0.0))
    dialogue = [Turn("user", "what is the capital of france"), Turn("assistant", "it is paris")]
    clips = [SpokenClip(1.53), SpokenClip(0.9, n_speech=40)]
    tl = synthesize_timeline(dialogue, cfg, seed=0, clips=clips)
    # no pause: the user ends at 1.53 s, one response step later is 1.73 s, the next step boundary is step 9
    assert tl.assistant_spans[0].start_step == 9
    assert tl.actions == ["listen"] * 9 + ["start"] + ["speak"] * 10 + ["listen"]  # ceil(51 / 5) = 11 steps
    assert tl.assistant[0].start == pytest.approx(9 * STEP_SECONDS + 0.4)  # heard after 10 delay tokens
    assert tl.assistant[-1].end == pytest.approx(9 * STEP_SECONDS + 0.4 + 40 / 25)
    assert tl.user_spans[0].start == 0.0 and tl.user_spans[0].end == pytest.approx(1.53)
    # the speech delay is configurable and changes the span
    tl0 = synthesize_timeline(dialogue, DuplexConfig(interruption_rate=0, overlap_rate=0, user_backchannel_rate=0,
                                                     assistant_backchannel_rate=0, speech_delay=0,
                                                     pause_range=(0.0, 0.0)), clips=clips)
    assert tl0.actions.count("speak") + 1 == math.ceil(41 / 5)


def test_measured_interruption_cuts_on_a_step():
    cfg = DuplexConfig(interruption_rate=1.0, user_backchannel_rate=0, assistant_backchannel_rate=0)
    clips, tl = measured(0, cfg)
    cuts = [s for s in tl.assistant_spans if s.stop_step is not None]
    assert [s.turn for s in cuts] == [1, 3]  # the last reply has no next user turn
    assert tl.actions.count("stop") == 2 and tl.dropped
    assert [e["turn"] for e in tl.events if e["type"] == "interruption"] == [1, 3]


def test_measured_word_times_are_used():
    dialogue = [Turn("user", "one two three"), Turn("assistant", "four five six")]
    cfg = DuplexConfig(interruption_rate=0, overlap_rate=0, user_backchannel_rate=0, assistant_backchannel_rate=0)
    clips = [SpokenClip(2.0, word_times=((0.1, 0.3), (0.5, 0.9), (1.0, 1.9))), SpokenClip(1.0, n_speech=25)]
    tl = synthesize_timeline(dialogue, cfg, clips=clips)
    assert [(w.start, w.end) for w in tl.user] == [(0.1, 0.3), (0.5, 0.9), (1.0, 1.9)]


def test_measured_inputs_are_validated():
    with pytest.raises(ValueError, match="one clip per turn"):
        synthesize_timeline(DIALOGUE, clips=[SpokenClip(1.0)])
    with pytest.raises(ValueError, match="needs n_speech"):
        synthesize_timeline(DIALOGUE[:2], clips=[SpokenClip(1.0), SpokenClip(1.0)])
    with pytest.raises(ValueError, match="user_backchannels"):
        synthesize_timeline(DIALOGUE[:2], clips=[SpokenClip(1.0), SpokenClip(1.0, 25)])
    with pytest.raises(ValueError, match="positive"):
        SpokenClip(0.0)
    with pytest.raises(ValueError, match="word_times"):
        SpokenClip(1.0, word_times=((0.5, 0.4),))
    with pytest.raises(ValueError, match="Turn"):
        synthesize_timeline([("user", "hello")])
    with pytest.raises(ValueError, match="speech_delay"):
        DuplexConfig(speech_delay=-1)
    with pytest.raises(ValueError, match="overlaps"):
        span_actions([AssistantSpan(0, "turn", "a", 0, 4), AssistantSpan(1, "turn", "b", 3, 6)], 8)


def test_estimated_layout_lists_its_spans():
    tl = synthesize_timeline(DIALOGUE, BUSY, seed=4)
    assert not tl.measured
    assert [u.turn for u in tl.user_spans if u.kind == "turn"] == [0, 2, 4]
    assert [s.turn for s in tl.assistant_spans if s.kind == "turn"] == [1, 3, 5]
    assert [x for s in tl.assistant_spans if s.kind == "turn" for x in s.dropped] == tl.dropped
