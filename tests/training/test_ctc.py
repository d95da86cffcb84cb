"""The ``ctc`` stage: transcript normalisation, data checks, decoding, and a real training run."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from funaudiochat.config import tiny_config
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.testing import word_tokenizer
from funaudiochat.training.ctc import (
    CTCCollator,
    CTCDataset,
    dataset_for,
    greedy_decode,
    load_ctc_records,
    normalize_transcript,
    speech_ctc_loss,
    transcript_ids,
)
from funaudiochat.training.dataset import DatasetError
from funaudiochat.training.recipes import RecipeError, recipe_from_dict
from funaudiochat.training.trainer import train
from tests.training.tiny_runs import split, weights


@pytest.mark.parametrize("text, expected", [
    ("What is the capital of France?", "what is the capital of france"),
    ("Tolkien\u2019s book, \"The Hobbit\"", "tolkien's book the hobbit"),
    ("  12 + 3 = 15!  ", "12 3 15"),
    ("?!", ""),
])
def test_normalize_transcript(text, expected):
    assert normalize_transcript(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("What is the capital of France?", "what is the capital of France"),
    ("Who wrote \"To Kill a Mockingbird\"? I did. Paris is big!", "who wrote To Kill a Mockingbird I did paris is big"),
    ("Paid in U.S. dollars, by NASA.", "paid in U S dollars by NASA"),
    ("Tolkien\u2019s book", "tolkien's book"),
    ("TIRED OUT LESLIE HERSELF", "tired out leslie herself"),  # no lower-case letter: no case to keep
    ("?!", ""),
])
def test_proper_case_keeps_names_capitalised_inside_sentences(text, expected):
    assert normalize_transcript(text, "proper") == expected


def test_unknown_transcript_case_is_refused():
    with pytest.raises(ValueError, match="unknown transcript case 'upper'; choose one of lower, proper"):
        normalize_transcript("Paris", "upper")


def test_transcript_ids_are_the_normalised_words():
    tok = word_tokenizer()
    assert tok.convert_ids_to_tokens(transcript_ids(tok, "Capital, France?")) == ["capital", "france"]

    class Seen:  # a cased tokenizer's input is what decides the ids (the test tokenizer lowers everything)
        def __call__(self, text, add_special_tokens):
            self.text = text
            return {"input_ids": [7]}

    seen = Seen()
    assert transcript_ids(seen, "The capital of France?", "proper") == [7]
    assert seen.text == " the capital of France"


def test_greedy_decode_merges_repeats_and_drops_blanks():
    blank = 4
    path = [[1, 1, 4, 1, 2, 2, 4, 4, 3, 0], [4, 4, 4, 2, 0, 0, 0, 0, 0, 0]]
    logits = torch.nn.functional.one_hot(torch.tensor(path), 5).float()
    assert blank == logits.shape[-1] - 1
    assert greedy_decode(logits, torch.tensor([9, 4])) == [[1, 1, 2, 3], [2]]


def write_wav(path, seconds, freq, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


def test_bad_lines_are_all_reported_with_their_line_numbers(tmp_path):
    write_wav(tmp_path / "ok.wav", 1.0, 300)
    lines = [
        json.dumps({"audio": "ok.wav", "text": "paris"}),
        "{not json",
        json.dumps({"audio": "missing.wav", "text": "paris"}),
        json.dumps({"audio": "ok.wav", "text": "?!"}),
        json.dumps(["audio", "text"]),
        json.dumps({"audio": "ok.wav"}),
    ]
    path = tmp_path / "ctc.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        load_ctc_records([path])
    found = [(e.line, e.field) for _, e in err.value.errors]
    assert found == [(2, "json"), (3, "audio"), (4, "text"), (5, "json"), (6, "text")]
    assert "malformed JSON" in str(err.value) and "missing.wav" in str(err.value)
    assert "no spoken words in '?!'" in str(err.value)


def test_texts_with_unicode_line_separators_stay_on_their_line(tmp_path):
    write_wav(tmp_path / "ok.wav", 1.0, 300)
    path = tmp_path / "ctc.jsonl"
    texts = ["Sutherland Brothers and \x85.", "one\u2028two"]
    path.write_text("".join(json.dumps({"audio": "ok.wav", "text": t}, ensure_ascii=False) + "\n" for t in texts))
    assert [r.text for r in load_ctc_records([path])] == texts


def test_collator_pads_features_and_targets(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0, 300)
    write_wav(tmp_path / "b.wav", 0.5, 500)
    path = tmp_path / "ctc.jsonl"
    path.write_text(
        json.dumps({"audio": "a.wav", "text": "the capital of france"}) + "\n"
        + json.dumps({"audio": "b.wav", "text": "Paris."}) + "\n"
    )
    tok = word_tokenizer()
    ds = CTCDataset(load_ctc_records([path]), tok)
    batch = CTCCollator(80)([ds[0], ds[1]])
    assert batch["input_features"].shape == (2, 80, 100)
    assert batch["feature_attention_mask"].sum(-1).tolist() == [100, 50]
    assert batch["ctc_target_lengths"].tolist() == [4, 1]
    assert batch["ctc_targets"][1].tolist() == tok.convert_tokens_to_ids(["paris"]) + [0, 0, 0]


def one_utterance(tmp_path, seconds=1.0):
    write_wav(tmp_path / "a.wav", seconds, 300)
    path = tmp_path / "ctc.jsonl"
    path.write_text(json.dumps({"audio": "a.wav", "text": "paris"}) + "\n")
    return load_ctc_records([path])


def test_speed_perturbation_changes_each_read_and_is_reproducible(tmp_path):
    records, tok = one_utterance(tmp_path), word_tokenizer()
    plain = CTCDataset(records, tok)[0][0]
    fixed = CTCDataset(records, tok, speed=(0.8, 0.8))[0][0]
    assert abs(len(fixed) - len(plain) / 0.8) <= 1
    ds = CTCDataset(records, tok, speed=(0.85, 1.15), gain_db=6.0, seed=3)
    first, second = ds[0][0], ds[0][0]
    assert not torch.equal(first, second)  # a fresh draw on every read
    for wave in (first, second):
        assert len(plain) / 1.15 - 1 <= len(wave) <= len(plain) / 0.85 + 1
        peak = float(wave.abs().max()) / float(plain.abs().max())
        assert 10 ** (-6.5 / 20) <= peak <= 10 ** (6.5 / 20)
    again = CTCDataset(records, tok, speed=(0.85, 1.15), gain_db=6.0, seed=3)
    assert torch.equal(again[0][0], first) and torch.equal(again[0][0], second)
    assert not torch.equal(CTCDataset(records, tok, speed=(0.85, 1.15), gain_db=6.0, seed=4)[0][0], first)
    assert torch.equal(CTCDataset(records, tok, speed=(1.0, 1.0))[0][0], plain)


def test_worker_processes_draw_new_perturbations_every_epoch(tmp_path):
    """A fresh worker's read count starts at 0 each epoch; its seed keeps the epochs from repeating."""
    ds = CTCDataset(one_utterance(tmp_path), word_tokenizer(), speed=(0.85, 1.15), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, generator=torch.Generator().manual_seed(0))
    first, second = (next(iter(loader))[0] for _ in range(2))
    assert not torch.equal(first, second)
    again = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(next(iter(again))[0], first)


def test_the_recipe_data_section_sets_the_augmentation(tmp_path):
    records, tok = one_utterance(tmp_path), word_tokenizer()
    recipe = recipe_from_dict({
        "name": "x", "stage": "ctc", "model": {"tiny": True},
        "data": {"train": ["x.jsonl"], "speed_perturb": [0.8, 0.8], "gain_db": 3.0},
        "train": {"max_steps": 1, "seed": 7}, "optim": {"lr_max": 1e-3, "lr_min": 1e-4},
    })
    ds = dataset_for(records, tok, recipe.data, recipe.train.seed)
    assert (ds.speed, ds.gain_db, ds.seed) == ((0.8, 0.8), 3.0, 7)
    assert recipe.data.transcript_case == "lower"
    assert abs(len(ds[0][0]) - len(CTCDataset(records, tok)[0][0]) / 0.8) <= 1


def test_the_recipe_sets_the_transcript_case(tmp_path):
    write_wav(tmp_path / "a.wav", 1.0, 300)
    (tmp_path / "ctc.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "Is it Paris?"}) + "\n")
    records = load_ctc_records([tmp_path / "ctc.jsonl"])
    seen: list[str] = []

    def tokenizer(text, add_special_tokens):
        seen.append(text)
        return {"input_ids": [1, 2, 3]}

    recipe = recipe_from_dict({
        "name": "x", "stage": "ctc", "model": {"tiny": True}, "data": {"train": ["x.jsonl"], "transcript_case": "proper"},
        "train": {"max_steps": 1}, "optim": {"lr_max": 1e-3, "lr_min": 1e-4},
    })
    assert dataset_for(records, tokenizer, recipe.data, 0).targets == [[1, 2, 3]]
    assert seen == [" is it Paris"]


def test_a_bad_speed_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"speed must be \(low, high\) with 0 < low <= high, got \(1.2, 0.9\)"):
        CTCDataset(one_utterance(tmp_path), word_tokenizer(), speed=(1.2, 0.9))


WORDS = ["paris", "france", "capital", "water", "sky", "blue"]


def ctc_setup(tmp_path, n=6):
    """A tiny ``vocab_ctc`` model folder and n tone utterances, one word each (pitch identifies it)."""
    cfg = tiny_config()
    cfg.audio_config.continuous_adapter = "vocab_ctc"
    torch.manual_seed(0)
    model_dir = tmp_path / "init"
    model = FunAudioChatForConditionalGeneration(cfg)
    with torch.no_grad():  # rows of a pretrained table's size (norm ~3), not of a fresh 0.02-std init
        model.get_input_embeddings().weight.mul_(15.0)
    model.save_pretrained(model_dir)
    word_tokenizer(vocab_size=512).save_pretrained(model_dir)
    lines = []
    for i, word in enumerate(WORDS[:n]):
        write_wav(tmp_path / f"{word}.wav", 1.2, 200 + 150 * i)
        lines.append(json.dumps({"audio": f"{word}.wav", "text": word}))
    (tmp_path / "ctc.jsonl").write_text("\n".join(lines) + "\n")
    return model_dir, tmp_path / "ctc.jsonl"


def ctc_recipe(model_dir, data, out, steps=150):
    return recipe_from_dict({
        "name": "tiny_ctc", "stage": "ctc",
        "model": {"path": str(model_dir)},
        "data": {"train": [str(data)]},
        "train": {"max_steps": steps, "batch_size": 6,
                  "trainable": ["continuous_audio_tower.", "audio_tower.continual_output_matching.",
                                "speech_vocab_adapter."]},
        "optim": {"lr_max": 1e-2, "lr_min": 1e-3, "warmup_steps": 2},
        "output": {"dir": str(out), "plots": False},
    })


def dataset_loss(model_dir, data):
    model = FunAudioChatForConditionalGeneration.from_pretrained(model_dir).eval()
    tok = word_tokenizer(vocab_size=512)
    ds = CTCDataset(load_ctc_records([data]), tok)
    batch = CTCCollator(80)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        loss = float(speech_ctc_loss(model, **batch))
        logits, lens = model.speech_ctc_logits(batch["input_features"], batch["feature_attention_mask"])
    return loss, [tok.decode(ids) for ids in greedy_decode(logits, lens)]


def test_the_ctc_stage_learns_the_words_and_leaves_the_backbone_alone(tmp_path):
    torch.set_num_threads(1)
    model_dir, data = ctc_setup(tmp_path)
    before, _ = dataset_loss(model_dir, data)
    result = train(ctc_recipe(model_dir, data, tmp_path / "run"))
    after, decoded = dataset_loss(result.final_dir, data)
    assert after < 0.25 * before, (before, after)
    assert sum(d == w for d, w in zip(decoded, WORDS)) >= 5, decoded
    start, end = weights(model_dir), weights(result.final_dir)
    lm_start, rest_start = split(start, "language_model.")
    lm_end, _ = split(end, "language_model.")
    assert all(torch.equal(lm_start[k], lm_end[k]) for k in lm_start)
    assert not torch.equal(start["continuous_audio_tower.proj.weight"], end["continuous_audio_tower.proj.weight"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 150 and rows[-1]["loss"] < rows[0]["loss"]


def test_the_ctc_stage_refuses_a_model_without_the_adapter(tmp_path):
    model_dir, data = ctc_setup(tmp_path, n=2)
    FunAudioChatForConditionalGeneration(tiny_config()).save_pretrained(model_dir)  # linear adapter
    with pytest.raises(ValueError, match="continuous_adapter='vocab_ctc'"):
        train(ctc_recipe(model_dir, data, tmp_path / "run", steps=1))


def test_a_ctc_recipe_with_lora_is_refused():
    with pytest.raises(RecipeError, match="the ctc stage does not run the backbone"):
        recipe_from_dict({
            "name": "x", "stage": "ctc", "model": {"tiny": True}, "data": {"train": ["x.jsonl"]},
            "train": {"max_steps": 1, "lora": {"r": 4}},
        })


@pytest.mark.parametrize("stage, data, message", [
    ("sft", {"speed_perturb": [0.9, 1.1]}, r"only the ctc stage augments audio \(stage is sft\)"),
    ("dpo", {"gain_db": 3.0}, r"only the ctc stage augments audio \(stage is dpo\)"),
    ("ctc", {"speed_perturb": [1.1, 0.9]}, r"data.speed_perturb: must be \[low, high\] with 0 < low <= high"),
    ("ctc", {"speed_perturb": [0.9]}, r"data.speed_perturb: must be \[low, high\]"),
    ("ctc", {"gain_db": -1.0}, r"data.gain_db: must be in \[0, 40\], got -1.0"),
    ("sft", {"transcript_case": "proper"}, r"data.transcript_case: only the ctc stage reads transcripts as targets"),
    ("ctc", {"transcript_case": "title"}, r"data.transcript_case"),
])
def test_bad_audio_augmentation_settings_are_refused(stage, data, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({
            "name": "x", "stage": stage, "model": {"tiny": True}, "data": {"train": ["x.jsonl"], **data},
            "train": {"max_steps": 1}, "optim": {"lr_max": 1e-3, "lr_min": 1e-4},
        })


def test_lengths_are_read_from_the_headers(tmp_path):
    write_wav(tmp_path / "a.wav", 1.5, 300)
    write_wav(tmp_path / "b.wav", 0.25, 300, sr=8000)
    path = tmp_path / "ctc.jsonl"
    path.write_text("".join(json.dumps({"audio": a, "text": "paris"}) + "\n" for a in ("a.wav", "b.wav")))
    assert CTCDataset(load_ctc_records([path]), word_tokenizer()).lengths() == [1.5, 0.25]
