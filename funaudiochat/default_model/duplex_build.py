"""Full-duplex stage of the ``funaudiochat-tiny`` build (``funaudiochat build-default-duplex``).

Runs after a finished half-duplex build and ships only what it changes, so the half-duplex model
loads exactly as before::

    duplex data -> duplex training (LoRA + action head + U[t] adapter) -> duplex package

* **Data** (``WORK/duplex/data``): the build's own training questions and answers
  (``WORK/questions.jsonl`` + ``WORK/answers.jsonl``: the non-evaluation half of the dev sets)
  chained into dialogues and spoken by :mod:`funaudiochat.duplex.data`.  TTS clips are cached in
  ``WORK/duplex/cache``; a stamp of the dialogue ids and settings makes a rerun skip the stage.
* **Training** (``WORK/runs/duplex``, recipe ``WORK/recipes/duplex.yaml``): the real trainer's
  ``duplex`` stage from ``WORK/runs/dpo/final`` (the shipped half-duplex weights), LoRA rank 8 on
  the backbone (merged at the end), ``duplex_head`` and ``audio_tower.continual_output_matching``
  trainable, everything else frozen.  Resumable from its checkpoints.
* **Package**: ``duplex.safetensors`` (:func:`funaudiochat.default_model.package.extract_duplex`)
  written next to the half-duplex files of a base package, which are copied byte for byte.  The
  result is rebuilt the way ``load_default_model(duplex=True)`` rebuilds it and compared with the
  trained model.

Times go to ``WORK/timings_duplex.json`` (the half-duplex build's ``timings.json`` is left as it is).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from funaudiochat.default_model import package as pkg
from funaudiochat.default_model.build import StageSpec, _recipe, _Timer, _train_stage, final_model_dir
from funaudiochat.duplex.timeline import DuplexConfig

logger = logging.getLogger(__name__)

STAGE = "duplex"
TIMINGS_FILE = "timings_duplex.json"
STAMP_FILE = "build_stamp.json"


@dataclass
class DuplexBuildConfig:
    """Size and settings of the duplex stage.

    The default is sized for about 15 minutes on an idle 2-core CPU, well inside the 25-minute
    budget (docs/default-model-history.md, "How it was built (first build)"): a dialogue (about
    20 s of conversation) takes about 0.5 s to synthesize and 1.6 s to train on, and each of the
    400 is trained on once.
    Another process on the two cores slows the training down many times over (thread
    oversubscription), so measure on an idle machine.
    """

    n_dialogues: int = 400
    #: Question/answer exchanges per dialogue (drawn per dialogue from ``seed``).
    turns: tuple[int, int] = (1, 3)
    seed: int = 0
    #: Event rates and timing of the synthesized conversations (more barge-ins than the default, so
    #: that the short run sees enough ``stop`` steps).
    timeline: DuplexConfig = field(default_factory=lambda: DuplexConfig(interruption_rate=0.3))
    stage: StageSpec = field(default_factory=lambda: StageSpec(
        400, 2e-4, 2e-5, batch_size=1, lora_r=8, warmup_ratio=0.05, save_every=50,
        trainable=list(pkg.DUPLEX_PREFIXES)))
    action_weight: float = 1.0
    text_weight: float = 1.0
    speech_weight: float = 1.0

    @classmethod
    def smoke(cls) -> DuplexBuildConfig:
        """Two one-exchange dialogues and two steps: checks the stage end to end, trains nothing useful."""
        cfg = cls(n_dialogues=2, turns=(1, 1))
        cfg.stage.max_steps, cfg.stage.save_every = 2, 1
        return cfg


@dataclass
class DuplexBuildResult:
    out_dir: Path
    work_dir: Path
    timings: dict[str, float]
    n_dialogues: int
    #: Clock steps (200 ms) of all records, and the share of them labelled ``listen``.
    n_steps: int
    listen_share: float
    #: Means of the first and last logged training steps (see :func:`curve_summary`).
    curve: dict[str, Any]
    #: The duplex model rebuilt from the shipped tensors (what ``default-duplex`` loads), for checks.
    model: Any = None
    tokenizer: Any = None
    max_action_logit_diff: float | None = None
    max_text_logit_diff: float | None = None


def _work_paths(work: Path) -> dict[str, Path]:
    return {
        "data": work / "duplex" / "data",
        "cache": work / "duplex" / "cache",
        "recipe": work / "recipes" / f"{STAGE}.yaml",
        "run": work / "runs" / STAGE,
        "start": final_model_dir(work),
    }


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def duplex_data_stage(work: Path, cfg: DuplexBuildConfig) -> Path:
    """Duplex records from the build's own questions and answers; skipped when already built alike."""
    from funaudiochat.duplex.data import build_duplex_data, dialogues_from_qa, read_qa_files

    paths = _work_paths(work)
    pairs = read_qa_files(work / "questions.jsonl", work / "answers.jsonl")
    dialogues = dialogues_from_qa(pairs, tuple(cfg.turns), seed=cfg.seed)
    if len(dialogues) < cfg.n_dialogues:
        logger.warning("only %d dialogues can be made from %d question/answer pairs (asked for %d)",
                       len(dialogues), len(pairs), cfg.n_dialogues)
    dialogues = dialogues[: cfg.n_dialogues]
    turns = json.dumps([[[t.speaker, t.text] for t in d.turns] for d in dialogues], ensure_ascii=False)
    stamp = _as_json({"dialogues": [d.id for d in dialogues], "seed": cfg.seed,
                      "turns_sha1": hashlib.sha1(turns.encode("utf-8")).hexdigest(),
                      "timeline": dataclasses.asdict(cfg.timeline)})
    jsonl, stamp_path = paths["data"] / "duplex.jsonl", paths["data"] / STAMP_FILE
    if jsonl.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        logger.info("duplex data: %d dialogues already built in %s", len(dialogues), jsonl)
        return jsonl
    stamp_path.unlink(missing_ok=True)
    path = build_duplex_data(dialogues, paths["data"], cfg.timeline, seed=cfg.seed, cache_dir=paths["cache"],
                             progress=False)
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    return path


def write_duplex_recipe(work: Path, cfg: DuplexBuildConfig, data: Path) -> Path:
    """``WORK/recipes/duplex.yaml``, written like the other stages' recipes (checked on load)."""
    import yaml

    paths = _work_paths(work)
    recipe = _recipe(STAGE, cfg.stage, {"path": str(paths["start"]), "dtype": "float32"}, data, paths["run"],
                     cfg.seed, dpo=False, stage=STAGE)
    recipe[STAGE] = {"action_weight": cfg.action_weight, "text_weight": cfg.text_weight,
                     "speech_weight": cfg.speech_weight}
    paths["recipe"].parent.mkdir(parents=True, exist_ok=True)
    paths["recipe"].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return paths["recipe"]


def curve_summary(metrics_path: Path, window: int | None = None) -> dict[str, Any]:
    """Means over the first and last ``window`` logged steps (default: a fifth of the run, 1-10)."""
    rows = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").split("\n") if x.strip()]
    if not rows:
        return {"steps": 0}
    window = window or max(1, min(10, len(rows) // 5))
    keys = ("loss", "action_loss", "action_accuracy", "text_loss", "speech_loss")

    def mean(part: list[dict], key: str) -> float | None:
        vals = [r[key] for r in part if r.get(key) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    return {"steps": rows[-1]["step"], "window": window,
            "first": {k: mean(rows[:window], k) for k in keys}, "last": {k: mean(rows[-window:], k) for k in keys}}


def _data_stats(jsonl: Path) -> tuple[int, int, float]:
    records = [json.loads(x) for x in jsonl.read_text(encoding="utf-8").split("\n") if x.strip()]
    actions = [a for r in records for a in r["actions"]]
    return len(records), len(actions), (actions.count("listen") / len(actions) if actions else 0.0)


def _copy_base(base: Path, out: Path) -> None:
    """The half-duplex files and manifest of ``base`` into ``out``, byte for byte, without any duplex extra."""
    manifest = pkg.verify_manifest(base)
    out.mkdir(parents=True, exist_ok=True)
    if base.resolve() == out.resolve():
        return
    for fname in pkg.REQUIRED_FILES:
        shutil.copyfile(base / fname, out / fname)
    (out / pkg.DUPLEX_FILE).unlink(missing_ok=True)
    manifest.pop("duplex", None)
    manifest["files"] = {f: manifest["files"][f] for f in pkg.REQUIRED_FILES}
    manifest["total_bytes"] = sum(e["bytes"] for e in manifest["files"].values())
    (out / pkg.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    pkg.verify_manifest(out)


def _check_base_matches(out: Path, start_state: dict[str, torch.Tensor], start_dir: Path) -> None:
    """The package must describe the model the stage started from: its speech file is that model's
    non-backbone tensors in fp16, so they compare exactly."""
    from safetensors.torch import load_file

    speech = load_file(str(out / pkg.SPEECH_FILE))
    bad = [k for k, v in speech.items() if k not in start_state or not torch.equal(v, start_state[k].to(torch.float16))]
    if bad:
        raise pkg.ManifestError(f"{out / pkg.SPEECH_FILE} was not built from {start_dir} ({len(bad)} tensors differ, "
                                f"e.g. {bad[0]}); pass the half-duplex package of this work dir as the base")


def _teacher_forced(model, tokenizer, record) -> tuple[torch.Tensor, torch.Tensor]:
    """Action and text logits of one record, batched exactly as the trainer batches it."""
    from funaudiochat.duplex.batch import DuplexCollator, DuplexDataset
    from funaudiochat.duplex.model import duplex_forward
    from funaudiochat.processing import FunAudioChatProcessor

    collator = DuplexCollator(FunAudioChatProcessor(tokenizer, model.config))
    batch = collator([DuplexDataset([record], collator)[0]])
    with torch.no_grad():
        out = duplex_forward(model.eval(), batch)
    return out.action_logits[0], out.text_logits[0]


def compare_duplex(shipped, trained, tokenizer, jsonl: Path) -> tuple[float, float]:
    """Max |action logit| and |text logit| difference on the shortest duplex record, teacher-forced."""
    from funaudiochat.duplex.batch import load_duplex_records

    record = min(load_duplex_records([str(jsonl)]), key=lambda r: r.n_steps)
    a1, t1 = _teacher_forced(shipped, tokenizer, record)
    a2, t2 = _teacher_forced(trained, tokenizer, record)
    return float((a1 - a2).abs().max()), float((t1 - t2).abs().max())


def duplex_package_stage(work: Path, out: Path, base: Path, cfg: DuplexBuildConfig, timings: dict,
                         data: Path) -> DuplexBuildResult:
    """Write ``duplex.safetensors`` + manifest into ``out`` (on a copy of ``base``) and check the reload."""
    from safetensors.torch import load_file

    from funaudiochat.duplex.data import DEFAULT_SYSTEM
    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    paths = _work_paths(work)
    _copy_base(base, out)
    start = FunAudioChatForConditionalGeneration.from_pretrained(paths["start"], dtype=torch.float32)
    start_state = start.state_dict()
    _check_base_matches(out, start_state, paths["start"])
    trained = FunAudioChatForConditionalGeneration.from_pretrained(paths["run"] / "final", dtype=torch.float32).eval()
    tensors = pkg.extract_duplex(trained, start_state, cfg.stage.lora_r or 0)
    del start, start_state

    n_dialogues, n_steps, listen = _data_stats(data)
    curve = curve_summary(paths["run"] / "metrics.jsonl")
    info: dict[str, Any] = {
        "settings": dict(trained.config.duplex), "speech_delay": trained.config.speech_delay,
        "system_prompt": DEFAULT_SYSTEM, "lora_rank": cfg.stage.lora_r,
        "build": {"config": _as_json(dataclasses.asdict(cfg)), "timings_s": dict(timings),
                  "dialogues": n_dialogues, "clock_steps": n_steps, "listen_share": round(listen, 4),
                  "training": curve, "questions_file": "questions.jsonl (work dir)"},
    }
    # The model the package describes, rebuilt in memory exactly as the loader will rebuild it.
    shipped, tok = pkg.load_default_model(out)
    pkg.attach_duplex_head(shipped, info, out)
    pkg.apply_duplex(shipped, tensors, source=str(out))
    da, dt = compare_duplex(shipped, trained, tok, data)
    logger.info("duplex package vs trained fp32 model: max |action logit diff| %.3g, max |text logit diff| %.3g",
                da, dt)
    info["build"].update(max_action_logit_diff_vs_trained_fp32=da, max_text_logit_diff_vs_trained_fp32=dt)
    manifest = pkg.add_duplex_to_package(tensors, out, info)
    if manifest["total_bytes"] > 60e6:
        logger.warning("package is %.1f MB, above the 60 MB budget", manifest["total_bytes"] / 1e6)
    reloaded = load_file(str(out / pkg.DUPLEX_FILE))
    if set(reloaded) != set(tensors) or any(not torch.equal(reloaded[k], tensors[k]) for k in tensors):
        raise RuntimeError(f"{out / pkg.DUPLEX_FILE} does not read back as written")
    return DuplexBuildResult(out, work, dict(timings), n_dialogues, n_steps, listen, curve, shipped.eval(), tok, da, dt)


def _check_same_run(recipe: Path, run: Path) -> None:
    """A run in ``run`` is resumed (or, when finished, reused) only if it was made with this recipe."""
    from funaudiochat.training.recipes import load_recipe

    done = run / "recipe.yaml"
    if done.is_file() and load_recipe(done).to_dict() != load_recipe(recipe).to_dict():
        raise ValueError(f"{run} holds a duplex run made with another recipe than {recipe} (other dialogues, "
                         f"steps or settings); delete {run} (and the 'duplex' entries of "
                         f"{run.parent.parent / TIMINGS_FILE}) to train again")


def run_duplex_build(work_dir: str | Path, out_dir: str | Path, base_dir: str | Path | None = None,
                     smoke: bool = False, config: DuplexBuildConfig | None = None) -> DuplexBuildResult:
    """Run (or resume) the duplex stage on a finished build in ``work_dir``; package into ``out_dir``.

    ``base_dir`` is the half-duplex package of that build (default: the shipped one); its files are
    copied unchanged into ``out_dir`` (which may be ``base_dir`` itself) and the duplex extra is added.
    """
    cfg = config or (DuplexBuildConfig.smoke() if smoke else DuplexBuildConfig())
    work, out = Path(work_dir), Path(out_dir)
    base = Path(base_dir) if base_dir is not None else pkg.DEFAULT_ASSETS
    paths = _work_paths(work)
    if not (paths["start"] / "config.json").is_file():
        raise FileNotFoundError(f"{work}: no finished DPO stage ({paths['start']}); run build-default with this "
                                "work dir first")
    pkg.verify_manifest(base)  # fail now, not after the training
    if cfg.stage.lora_r is None or cfg.stage.trainable is None:
        raise ValueError("the duplex stage trains the backbone through LoRA and only the listed modules besides; "
                         "set stage.lora_r and stage.trainable")
    timer = _Timer(work / TIMINGS_FILE)
    data = timer.run("duplex_data", duplex_data_stage, work, cfg)
    recipe = write_duplex_recipe(work, cfg, data)
    _check_same_run(recipe, paths["run"])
    timer.run(STAGE, _train_stage, recipe)
    return timer.run("duplex_package", duplex_package_stage, work, out, base, cfg, timer.times, data)


def expected_steps(cfg: DuplexBuildConfig) -> int:
    """Optimizer steps of one pass over the dialogues at the stage's batch size."""
    return math.ceil(cfg.n_dialogues / (cfg.stage.batch_size * cfg.stage.grad_accum))
