"""The measuring helpers of the session-17 analysis scripts (``scripts/``): voiced span, heard words, bands."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_voiced_seconds_spans_first_to_last_loud_frame():
    rate = load_script("ctc_errors_by_rate")
    sr = 16000
    t = np.arange(sr) / sr
    tone = 0.5 * np.sin(2 * np.pi * 220 * t)
    audio = np.concatenate([np.zeros(sr // 2), tone, np.zeros(sr // 4), tone[: sr // 2], np.zeros(sr)])
    assert rate.voiced_seconds(audio, sr) == pytest.approx(1.0 + 0.25 + 0.5, abs=0.02)  # the pause inside counts
    with pytest.raises(ValueError, match="silent recording"):
        rate.voiced_seconds(np.zeros(sr), sr)


def test_heard_share_counts_content_words_only():
    ctc = load_script("ctc_transcribe")
    assert ctc.heard_share("What is the capital of France?", "what the capitol of france") == 0.5
    assert ctc.heard_share("Who was it?", "") == 1.0  # no content word to miss
    assert ctc.heard_share("Name a planet.", "name a planet<|endoftext|>") == 1.0
    assert ctc.word_recall(["What is the capital of France?"], ["what the capitol of france"]) == {
        "content_word_recall": 0.5, "function_word_recall": 0.75}


def test_bands_join_typed_and_spoken_answers(tmp_path, capsys):
    heard = load_script("s2t_by_heard_words")
    items = [
        {"id": "a", "set": "llama_questions", "mode": "text", "score": 1.0},
        {"id": "a", "set": "llama_questions", "mode": "s2t", "score": 1.0},
        {"id": "b", "set": "llama_questions", "mode": "text", "score": 1.0},
        {"id": "b", "set": "llama_questions", "mode": "s2t", "score": 0.0},
        {"id": "c", "set": "llama_questions", "mode": "text", "score": 0.0},
        {"id": "c", "set": "llama_questions", "mode": "s2t", "score": 1.0},
        {"id": "d", "set": "web_questions", "mode": "s2t", "score": 1.0},  # another set: ignored
    ]
    ctc = [
        {"id": "a", "reference": "What is the capital of France?", "ctc": "what is the capital of france"},
        {"id": "b", "reference": "What is the capital of France?", "ctc": "what is the"},
        {"id": "c", "reference": "Which planet is largest?", "ctc": "which planet is large"},
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (tmp_path / "ctc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ctc))
    assert heard.main([str(tmp_path / "items.jsonl"), str(tmp_path / "ctc.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 3
    assert {b["heard"]: (b["n"], b["text_right"], b["s2t_right_of_text_right"], b["s2t_right"]) for b in report["bands"]} == {
        "none": (1, 1, 0, 0), "under half": (0, 0, 0, 0), "half or more, not all": (1, 0, 0, 1), "all": (1, 1, 1, 1)}
    with pytest.raises(SystemExit, match="no 'triviaqa' question"):
        heard.main([str(tmp_path / "items.jsonl"), str(tmp_path / "ctc.jsonl"), "--set", "triviaqa"])


def test_typed_transcripts_make_and_overlap(tmp_path, capsys):
    typed = load_script("typed_transcripts")
    records = [{"id": "a", "question": "What is the capital of France?", "answers": ["Paris"], "audio_file": "1.wav"},
               {"id": "b", "question": "Who wrote 'Hamlet'?", "answers": ["Shakespeare"], "audio_file": "2.wav"}]
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa/dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ctc = [{"id": "a", "ctc": "what is the capitol of france"}, {"id": "b", "ctc": "who rote hamlet"}]
    (tmp_path / "ctc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ctc))
    assert typed.main(["make", str(tmp_path / "qa/dev.jsonl"), str(tmp_path / "ctc.jsonl"), str(tmp_path / "out")]) == 0
    as_ctc = [json.loads(x) for x in (tmp_path / "out/ctc/qa.jsonl").read_text().splitlines()]
    as_plain = [json.loads(x) for x in (tmp_path / "out/plain/qa.jsonl").read_text().splitlines()]
    assert [r["question"] for r in as_ctc] == ["what is the capitol of france", "who rote hamlet"]
    assert [r["question"] for r in as_plain] == ["what is the capital of france", "who wrote 'hamlet'"]
    as_proper = [json.loads(x) for x in (tmp_path / "out/proper/qa.jsonl").read_text().splitlines()]
    assert [r["question"] for r in as_proper] == ["what is the capital of France", "who wrote 'Hamlet'"]
    assert as_ctc[1]["answers"] == ["Shakespeare"] and "audio_file" not in as_ctc[0]  # read as typed, not spoken
    capsys.readouterr()

    (tmp_path / "ctc.jsonl").write_text(json.dumps(ctc[0]) + "\n")
    with pytest.raises(SystemExit, match="1 questions of .*dev.jsonl have no transcript"):
        typed.main(["make", str(tmp_path / "qa/dev.jsonl"), str(tmp_path / "ctc.jsonl"), str(tmp_path / "out")])

    rows = [{"id": "a", "mode": "text", "score": 1.0}, {"id": "b", "mode": "text", "score": 1.0},
            {"id": "a", "mode": "s2t", "score": 0.0}, {"id": "b", "mode": "s2t", "score": 1.0},
            {"id": "c", "mode": "s2t", "score": 1.0}]  # no text row: not compared
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec_t, spec_s = f"{tmp_path}/items.jsonl:text", f"{tmp_path}/items.jsonl:s2t"
    assert typed.main(["overlap", spec_t, spec_s]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"n": 2, "right": {spec_t: 2, spec_s: 1}, "right_in_both": [{"runs": [spec_t, spec_s], "n": 1}]}
    with pytest.raises(SystemExit, match="no 's2s' rows"):
        typed.main(["overlap", f"{tmp_path}/items.jsonl:s2s"])


def test_heard_by_pieces_classes_names_and_token_counts():
    script = load_script("heard_by_pieces")
    spelled = {"france": 2, "France": 1, "capital": 1, "mockingbird": 3, "Mockingbird": 2}
    rows = [{"reference": "What is the capital of France?", "ctc": "what the capital of franc"},
            {"reference": "Who wrote To Kill a Mockingbird?", "ctc": "who wrote to kill a mockingbird"}]
    report = script.report(rows, lambda w: spelled.get(w, 1))
    assert report["name"] == {"heard": 2, "of": 3, "share": 0.667}  # France (missed), Kill, Mockingbird; "To" is a function word
    assert report["name, 2 tokens lower-cased, 1 token as written"] == {"heard": 0, "of": 1, "share": 0.0}
    assert report["name, 3+ tokens lower-cased, 2 tokens as written"] == {"heard": 1, "of": 1, "share": 1.0}
    assert report["other, 1 token lower-cased"] == {"heard": 2, "of": 2, "share": 1.0}  # capital, wrote


def test_probe_readouts_with_spelling_or_id_bags_start_as_the_plain_readout():
    torch = pytest.importorskip("torch")
    probe = load_script("probe_encoder_ctc")
    tokens = [" France", " f", "rance", "xyz"]
    letters, ids = probe.spelling_bags(tokens, 1 << 20), probe.id_bags(tokens, 1 << 20)
    assert torch.equal(ids[1], letters[1])  # the control keeps each token's number of slots
    ends = letters[1].tolist()[1:] + [letters[0].numel()]
    bags = [set(ids[0][a:b].tolist()) for a, b in zip(letters[1].tolist(), ends)]
    assert not bags[2] & bags[0]  # ... but "rance" no longer shares " France"'s buckets
    torch.manual_seed(0)
    table = torch.randn(4, 8)
    plain = probe.Readout(6, 16, table)
    x, lens = torch.randn(2, 12, 6), torch.tensor([12, 7])
    a, la = plain(x, lens)
    assert a.shape == (2, 3, 5) and la.tolist() == [3, 2]
    for source in ("letters", "ids"):
        spelled = probe.Readout(6, 16, table, spelling=tokens, buckets=64, source=source)
        spelled.load_state_dict(plain.state_dict(), strict=False)
        b, _ = spelled(x, lens)
        assert torch.equal(a, b)  # zero spelling vectors
        b.logsumexp(-1).sum().backward()
        assert spelled.adapter.spelling.weight.grad.abs().sum() > 0


def test_srh_prev_token_probe_scales_the_previous_token_and_ablates_each_input(tmp_path, capsys):
    import torch

    from funaudiochat.config import tiny_config
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.testing import synthetic_batch
    from funaudiochat.training.srh_refine import cache_rows, evaluate_srh

    torch.manual_seed(0)
    model = FunAudioChatForConditionalGeneration(tiny_config()).eval()
    model.config.audio_config.srh_prev_scale = 3.0
    model.save_pretrained(tmp_path / "m")
    rows = cache_rows(model, [synthetic_batch(model.config, batch_size=2, seed=s) for s in range(2)])
    torch.save({"ids": [], "rows": [r.__dict__ for r in rows]}, tmp_path / "val.pt")
    probe = load_script("srh_prev_token_probe")
    assert probe.main(["--model", str(tmp_path / "m"), "--rows", str(tmp_path / "val.pt"), "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    table = model.audio_tower.embed_tokens.weight.detach()
    prev_ids = torch.cat([r.prev[r.prev >= 0] for r in rows])
    assert report["srh_prev_scale"] == 3.0 and report["rows"] == 4
    assert report["previous_token_norm"] == pytest.approx(float((3.0 * table[prev_ids]).norm(dim=-1).mean()), rel=1e-5)
    assert report["as_trained"] == pytest.approx(evaluate_srh(model, rows))
    for ablated in ("previous_tokens_random", "conditions_zeroed"):  # each input reaches the logits
        assert report[ablated]["loss"] != pytest.approx(report["as_trained"]["loss"])
