"""The streaming duplex engine: non-blocking input, chunking invariance, barge-in, training equivalence."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.duplex.engine import (
    ActionEvent,
    AudioChunk,
    ContextFullError,
    DuplexEngine,
    DuplexOptions,
    DuplexRunner,
    SessionError,
    Stopped,
    TextDelta,
    TurnEnd,
    TurnStart,
)
from funaudiochat.duplex.model import ACTIONS, STEP_SAMPLES, duplex_forward, enable_duplex
from funaudiochat.generation.sampling import SamplingConfig
from funaudiochat.testing import GatedHead, duplex_head_bias
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor, Message
from funaudiochat.testing import word_tokenizer

SYSTEM = "hello"
SAMPLED = SamplingConfig(temperature=1.0)


def mic(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def processor() -> FunAudioChatProcessor:
    return FunAudioChatProcessor(word_tokenizer(vocab_size=512), tiny_config())


def tiny_duplex_model() -> FunAudioChatForConditionalGeneration:
    torch.manual_seed(0)
    return enable_duplex(FunAudioChatForConditionalGeneration(tiny_config())).eval()


@pytest.fixture(scope="module")
def model() -> FunAudioChatForConditionalGeneration:
    return tiny_duplex_model()


head_bias = duplex_head_bias


TALK = dict(start=10.0, speak=9.0)  # takes the floor at once and keeps it


class CountingDetokenizer:
    """A stand-in vocoder: each token becomes 10 samples of its value, in chunks of 7 tokens (so it
    holds tokens back across steps, as a real streaming detokenizer does)."""

    sample_rate = 1000

    def stream(self, voice):
        class Stream:
            def __init__(self):
                self.buf = []

            def push(self, tokens):
                self.buf += list(tokens)
                out = []
                while len(self.buf) >= 7:
                    out.append(np.repeat(np.array(self.buf[:7], dtype=np.float32), 10))
                    self.buf = self.buf[7:]
                return out

            def flush(self):
                rest, self.buf = np.repeat(np.array(self.buf, dtype=np.float32), 10), []
                return rest

        return Stream()


def speech_steps(events) -> list[int]:
    return [e.step for e in events if isinstance(e, (AudioChunk, TextDelta))]


# ---------------------------------------------------------------------- refusal and input checks
def test_half_duplex_model_is_refused(processor):
    torch.manual_seed(0)
    half = FunAudioChatForConditionalGeneration(tiny_config())
    with pytest.raises(ValueError, match="no duplex action head.*half-duplex checkpoint"):
        DuplexEngine(half, processor)


def test_bad_audio_is_rejected_with_a_clear_error(model, processor):
    session = DuplexEngine(model, processor).session(SYSTEM)
    with pytest.raises(ValueError, match="float samples"):
        session.push_audio(np.zeros(1600, dtype=np.int16))
    with pytest.raises(ValueError, match="mono audio as a 1-D array"):
        session.push_audio(np.zeros((1600, 2), dtype=np.float32))
    bad = np.zeros(1600, dtype=np.float32)
    bad[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        session.push_audio(bad)
    with pytest.raises(TypeError, match="numpy array"):
        session.push_audio([0.0] * 1600)
    assert session.samples_received == 0  # nothing half-accepted
    session.push_audio(np.zeros(0, dtype=np.float32))  # empty chunks are fine
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.push_audio(np.zeros(1600, dtype=np.float32))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="min_start_prob"):
        DuplexOptions(min_start_prob=1.5)
    with pytest.raises(ValueError, match="action_temperature"):
        DuplexOptions(action_temperature=-1)


# ---------------------------------------------------------------------- threading
def test_push_audio_returns_at_once_while_a_step_is_computed(processor):
    model = tiny_duplex_model()
    gate = GatedHead(model.duplex_head)
    model.duplex_head = gate
    engine = DuplexEngine(model, processor)
    session = engine.session(SYSTEM)
    audio = mic(2.3)
    runner = engine.runner(session)
    try:
        session.push_audio(audio[:STEP_SAMPLES])
        assert gate.entered.wait(10), "the runner never started step 0"
        latencies = []
        for start in range(STEP_SAMPLES, len(audio), 1600):  # 100 ms chunks while step 0 is blocked
            t0 = time.perf_counter()
            session.push_audio(audio[start : start + 1600])
            latencies.append(time.perf_counter() - t0)
        assert session.step == 0  # the model is still stuck in step 0
        assert max(latencies) < 0.05, f"push_audio waited {max(latencies):.3f} s"
        gate.release.set()
        assert runner.wait_processed(timeout=30)
    finally:
        gate.release.set()
        runner.stop()
    n = len(audio) // STEP_SAMPLES
    assert session.samples_received == len(audio)
    assert session.step == n
    actions = [e for e in runner.drain() if isinstance(e, ActionEvent)]
    assert [e.step for e in actions] == list(range(n))  # every step, in order: no audio was lost
    stats = session.stats()
    assert stats.steps == n and stats.late_steps >= 1 and stats.max_lag_steps >= 5
    assert stats.rtf > 0 and stats.max_step_ms > 0 and len(stats.recent_step_ms) == n


def run_in_chunks(engine, audio, chunk, seed=7, options=None):
    session = engine.session(SYSTEM, seed=seed, options=options)
    events = []
    for start in range(0, len(audio), chunk):
        session.push_audio(audio[start : start + chunk])
        events += session.process()
    return events, session


def test_chunk_sizes_give_the_same_steps_and_outputs(model, processor):
    opts = DuplexOptions(action_temperature=1.0, text_sampling=SAMPLED, speech_sampling=SAMPLED, warn_lag_steps=100)
    engine = DuplexEngine(model, processor, detokenizer=CountingDetokenizer(), options=opts)
    audio = mic(3.0, seed=1)
    with head_bias(model, listen=5.0, start=5.0, speak=8.0, stop=6.0):
        whole, _ = run_in_chunks(engine, audio, len(audio))
        assert len([e for e in whole if isinstance(e, ActionEvent)]) == 15
        assert any(isinstance(e, AudioChunk) for e in whole)  # the comparison covers speech too
        assert any(isinstance(e, ActionEvent) and e.action == "listen" for e in whole)
        for ms in (100, 200, 350):
            events, _ = run_in_chunks(engine, audio, 16 * ms)
            assert len(events) == len(whole)
            for a, b in zip(events, whole):
                if isinstance(a, AudioChunk):
                    assert (a.step, a.turn, a.tokens) == (b.step, b.turn, b.tokens)
                    np.testing.assert_array_equal(a.samples, b.samples)
                else:
                    assert a == b
        # the background runner, fed 350 ms at a time, computes the same
        session = engine.session(SYSTEM, seed=7)
        with DuplexRunner(session) as runner:
            for start in range(0, len(audio), 5600):
                session.push_audio(audio[start : start + 5600])
            assert runner.wait_processed(timeout=30)
        threaded = runner.drain()
    assert [e for e in threaded if not isinstance(e, AudioChunk)] == [e for e in whole if not isinstance(e, AudioChunk)]


# ---------------------------------------------------------------------- barge-in
def test_stop_silences_the_turn_in_the_same_step(model, processor):
    opts = DuplexOptions(speech_sampling=SAMPLED, warn_lag_steps=100)
    engine = DuplexEngine(model, processor, detokenizer=CountingDetokenizer(), options=opts)
    session = engine.session(SYSTEM, seed=3)
    audio = mic(3.0, seed=2)
    with head_bias(model, **TALK):
        session.push_audio(audio[: 8 * STEP_SAMPLES])
        before = session.process()
    assert session.speaking
    spoken = [t for e in before if isinstance(e, AudioChunk) for t in e.tokens]
    assert len(spoken) == 5 * (8 - 2)  # 2 delay steps, then 5 tokens a step
    heard = np.concatenate([e.samples for e in before if isinstance(e, AudioChunk)])
    np.testing.assert_array_equal(heard, np.repeat(np.array(spoken[:28], dtype=np.float32), 10))  # 2 held back
    with head_bias(model, stop=20.0, listen=15.0):  # in a turn stop wins; afterwards listen does
        session.push_audio(audio[8 * STEP_SAMPLES :])
        after = session.process()
    assert [type(e) for e in after[:3]] == [ActionEvent, Stopped, TurnEnd]
    assert after[0] == ActionEvent(8, "stop", after[0].prob, False)
    assert after[1] == Stopped(8, 1)
    end = after[2]
    assert end.interrupted and end.reason == "stop" and end.speech_tokens == spoken
    assert speech_steps(after) == []  # nothing of the cut turn (or anything else) after the stop
    assert not any(isinstance(e, AudioChunk) for e in after)  # the 2 held-back tokens are never played
    assert not session.speaking
    assert {e.action for e in after if isinstance(e, ActionEvent)} == {"stop", "listen"}
    assert session.prev_speech == [model.config.audio_config.pad_token_id] * 5


def test_interrupt_forces_a_stop_at_the_next_step(model, processor):
    engine = DuplexEngine(model, processor, options=DuplexOptions(speech_sampling=SAMPLED, warn_lag_steps=100))
    session = engine.session(SYSTEM)
    audio = mic(1.6)
    with head_bias(model, **TALK):
        session.push_audio(audio[: 5 * STEP_SAMPLES])
        session.process()
        session.interrupt()
        session.push_audio(audio[5 * STEP_SAMPLES :])
        events = session.process()
    assert events[0].action == "stop" and events[0].forced and isinstance(events[1], Stopped)
    assert events[1].step == 5
    # the head still says "start": a new turn begins at the next step, with its own turn id
    assert TurnStart(6, 2, "turn") in events
    assert all(e.turn == 2 for e in events if isinstance(e, (AudioChunk, TextDelta)))


def test_runner_drops_queued_audio_of_a_cut_turn(model, processor):
    # max_turn_seconds cuts turn 1 after 5 steps: a deterministic stop while nobody reads the queue
    opts = DuplexOptions(speech_sampling=SAMPLED, max_turn_seconds=1.0, warn_lag_steps=100)
    engine = DuplexEngine(model, processor, detokenizer=CountingDetokenizer(), options=opts)
    session = engine.session(SYSTEM)
    with head_bias(model, **TALK):
        alone = engine.session(SYSTEM)
        alone.push_audio(mic(2.2))
        produced = alone.process()
        assert any(isinstance(e, AudioChunk) and e.turn == 1 for e in produced)
        with DuplexRunner(session) as runner:
            session.push_audio(mic(2.2))
            assert runner.wait_processed(timeout=30)
        queued = runner.drain()
    stop = next(e for e in queued if isinstance(e, Stopped))
    assert stop == Stopped(5, 1)
    assert not any(isinstance(e, AudioChunk) and e.turn == 1 for e in queued)
    assert any(isinstance(e, AudioChunk) and e.turn == 2 for e in queued)  # the next turn is kept
    assert [e for e in queued if not isinstance(e, AudioChunk)] == [e for e in produced if not isinstance(e, AudioChunk)]


def test_natural_end_flushes_the_detokenizer(model, processor):
    engine = DuplexEngine(model, processor, detokenizer=CountingDetokenizer(),
                          options=DuplexOptions(speech_sampling=SAMPLED, warn_lag_steps=100))
    session = engine.session(SYSTEM)
    with head_bias(model, **TALK):
        session.push_audio(mic(1.4))
        session.process()
    # the head now yields the floor: the turn ends normally and its held-back audio comes out
    with head_bias(model, listen=10.0):
        session.push_audio(mic(0.2))
        events = session.process()
    end = next(e for e in events if isinstance(e, TurnEnd))
    assert end.reason == "listen" and not end.interrupted
    tail = [e for e in events if isinstance(e, AudioChunk)]
    assert len(end.speech_tokens) == 25  # 7 steps - 2 delay steps
    assert len(tail) == 1 and tail[0].tokens == [] and tail[0].step == 7
    np.testing.assert_array_equal(tail[0].samples, np.repeat(np.array(end.speech_tokens[21:], dtype=np.float32), 10))


# ---------------------------------------------------------------------- equivalence with training
def training_batch(model, processor, audio, trace):
    """The engine's own outputs as a teacher-forced training batch (``DuplexCollator``'s keys)."""
    cfg, k = model.config, model.group_size
    pad, n = cfg.audio_config.pad_token_id, len(trace)
    ids = processor.encode([Message("system", SYSTEM)]).input_ids
    speaking = [s.text_logits is not None for s in trace]
    return {
        "input_ids": torch.tensor([ids]),
        "prefix_lengths": torch.tensor([len(ids)]),
        "n_steps": torch.tensor([n]),
        "step_mask": torch.ones(1, n, dtype=torch.long),
        "attention_mask": torch.ones(1, len(ids) + n, dtype=torch.long),
        "user_audio": torch.from_numpy(audio[: n * STEP_SAMPLES])[None],
        "prev_text": torch.tensor([[cfg.sil_id] + [s.text_id for s in trace[:-1]]]),
        "prev_speech": torch.tensor([[[pad] * k] + [s.speech for s in trace[:-1]]]),
        "action_labels": torch.tensor([[ACTIONS.index(s.action) for s in trace]]),
        "text_labels": torch.tensor([[s.text_id if sp else -100 for s, sp in zip(trace, speaking)]]),
        "speech_labels": torch.tensor([[s.speech if sp else [-100] * k for s, sp in zip(trace, speaking)]]),
    }


@pytest.mark.parametrize("flush", [1, 25])
def test_streaming_steps_equal_the_training_forward(model, processor, flush):
    """Every step's logits equal ``duplex_forward`` (the training pass) over the engine's own outputs."""
    opts = DuplexOptions(action_temperature=1.0, text_sampling=SAMPLED, speech_sampling=SAMPLED, trace=True,
                         srh_flush_steps=flush, warn_lag_steps=100)
    engine = DuplexEngine(model, processor, options=opts)
    audio = mic(5.0, seed=4)
    with head_bias(model, listen=5.0, start=5.0, speak=8.0, stop=6.0):
        events, session = run_in_chunks(engine, audio, 3000, seed=11)
        trace = session.trace
        with torch.no_grad():
            out = duplex_forward(model, training_batch(model, processor, audio, trace))
    assert len(trace) == 25
    kinds = {s.action for s in trace}
    assert {"listen", "start", "speak"} <= kinds and len(kinds) >= 4  # silent and speaking steps both
    speech = out.speech_logits[0].float().view(len(trace), 5, -1)
    for t, s in enumerate(trace):
        torch.testing.assert_close(s.action_logits, out.action_logits[0, t].float(), atol=1e-4, rtol=1e-4)
        if s.text_logits is None:
            assert s.action in ("listen", "stop") and s.speech_logits is None
            continue
        torch.testing.assert_close(s.text_logits, out.text_logits[0, t].float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(s.speech_logits, speech[t], atol=1e-4, rtol=1e-4)
    # the events tell the same story as the trace
    assert [(e.step, e.action) for e in events if isinstance(e, ActionEvent)] == [(s.step, s.action) for s in trace]


# ---------------------------------------------------------------------- limits and failures
def test_full_context_is_a_clear_error_and_the_runner_reports_it(model, processor):
    engine = DuplexEngine(model, processor)
    session = engine.session(SYSTEM)
    engine.max_steps = 3  # a tiny context
    got = []
    runner = DuplexRunner(session, on_event=got.append).start()
    session.push_audio(mic(1.0))
    deadline = time.monotonic() + 30
    while runner.running and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop()
    errors = [e for e in got if isinstance(e, SessionError)]
    assert len(errors) == 1 and isinstance(errors[0].error, ContextFullError) and "open a new session" in errors[0].message
    assert [e.step for e in got if isinstance(e, ActionEvent)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="failed at step 3"):
        session.process()


def test_close_ends_the_turn_in_progress(model, processor):
    engine = DuplexEngine(model, processor, options=DuplexOptions(speech_sampling=SAMPLED))
    session = engine.session(SYSTEM)
    with head_bias(model, **TALK):
        session.push_audio(mic(0.8))
        session.process()
    events = session.close()
    assert len(events) == 1 and events[0].reason == "closed" and events[0].interrupted
    assert session.close() == [] and session.closed


class EosFavouringHead(torch.nn.Module):
    """Wraps the SRH's output head so that speech EOS always wins (a reply that ends at once)."""

    def __init__(self, head: torch.nn.Linear, eos: int) -> None:
        super().__init__()
        self.head = head
        self.eos = eos

    @property
    def weight(self) -> torch.Tensor:  # the SRH embeds previous tokens with it
        return self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(x)
        bonus = torch.zeros(out.shape[-1], dtype=out.dtype)
        bonus[self.eos] = 100.0
        return out + bonus


def test_speech_eos_ends_the_turn(processor):
    model = tiny_duplex_model()
    eos = model.config.audio_config.eos_token_id
    model.audio_invert_tower.lm_head = EosFavouringHead(model.audio_invert_tower.lm_head, eos)
    engine = DuplexEngine(model, processor, options=DuplexOptions(trace=True, warn_lag_steps=100))
    session = engine.session(SYSTEM)
    with head_bias(model, **TALK):
        session.push_audio(mic(1.0))
        events = session.process()
    # 2 delay steps of BOS, then the first sampled token is EOS: the turn is over at step 2
    end = next(e for e in events if isinstance(e, TurnEnd))
    assert (end.step, end.turn, end.reason, end.interrupted, end.speech_tokens) == (2, 1, "eos", False, [])
    assert session.trace[2].speech == [eos] * 5  # the EOS group is fed back at step 3, as in training
    assert TurnStart(3, 2, "turn") in events  # the head still wants to talk: a new turn
    assert not any(isinstance(e, AudioChunk) for e in events)


def test_min_start_prob_keeps_an_unsure_assistant_quiet(model, processor):
    engine = DuplexEngine(model, processor, options=DuplexOptions(min_start_prob=0.9, warn_lag_steps=100))
    session = engine.session(SYSTEM)
    with head_bias(model, start=1.0):  # start is the most likely action, with p ~ 0.58
        session.push_audio(mic(0.6))
        events = session.process()
    actions = [e for e in events if isinstance(e, ActionEvent)]
    assert [(e.action, e.forced) for e in actions] == [("listen", True)] * 3
    assert not session.speaking
    with head_bias(model, backchannel=10.0):  # a confident backchannel goes through
        session.push_audio(mic(0.4))
        events = session.process()
    assert TurnStart(3, 1, "backchannel") in events
    assert [e.action for e in events if isinstance(e, ActionEvent)] == ["backchannel"] * 2


def test_start_and_stop_thresholds_act_on_a_less_likely_action(model, processor):
    # p(start) = e / (e^2 + e + 1) ~ 0.245 among the silent actions: below argmax, above 0.2
    quiet = DuplexEngine(model, processor, options=DuplexOptions(start_prob=0.3, warn_lag_steps=100))
    session = quiet.session(SYSTEM)
    with head_bias(model, listen=2.0, start=1.0):
        session.push_audio(mic(0.4))
        assert [e.action for e in session.process() if isinstance(e, ActionEvent)] == ["listen"] * 2
    eager = DuplexEngine(model, processor, options=DuplexOptions(start_prob=0.2, stop_prob=0.2, warn_lag_steps=100))
    session = eager.session(SYSTEM)
    with head_bias(model, listen=2.0, start=1.0):
        session.push_audio(mic(0.2))
        events = session.process()
    assert [e.action for e in events if isinstance(e, ActionEvent)] == ["start"]
    # in a turn: p(stop) = e / (e^2 + e + 1) ~ 0.245 with speak the likeliest
    with head_bias(model, speak=2.0, stop=1.0):
        session.push_audio(mic(0.2))
        events = session.process()
    assert [e.action for e in events if isinstance(e, ActionEvent)] == ["stop"]
    assert any(isinstance(e, Stopped) for e in events)
    with pytest.raises(ValueError, match="start_prob"):
        DuplexOptions(start_prob=0.0)
