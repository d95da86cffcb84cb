"""Duplex timeline synthesis: no lost words, correct labels, configurable event rates."""

import pytest

from funaudiochat.duplex.timeline import ACTIONS, STEP_SECONDS, DuplexConfig, Turn, synthesize_timeline

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
