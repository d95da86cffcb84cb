from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from funaudiochat.speech.synthesize import (
    ATTEMPTS_FILE,
    MANIFEST_FILE,
    SynthConfig,
    attempt_key,
    main,
    plan_attempts,
    read_items,
    synthesize_dataset,
)
from funaudiochat.speech.tts import BUILTIN_VOICES, TTSEngine

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    {"id": "q1", "question": "What is the capital of France?"},
    {"id": "q2", "question": "Who wrote the book Pride and Prejudice?"},
    {"id": "q3", "question": "Which planet is known as the red planet?"},
]
MANIFEST_FIELDS = {"id", "text", "path", "engine", "voice", "speed", "duration", "asr_text", "wer", "accepted"}
# tiny.en keeps the tests quick; the default (base) is measured in docs/tts-data.md.
FAST = SynthConfig(asr_model="tiny.en", beam_size=1, max_attempts=3)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def engines(request):
    return {"piper": request.getfixturevalue("piper_engine"), "espeak": request.getfixturevalue("espeak_engine")}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, engines, asr):
    """One complete run on the 3 texts; other tests compare against it."""
    root = tmp_path_factory.mktemp("ref")
    inp = _write_jsonl(root / "in.jsonl", TEXTS)
    out = root / "out"
    stats = synthesize_dataset(inp, out, FAST, engines=engines, asr=asr, progress=False)
    return inp, out, stats


# ---------------------------------------------------------------- input parsing


def test_malformed_jsonl_line_reported_with_line_number(tmp_path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "question": "fine"}\n\n{"id": 2, "question": "broken"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"in\.jsonl:3: malformed JSON"):
        read_items(inp)


def test_cli_reports_malformed_line_and_exits_2(tmp_path, caplog) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "question": "fine"}\n[1, 2\n', encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        code = main([str(inp), "--out-dir", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert "in.jsonl:2: malformed JSON" in caplog.text
    assert not (tmp_path / "out").exists()  # validated before anything was written


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "q": "x"}\n', r":1: field 'question' must be a non-empty string"),
        ('{"id": 1, "question": "  "}\n', r":1: field 'question' must be a non-empty string"),
        ('{"question": "x"}\n', r":1: missing id field 'id'"),
        ('{"id": 1, "question": "a"}\n{"id": "1", "question": "b"}\n', r":2: duplicate id '1' \(first on line 1\)"),
        ('"just a string"\n', r":1: expected a JSON object, got str"),
    ],
)
def test_read_items_errors(tmp_path, content, message) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_items(inp)


def test_read_items_custom_fields_and_missing_file(tmp_path) -> None:
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"key": 7, "prompt": " Hello there. "}])
    assert [(i.id, i.text, i.line) for i in read_items(inp, "prompt", "key")] == [("7", "Hello there.", 1)]
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_items(tmp_path / "nothing.jsonl")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown TTS engine 'kokoro'"):
        SynthConfig(engines=("kokoro",))
    with pytest.raises(ValueError, match="wer_threshold"):
        SynthConfig(wer_threshold=0.0)
    with pytest.raises(ValueError, match="speeds"):
        SynthConfig(speeds=(9.0,))


# ---------------------------------------------------------------- voice planning


def test_plan_is_deterministic_distinct_and_seed_dependent() -> None:
    plan = plan_attempts("item-1", 0, BUILTIN_VOICES, (0.9, 1.0, 1.1), 3)
    assert plan == plan_attempts("item-1", 0, BUILTIN_VOICES, (0.9, 1.0, 1.1), 3)
    assert len(plan) == 3 and len({(e, v) for e, v, _ in plan}) == 3
    assert all(s in (0.9, 1.0, 1.1) for _, _, s in plan)
    plans = {tuple(plan_attempts(f"item-{i}", seed, BUILTIN_VOICES, (1.0,), 3)) for i in range(20) for seed in (0, 1)}
    assert len(plans) == 40


def test_plan_gives_each_engine_an_equal_first_chance() -> None:
    firsts = Counter(plan_attempts(f"id{i}", 0, BUILTIN_VOICES, (1.0,), 1)[0][0] for i in range(2000))
    # 1 piper voice vs 144 espeak voices, yet the first attempt is piper about half of the time.
    assert 0.45 < firsts["piper"] / 2000 < 0.55


def test_plan_is_capped_by_the_number_of_voices() -> None:
    assert len(plan_attempts("x", 0, {"piper": ("joe",)}, (1.0,), 5)) == 1


def test_attempt_key_depends_on_every_input() -> None:
    base = attempt_key("hi", "piper", "joe", 1.0)
    assert base == attempt_key("hi", "piper", "joe", 1.0)
    others = {attempt_key("ho", "piper", "joe", 1.0), attempt_key("hi", "espeak", "joe", 1.0),
              attempt_key("hi", "piper", "amy", 1.0), attempt_key("hi", "piper", "joe", 1.1)}
    assert base not in others and len(others) == 4


# ---------------------------------------------------------------- end to end


def test_run_writes_manifest_and_wavs(reference_run) -> None:
    _inp, out, stats = reference_run
    rows = _read_jsonl(out / MANIFEST_FILE)
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert stats.items == 3 and stats.skipped_done == 0
    assert stats.synthesized == len(_read_jsonl(out / ATTEMPTS_FILE)) >= 3
    assert stats.accepted + stats.rejected == 3
    for row, src in zip(rows, TEXTS):
        assert MANIFEST_FIELDS <= row.keys()
        assert row["text"] == src["question"]
        assert (row["engine"], row["voice"], row["speed"]) in [
            tuple(p) for p in plan_attempts(row["id"], 0, BUILTIN_VOICES, FAST.speeds, FAST.max_attempts)
        ]
        if row["accepted"]:
            assert row["wer"] < 0.2
            audio, sr = sf.read(str(out / row["path"]), dtype="float32")
            assert sr == 16000 and audio.ndim == 1
            assert audio.shape[0] / sr == pytest.approx(row["duration"], abs=1e-3)
    assert stats.accepted >= 2  # piper/espeak questions are mostly intelligible


def test_second_run_does_no_synthesis(reference_run, engines, asr) -> None:
    inp, out, _ = reference_run
    attempts_before = (out / ATTEMPTS_FILE).read_bytes()
    manifest_before = (out / MANIFEST_FILE).read_bytes()
    stats = synthesize_dataset(inp, out, FAST, engines=engines, asr=asr, progress=False)
    assert (stats.skipped_done, stats.synthesized, stats.cache_hits) == (3, 0, 0)
    assert (out / ATTEMPTS_FILE).read_bytes() == attempts_before
    assert (out / MANIFEST_FILE).read_bytes() == manifest_before


def test_cache_rebuilds_lost_manifest_without_synthesis(reference_run, tmp_path, engines, asr) -> None:
    inp, ref_out, ref_stats = reference_run
    out = tmp_path / "out"
    out.mkdir()
    for name in ("synth_config.json", ATTEMPTS_FILE):
        (out / name).write_bytes((ref_out / name).read_bytes())
    (out / "wavs").mkdir()
    for wav in (ref_out / "wavs").iterdir():
        (out / "wavs" / wav.name).write_bytes(wav.read_bytes())
    stats = synthesize_dataset(inp, out, FAST, engines=engines, asr=asr, progress=False)
    assert stats.synthesized == 0
    assert stats.cache_hits == ref_stats.synthesized
    assert _read_jsonl(out / MANIFEST_FILE) == _read_jsonl(ref_out / MANIFEST_FILE)


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_redoing_work(reference_run, tmp_path, engines, asr) -> None:
    inp, ref_out, ref_stats = reference_run
    out = tmp_path / "out"
    seen: list[dict] = []

    def die_after_two(rec: dict) -> None:
        seen.append(rec)
        if len(seen) == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        synthesize_dataset(inp, out, FAST, engines=engines, asr=asr, progress=False, on_attempt=die_after_two)
    assert len(_read_jsonl(out / ATTEMPTS_FILE)) == 2
    done_before = len(_read_jsonl(out / MANIFEST_FILE))
    with (out / MANIFEST_FILE).open("a") as fh:  # a kill can also tear the line being written
        fh.write('{"id": "q9", "tex')

    stats = synthesize_dataset(inp, out, FAST, engines=engines, asr=asr, progress=False)
    assert stats.skipped_done == done_before
    assert stats.synthesized == ref_stats.synthesized - 2
    keys = [r["key"] for r in _read_jsonl(out / ATTEMPTS_FILE)]
    assert len(keys) == len(set(keys)) == ref_stats.synthesized
    rows = sorted(_read_jsonl(out / MANIFEST_FILE), key=lambda r: r["id"])
    assert rows == _read_jsonl(ref_out / MANIFEST_FILE)
    assert not [p for p in (out / "wavs").iterdir() if p.suffix != ".wav"]


@pytest.mark.slow  # a fresh interpreter imports torch/transformers via funaudiochat (about 10 s)
def test_sigkilled_subprocess_resumes(reference_run, tmp_path, engines, asr) -> None:
    inp, ref_out, ref_stats = reference_run
    out = tmp_path / "out"
    attempts = out / ATTEMPTS_FILE
    code = (
        "import sys; from funaudiochat.speech.synthesize import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, str(inp), "--out-dir", str(out), "--asr-model", "tiny.en",
           "--beam-size", "1", "--no-progress", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:  # kill as soon as the first attempt is on disk
            if attempts.exists() and attempts.read_bytes().count(b"\n") >= 1:
                proc.send_signal(signal.SIGKILL)
                break
            try:
                proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()  # really killed midway
    n_before = len(_read_jsonl(attempts))
    assert 1 <= n_before < ref_stats.synthesized
    stats = synthesize_dataset(inp, out, FAST, engines=engines, asr=asr, progress=False)
    assert stats.synthesized == ref_stats.synthesized - n_before
    assert sorted(_read_jsonl(out / MANIFEST_FILE), key=lambda r: r["id"]) == _read_jsonl(ref_out / MANIFEST_FILE)


class _WrongTextEngine(TTSEngine):
    """Says a fixed unrelated sentence whatever it is asked: every utterance must be rejected."""

    name = "espeak"

    def __init__(self, inner: TTSEngine) -> None:
        self._inner = inner

    @property
    def voices(self) -> tuple[str, ...]:
        return self._inner.voices

    def validate_voice(self, voice: str) -> None:
        self._inner.validate_voice(voice)

    def _synthesize_native(self, text, voice, speed):
        return self._inner._synthesize_native("Bananas are yellow and grow in bunches.", voice, speed)


def test_wer_filter_rejects_mismatched_speech_and_retries_other_voices(tmp_path, espeak_engine, asr) -> None:
    inp = _write_jsonl(tmp_path / "in.jsonl", TEXTS[:1])
    cfg = SynthConfig(engines=("espeak",), asr_model="tiny.en", beam_size=1, max_attempts=3)
    stats = synthesize_dataset(
        inp, tmp_path / "out", cfg, engines={"espeak": _WrongTextEngine(espeak_engine)}, asr=asr, progress=False
    )
    assert (stats.accepted, stats.rejected, stats.synthesized) == (0, 1, 3)
    attempts = _read_jsonl(tmp_path / "out" / ATTEMPTS_FILE)
    assert len({a["voice"] for a in attempts}) == 3
    assert all(not a["accepted"] and a["wer"] >= 0.2 and a["path"] is None for a in attempts)
    assert all(a["asr_text"] and "france" not in a["asr_text"].lower() for a in attempts)
    (row,) = _read_jsonl(tmp_path / "out" / MANIFEST_FILE)
    assert row["accepted"] is False and row["path"] is None and row["attempts"] == 3
    assert row["wer"] == min(a["wer"] for a in attempts)
    assert not (tmp_path / "out" / "wavs").exists()


def test_noise_is_added_at_the_requested_snr(tmp_path, engines, asr) -> None:
    inp = _write_jsonl(tmp_path / "in.jsonl", TEXTS[:1])
    cfg = SynthConfig(engines=("piper",), asr_model="tiny.en", beam_size=1, snr_db=15.0)
    stats = synthesize_dataset(inp, tmp_path / "out", cfg, engines=engines, asr=asr, progress=False)
    assert stats.accepted == 1
    (row,) = _read_jsonl(tmp_path / "out" / MANIFEST_FILE)
    noisy, _ = sf.read(str(tmp_path / "out" / row["path"]), dtype="float64")
    clean, _ = engines["piper"].synthesize(row["text"], voice=row["voice"], speed=row["speed"])
    clean = clean.astype(np.float64)
    gain = float(np.dot(noisy, clean) / np.dot(clean, clean))  # undo any anti-clipping rescale
    noise = noisy / gain - clean
    snr = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert snr == pytest.approx(15.0, abs=0.3)


def test_changed_settings_or_text_are_refused(reference_run, engines, asr, tmp_path) -> None:
    inp, out, _ = reference_run
    other = SynthConfig(asr_model="tiny.en", beam_size=1, wer_threshold=0.3)
    with pytest.raises(ValueError, match=r"other settings \(wer_threshold: 0.2 -> 0.3\)"):
        synthesize_dataset(inp, out, other, engines=engines, asr=asr, progress=False)
    changed = _write_jsonl(tmp_path / "changed.jsonl", [{"id": "q1", "question": "Something else?"}])
    with pytest.raises(ValueError, match=r"changed\.jsonl:1: text of id 'q1' differs"):
        synthesize_dataset(changed, out, FAST, engines=engines, asr=asr, progress=False)
