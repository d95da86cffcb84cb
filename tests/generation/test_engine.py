"""The generation engine: correctness against training, isolation, batching, cancellation, stops."""

import asyncio

import numpy as np
import threading

import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.generation import Engine, EndOfTurn, SamplingConfig, SpeechTokens, TextDelta, TurnOptions
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor, Message
from funaudiochat.testing import word_tokenizer

from .conftest import SPEECH, SYSTEM, user_audio

GREEDY_S2S = TurnOptions(mode="s2s", max_seconds=5, speech_sampling=SamplingConfig())
S2T = TurnOptions(mode="s2t", max_seconds=5)


def check_invariants(conv, k=5):
    assert conv.srh_positions + conv.backlog_length == conv.positions
    assert conv.cache.length == conv.positions
    if conv.srh_cache is not None:
        assert conv.srh_cache.length == k * conv.srh_positions


def test_speech_reply_reproduces_what_was_trained(trained_engine):
    conv = trained_engine.conversation(system_prompt=SYSTEM)
    events = list(trained_engine.stream(conv, Message("user", audio=user_audio()), GREEDY_S2S))
    end = events[-1]
    assert isinstance(end, EndOfTurn) and end.reason == "eos"
    assert end.text == "paris is the capital"
    assert end.speech_tokens == SPEECH
    # streamed pieces add up to the final result; speech starts after the 2-step delay
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip() == end.text
    assert [t for e in events if isinstance(e, SpeechTokens) for t in e.tokens] == SPEECH
    # 2 delay groups, 7 speech groups (the last one: 2 tokens then speech EOS), the EOS group, <|im_end|>
    assert end.steps == 2 + 7 + 1 + 1
    assert {"prefill_s", "first_text_s", "first_speech_s", "total_s"} <= set(end.timings)
    check_invariants(conv)
    assert conv.messages[-1].role == "assistant" and conv.messages[-1].speech_tokens == SPEECH


def test_text_reply_skips_the_srh(trained_engine):
    conv = trained_engine.conversation(system_prompt=SYSTEM)
    end = trained_engine.respond(conv, Message("user", "what is two plus two ?"), S2T)
    assert (end.text, end.reason, end.speech_tokens) == ("four", "eos", [])
    assert conv.srh_cache is None and conv.srh_positions == 0
    check_invariants(conv)


def test_multi_turn_keeps_history_in_the_cache(trained_engine):
    conv = trained_engine.conversation(system_prompt=SYSTEM)
    trained_engine.respond(conv, Message("user", "what is two plus two ?"), S2T)
    before = conv.positions
    trained_engine.respond(conv, Message("user", audio=user_audio()), GREEDY_S2S)
    check_invariants(conv)
    assert conv.positions > before
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    # the first turn's positions are still the same tensors: the history was not re-encoded
    assert conv.srh_positions == conv.positions - conv.backlog_length


def run_alone(engine, message, options):
    conv = engine.conversation(system_prompt=SYSTEM, seed=3)
    end = engine.respond(conv, message, options)
    return end.text, end.speech_tokens


@pytest.mark.parametrize("sampled", [False, True])
def test_interleaved_conversations_equal_each_alone(random_engine, sampled):
    opts = TurnOptions(mode="s2s", max_seconds=2.0, text_sampling=SamplingConfig(temperature=1.0) if sampled else SamplingConfig(),
                       speech_sampling=SamplingConfig(temperature=1.0) if sampled else SamplingConfig())
    msgs = [Message("user", audio=user_audio(5, 1.3)), Message("user", "hello who are you ?")]
    alone = [run_alone(random_engine, m, opts) for m in msgs]
    convs = [random_engine.conversation(system_prompt=SYSTEM, seed=3) for _ in msgs]
    turns = [random_engine.start(c, m, opts) for c, m in zip(convs, msgs)]
    while not all(t.done for t in turns):
        for t in turns:
            if not t.done:
                t.step()
    together = [(e.text, e.speech_tokens) for t in turns for e in t.close()]
    assert together == alone


def test_threads_share_one_model(random_engine):
    opts = TurnOptions(mode="s2s", max_seconds=2.0, speech_sampling=SamplingConfig())
    msgs = [Message("user", audio=user_audio(s, 1.0 + 0.2 * s)) for s in range(3)]
    alone = [run_alone(random_engine, m, opts) for m in msgs]
    results = [None] * 3

    def work(i):
        results[i] = run_alone(random_engine, msgs[i], opts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone


def test_batched_equals_one_at_a_time(random_engine):
    opts = TurnOptions(mode="s2s", max_seconds=2.0, speech_sampling=SamplingConfig())
    first = [Message("user", audio=user_audio(1, 0.8)), Message("user", audio=user_audio(2, 1.6)), Message("user", "what is the capital of france ?")]
    second = [Message("user", "thanks"), Message("user", audio=user_audio(3, 0.5)), Message("user", "tell me about paris")]
    solo, batch = [], []
    for i in range(3):
        conv = random_engine.conversation(system_prompt=SYSTEM)
        a = random_engine.respond(conv, first[i], opts)
        b = random_engine.respond(conv, second[i], opts)
        solo.append([(a.text, a.speech_tokens), (b.text, b.speech_tokens)])
    convs = [random_engine.conversation(system_prompt=SYSTEM) for _ in range(3)]
    a = random_engine.respond_batch(convs, first, opts)
    b = random_engine.respond_batch(convs, second, opts)  # histories of different lengths
    batch = [[(a[i].text, a[i].speech_tokens), (b[i].text, b[i].speech_tokens)] for i in range(3)]
    assert batch == solo
    for conv in convs:
        check_invariants(conv)


def test_cancel_truncates_to_what_was_spoken(trained_engine):
    conv = trained_engine.conversation(system_prompt=SYSTEM)
    turn = trained_engine.start(conv, Message("user", audio=user_audio()), GREEDY_S2S)
    for _ in range(5):  # 2 delay groups + 3 speech groups = 15 tokens produced
        turn.step()
    turn.cancel(spoken_tokens=7)
    events = turn.step()
    assert events == [[]] and turn.done  # stopped within one step, nothing more produced
    end = turn.close()[0]
    assert end.reason == "cancelled"
    assert end.speech_tokens == SPEECH[:7]
    assert conv.messages[-1].speech_tokens == SPEECH[:7]
    check_invariants(conv)
    # the conversation goes on normally
    nxt = trained_engine.respond(conv, Message("user", "what is two plus two ?"), S2T)
    assert nxt.reason in ("eos", "max_duration")
    check_invariants(conv)


def test_consumer_stopping_early_cancels_cleanly(trained_engine):
    conv = trained_engine.conversation(system_prompt=SYSTEM)
    stream = trained_engine.stream(conv, Message("user", audio=user_audio()), GREEDY_S2S)
    for event in stream:
        if isinstance(event, SpeechTokens):
            break
    stream.close()
    check_invariants(conv)
    assert not conv.lock.locked()
    trained_engine.respond(conv, Message("user", "what is two plus two ?"), S2T)


def test_max_duration_stops_the_reply(trained_engine):
    conv = trained_engine.conversation(system_prompt=SYSTEM)
    end = trained_engine.respond(conv, Message("user", audio=user_audio()),
                                 TurnOptions(mode="s2s", max_seconds=0.8, speech_sampling=SamplingConfig()))
    assert end.reason == "max_duration"
    assert end.speech_tokens == SPEECH[:10]  # 4 steps: 2 delay groups + 2 speech groups
    check_invariants(conv)


def test_seeds_make_sampling_reproducible(random_engine):
    opts = TurnOptions(mode="s2s", max_seconds=1.0, text_sampling=SamplingConfig(temperature=1.5),
                       speech_sampling=SamplingConfig(temperature=1.5, top_k=50))

    def run(seed):
        conv = random_engine.conversation(seed=seed)
        end = random_engine.respond(conv, Message("user", "hello"), opts)
        return end.text, end.speech_tokens

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_async_stream_equals_sync(trained_engine):
    async def collect():
        conv = trained_engine.conversation(system_prompt=SYSTEM)
        return [e async for e in trained_engine.astream(conv, Message("user", audio=user_audio()), GREEDY_S2S)]

    events = asyncio.run(collect())
    assert events[-1].text == "paris is the capital" and events[-1].speech_tokens == SPEECH


def test_one_reply_at_a_time_per_conversation(trained_engine):
    conv = trained_engine.conversation(system_prompt=SYSTEM)
    turn = trained_engine.start(conv, Message("user", "hello"), S2T)
    with pytest.raises(RuntimeError, match="already has a reply in progress"):
        trained_engine.start(conv, Message("user", "hello"), S2T)
    turn.close()


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="mode must be one of"):
        TurnOptions(mode="speech")
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


class CountingDetokenizer:
    """A stand-in vocoder: each token becomes 10 samples of its value, in chunks of 5 tokens."""

    sample_rate = 1000

    def stream(self, voice):
        outer = self

        class Stream:
            def __init__(self):
                self.buf, self.voice = [], voice

            def push(self, tokens):
                self.buf += tokens
                out = []
                while len(self.buf) >= 5:
                    out.append(np.repeat(np.array(self.buf[:5], dtype=np.float32), 10))
                    self.buf = self.buf[5:]
                return out

            def flush(self):
                rest = np.repeat(np.array(self.buf, dtype=np.float32), 10)
                self.buf = []
                return rest

        return Stream()


def test_audio_chunks_follow_the_speech_tokens(trained_engine):
    from funaudiochat.generation import AudioChunk

    engine = Engine(trained_engine.model, trained_engine.processor, detokenizer=CountingDetokenizer())
    conv = engine.conversation(system_prompt=SYSTEM)
    events = list(engine.stream(conv, Message("user", audio=user_audio()), GREEDY_S2S))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert all(c.sample_rate == 1000 for c in chunks)
    audio = np.concatenate([c.audio for c in chunks])
    np.testing.assert_array_equal(audio, np.repeat(np.array(SPEECH, dtype=np.float32), 10))
    assert "first_audio_s" in events[-1].timings


def test_system_prompt_states_are_computed_once_and_shared(random_engine):
    opts = TurnOptions(mode="s2t", max_seconds=0.4)
    a, b = random_engine.conversation(system_prompt="be brief"), random_engine.conversation(system_prompt="be brief")
    random_engine.attach_prefix(a)
    random_engine.attach_prefix(b)
    assert a.cache is b.cache and a.positions == b.positions > 0
    assert [m.role for m in a.messages] == ["system"] and a.pending == []
    random_engine.respond(a, Message("user", "hello"), opts)
    check_invariants(a)
    assert b.cache.length == b.positions  # b's shared prefix was not touched by a's turn


def test_tools_go_into_the_first_system_prompt(random_engine):
    conv = random_engine.conversation(seed=0)
    tools = ({"name": "get_weather", "parameters": {"type": "object", "properties": {}}},)
    end = random_engine.respond(conv, Message("user", "weather ?"), TurnOptions(mode="s2t", max_seconds=0.4, tools=tools))
    assert "<tools>" in conv.messages[0].text and "get_weather" in conv.messages[0].text
    assert isinstance(end.tool_calls, list)


@pytest.mark.parametrize("end", ["sil", "im_end"])
def test_text_holds_silence_once_it_has_ended_while_speech_goes_on(random_engine, end):
    """In training text never follows <|sil|> within a spoken turn (text EOS is mapped to it); an
    untrained model would write on, and an <|im_end|> there must not end the turn before the speech."""
    cfg = random_engine.model.config
    end_id = cfg.sil_id if end == "sil" else random_engine.processor.im_end

    def fed_text(force_end_at):
        conv = random_engine.conversation(system_prompt=SYSTEM, seed=0)
        turn = random_engine.start(conv, Message("user", audio=user_audio()), GREEDY_S2S)
        while not turn.done:
            row = turn.rows[0]
            if row.steps == force_end_at or (force_end_at == "before_a_word" and row.speaking and not row.visible):
                with torch.inference_mode():  # the text head "ends the text" at this step
                    turn.next_logits[0, end_id] = 1e4
            turn.step()
        fed = list(turn.rows[0].fed_text)
        turn.close()
        return fed[: fed.index(cfg.audio_eos_id)]  # the text stream while speaking

    free, ended = fed_text(None), fed_text(3)
    assert free[:3] == ended[:3] and len(free) == len(ended) > 6
    assert any(t != cfg.sil_id for t in free[4:])  # left alone, the random model keeps writing
    assert ended[3:] == [cfg.sil_id] * (len(ended) - 3)
    # a spoken turn always has written text: before its first word the text may not end
    assert fed_text("before_a_word") == free


def test_paced_model_pauses_with_sil_and_ends_text_only_with_im_end():
    """A paced model (config.text_layout) writes <|sil|> between words: it must not end the text."""
    torch.manual_seed(1)
    cfg = tiny_config(text_layout="paced")
    engine = Engine(FunAudioChatForConditionalGeneration(cfg), FunAudioChatProcessor(word_tokenizer(vocab_size=512), cfg))
    im_end = engine.processor.im_end

    def fed_text(force: int, at):
        conv = engine.conversation(system_prompt=SYSTEM, seed=0)
        turn = engine.start(conv, Message("user", audio=user_audio()), GREEDY_S2S)
        while not turn.done:
            row = turn.rows[0]
            if row.speaking and (row.steps == at or (at == "first" and not row.visible)):
                with torch.inference_mode():
                    turn.next_logits[0, force] = 1e4
            turn.step()
        fed = list(turn.rows[0].fed_text)
        turn.close()
        return fed[: fed.index(cfg.audio_eos_id)]

    paused = fed_text(cfg.sil_id, 3)
    assert paused[3] == cfg.sil_id and any(t != cfg.sil_id for t in paused[4:])  # the text goes on
    ended = fed_text(im_end, 3)
    assert ended[3:] == [cfg.sil_id] * (len(ended) - 3)  # <|im_end|> still ends it, fed as <|sil|>
    # before the first word the slots of the speech delay may pause (the paced layout puts the first
    # word one group before its speech); after them a word must come, and the text may never end first
    pausing = fed_text(cfg.sil_id, "first")
    assert pausing[:2] == [cfg.sil_id] * 2 and pausing[2] != cfg.sil_id
    assert fed_text(im_end, "first")[0] != cfg.sil_id
