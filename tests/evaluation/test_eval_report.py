import json

import pytest

from funaudiochat.evaluation.report import (
    RUN_SCHEMA, ScoredItem, load_run_json, summarize, write_comparison_report,
    write_markdown_report, write_run_json)


def _items(acc_hits=(1, 0, 1, 1)):
    items = [ScoredItem(f"q{i}", "llama_questions", "s2t", "pred", float(h))
             for i, h in enumerate(acc_hits)]
    items += [
        ScoredItem("u1", "librispeech_test_clean", "s2t", "a b", 0.5,
                   {"errors": 1, "ref_len": 2}, metric="wer"),
        ScoredItem("u2", "librispeech_test_clean", "s2t", "a b c d e f g h", 0.0,
                   {"errors": 0, "ref_len": 8}, metric="wer"),
        ScoredItem("i1", "ifeval", "s2t", "x", 0.0, {"strict": [True, False],
                                                     "loose": [True, True]},
                   metric="ifeval_prompt_strict"),
        ScoredItem("o1", "alpaca_eval", "s2t", "x", None, metric="judge"),
    ]
    return items


def test_summarize_values():
    by_set = {s.set: s for s in summarize(_items())}
    assert by_set["llama_questions"].value == 0.75 and by_set["llama_questions"].n == 4
    wer = by_set["librispeech_test_clean"]
    assert wer.value == pytest.approx(1 / 10)  # corpus-level, not mean(0.5, 0.0)
    assert wer.extra["mean_utterance_rate"] == pytest.approx(0.25)
    ife = by_set["ifeval"]
    assert ife.extra == {"prompt_strict": 0.0, "prompt_loose": 1.0,
                         "instruction_strict": 0.5, "instruction_loose": 1.0}
    assert by_set["alpaca_eval"].value is None and by_set["alpaca_eval"].n_scored == 0


def test_an_empty_reference_leaves_the_mean_utterance_rate_finite(tmp_path):
    # a spoken reply scored against an empty written one (the model wrote only ":"): corpus WER counts its
    # insertions; the per-utterance mean leaves it out and says so, rather than becoming inf
    items = [ScoredItem("a", "llama_questions", "s2s-align", "x y z", float("inf"), {"errors": 3, "ref_len": 0},
                        metric="wer"),
             ScoredItem("b", "llama_questions", "s2s-align", "a b", 0.5, {"errors": 1, "ref_len": 2}, metric="wer"),
             ScoredItem("c", "llama_questions", "s2s-align", "c", 0.0, {"errors": 0, "ref_len": 2}, metric="wer")]
    (wer,) = summarize(items)
    assert wer.value == pytest.approx(4 / 4)
    assert wer.extra == {"mean_utterance_rate": pytest.approx(0.25), "empty_references": 1.0}
    (only_empty,) = summarize(items[:1])
    assert only_empty.value is None and only_empty.extra == {"empty_references": 1.0}  # 3 insertions of no words
    (none_empty,) = summarize(items[1:])
    assert "empty_references" not in none_empty.extra
    run = tmp_path / "r.json"
    write_run_json(run, items, "r", {"model": "m"})
    md = write_markdown_report(run, tmp_path / "r.md", chart=False)
    assert "| llama_questions | s2s-align | wer (lower is better) | 3 | 3 | 100.00 | mean_utterance_rate 25.00, " \
           "empty_references 1 |" in md.read_text()


def test_run_json_roundtrip_and_schema(tmp_path):
    path = tmp_path / "runs" / "a.json"
    write_run_json(path, _items(), "run-a", {"model": "m", "commit": "abc"})
    doc = json.loads(path.read_text())
    assert doc["schema"] == RUN_SCHEMA
    assert set(doc) == {"schema", "run_name", "created", "meta", "summary", "items"}
    assert set(doc["items"][0]) == {"id", "set", "mode", "prediction", "score", "details",
                                    "metric"}
    run = load_run_json(path)
    assert run.run_name == "run-a" and run.meta["model"] == "m"
    assert run.items == tuple(_items())


def test_load_run_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_run_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json: malformed JSON"):
        load_run_json(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "x"}))
    with pytest.raises(ValueError, match="not a run result file"):
        load_run_json(other)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"schema": RUN_SCHEMA, "items": [{"id": 1}]}))
    with pytest.raises(ValueError, match=r"item 0: scored item lacks fields"):
        load_run_json(broken)


def test_markdown_report_and_chart(tmp_path):
    path = tmp_path / "a.json"
    write_run_json(path, _items(), "run-a")
    md = write_markdown_report(path, tmp_path / "report" / "a.md")
    text = md.read_text()
    assert "| llama_questions | s2t | accuracy | 4 | 4 | 75.00 |" in text
    assert "| librispeech_test_clean | s2t | wer (lower is better) | 2 | 2 | 10.00 |" in text
    assert "| alpaca_eval | s2t | judge | 1 | 0 | n/a |" in text
    assert "![results](a.png)" in text
    png = md.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_report(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_run_json(a, _items(), "base")
    write_run_json(b, _items((1, 1, 1, 1))[:4], "new")
    md = write_comparison_report([a, b], tmp_path / "cmp.md")
    text = md.read_text()
    assert "| set | mode | metric | base | new |" in text
    assert "| llama_questions | s2t | accuracy | 75.00 (n=4) | 100.00 (n=4) |" in text
    assert "| ifeval | s2t | ifeval_prompt_strict | 0.00 (n=1) | - |" in text
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no runs"):
        write_comparison_report([], tmp_path / "x.md")
