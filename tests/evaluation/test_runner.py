"""The benchmark runner end to end on a tiny saved model: outputs, resume, limit, errors, s2s, judge."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from funaudiochat.config import tiny_config
from funaudiochat.evaluation.cli import add_eval_parser
from funaudiochat.evaluation.datasets import TaskType
from funaudiochat.evaluation.inputs import MC_INSTRUCTION, build_prompt
from funaudiochat.evaluation.report import load_run_json
from funaudiochat.evaluation.runner import ALIGN_MODE, LOG_FILE, EvalConfig, EvalRunner
from funaudiochat.evaluation.scoring import score_record
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.speech.tts import TTSEngine
from funaudiochat.testing import word_tokenizer

BENCHDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "benchdata"
FAST = 0.6  # seconds of reply = 3 decoding steps


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    FunAudioChatForConditionalGeneration(tiny_config()).save_pretrained(path)
    word_tokenizer(vocab_size=512).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir):
    from funaudiochat.chat import load_engine

    return load_engine(str(model_dir))


class CountingEngine:
    """Delegates to the real engine and records how many conversations it was asked to answer."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model = inner.model
        self.answered = 0

    def conversation(self, *args, **kwargs):
        return self.inner.conversation(*args, **kwargs)

    def respond_batch(self, convs, messages, options):
        self.answered += len(convs)
        self.options = options
        return self.inner.respond_batch(convs, messages, options)


class ToneTTS(TTSEngine):
    """Deterministic stand-in for piper: a tone whose length follows the text."""

    name = "piper"

    @property
    def voices(self) -> tuple[str, ...]:
        return ("joe",)

    def _synthesize_native(self, text, voice, speed):
        n = int(16000 * (0.3 + 0.02 * len(text)) / speed)
        return (0.3 * np.sin(np.arange(n) * 2 * np.pi * 220 / 16000)).astype(np.float32), 16000


class EchoASR:
    """Hears exactly what was meant (TTS check) or a fixed answer (spoken replies)."""

    def __init__(self, heard: str | None = None) -> None:
        self.heard = heard
        self.calls = 0
        self.last_text = ""

    def transcribe(self, audio, model="base", beam_size=5) -> str:
        self.calls += 1
        return self.heard if self.heard is not None else self.last_text


class TextEchoTTS(ToneTTS):
    """Lets EchoASR return the synthesized text, so the WER check accepts every item."""

    def __init__(self, asr: EchoASR) -> None:
        self.asr = asr

    def _synthesize_native(self, text, voice, speed):
        self.asr.last_text = text
        return super()._synthesize_native(text, voice, speed)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def data_root(tmp_path) -> Path:
    """Three sets: short QA with its own audio, multiple choice without audio, ASR without audio."""
    root = tmp_path / "bench"
    rng = np.random.default_rng(0)
    qa = []
    for i, (q, a) in enumerate([("what is the capital of france ?", "Paris"), ("how many legs has a spider ?", "eight"),
                                ("what is the largest planet ?", "Jupiter")]):
        wav = root / "qa" / "audio" / f"{i}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
        qa.append({"id": f"qa_{i}", "question": q, "answers": [a], "audio_file": f"{i}.wav"})
    _write_jsonl(root / "qa" / "dev.jsonl", qa)
    mc = [{"id": f"mc_{i}", "question": f"which color is the sky number {i} ?", "choices": ["blue", "red", "green"],
           "answer": "A", "answer_index": 0} for i in range(3)]
    _write_jsonl(root / "mc" / "dev.jsonl", mc)
    _write_jsonl(root / "asr" / "dev.jsonl", [{"id": "u1", "reference": "HELLO WORLD", "audio_file": "x/u1.flac"}])
    return root


def _config(model_dir, data_root, out, **kw) -> EvalConfig:
    base = dict(model=str(model_dir), sets=("qa", "mc"), out=out, modes=("text", "s2t"), data_root=data_root,
                max_seconds=FAST, batch_size=3, progress=False, asr="tiny.en", tts=("piper",))
    base.update(kw)
    return EvalConfig(**base)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines() if line.strip()]


def test_end_to_end_text_and_s2t_writes_json_and_report(model_dir, engine, data_root, tmp_path):
    asr = EchoASR()
    out = tmp_path / "run"
    runner = EvalRunner(_config(model_dir, data_root, out), engine=engine, asr=asr,
                        tts_engines={"piper": TextEchoTTS(asr)})
    result = runner.run()

    summary = {(s.set, s.mode): s for s in result.summary}
    assert sorted(summary) == [("mc", "s2t"), ("mc", "text"), ("qa", "s2t"), ("qa", "text")]
    assert all(s.n == 3 and s.n_scored == 3 and s.metric == "accuracy" for s in summary.values())
    # every stored score is what the checker gives for the stored prediction
    records = {r["id"]: r for name in ("qa", "mc")
               for r in map(json.loads, (data_root / name / "dev.jsonl").read_text().splitlines())}
    for item in result.items:
        assert item.score == score_record(records[item.id], item.prediction, item.set, item.mode).score
    sources = {(it.set, it.mode): it.details["run"]["audio_source"] for it in result.items}
    assert sources == {("qa", "text"): "text", ("mc", "text"): "text", ("qa", "s2t"): "dataset", ("mc", "s2t"): "tts"}
    assert len(list((out / "tts" / "mc-piper-tiny.en" / "wavs").glob("*.wav"))) == 3

    stored = load_run_json(out / "run.json")
    assert len(stored.items) == 12 and stored.meta["sets"] == "qa,mc"
    report = (out / "report.md").read_text()
    assert "| qa | s2t | accuracy | 3 | 3 |" in report and "| mc | text | accuracy | 3 | 3 |" in report
    assert (out / "report.png").stat().st_size > 1000
    assert len(_log(out)) == 12

    # batching does not change greedy answers
    single = EvalRunner(_config(model_dir, data_root, tmp_path / "single", modes=("text",), batch_size=1),
                        engine=engine).run()
    batched = {(it.set, it.id): it.prediction for it in result.items if it.mode == "text"}
    assert {(it.set, it.id): it.prediction for it in single.items} == batched


def test_resume_skips_done_items_and_redoes_an_interrupted_one(model_dir, engine, data_root, tmp_path):
    out = tmp_path / "run"
    counting = CountingEngine(engine)
    first = EvalRunner(_config(model_dir, data_root, out, modes=("text",), limit=2), engine=counting).run()
    assert counting.answered == 4 and [s.n for s in first.summary] == [2, 2]
    before = _log(out)
    assert [(r["set"], r["id"]) for r in before] == [("qa", "qa_0"), ("qa", "qa_1"), ("mc", "mc_0"), ("mc", "mc_1")]

    counting.answered = 0
    EvalRunner(_config(model_dir, data_root, out, modes=("text",), limit=3), engine=counting).run()
    after = _log(out)
    assert counting.answered == 2  # only the third item of each set
    assert after[:4] == before and [(r["set"], r["id"]) for r in after[4:]] == [("qa", "qa_2"), ("mc", "mc_2")]

    # a run killed while writing leaves half a line: it is dropped and that item is generated again
    text = (out / LOG_FILE).read_text()
    (out / LOG_FILE).write_text(text[: text.rindex("{") + 20])
    counting.answered = 0
    again = EvalRunner(_config(model_dir, data_root, out, modes=("text",), limit=3), engine=counting).run()
    assert counting.answered == 1
    assert [r["id"] for r in _log(out)] == [r["id"] for r in after]
    assert {(s.set, s.n) for s in again.summary} == {("qa", 3), ("mc", 3)}

    # nothing left to do: the model is not even asked
    counting.answered = 0
    EvalRunner(_config(model_dir, data_root, out, modes=("text",), limit=3), engine=counting).run()
    assert counting.answered == 0

    with pytest.raises(ValueError, match=r"other settings \(max_seconds: 0.6 -> 1.0\)"):
        EvalRunner(_config(model_dir, data_root, out, modes=("text",), max_seconds=1.0), engine=counting).run()


def test_text_repetition_penalty_reaches_decoding_and_guards_resume(model_dir, engine, data_root, tmp_path):
    out = tmp_path / "run"
    counting = CountingEngine(engine)
    plain = EvalRunner(_config(model_dir, data_root, tmp_path / "plain", modes=("text",), limit=2), engine=counting).run()
    assert counting.options.text_sampling.repetition_penalty == 1.0
    penalised = EvalRunner(_config(model_dir, data_root, out, modes=("text",), limit=2, repetition_penalty=1.5),
                           engine=counting).run()
    assert counting.options.text_sampling.repetition_penalty == 1.5 and counting.options.text_sampling.greedy
    assert load_run_json(out / "run.json").meta["repetition_penalty"] == 1.5
    assert len(penalised.items) == len(plain.items) == 4
    with pytest.raises(ValueError, match=r"other settings \(repetition_penalty: 1.5 -> None\)"):
        EvalRunner(_config(model_dir, data_root, out, modes=("text",), limit=2), engine=counting).run()
    with pytest.raises(ValueError, match="--repetition-penalty must be > 0, got 0"):
        _config(model_dir, data_root, out, repetition_penalty=0)


def _cli(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_limit_prints_table_and_compares_runs(model_dir, data_root, tmp_path, capsys):
    common = ["--model", str(model_dir), "--sets", "qa", "--modes", "text", "--data-root", str(data_root),
              "--max-seconds", str(FAST), "--no-progress"]
    assert _cli(["eval", *common, "--limit", "1", "--out", str(tmp_path / "a"), "--name", "stage1"]) == 0
    out = capsys.readouterr().out
    assert "| qa | text | accuracy | 1 | 1 |" in out
    assert [r["id"] for r in _log(tmp_path / "a")] == ["qa_0"]
    assert _cli(["eval", *common, "--limit", "2", "--out", str(tmp_path / "b"), "--name", "stage2"]) == 0
    capsys.readouterr()
    assert _cli(["eval-report", str(tmp_path / "a"), str(tmp_path / "b" / "run.json"),
                 "--out", str(tmp_path / "cmp.md")]) == 0
    table = capsys.readouterr().out
    assert "| set | mode | metric | stage1 | stage2 |" in table
    assert "(n=1)" in table and "(n=2)" in table
    assert (tmp_path / "cmp.png").is_file()


def test_malformed_set_file_is_reported_with_its_line(data_root, tmp_path):
    bad = data_root / "qa" / "dev.jsonl"
    lines = bad.read_text().splitlines()
    lines[1] = lines[1][:-5]
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"qa/dev\.jsonl:2: malformed JSON"):
        EvalRunner(_config("unused", data_root, tmp_path / "run"))


def test_unknown_set_or_mode_errors_clearly(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmark set 'nope'.*available: asr, mc, qa"):
        EvalRunner(_config("unused", data_root, tmp_path / "run", sets=("qa", "nope")))
    with pytest.raises(ValueError, match=r"unknown evaluation mode\(s\) 's2x'; choose from text, s2t, s2s"):
        EvalRunner(_config("unused", data_root, tmp_path / "run", modes=("text", "s2x")))
    with pytest.raises(ValueError, match=r"data root .*missing does not exist"):
        EvalRunner(_config("unused", tmp_path / "missing", tmp_path / "run"))


def test_asr_set_without_audio_is_skipped_with_a_message(data_root, tmp_path):
    result = EvalRunner(_config("unused", data_root, tmp_path / "run", sets=("asr",), modes=("text", "s2t"))).run()
    assert result.items == ()
    skipped = result.meta["skipped"]
    assert "asr [text]: skipped, ASR sets are evaluated in s2t mode only" in skipped
    assert "asr [s2t]: skipped 1 of 1 items, their audio files are not here" in skipped
    assert "--audio-root" in skipped


class ToneDetokenizer:
    codebook_size = 6561

    def synthesize(self, tokens, voice=None):
        return np.full(len(tokens) * 882, 0.1, dtype=np.float32), 22050


def test_s2s_scores_the_transcript_and_records_alignment_wer(model_dir, engine, data_root, tmp_path):
    asr = EchoASR(heard="It is Paris.")
    result = EvalRunner(_config(model_dir, data_root, tmp_path / "run", sets=("qa",), modes=("s2s",), limit=2),
                        engine=engine, asr=asr, detokenizer=ToneDetokenizer()).run()
    main = [it for it in result.items if it.mode == "s2s"]
    align = [it for it in result.items if it.mode == ALIGN_MODE]
    assert [it.id for it in main] == ["qa_0", "qa_1"] and [it.id for it in align] == ["qa_0", "qa_1"]
    assert main[0].prediction == "It is Paris." and main[0].score == 1.0  # answer: Paris
    assert main[1].score == 0.0  # answer: eight
    for it in align:
        written = it.details["written_text"].split()
        assert it.metric == "wer" and it.details["ref_len"] == len(written)
        assert it.score == pytest.approx(it.details["errors"] / max(1, len(written)))
    assert asr.calls == sum(1 for it in main if it.details["run"]["speech_tokens"] > 0)

    class SmallCodebook(ToneDetokenizer):
        codebook_size = 1024

    with pytest.raises(ValueError, match="codebook of 6561, but the 'flow' detokenizer knows only 1024"):
        EvalRunner(_config(model_dir, data_root, tmp_path / "run2", sets=("qa",), modes=("s2s",), limit=1),
                   engine=engine, asr=asr, detokenizer=SmallCodebook()).run()


def test_speech_sampling_options_reach_decoding_and_guard_resume(model_dir, engine, data_root, tmp_path):
    from funaudiochat.evaluation.cli import _speech_sampling
    from funaudiochat.generation import SamplingConfig
    from funaudiochat.generation.sampling import DEFAULT_SPEECH_SAMPLING

    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    base = ["eval", "--sets", "qa", "--out", str(tmp_path / "x")]
    # the released demo settings are the default and are not recorded, so runs made before the options resume
    assert _speech_sampling(parser.parse_args(base)) is None
    greedy = _speech_sampling(parser.parse_args([*base, "--speech-temperature", "0", "--speech-repetition-penalty", "1"]))
    assert greedy == SamplingConfig(0.0, 0, 0.9, 1.0) and greedy != DEFAULT_SPEECH_SAMPLING

    counting = CountingEngine(engine)
    out = tmp_path / "run"
    kw = dict(sets=("qa",), modes=("s2s",), limit=1)
    EvalRunner(_config(model_dir, data_root, out, speech_sampling=greedy, **kw), engine=counting,
               asr=EchoASR(heard="Paris"), detokenizer=ToneDetokenizer()).run()
    assert counting.options.speech_sampling == greedy
    assert load_run_json(out / "run.json").meta["speech_sampling"] == \
        "temperature 0.0, top_k 0, top_p 0.9, repetition_penalty 1.0"
    with pytest.raises(ValueError, match=r"other settings \(speech_sampling: .*'temperature': 0\.0.* -> None\)"):
        EvalRunner(_config(model_dir, data_root, out, **kw), engine=counting).run()
    EvalRunner(_config(model_dir, data_root, tmp_path / "plain", **kw), engine=counting,
               asr=EchoASR(heard="Paris"), detokenizer=ToneDetokenizer()).run()
    assert counting.options.speech_sampling == DEFAULT_SPEECH_SAMPLING


@pytest.fixture(scope="module")
def judge():
    from transformers import AutoConfig, AutoModelForCausalLM

    from funaudiochat.evaluation.judge import LocalJudge

    tok = word_tokenizer(extra_words=("b", "answer", "better", "judge", "reply", "letter"))
    config = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    torch.manual_seed(0)
    return LocalJudge(AutoModelForCausalLM.from_config(config), tok, name="tiny-judge")


def test_judge_is_order_symmetric_and_batch_independent(judge):
    q, ref = ["what is the capital of france ?"] * 2, ["paris is the capital", "paris"]
    same = judge.judge(q, ref, ref)
    assert [v.win for v in same] == pytest.approx([0.5, 0.5], abs=1e-6)  # an answer ties with itself
    cands = ["paris", "jupiter has eight legs"]
    together = judge.judge(q, cands, ref)
    alone = [judge.judge(q[:1], cands[i:i + 1], ref[i:i + 1])[0] for i in range(2)]
    for a, b in zip(together, alone):
        assert a.win == pytest.approx(b.win, abs=1e-5)
        assert a.win == pytest.approx((a.p_candidate_first + a.p_candidate_second) / 2)
        assert 0.0 < a.win < 1.0
    with pytest.raises(ValueError, match=r"label 'Z' is not a single known token"):
        type(judge)(judge.model, judge.tokenizer, labels=("A", "Z"))


def test_open_set_is_judged_now_or_on_resume(model_dir, engine, judge, tmp_path):
    root = tmp_path / "bench"
    _write_jsonl(root / "open" / "dev.jsonl", [{"id": f"o{i}", "question": "tell me about paris",
                                                "reference": "paris is a city"} for i in range(2)])
    out = tmp_path / "run"
    plain = EvalRunner(_config(model_dir, root, out, sets=("open",), modes=("text",)), engine=engine).run()
    assert [(it.metric, it.score) for it in plain.items] == [("judge", None), ("judge", None)]
    counting = CountingEngine(engine)
    judged = EvalRunner(_config(model_dir, root, out, sets=("open",), modes=("text",)), engine=counting,
                        judge=judge).run()
    assert counting.answered == 0  # answers reused, only judged
    assert [it.prediction for it in judged.items] == [it.prediction for it in plain.items]
    assert all(0.0 < it.score < 1.0 and it.details["judge"] == "tiny-judge" for it in judged.items)
    assert judged.summary[0].n_scored == 2
    assert len(_log(out)) == 4  # two answers, then two judged versions of them


def test_prompts_for_choices_dialogues_and_tools():
    mc = build_prompt({"id": "m", "question": "Sky?", "choices": ["blue", "red"], "answer": "A"},
                      TaskType.MULTIPLE_CHOICE, speech_out=False)
    assert mc.user == f"Sky?\nA. blue\nB. red\n{MC_INSTRUCTION}" and mc.spoken == "Sky? Option A: blue. Option B: red."
    tool = {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}
    ace = build_prompt({"id": "a", "question": "user: book it\nsystem: which day?\nuser: monday",
                        "tools": [tool], "ground_truth": {"f": {}}, "time": "2024-05-01"},
                       TaskType.ACEBENCH, speech_out=True)
    assert ace.history == [("user", "book it"), ("assistant", "which day?")]
    assert ace.user == ace.spoken == "monday"
    assert '"name": "f"' in ace.system and ace.system.endswith("The current date is 2024-05-01.")
    assert "speech tokens" in ace.system  # spoken-reply base prompt


@pytest.mark.skipif(not (BENCHDATA / "llama_questions" / "audio").is_dir(),
                    reason=f"shared benchmark data not found at {BENCHDATA}")
def test_llama_questions_uses_its_real_recordings(model_dir, engine, tmp_path):
    config = _config(model_dir, BENCHDATA, tmp_path / "run", sets=("llama_questions",), modes=("s2t",), limit=2)
    result = EvalRunner(config, engine=engine).run()
    assert [it.id for it in result.items] == ["llamaq_1", "llamaq_3"]
    assert all(it.details["run"]["audio_source"] == "dataset" for it in result.items)


def test_cli_exclude_ids_skips_trained_items_before_the_limit(model_dir, data_root, tmp_path, capsys):
    ids = tmp_path / "trained.jsonl"
    ids.write_text('{"id": "qa_0", "text": "a line separator \u2028 inside a string"}\n\n', encoding="utf-8")
    common = ["--model", str(model_dir), "--sets", "qa", "--modes", "text", "--data-root", str(data_root),
              "--max-seconds", str(FAST), "--no-progress", "--limit", "1"]
    assert _cli(["eval", *common, "--exclude-ids", str(ids), "--out", str(tmp_path / "a")]) == 0
    assert [r["id"] for r in _log(tmp_path / "a")] == ["qa_1"]
    assert json.loads((tmp_path / "a" / "run.json").read_text())["meta"]["excluded_ids"] == 1
    plain = tmp_path / "ids.txt"
    plain.write_text("qa_0\nqa_1\n")
    assert _cli(["eval", *common, "--exclude-ids", str(plain), "--out", str(tmp_path / "b")]) == 0
    assert [r["id"] for r in _log(tmp_path / "b")] == ["qa_2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "no id"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected a JSON object with an 'id'"):
        _cli(["eval", *common, "--exclude-ids", str(bad), "--out", str(tmp_path / "c")])
