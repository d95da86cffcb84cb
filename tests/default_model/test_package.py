"""Packaging: exact low-rank backbone deltas, fp16 speech modules, and hash checks on load."""

import json

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
    rebuilt = pkg.apply_package(base, files, vocab)
    for name, p in rebuilt.state_dict().items():
        torch.testing.assert_close(p, trained.state_dict()[name], atol=2e-3, rtol=2e-3)


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
