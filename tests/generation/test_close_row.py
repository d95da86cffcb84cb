"""Rows of a batched turn leaving early (``Turn.close_row``): the others go on, the conversation is free at once."""

import numpy as np
import pytest

from funaudiochat.generation import AudioChunk, Engine, EndOfTurn, SpeechTokens, TextDelta
from funaudiochat.processing import Message

from .conftest import SYSTEM, user_audio
from .test_engine import GREEDY_S2S, S2T, CountingDetokenizer, check_invariants

# Rows 0 and 2 ask the question the model was over-fitted on, so their greedy replies (11 steps) are
# the same on every machine; row 1's reply to an unseen "hello" is short (4 or 5 steps, by machine).  Why
# not an unseen recording in row 2: its reply was 12 steps on one CI machine and 4 on another.
MESSAGES = [Message("user", audio=user_audio()), Message("user", "hello"), Message("user", audio=user_audio())]
SHORT = 1
BEFORE = Message("user", "hello")  # the short row's earlier turn (S2T): its history is the longest
AFTER = Message("user", "what is two plus two ?")


@pytest.fixture(scope="module")
def engine(trained_engine) -> Engine:
    return Engine(trained_engine.model, trained_engine.processor, detokenizer=CountingDetokenizer())


def summary(end: EndOfTurn) -> tuple:
    return end.text, end.speech_tokens, end.reason, end.steps


def streamed(events: list) -> tuple:
    """What a client saw: the text, the speech tokens and the audio samples, in order."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    tokens = [t for e in events if isinstance(e, SpeechTokens) for t in e.tokens]
    chunks = [e.audio for e in events if isinstance(e, AudioChunk)]
    return text, tokens, np.concatenate(chunks).tolist() if chunks else []


def alone(engine: Engine) -> tuple[list, list, tuple]:
    """Each reply in its own conversation, one at a time (the short one then answers AFTER)."""
    ends, streams, after = [], [], None
    for i, message in enumerate(MESSAGES):
        conv = engine.conversation(system_prompt=SYSTEM)
        if i == SHORT:
            engine.respond(conv, BEFORE, S2T)
        events = list(engine.stream(conv, message, GREEDY_S2S))
        ends.append(summary(events[-1]))
        streams.append(streamed(events))
        if i == SHORT:
            after = summary(engine.respond(conv, AFTER, S2T))
    return ends, streams, after


def test_a_finished_row_leaves_the_batch_and_its_conversation_goes_on(engine):
    solo_ends, solo_streams, solo_after = alone(engine)
    convs = [engine.conversation(system_prompt=SYSTEM) for _ in MESSAGES]
    engine.respond(convs[SHORT], BEFORE, S2T)
    turn = engine.start_batch(convs, MESSAGES, GREEDY_S2S)
    events: list[list] = [[] for _ in MESSAGES]
    steps = 0
    while not turn.rows[SHORT].finished:
        for i, new in enumerate(turn.step()):
            events[i] += new
        steps += 1
    short_steps = solo_ends[SHORT][3]
    assert short_steps < min(solo_ends[0][3], solo_ends[2][3]), f"fixture: row {SHORT} must be the shortest reply"
    assert steps == short_steps and not turn.rows[0].finished and not turn.rows[2].finished
    width = turn.mask.shape[1]
    early = turn.close_row(SHORT)
    # the row left the batch; its longer history was the only thing in the leading columns
    assert turn.batch_size == 2 and turn.mask.shape[1] < width
    assert not convs[SHORT].lock.locked() and convs[0].lock.locked() and convs[2].lock.locked()
    check_invariants(convs[SHORT])
    assert summary(early) == solo_ends[SHORT]
    # the detokenizer's last audio comes at the close, when the reply spoke at all (on some machines the
    # unseen "hello" gets a reply without speech tokens)
    assert bool(turn.rows[SHORT].tail) == bool(solo_streams[SHORT][1])
    assert streamed(events[SHORT] + turn.rows[SHORT].tail) == solo_streams[SHORT]
    with pytest.raises(RuntimeError, match="already closed"):
        turn.close_row(SHORT)
    # the conversation takes its next turn while the batch is still running
    assert summary(engine.respond(convs[SHORT], AFTER, S2T)) == solo_after
    turn.cancel(SHORT)  # ignored: that row is gone
    while not turn.done:
        for i, new in enumerate(turn.step()):
            assert i != SHORT or new == []
            events[i] += new
    ends = turn.close()
    assert ends[SHORT] is early and turn.closed
    assert [summary(e) for e in ends] == solo_ends
    for i in (0, 2):
        assert streamed(events[i] + turn.rows[i].tail) == solo_streams[i]
    for conv in convs:
        check_invariants(conv)
        assert not conv.lock.locked()
    assert [m.role for m in convs[SHORT].messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    with pytest.raises(RuntimeError, match="turn already closed"):
        turn.close()


def test_cancelling_one_row_leaves_the_others_unchanged(engine):
    solo_ends, _, _ = alone(engine)
    convs = [engine.conversation(system_prompt=SYSTEM) for _ in MESSAGES]
    engine.respond(convs[SHORT], BEFORE, S2T)
    turn = engine.start_batch(convs, MESSAGES, GREEDY_S2S)
    for _ in range(4):  # 2 delay groups + 2 speech groups: 10 speech tokens so far in row 0
        turn.step()
    turn.cancel(0, spoken_tokens=3)
    assert turn.step()[0] == [] and turn.rows[0].finished
    cut = turn.close_row(0)
    assert cut.reason == "cancelled" and cut.speech_tokens == solo_ends[0][1][:3]
    assert convs[0].messages[-1].speech_tokens == cut.speech_tokens
    check_invariants(convs[0])
    ends = turn.close() if turn.done else None
    while ends is None:
        turn.step()
        ends = turn.close() if turn.done else None
    assert ends[0] is cut
    assert [summary(e) for e in ends[1:]] == solo_ends[1:]


def test_closing_an_unfinished_row_cancels_it(engine):
    convs = [engine.conversation(system_prompt=SYSTEM) for _ in range(2)]
    turn = engine.start_batch(convs, MESSAGES[:2], GREEDY_S2S)
    turn.step()
    end = turn.close_row(0)
    assert end.reason == "cancelled" and end.steps == 1 and not convs[0].lock.locked()
    check_invariants(convs[0])
    rest = turn.close()
    assert rest[0] is end and rest[1].reason == "cancelled"
    check_invariants(convs[1])
