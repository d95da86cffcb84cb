"""eval-duplex: scripted-user conversations against a tiny duplex model whose behaviour is forced.

The action head is replaced by a scripted policy that reads the conversation log (what the user has
said so far and the model's turns), so every outcome and latency below is known exactly.  The user's
speech is noise bursts: no TTS, no Whisper.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from funaudiochat.config import tiny_config
from funaudiochat.duplex.engine import DuplexEngine, DuplexOptions
from funaudiochat.duplex.model import ACTIONS, enable_duplex
from funaudiochat.evaluation.duplex import (
    DUPLEX_SCHEMA,
    PAPER_TABLE7,
    Clip,
    Conversation,
    DatasetVoice,
    DuplexEvalConfig,
    DuplexEvaluator,
    ScenarioSettings,
    add_eval_duplex_parser,
    cmd_eval_duplex,
    format_table7,
    judge_answer,
    judge_backchannel,
    judge_barge_in,
    simulate,
)
from funaudiochat.evaluation.report import load_run_json
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor
from funaudiochat.testing import word_tokenizer

SR, STEP = 16000, 3200
# lead 0.6 s + a 1.05 s question: the question ends at sample 26400 (step 8.25), so a model that
# starts on the first step after it starts at step 9, whose decision is known at 32000 = 2.0 s
LEAD, QUESTION = 0.6, 1.05
Q_END = int(LEAD * SR) + int(QUESTION * SR)
FIXED = ScenarioSettings(lead_seconds=LEAD, barge_in_after=(0.6, 0.6), backchannel_after=(0.6, 0.6))


def burst(seconds: float, seed: int = 0, text: str = "burst") -> Clip:
    rng = np.random.default_rng(seed)
    return Clip((rng.standard_normal(int(round(seconds * SR))) * 0.2).astype(np.float32), text, "synthetic")


class BurstVoice:
    """The scripted user's voice as noise bursts of fixed lengths."""

    def __init__(self, question: float = QUESTION, backchannel: float = 0.3) -> None:
        self.question_seconds, self.backchannel_seconds = question, backchannel
        self.backchannels: list[str] = []

    def question(self, set_name, folder, record) -> Clip:
        return burst(self.question_seconds, seed=len(str(record["id"])), text=str(record["question"]))

    def backchannel(self, key, text) -> Clip:
        self.backchannels.append(text)
        return burst(self.backchannel_seconds, seed=7, text=text)


Policy = Callable[[int, Conversation], str]


class ScriptedHead(torch.nn.Module):
    """Stands in for the action head: ``policy(step, conversation)`` names the action (hidden ignored)."""

    def __init__(self, head: torch.nn.Linear, policy: Policy) -> None:
        super().__init__()
        self.head = head
        self.policy = policy
        self.session = None
        self.conv: Conversation | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def attach(self, session, conv: Conversation) -> None:
        self.session, self.conv = session, conv

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*hidden.shape[:-1], len(ACTIONS))
        out[..., ACTIONS.index(self.policy(self.session.step, self.conv))] = 20.0
        return out


def polite(speak_steps: int = 20, stop_on: tuple[str, ...] = ("barge-in",), stop_delay: int = 0,
           restart: bool = False) -> Policy:
    """Starts on the first step after the user has finished, speaks ``speak_steps`` steps, then
    listens; stops ``stop_delay`` steps after the step in which a ``stop_on`` utterance begins.  With
    ``restart`` it takes the floor again right after stopping (talking over the user)."""

    def policy(step: int, conv: Conversation) -> str:
        turn = conv.open_turn()  # the log holds the steps before this one
        if turn is not None:
            for u in conv.user:
                if u.kind in stop_on and u.start_sample >= turn.start_step * STEP \
                        and step >= u.start_sample // STEP + stop_delay:
                    return "stop"
            return "speak" if step - turn.start_step < speak_steps else "listen"
        if restart and conv.turns:
            return "start"
        last_user_end = max(u.end_sample for u in conv.user)
        answered = bool(conv.turns) and conv.turns[-1].start_step * STEP >= last_user_end
        return "start" if last_user_end <= step * STEP and not answered else "listen"

    return policy


def constant(action: str) -> Policy:
    return lambda step, conv: action


class FavourWord(torch.nn.Module):
    """Wraps ``lm_head`` so that one word always wins: the model's text is that word, repeated."""

    def __init__(self, head: torch.nn.Module, token_id: int) -> None:
        super().__init__()
        self.head, self.token_id = head, token_id

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(x)
        bonus = torch.zeros(out.shape[-1], dtype=out.dtype)
        bonus[self.token_id] = 100.0
        return out + bonus


@pytest.fixture(scope="module")
def processor() -> FunAudioChatProcessor:
    return FunAudioChatProcessor(word_tokenizer(vocab_size=512), tiny_config())


def duplex_model() -> FunAudioChatForConditionalGeneration:
    torch.manual_seed(0)
    return enable_duplex(FunAudioChatForConditionalGeneration(tiny_config())).eval()


def scripted_engine(processor, policy: Policy, say: str | None = None) -> tuple[DuplexEngine, ScriptedHead]:
    model = duplex_model()
    head = ScriptedHead(model.duplex_head, policy)
    model.duplex_head = head
    if say is not None:
        word = processor.tokenizer.convert_tokens_to_ids(say)
        model.language_model.set_output_embeddings(FavourWord(model.get_output_embeddings(), word))
    return DuplexEngine(model, processor, options=DuplexOptions(warn_lag_steps=1000)), head


def play(processor, policy: Policy, scenario: str, follow_up: Clip | None = None,
         settings: ScenarioSettings = FIXED) -> Conversation:
    engine, head = scripted_engine(processor, policy)
    react = settings.barge_in_after[0] if scenario == "barge-in" else settings.backchannel_after[0]
    return simulate(engine, scenario, burst(QUESTION), follow_up, settings=settings,
                    react_after=None if scenario == "answer" else react, on_session=head.attach)


# ---------------------------------------------------------------------- (a) answer
def test_answer_starting_after_the_question_is_a_success_with_its_latency(processor):
    conv = play(processor, polite(speak_steps=5), "answer")
    verdict = judge_answer(conv, FIXED)
    assert (verdict.outcome, verdict.success, verdict.start_step) == ("success", True, 9)
    assert verdict.latency == pytest.approx((10 * STEP - Q_END) / SR) == pytest.approx(0.35)
    assert conv.actions[:9] == ["listen"] * 9 and conv.actions[9:15] == ["start"] + ["speak"] * 4 + ["listen"]
    turn = conv.turns[0]
    assert (turn.start_step, turn.end_step, turn.reason) == (9, 14, "listen")
    # two delay steps of BOS, then 5 speech tokens a step: 3 speaking steps -> 15 tokens
    assert verdict.speech_tokens == turn.speech_tokens and len(turn.speech_tokens) == 15
    # the answer ends after answer_gap = 1 s of silence after the turn: end of step 19 = 64000 samples
    assert conv.ended_by == "answer_done" and conv.steps == 20
    assert [e["type"] for e in conv.events] == ["turn_start", "turn_end"]
    assert conv.events[0] == {"type": "turn_start", "step": 9, "time": 2.0, "turn": 1, "kind": "turn"}


def test_answer_started_during_the_question_fails(processor):
    def eager(step: int, conv: Conversation) -> str:  # takes the floor at step 5, mid-question
        return "speak" if conv.open_turn() else ("start" if step >= 5 else "listen")

    conv = play(processor, eager, "answer", settings=ScenarioSettings(lead_seconds=LEAD, max_answer_seconds=2.0))
    verdict = judge_answer(conv, FIXED)
    assert (verdict.outcome, verdict.success, verdict.latency, verdict.start_step) == ("started_early", False, None, 5)
    # cut 2 s after its start step's end (19200 + 32000 = end of step 15), then closed
    assert conv.ended_by == "max_answer" and conv.steps == 16 and conv.turns[0].reason == "closed"


def test_talking_from_the_first_step_is_an_early_start(processor):
    conv = play(processor, constant("start"), "answer", settings=ScenarioSettings(lead_seconds=LEAD,
                                                                                  max_answer_seconds=2.0))
    verdict = judge_answer(conv, FIXED)
    assert (verdict.outcome, verdict.start_step) == ("started_early", 0)
    assert conv.ended_by == "max_answer"


def test_no_answer_within_the_timeout(processor):
    conv = play(processor, constant("listen"), "answer")
    verdict = judge_answer(conv, FIXED)
    assert (verdict.outcome, verdict.success, verdict.text, verdict.speech_tokens) == ("no_response", False, "", [])
    # the simulation stops at the first step whose end reaches question end + 3 s = 74400: step 23
    assert conv.ended_by == "no_response" and conv.steps == 24 and conv.turns == []


# ---------------------------------------------------------------------- (b) barge-in
def test_barge_in_stopped_within_the_tolerance(processor):
    conv = play(processor, polite(stop_delay=1), "barge-in", follow_up=burst(1.0, seed=3, text="next"))
    span = conv.span("barge-in")
    # starts at step 9 (decision at 32000); 0.6 s later = 41600 = start of step 13
    assert (span.start_sample, span.end_sample, span.text) == (41600, 57600, "next")
    verdict = judge_barge_in(conv, FIXED)
    assert (verdict.outcome, verdict.event, verdict.success) == ("stopped", True, True)
    assert (verdict.barge_step, verdict.stop_step, verdict.stop_steps) == (13, 14, 1)
    assert verdict.stop_latency == pytest.approx((15 * STEP - 41600) / SR)  # 0.4 s
    # after the barge-in ends (57600 = step 18) the model answers it at once: decision at 60800
    assert verdict.reply_latency == pytest.approx(0.2)
    assert conv.actions[14] == "stop" and {"type": "stopped", "step": 14, "time": 3.0, "turn": 1} in conv.events
    assert conv.ended_by == "window"


def test_a_model_that_never_stops_fails_the_barge_in(processor):
    conv = play(processor, polite(stop_on=(), speak_steps=1000), "barge-in", follow_up=burst(1.0, seed=3))
    verdict = judge_barge_in(conv, FIXED)
    assert (verdict.outcome, verdict.event, verdict.success, verdict.stop_step) == ("no_stop", True, False, None)
    # observed until the barge-in's end + 3 s: 57600 + 48000 = 105600 = end of step 32
    assert conv.steps == 33 and conv.ended_by == "window"


def test_stopping_too_late_and_resuming_over_the_user_fail(processor):
    late = play(processor, polite(stop_delay=3), "barge-in", follow_up=burst(1.0, seed=3))
    verdict = judge_barge_in(late, FIXED)
    assert (verdict.outcome, verdict.success, verdict.stop_steps) == ("stopped_late", False, 3)
    resumed = play(processor, polite(restart=True), "barge-in", follow_up=burst(1.0, seed=3))
    verdict = judge_barge_in(resumed, FIXED)
    assert (verdict.outcome, verdict.success, verdict.stop_steps) == ("resumed", False, 0)


def test_no_barge_in_when_the_model_is_silent_by_then(processor):
    conv = play(processor, polite(speak_steps=2), "barge-in", follow_up=burst(1.0, seed=3))
    verdict = judge_barge_in(conv, FIXED)
    assert (verdict.outcome, verdict.event, verdict.success) == ("not_applicable", False, None)
    assert conv.ended_by == "not_speaking" and conv.span("barge-in") is None


# ---------------------------------------------------------------------- (c) backchannel
def test_stopping_at_a_backchannel_is_a_false_barge_in(processor):
    conv = play(processor, polite(stop_on=("backchannel",)), "backchannel", follow_up=burst(0.3, text="mm-hm"))
    verdict = judge_backchannel(conv, FIXED)
    assert (verdict.outcome, verdict.event, verdict.false_barge_in) == ("false_barge_in", True, True)
    assert (verdict.backchannel_step, verdict.stop_step) == (13, 13)
    kept = play(processor, polite(), "backchannel", follow_up=burst(0.3, text="mm-hm"))
    verdict = judge_backchannel(kept, FIXED)
    assert (verdict.outcome, verdict.event, verdict.false_barge_in) == ("kept_speaking", True, False)
    # window: the backchannel ends in step 14 (41600 + 4800 = 46400), + 2 steps of tolerance
    assert kept.ended_by == "window" and kept.steps == 17


def logged(kind: str, start_sample: int, end_sample: int, reason: str, end_step: int, steps: int = 40
           ) -> Conversation:
    """A hand-written log: a turn from step 9 to ``end_step`` (ended for ``reason``) and a user reaction."""
    from funaudiochat.evaluation.duplex import AssistantTurn, UserSpan

    conv = Conversation(kind, 0, 0.6, actions=["listen"] * steps)
    conv.user = [UserSpan("question", LEAD, Q_END / SR, "q"), UserSpan(kind, start_sample / SR, end_sample / SR, "r")]
    conv.turns = [AssistantTurn(1, "turn", 9, end_step, reason)]
    return conv


def test_a_turn_whose_speech_runs_out_is_no_reaction():
    # the speech ends (eos) one step after the barge-in began: no event either way
    verdict = judge_barge_in(logged("barge-in", 41600, 57600, "eos", 14), FIXED)
    assert (verdict.outcome, verdict.event, verdict.success, verdict.stop_steps) == ("ended_naturally", False, None, 1)
    # ... but running on until its speech ends 5 steps later is a failure to stop
    verdict = judge_barge_in(logged("barge-in", 41600, 57600, "eos", 18), FIXED)
    assert (verdict.outcome, verdict.event, verdict.success) == ("no_stop", True, False)
    verdict = judge_backchannel(logged("backchannel", 41600, 46400, "eos", 14), FIXED)
    assert (verdict.outcome, verdict.event, verdict.false_barge_in) == ("ended_naturally", False, None)
    # a stop just after the window (backchannel ends in step 14, + 2 steps) is not a false barge-in
    verdict = judge_backchannel(logged("backchannel", 41600, 46400, "stop", 17), FIXED)
    assert (verdict.outcome, verdict.false_barge_in) == ("kept_speaking", False)
    verdict = judge_backchannel(logged("backchannel", 41600, 46400, "listen", 16), FIXED)
    assert (verdict.outcome, verdict.false_barge_in, verdict.stop_step) == ("false_barge_in", True, 16)


# ---------------------------------------------------------------------- the whole run
def write_set(root: Path, name: str = "llama_questions", n: int = 3, audio: bool = False) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        row = {"id": f"q{i}", "question": f"question number {i}?", "answers": ["Paris"], "source": "test"}
        if audio:
            row["audio_file"] = f"{i}.wav"
            (folder / "audio").mkdir(exist_ok=True)
            sf.write(folder / "audio" / f"{i}.wav", burst(0.8 + 0.1 * i, seed=i).samples, SR, subtype="PCM_16")
        rows.append(json.dumps(row))
    (folder / "dev.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


class FakeDetokenizer:
    sample_rate = 8000
    codebook_size = 6561

    def __init__(self) -> None:
        self.calls = 0

    def synthesize(self, tokens, voice=None):
        self.calls += 1
        return np.zeros(len(tokens) * 320, dtype=np.float32), self.sample_rate


class FakeASR:
    def __init__(self, heard: str) -> None:
        self.heard = heard

    def transcribe(self, audio, model="base"):
        assert audio.dtype == np.float32 and model == "base"
        return self.heard


def test_run_writes_the_folder_and_the_metrics_are_exact(processor, tmp_path):
    root = write_set(tmp_path / "data")
    engine, head = scripted_engine(processor, polite(stop_delay=1), say="paris")
    config = DuplexEvalConfig(model="scripted", out=tmp_path / "run", sets=("llama_questions",), settings=FIXED,
                              data_root=root, progress=False, run_name="scripted")
    sessions = []

    def on_session(session, conv):
        sessions.append(conv.scenario)
        head.attach(session, conv)

    voice = BurstVoice()
    evaluator = DuplexEvaluator(config, engine=engine, voice=voice, asr=FakeASR("it is paris"),
                                detokenizer=FakeDetokenizer(), on_session=on_session)
    summary = evaluator.run()
    assert sessions == ["answer", "barge-in", "backchannel"] * 3
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"run_config.json", "items.jsonl", "summary.json", "run.json",
                                              "report.md", "timeline.png"}
    overall = summary["overall"]
    assert summary["schema"] == DUPLEX_SCHEMA and summary["run_name"] == "scripted"
    assert overall["s2m_t"] == {"value": 1.0, "n": 3, "avg": 1.0, "avg_over": ["llama_questions"]}
    assert overall["s2m_s"]["value"] == 1.0 and overall["s2m_s"]["n"] == 3
    assert (overall["answer"]["events"], overall["answer"]["successes"]) == (3, 3)
    assert overall["answer"]["latency_s"]["mean"] == pytest.approx(0.35)
    assert (overall["barge_in"]["events"], overall["barge_in"]["successes"]) == (3, 3)
    assert overall["barge_in"]["stop_steps"]["mean"] == 1
    assert overall["turn_taking"] == {"events": 6, "successes": 6, "rate": 1.0}
    assert (overall["backchannel"]["events"], overall["backchannel"]["false_barge_ins"]) == (3, 0)
    assert summary["sets"]["llama_questions"]["turn_taking"]["rate"] == 1.0
    assert set(voice.backchannels) <= {"mm-hm", "right", "yeah", "okay", "uh-huh", "I see"}

    item = json.loads((out / "items.jsonl").read_text().splitlines()[0])
    assert item["s2m_t"] == 1.0 and item["s2m_s_transcript"] == "it is paris"
    answer = item["scenarios"]["answer"]
    assert answer["verdict"]["text"].split()[0] == "paris"
    # 20 steps of speech from step 9, then 1 s of silence: 35 steps
    assert answer["conversation"]["events"][0]["time"] == 2.0 and len(answer["conversation"]["actions"]) == 35

    run = load_run_json(out / "run.json")
    values = {(s.mode, s.metric): s.value for s in run.summary}
    assert values == {("s2m-t", "accuracy"): 1.0, ("s2m-s", "accuracy"): 1.0,
                      ("duplex", "turn_taking_success"): 1.0, ("duplex", "false_barge_in"): 0.0}

    report = (out / "report.md").read_text()
    assert "| Turn-taking Success Rate | 99.77 |  | 93.87 |  | 100.00 |  | 99.94 |  | 100.00 |  |" in report
    assert "reported by the paper" in report and "![timeline](timeline.png)" in report

    # resume: nothing is simulated again and the summary is the same
    sessions.clear()
    again = DuplexEvaluator(config, engine=engine, voice=voice, asr=FakeASR("no"), detokenizer=FakeDetokenizer(),
                            on_session=on_session).run()
    assert sessions == [] and again["overall"] == summary["overall"]
    # other settings are refused
    changed = DuplexEvalConfig(model="scripted", out=tmp_path / "run", sets=("llama_questions",), data_root=root,
                               settings=ScenarioSettings(response_timeout=2.0), progress=False)
    with pytest.raises(ValueError, match="other settings.*response_timeout"):
        DuplexEvaluator(changed, engine=engine, voice=voice).run()


def test_forced_behaviours_give_the_expected_rates(processor, tmp_path):
    """Never stops at a barge-in but stops at every backchannel: TTSR = 3 answers / (3 + 3 barge-ins)."""
    root = write_set(tmp_path / "data")
    engine, head = scripted_engine(processor, polite(stop_on=("backchannel",), speak_steps=1000))
    settings = ScenarioSettings(lead_seconds=LEAD, barge_in_after=(0.6, 0.6), backchannel_after=(0.6, 0.6),
                                max_answer_seconds=2.0)
    config = DuplexEvalConfig(model="scripted", out=tmp_path / "run", sets=("llama_questions",), settings=settings,
                              data_root=root, progress=False, plot=False, detokenizer="none")
    summary = DuplexEvaluator(config, engine=engine, voice=BurstVoice(),
                              on_session=lambda s, c: head.attach(s, c)).run()
    overall = summary["overall"]
    assert overall["barge_in"]["outcomes"] == {"no_stop": 3} and overall["barge_in"]["successes"] == 0
    assert overall["turn_taking"] == {"events": 6, "successes": 3, "rate": 0.5}
    assert overall["backchannel"]["false_barge_ins"] == 3 and overall["backchannel"]["rate"] == 1.0
    assert overall["s2m_s"]["value"] is None and "--detokenizer none" in overall["s2m_s"]["notes"][0]
    assert not (tmp_path / "run" / "timeline.png").exists()
    table = format_table7(summary)
    assert "| Turn-taking Success Rate |" in table and "50.00 |" in table
    assert "Note: S2M-S skipped: --detokenizer none" in table


def test_table7_layout_has_the_paper_rows_next_to_ours():
    summary = {"run_name": "x", "sets": {"llama_questions": {"s2m_t": {"value": 0.5}, "s2m_s": {"value": None}}},
               "overall": {"s2m_t": {"avg": 0.5, "avg_over": ["llama_questions"]}, "s2m_s": {"avg": None},
                           "turn_taking": {"rate": 0.75}}}
    lines = format_table7(summary).splitlines()
    assert lines[0].startswith("| | Moshi† S2M-T | Moshi† S2M-S | FreezeOmni† S2M-T")
    assert lines[0].endswith("| ours: x S2M-T | ours: x S2M-S |")
    assert lines[2] == "| Llama Q. | 65.67 | 57.00 | 74.00 | 58.00 | 81.00 | 71.33 | 72.33 | 64.33 | 50.00 | n/a |"
    assert lines[3] == "| AlpacaEval | 25.51 | 25.08 | 47.39 | 32.78 | 68.23 | 59.65 | 68.03 | 57.32 | - | - |"
    assert lines[6] == "| Avg. | 33.17 | 29.86 | 47.58 | 34.49 | 54.89 | 49.28 | 49.03 | 43.44 | 50.00 | n/a |"
    assert lines[7] == "| Turn-taking Success Rate | 99.77 |  | 93.87 |  | 100.00 |  | 99.94 |  | 75.00 |  |"
    assert [c.turn_taking for c in PAPER_TABLE7] == [99.77, 93.87, 100.00, 99.94]


# ---------------------------------------------------------------------- errors
def test_half_duplex_model_and_bad_sets_are_clear_errors(processor, tmp_path):
    root = write_set(tmp_path / "data")

    def half_duplex_loader(name, dtype):
        torch.manual_seed(0)
        return FunAudioChatForConditionalGeneration(tiny_config()), processor.tokenizer

    config = DuplexEvalConfig(model="half", out=tmp_path / "run", sets=("llama_questions",), data_root=root,
                              progress=False)
    with pytest.raises(ValueError, match="needs a full-duplex model.*half-duplex checkpoint"):
        DuplexEvaluator(config, loader=half_duplex_loader, voice=BurstVoice()).run()
    with pytest.raises(ValueError, match="unknown benchmark set 'nope'.*available: llama_questions"):
        DuplexEvaluator(DuplexEvalConfig(model="m", out=tmp_path / "r2", sets=("nope",), data_root=root))
    mc = root / "openbookqa"
    mc.mkdir()
    (mc / "dev.jsonl").write_text(json.dumps({"id": "m1", "question": "q?", "choices": ["a", "b"], "answer": "A"})
                                  + "\n")
    with pytest.raises(ValueError, match="short-answer QA.*openbookqa is a multiple_choice set"):
        DuplexEvaluator(DuplexEvalConfig(model="m", out=tmp_path / "r3", sets=("openbookqa",), data_root=root))
    with pytest.raises(ValueError, match="--scenarios"):
        DuplexEvalConfig(model="m", out=tmp_path, scenarios=("answer", "shout"))
    with pytest.raises(ValueError, match="barge_in_after"):
        ScenarioSettings(barge_in_after=(1.2, 0.6))


# ---------------------------------------------------------------------- command line
def test_command_line_on_a_saved_checkpoint_with_recorded_questions(processor, tmp_path):
    """The untrained head listens: every answer is a no-response, nothing to barge into."""
    root = write_set(tmp_path / "data", audio=True)
    ckpt = tmp_path / "ckpt"
    duplex_model().save_pretrained(ckpt)
    processor.tokenizer.save_pretrained(ckpt)
    parser = argparse.ArgumentParser()
    add_eval_duplex_parser(parser.add_subparsers())
    args = parser.parse_args(["eval-duplex", "--model", str(ckpt), "--out", str(tmp_path / "run"),
                              "--sets", "llama_questions", "--data-root", str(root), "--limit", "2",
                              "--scenarios", "answer,barge-in", "--response-timeout", "1", "--asr", "none",
                              "--no-progress", "--no-plot"])
    out = io.StringIO()
    assert args.func(args, out=out) == 0
    text = out.getvalue()
    assert "| Turn-taking Success Rate | 99.77 |" in text and "| llama_questions | 2 | 0/2 | 0/0 | 0.00 |" in text
    items = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    assert [it["audio_source"] for it in items] == ["dataset", "dataset"]
    assert items[0]["scenarios"]["barge-in"]["verdict"]["outcome"] == "not_applicable"
    assert items[0]["s2m_s_note"] == "S2M-S skipped: --asr none"
    assert cmd_eval_duplex is args.func


def test_the_funaudiochat_command_knows_eval_duplex(capsys):
    from funaudiochat.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval-duplex", "--help"])
    assert exit_info.value.code == 0
    assert "--barge-in-after" in capsys.readouterr().out


# ---------------------------------------------------------------------- TTS (only with a voice installed)
def test_tts_backchannel_is_cached_and_trimmed(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from funaudiochat.default_model.speech_data import question_voice

    key = next(f"k{i}" for i in range(100) if question_voice(f"k{i}")[0] == "espeak")  # espeak is fast
    voice = DatasetVoice(tmp_path / "tts")
    clip = voice.backchannel(key, "mm-hm")
    assert clip.source == "tts" and clip.voice.startswith("espeak:") and 0.1 < clip.samples.size / SR < 2.0
    cached = list((tmp_path / "tts" / "clips" / "espeak").glob("*.wav"))
    assert len(cached) == 1
    again = DatasetVoice(tmp_path / "tts").backchannel(key, "mm-hm")
    np.testing.assert_array_equal(again.samples, clip.samples)
