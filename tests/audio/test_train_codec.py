"""Codec training commands: extra-utterance files, the build's answers as extra data, detokenizer fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from funaudiochat.audio import train_codec
from funaudiochat.audio.detokenizer import FlowMatchingDetokenizer, default_detokenizer_dir, frames_for_tokens
from funaudiochat.audio.tokenizer import default_tokenizer_dir

from .conftest import chirp


def _wav(path: Path, seconds: float = 0.8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, chirp(seconds, seed=seed), 16000)
    return path


def _lines(path: Path, rows: list) -> Path:
    """JSON lines written as raw UTF-8 (a U+2028 in a string stays one line)."""
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def test_extra_manifest_resolves_paths_and_defaults(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    absolute = _wav(tmp_path / "sub" / "b.wav")
    m = _lines(tmp_path / "extra.jsonl", [
        {"audio": "a.wav", "tokens": [1, 2, 3], "text": "hello"},
        "",
        {"audio": str(absolute), "voice": "espeak_f"},
    ])
    items = train_codec.read_extra_manifest(m)
    assert [(i.audio, i.voice, i.tokens, i.text) for i in items] == [
        (tmp_path / "a.wav", "joe", (1, 2, 3), "hello"),
        (absolute, "espeak_f", None, None),
    ]


@pytest.mark.parametrize("row, message", [
    ("{not json", r"extra\.jsonl:2: not valid JSON"),
    ({"voice": "joe"}, r'extra\.jsonl:2: each line needs an "audio" path'),
    ({"audio": "a.wav", "voice": "alice"}, r"extra\.jsonl:2: unknown voice 'alice'"),
    ({"audio": "a.wav", "tokens": []}, r'extra\.jsonl:2: "tokens" must be a non-empty list'),
    ({"audio": "a.wav", "tokens": [1, -2]}, r'extra\.jsonl:2: "tokens" must be'),
    ({"audio": "a.wav", "tokens": [1, True]}, r'extra\.jsonl:2: "tokens" must be'),
    ({"audio": "missing.wav"}, r"extra\.jsonl:2: audio file .*missing\.wav not found"),
])
def test_extra_manifest_errors_name_the_line(tmp_path: Path, row, message: str) -> None:
    _wav(tmp_path / "a.wav")
    m = _lines(tmp_path / "extra.jsonl", [{"audio": "a.wav"}, row])
    with pytest.raises(ValueError, match=message):
        train_codec.read_extra_manifest(m)


def test_empty_extra_manifest_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "extra.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no utterances"):
        train_codec.read_extra_manifest(tmp_path / "extra.jsonl")


def test_heldout_is_deterministic_and_about_one_in_n() -> None:
    ids = [f"q{i:05d}" for i in range(4000)]
    held = [i for i in ids if train_codec.heldout(i, 8)]
    assert held == [i for i in ids if train_codec.heldout(i, 8)]
    assert 400 < len(held) < 600  # 500 expected
    # Independent of the build's own split, which keys on the parity of sha1(id)'s first byte.
    import hashlib

    even = [i for i in ids if hashlib.sha1(i.encode()).digest()[0] % 2 == 0]
    assert 0.09 < sum(train_codec.heldout(i, 8) for i in even) / len(even) < 0.16


def _fake_build(work: Path, n: int) -> None:
    (work / "data").mkdir(parents=True)
    answers, tokens = [], []
    for i in range(n):
        qid = f"wqs{i:04d}"
        _wav(work / "data" / "wav" / f"{qid}_a.wav", seed=i)
        answers.append({"id": qid, "question": "q?", "answer": f"answer number {i}" + ("\u2028" if i == 5 else "")})
        tokens.append({"id": qid, "tokens": [(7 * i + j) % 1024 for j in range(20)]})
    _lines(work / "answers.jsonl", answers)
    _lines(work / "data" / "answer_tokens.jsonl", tokens)


def test_extra_from_build_splits_the_answers(tmp_path: Path) -> None:
    _fake_build(tmp_path / "build", 40)
    train_codec.main(["extra-from-build", "--build-work", str(tmp_path / "build"), "--out", str(tmp_path / "x"),
                      "--heldout-every", "4"])
    train = train_codec.read_extra_manifest(tmp_path / "x" / "train.jsonl")
    held = train_codec.read_extra_manifest(tmp_path / "x" / "heldout.jsonl")
    assert len(train) + len(held) == 40 and 0 < len(held) < 20
    assert {i.audio.name for i in train}.isdisjoint({i.audio.name for i in held})
    first = next(i for i in train + held if i.audio.name == "wqs0003_a.wav")
    assert first.voice == "joe" and first.text == "answer number 3" and first.tokens == tuple(range(21, 41))
    assert next(i for i in train + held if i.audio.name == "wqs0005_a.wav").text == "answer number 5\u2028"
    assert not list((tmp_path / "x").glob(".*.tmp"))


def test_extra_from_build_refuses_a_useless_holdout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--heldout-every must be at least 2 \\(got 0\\)"):
        train_codec.main(["extra-from-build", "--build-work", str(tmp_path), "--out", str(tmp_path / "x"),
                          "--heldout-every", "0"])


def test_extra_from_build_needs_the_speech_data(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    with pytest.raises(FileNotFoundError, match="answer_tokens.jsonl missing: run `funaudiochat build-default"):
        train_codec.main(["extra-from-build", "--build-work", str(tmp_path / "build"), "--out", str(tmp_path / "x")])


def test_detokenizer_fine_tunes_from_init_on_extra_only(tmp_path: Path) -> None:
    """--init keeps the shipped model's shape and mel statistics; the extra files are the only data."""
    _fake_build(tmp_path / "build", 6)
    train_codec.main(["extra-from-build", "--build-work", str(tmp_path / "build"), "--out", str(tmp_path / "x"),
                      "--heldout-every", "1000"])
    out = tmp_path / "detok"
    train_codec.main(["detokenizer", "--work", str(tmp_path / "work"), "--tokenizer", str(default_tokenizer_dir()),
                      "--init", str(default_detokenizer_dir()), "--extra", str(tmp_path / "x" / "train.jsonl"),
                      "--out", str(out), "--minutes", "0.01", "--batch", "4", "--threads", "1", "--lr", "1e-3"])
    start = FlowMatchingDetokenizer.from_pretrained(vocoder="griffinlim")
    tuned = FlowMatchingDetokenizer.from_pretrained(out, vocoder="griffinlim")
    assert tuned.model.cfg == start.model.cfg
    assert torch.equal(tuned.model.mel_mean, start.model.mel_mean)
    changed = [k for k, v in tuned.model.state_dict().items() if not torch.equal(v, start.model.state_dict()[k])]
    assert changed and "mel_mean" not in changed and "mel_std" not in changed
    training = tuned.manifest.training
    assert training["init"] == str(default_detokenizer_dir()) and training["utterances"] == 6
    assert "0 procedural sentences" in training["text"] and training["steps"] >= 1
    assert tuned.mel(list(range(30))).shape == (80, frames_for_tokens(30))


def test_detokenizer_init_must_match_the_tokenizer(tmp_path: Path) -> None:
    _fake_build(tmp_path / "build", 6)
    train_codec.main(["extra-from-build", "--build-work", str(tmp_path / "build"), "--out", str(tmp_path / "x"),
                      "--heldout-every", "1000"])
    other = tmp_path / "tok"
    other.mkdir()
    manifest = json.loads((default_tokenizer_dir() / "tokenizer.json").read_text())
    manifest["files"]["centroids.safetensors"]["sha256"] = "0" * 64
    (other / "tokenizer.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="was trained for tokenizer 043267a3954d"):
        train_codec.main(["detokenizer", "--work", str(tmp_path / "work"), "--tokenizer", str(other),
                          "--init", str(default_detokenizer_dir()), "--extra", str(tmp_path / "x" / "train.jsonl"),
                          "--out", str(tmp_path / "d"), "--minutes", "0.01", "--batch", "4"])


def test_extra_tokens_outside_the_codebook_are_refused(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    m = _lines(tmp_path / "extra.jsonl", [{"audio": "a.wav", "tokens": [3, 1024]}])
    with pytest.raises(ValueError, match="speech token 1024, outside the codebook of 1024"):
        train_codec.extra_examples([m], default_tokenizer_dir(), 1024)


def test_extra_examples_tokenize_when_tokens_are_absent(tmp_path: Path, tiny_en_dir) -> None:
    _wav(tmp_path / "a.wav", seconds=1.0)
    m = _lines(tmp_path / "extra.jsonl", [{"audio": "a.wav", "voice": "espeak_m"}])
    [(voice, tokens, mel)] = train_codec.extra_examples([m], default_tokenizer_dir(), 1024)
    assert voice == 2 and tokens.dtype == np.int64 and tokens.size == 25
    assert mel.shape[0] == 80 and 0 < mel.shape[1] <= 22050 // 256 + 1


# ------------------------------------------------------------------------------------ portable examples files


def _shipped_token_sha() -> str:
    return json.loads((default_tokenizer_dir() / "tokenizer.json").read_text())["files"]["centroids.safetensors"]["sha256"]


def _examples(n: int = 3, tokens: int = 5) -> list:
    gen = torch.Generator().manual_seed(0)
    return [(i % 3, np.arange(tokens + i, dtype=np.int64) * 7 % 1024,
             torch.rand(80, frames_for_tokens(tokens + i), generator=gen) * 13.5 - 11.5) for i in range(n)]


@pytest.mark.parametrize("bits", [8, 16])
def test_examples_file_round_trip(tmp_path: Path, bits: int) -> None:
    data = _examples()
    path = tmp_path / f"ex{bits}.npz"
    train_codec.save_examples(path, data, "sha-a", mel_bits=bits)
    back = train_codec.load_examples(path, "sha-a")
    assert [(v, t.tolist(), m.shape) for v, t, m in back] == [(v, t.tolist(), m.shape) for v, t, m in data]
    assert all(t.dtype == np.int64 and m.dtype == torch.float32 for _, t, m in back)
    err = max(float((m - b).abs().max()) for (_, _, m), (_, _, b) in zip(data, back))
    # 8 bits: half a step of the per-bin grid (13.5 / 255 / 2 = 0.026); fp16: its rounding at |x| <= 11.5
    assert err <= (0.0266 if bits == 8 else 0.004) and err > 0
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_eight_bit_examples_are_about_half_the_size(tmp_path: Path) -> None:
    data = _examples(6, tokens=200)  # log-mels dominate the file, as in real use
    train_codec.save_examples(tmp_path / "a.npz", data, "s", mel_bits=16)
    train_codec.save_examples(tmp_path / "b.npz", data, "s", mel_bits=8)
    assert 0.4 < (tmp_path / "b.npz").stat().st_size / (tmp_path / "a.npz").stat().st_size < 0.6


def test_examples_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mel_bits must be 8 or 16, not 12"):
        train_codec.save_examples(tmp_path / "a.npz", _examples(), "s", mel_bits=12)
    with pytest.raises(ValueError, match="no training examples to write"):
        train_codec.save_examples(tmp_path / "a.npz", [], "s")
    train_codec.save_examples(tmp_path / "a.npz", _examples(), "sha-a", mel_bits=8)
    with pytest.raises(ValueError, match="was made with another tokenizer \\(sha-a\\)"):
        train_codec.load_examples(tmp_path / "a.npz", "sha-b")


def test_examples_command_feeds_detokenizer_training(tmp_path: Path) -> None:
    """``examples`` writes what ``extra_examples`` computes; two such files train one detokenizer."""
    _fake_build(tmp_path / "build", 6)
    train_codec.main(["extra-from-build", "--build-work", str(tmp_path / "build"), "--out", str(tmp_path / "x"),
                      "--heldout-every", "1000"])
    rows = (tmp_path / "x" / "train.jsonl").read_text(encoding="utf-8").split("\n")[:6]
    halves = [_lines(tmp_path / f"half{i}.jsonl", [json.loads(r) for r in rows[3 * i: 3 * i + 3]]) for i in (0, 1)]
    for i, m in enumerate(halves):
        train_codec.main(["examples", "--extra", str(m), "--tokenizer", str(default_tokenizer_dir()),
                          "--out", str(tmp_path / f"ex{i}.npz"), "--mel-bits", "8", "--no-progress"])
    sha = _shipped_token_sha()
    direct = train_codec.extra_examples(halves, default_tokenizer_dir(), 1024)
    stored = train_codec.load_examples(tmp_path / "ex0.npz", sha) + train_codec.load_examples(tmp_path / "ex1.npz", sha)
    assert [t.tolist() for _, t, _ in stored] == [t.tolist() for _, t, _ in direct]
    assert max(float((a - b).abs().max()) for (_, _, a), (_, _, b) in zip(direct, stored)) < 0.05

    out = tmp_path / "detok"
    train_codec.main(["detokenizer", "--work", str(tmp_path / "work"), "--tokenizer", str(default_tokenizer_dir()),
                      "--init", str(default_detokenizer_dir()), "--examples", str(tmp_path / "ex0.npz"),
                      "--examples", str(tmp_path / "ex1.npz"), "--out", str(out), "--minutes", "0.01",
                      "--batch", "4", "--threads", "1"])
    training = FlowMatchingDetokenizer.from_pretrained(out, vocoder="griffinlim").manifest.training
    assert training["utterances"] == 6 and training["text"].startswith("6 utterances of examples files (")


def test_detokenizer_needs_every_examples_file(tmp_path: Path) -> None:
    train_codec.save_examples(tmp_path / "a.npz", _examples(), "s")
    with pytest.raises(FileNotFoundError, match=r"--examples is given 2 times.*missing: .*b\.npz"):
        train_codec.main(["detokenizer", "--work", str(tmp_path), "--tokenizer", str(default_tokenizer_dir()),
                          "--examples", str(tmp_path / "a.npz"), "--examples", str(tmp_path / "b.npz"),
                          "--out", str(tmp_path / "d"), "--minutes", "0.01"])


def test_examples_mixes_in_the_grammar_speech(tmp_path: Path, tiny_en_dir) -> None:
    """--grammar-work tokenizes the `data` step's speech with the given tokenizer (no refitted centroids)."""
    from funaudiochat.audio.io import resample

    work = tmp_path / "codec"
    work.mkdir()
    for k, voice in enumerate(("joe", "espeak_f", "espeak_m")):
        audio = resample(chirp(1.0, seed=k), 16000, 22050).astype(np.float32)
        np.savez(work / f"data_{voice}.npz", texts=np.array([f"sentence {k}"]), a00000=audio)
    _wav(tmp_path / "x.wav", seconds=0.8)
    extra = _lines(tmp_path / "extra.jsonl", [{"audio": "x.wav", "tokens": [5] * 20}])
    out = tmp_path / "ex.npz"
    train_codec.main(["examples", "--grammar-work", str(work), "--extra", str(extra), "--tokenizer",
                      str(default_tokenizer_dir()), "--out", str(out), "--no-progress"])
    sha = _shipped_token_sha()
    back = train_codec.load_examples(out, sha)
    assert [v for v, _, _ in back] == [0, 1, 2, 0]
    assert [t.size for _, t, _ in back] == [25, 25, 25, 20]
    assert back[3][1].tolist() == [5] * 20
    assert all(m.shape == (80, frames_for_tokens(t.size)) for _, t, m in back[:3])


def test_examples_needs_some_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to write: give --extra"):
        train_codec.main(["examples", "--tokenizer", str(default_tokenizer_dir()), "--out", str(tmp_path / "e.npz")])
