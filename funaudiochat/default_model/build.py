"""``funaudiochat build-default``: the reproducible build of ``funaudiochat-tiny``.

Stages, each cached in the work dir so a rerun continues where it stopped::

    questions -> answers -> speech data -> [vocabulary sentences] -> init model -> [speech CTC] -> pre-alignment -> Core-Cocktail stage 1 (LoRA)
    -> merge (alpha 0.5, backbone only) -> stage 2 (LoRA) -> DPO (LoRA) -> package
    [-> duplex data -> duplex (LoRA + action head) -> duplex extra]   (``duplex=True``, duplex_build.py)

The speech CTC stage (``training/ctc.py``) runs when the model reads user speech through the
``vocab_ctc`` adapter (the default since session 5): it teaches the encoder to emit the backbone's own
tokens, with no backbone pass, before any stage puts the backbone in the loop.  Its data are every
question and answer recording plus sentences picked for the words they add
(:mod:`funaudiochat.default_model.vocab_sentences`).  After it, the path it trained is frozen
(``BuildConfig.freeze_speech_in``): the later stages' LM losses otherwise blurred its readout.

The LoRA stages keep the backbone change low-rank, so the package ships it as small factors
(see :mod:`funaudiochat.default_model.package`).  ``smoke=True`` uses a handful of questions and
steps so the whole pipeline runs in minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from funaudiochat.default_model import package as pkg
from funaudiochat.default_model.questions import read_questions, training_questions, write_questions
from funaudiochat.default_model.read_aloud import READ_ALOUD_TASK

logger = logging.getLogger(__name__)

DEFAULT_BENCHDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "benchdata"

#: The joint stages' step counts in :meth:`BuildConfig.cpu_base` since session 27 (160, 180, 90 and 50
#: before).  Session 26 measured the build at 95.7 min and the training loss of pre-alignment and stage 1
#: level at about 70 % of their steps, stage 2's flat and DPO's at ln 2 throughout; these counts take some
#: 13 minutes off (docs/default-model.md, "Session 27").
CPU_BASE_STEPS: dict[str, int] = {"pre_alignment": 120, "core_cocktail_stage1": 130, "core_cocktail_stage2": 50,
                                  "dpo": 30}

#: The ``build-default`` preset that made the shipped model (``BuildConfig.cpu_base``, session 22).
DEFAULT_PRESET = "cpu-base"
ENCODER_PREFIX, ADAPTER_PREFIX = "continuous_audio_tower.", "continuous_audio_tower.proj."
SRH_STAGE = "srh_refine"
STAGES = ("pre_alignment", "core_cocktail_stage1", "core_cocktail_stage2", "dpo")
CTC_STAGE = "ctc_alignment"
#: What the CTC stage trains: the encoder and everything between it and the backbone.
CTC_TRAINABLE = ["continuous_audio_tower.", "audio_tower.continual_output_matching.", "speech_vocab_adapter."]
#: What stays frozen after the CTC stage: all it trained except ``blank_embed``, which only the
#: backbone's loss can train (the CTC loss never sees what the backbone reads for a blank).
FROZEN_AFTER_CTC = ["continuous_audio_tower.", "audio_tower.continual_output_matching.",
                    "speech_vocab_adapter.blank_query", "speech_vocab_adapter.logit_scale"]
#: Frozen with them when the readout has a spelling table (it only scores, like ``blank_query``).
SPELLING_PREFIX = "speech_vocab_adapter.spelling."
#: The CTC stage's audio augmentation (recipe data.speed_perturb and data.gain_db).
CTC_SPEED_RANGE, CTC_GAIN_DB = (0.85, 1.15), 6.0
#: Pretrained Whisper layers at a tenth of the lr of the new modules behind them.
SLOW_ENCODER = {ENCODER_PREFIX: 0.1, ADAPTER_PREFIX: 1.0, "continuous_audio_tower.audio_bos_eos_token.": 1.0}


@dataclass
class StageSpec:
    max_steps: int
    lr_max: float
    lr_min: float
    batch_size: int = 8
    grad_accum: int = 1
    #: LoRA rank on the backbone (None: backbone frozen).
    lora_r: int | None = None
    freeze: list[str] = field(default_factory=list)
    warmup_ratio: float = 0.02
    #: If set, only these parameter prefixes train besides the LoRA adapters (the duplex stage).
    trainable: list[str] | None = None
    #: Checkpoint interval in steps (None: a quarter of the stage, at least 50).
    save_every: int | None = None
    #: accelerate's mixed precision ("no" on CPU; "bf16" on a GPU).
    mixed_precision: str = "no"
    #: DataLoader worker processes (audio decoding and features run there).
    num_workers: int = 0
    #: optim.lr_scale of the stage's recipe (parameter prefix -> lr multiplier).
    lr_scale: dict[str, float] = field(default_factory=dict)
    #: data.speed_perturb and data.gain_db of the recipe (the CTC stage's augmentation).
    speed_perturb: list[float] | None = None
    gain_db: float = 0.0
    #: data.group_by_length of the recipe: batches cut from windows of N global batches sorted by
    #: length (0: random batches, every preset).  Session 29: the CTC stage's random batches pad their
    #: audio 2.2 times; grouped by 16 its steps ran 1.19 times faster here, and its readout heard as
    #: much as two seeds of random batches (docs/default-model.md, "Session 29").  No build has used it.
    group_by_length: int = 0


@dataclass
class SRHRefineSpec:
    """The SRH-only stage after DPO (:mod:`funaudiochat.training.srh_refine`)."""

    steps: int = 400
    batch_size: int = 16
    lr_max: float = 1e-3
    lr_min: float = 1e-4
    #: 5 Hz positions kept before each reply's speech.
    context_groups: int = 4
    #: Replies held out to log the head's loss and accuracy (not trained on).
    val_rows: int = 64
    #: ``config.srh_prev_scale`` for the refined head (None: keep the model's).  A new value starts the
    #: head afresh, since its weights were learnt for the old inputs.  Session 24: at 1.0 the tiny
    #: model's head ignores its previous token; 30 lets it use it.
    prev_scale: float | None = None
    #: Batches from windows of N batches sorted by reply length (``train_srh``'s ``group_by_length``; 0: random).
    group_by_length: int = 0


@dataclass
class BuildConfig:
    n_questions: int | None = None
    answer_batch: int = 32
    answer_max_new_tokens: int = 40
    merge_alpha: float = 0.5
    seed: int = 0
    #: Also transcribe the answers' recordings (a fourth SFT record per question; the GPU preset).
    answer_asr: bool = False
    #: ``vocab_ctc`` (user speech read as the backbone's own tokens, trained first by CTC) or
    #: ``linear`` (the released adapter; what the builds before session 5 used, without a CTC stage).
    speech_adapter: str = "vocab_ctc"
    #: How a spoken reply's text sits in its audio run (``config.text_layout``): ``ahead`` as released,
    #: or ``paced`` (each word's tokens just before its speech; ``training/pacing.py``, session 14).
    text_layout: str = "ahead"
    # Speed (tempo and pitch) and level perturbation: each pass hears the few synthetic voices anew.
    ctc: StageSpec | None = field(default_factory=lambda: StageSpec(
        520, 1e-3, 1e-4, batch_size=16, warmup_ratio=0.05, trainable=list(CTC_TRAINABLE),
        lr_scale=dict(SLOW_ENCODER), speed_perturb=list(CTC_SPEED_RANGE), gain_db=CTC_GAIN_DB))
    # Sized so the whole build fits in 90 minutes on a 2-core CPU (docs/default-model.md). The new
    # adapter starts from random weights, hence the higher pre-alignment lr.
    stages: dict[str, StageSpec] = field(default_factory=lambda: {
        "pre_alignment": StageSpec(160, 3e-4, 3e-5, freeze=["language_model."], lr_scale=dict(SLOW_ENCODER)),
        "core_cocktail_stage1": StageSpec(180, 1e-4, 1e-5, lora_r=8, lr_scale=dict(SLOW_ENCODER)),
        "core_cocktail_stage2": StageSpec(90, 1e-5, 1e-6, lora_r=8),
        "dpo": StageSpec(50, 5e-6, 5e-7, batch_size=4, lora_r=8, warmup_ratio=0.1),
    })
    #: Extra CTC sentences chosen for word coverage (``vocab_sentences``; 0: none).  Session 7.
    vocab_sentences: int = 2000
    #: Freeze the speech-in path after the CTC stage (``FROZEN_AFTER_CTC``), ``vocab_ctc`` only.  The
    #: session-6 build's readout went from 42.9 % to 50.7 % WER on real speech through the later stages.
    freeze_speech_in: bool = True
    #: Train the embedding rows of the added tokens (``<|audio_bos|>``, ``<|sil|>``...) in every stage
    #: after the CTC stage (``train.new_token_rows``).  Off by default (the shipped model kept their
    #: initial values); on in :meth:`cpu_base` (session 21).  Session 8 found that a spoken reply's
    #: first word is predicted at the untrained ``<|audio_bos|>``; no build has measured it alone.
    train_new_tokens: bool = False
    #: SRH refinement after DPO on cached backbone states (None: the package takes the DPO model).
    #: Off in the plain and GPU presets: at the released scale it lowered the held-out speech loss only
    #: from 5.52 to 5.23.  On in :meth:`cpu_base` with a fresh head at ``srh_prev_scale`` 30 (sessions 24-25,
    #: docs/default-model-history.md).
    srh: SRHRefineSpec | None = None
    #: Train the SRH in the joint stages (pre-alignment, Core-Cocktail, DPO) by its speech loss.  False
    #: leaves it out of them (``train.speech_loss``), which needs the SRH stage (``srh``) to train it:
    #: session 24 measured its share of a joint step at about 1.2 s, some 9 minutes of the CPU build,
    #: spent on a head that the SRH stage then draws afresh.
    joint_speech_loss: bool = True
    #: Read-aloud turns (:mod:`funaudiochat.default_model.read_aloud`: typed sentence -> spoken in the
    #: assistant voice) added to the SFT data of pre-alignment and both Core-Cocktail stages, and to the
    #: SRH stage's rows.  0 (none) by default: sessions 14 and 15 measured a small gain on the SRH
    #: alone (docs/default-model-history.md); no full build has used them yet.
    read_aloud: int = 0
    #: The pip Whisper encoder the speech-in path starts from (``parts.ENCODER_SHAPES``).
    encoder: str = "tiny.en"
    #: Train only the top N Whisper layers (and its final layer norm when N > 0) in the CTC stage; the
    #: convolutions and the lower layers stay as pip ships them in every stage, so the package leaves them
    #: out and the loader takes them from pip.  None: every layer trains, as tiny.en always did.  Session
    #: 17 measured a frozen base under a CTC readout hearing more real speech than any fine-tuned tiny.en;
    #: session 18 found the model's own readout linear, so a frozen encoder leaves it no non-linearity.
    encoder_trainable_layers: int | None = None
    #: Hashed-n-gram buckets of the CTC readout's spelling table (``modeling/vocab_adapter.py``;
    #: 0: none, as shipped; :meth:`cpu_base` uses 8192).  ``vocab_ctc`` only.  Session 20's probe on a
    #: frozen Whisper base: WER on real speech 36.1 % -> 29.4 % at 8192 buckets; session 21's build: 29.9 %.
    ctc_spelling_buckets: int = 0

    def __post_init__(self) -> None:
        from funaudiochat.config import ADAPTER_MODES, TEXT_LAYOUTS
        from funaudiochat.default_model.parts import ENCODER_SHAPES

        if self.speech_adapter not in ADAPTER_MODES:
            raise ValueError(f"speech_adapter must be one of {ADAPTER_MODES}, got {self.speech_adapter!r}")
        if self.text_layout not in TEXT_LAYOUTS:
            raise ValueError(f"text_layout must be one of {TEXT_LAYOUTS}, got {self.text_layout!r}")
        if self.read_aloud < 0:
            raise ValueError(f"read_aloud must be >= 0, got {self.read_aloud}")
        if self.ctc_spelling_buckets < 0:
            raise ValueError(f"ctc_spelling_buckets must be >= 0, got {self.ctc_spelling_buckets}")
        if self.ctc_spelling_buckets and self.speech_adapter != "vocab_ctc":
            raise ValueError("ctc_spelling_buckets needs speech_adapter 'vocab_ctc'")
        if not self.joint_speech_loss and self.srh is None:
            raise ValueError("joint_speech_loss=False needs the SRH stage (srh): nothing else would train the head")
        if self.encoder not in ENCODER_SHAPES:
            raise ValueError(f"encoder must be one of {sorted(ENCODER_SHAPES)}, got {self.encoder!r}")
        self.frozen_encoder_prefixes()  # checks the layer count against the encoder

    def frozen_encoder_prefixes(self) -> tuple[str, ...]:
        """The Whisper parts no stage trains (none unless ``encoder_trainable_layers`` is set)."""
        from funaudiochat.default_model.parts import frozen_whisper_prefixes

        if self.encoder_trainable_layers is None:
            return ()
        return frozen_whisper_prefixes(self.encoder, self.encoder_trainable_layers)

    @classmethod
    def cpu_base(cls) -> BuildConfig:
        """Session 21's recipe (``--preset cpu-base``): Whisper base with its top 2 layers trained, the
        added tokens' rows trained, and a spelling table of 8192 buckets in the CTC readout.  Since session
        25 the SRH is left out of the joint stages and trained afterwards, afresh at ``srh_prev_scale`` 30,
        by the SRH stage (400 steps): the same minutes buy a head that hears its previous token.

        Why the default: it hears and answers more real speech than session 6's recipe (14 of 100 real
        LLaMA-Questions recordings against 9, docs/default-model-history.md, "Session 21"); session 22 shipped it.
        """
        cfg = cls(encoder="base", encoder_trainable_layers=2, train_new_tokens=True, ctc_spelling_buckets=8192,
                  srh=SRHRefineSpec(steps=400, prev_scale=30.0), joint_speech_loss=False)
        for name, steps in CPU_BASE_STEPS.items():
            cfg.stages[name].max_steps = steps
        return cfg

    @classmethod
    def smoke(cls) -> BuildConfig:
        """A handful of items and steps: checks every stage end to end, trains nothing useful."""
        cfg = cls(n_questions=4, answer_max_new_tokens=16)
        for spec in cfg.stages.values():
            spec.max_steps, spec.batch_size = 2, 1
        cfg.stages["pre_alignment"].max_steps = 3
        cfg.ctc.max_steps, cfg.ctc.batch_size = 2, 2
        cfg.vocab_sentences = 4
        cfg.read_aloud = 2
        cfg.ctc_spelling_buckets = 256  # off by default; the smoke build checks it end to end
        # a fresh head, end to end
        cfg.srh = SRHRefineSpec(steps=2, batch_size=2, val_rows=1, prev_scale=4.0, group_by_length=2)
        cfg.joint_speech_loss = False  # as in cpu_base: the head trains in the SRH stage only
        for spec in [cfg.ctc, *cfg.stages.values()]:  # batches by length (no preset uses them), end to end
            spec.group_by_length = 2
        return cfg

    @classmethod
    def gpu(cls, scale: float = 1.0) -> BuildConfig:
        """The same stages sized for one GPU: 4x the batch, bf16 autocast, about 25x the samples.

        ``scale`` multiplies every stage's step count (the device script fits it to a time budget).
        Stage 1 gets LoRA rank 16: reading speech features is new to the backbone, and the package
        still fits the 60 MB budget at a summed rank of 32.  The pretrained Whisper layers train at a
        tenth of the lr of the new adapter behind them: 25x the steps over the same few thousand
        synthetic clips would otherwise fit the encoder to the TTS voices.
        """
        def spec(steps: int, lr_max: float, lr_min: float, batch: int, **kw) -> StageSpec:
            n = max(2, round(steps * scale))
            # One resumable checkpoint per stage: each save writes the whole fp32 model and took 10-25 s
            # on the H200 machine, against 15-30 s of training per quarter stage.
            return StageSpec(n, lr_max, lr_min, batch_size=batch, mixed_precision="bf16", num_workers=6,
                             lr_scale=dict(SLOW_ENCODER), save_every=max(n // 2, 1), **kw)

        cfg = cls(answer_asr=True)
        cfg.ctc = spec(2000, 1e-3, 1e-4, 64, warmup_ratio=0.05, trainable=list(CTC_TRAINABLE),
                       speed_perturb=list(CTC_SPEED_RANGE), gain_db=CTC_GAIN_DB)
        cfg.stages = {
            "pre_alignment": spec(1600, 3e-4, 3e-5, 32, freeze=["language_model."]),
            "core_cocktail_stage1": spec(1400, 1e-4, 1e-5, 32, lora_r=16),
            "core_cocktail_stage2": spec(450, 1e-5, 1e-6, 32, lora_r=8),
            "dpo": spec(200, 5e-6, 5e-7, 16, lora_r=8, warmup_ratio=0.1),
        }
        return cfg

    @property
    def total_lora_rank(self) -> int:
        return sum(s.lora_r or 0 for s in self.stages.values())


@dataclass
class BuildResult:
    out_dir: Path
    work_dir: Path
    timings: dict[str, float]
    #: The model rebuilt from the shipped tensors (what the package loads to), kept for checks.
    model: Any = None
    tokenizer: Any = None
    max_logit_diff_vs_trained: float | None = None
    #: The duplex stage's result when the build ran it (``duplex=True``).
    duplex: Any = None


class _Timer:
    """Wall time per stage, persisted so resumed builds keep earlier stages' numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name: str, fn, *args, **kwargs):
        # A start line too: the data stages and the CTC stage each run for many minutes.
        logger.info("stage %s: started", name)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        if name not in self.times:  # a stage skipped on resume keeps the time of the run that did it
            self.times[name] = round(dt, 2)
        self.path.write_text(json.dumps(self.times, indent=2) + "\n")
        logger.info("stage %s: %.1f s (the build's stages so far: %.1f min)", name, dt, sum(self.times.values()) / 60)
        return out


def _recipe(name: str, spec: StageSpec, model: dict, data: Path | list[Path], out: Path, seed: int, dpo: bool,
            stage: str | None = None, frozen: list[str] | None = None, new_token_rows: int | None = None,
            drop_scales: tuple[str, ...] = (), speech_loss: bool = True) -> dict:
    """A stage's recipe as plain data; ``stage`` overrides the sft/dpo choice of ``dpo`` (``"duplex"``).

    ``frozen`` adds prefixes to the spec's ``freeze`` and drops the lr scales that only they match, and
    ``drop_scales`` drops more (the trainer refuses a scale no trainable parameter falls under);
    ``new_token_rows`` becomes ``train.new_token_rows``, and ``speech_loss=False`` ``train.speech_loss``.
    """
    stage = stage or ("dpo" if dpo else "sft")
    frozen = frozen or []
    lr_scale = {k: v for k, v in spec.lr_scale.items()
                if k not in drop_scales and not any(k.startswith(f) for f in frozen)}
    train: dict[str, Any] = {"max_steps": spec.max_steps, "batch_size": spec.batch_size, "grad_accum": spec.grad_accum,
                             "freeze": list(spec.freeze) + [f for f in frozen if f not in spec.freeze], "mixed_precision": spec.mixed_precision, "max_grad_norm": 1.0,
                             "seed": seed}
    if spec.trainable is not None:
        train["trainable"] = list(spec.trainable)
    if new_token_rows is not None:
        train["new_token_rows"] = new_token_rows
    if not speech_loss:
        train["speech_loss"] = False
    if spec.lora_r:
        train["lora"] = {"r": spec.lora_r, "alpha": 2.0 * spec.lora_r, "merge_at_end": True}
    save_every = spec.save_every if spec.save_every is not None else max(spec.max_steps // 4, 50)
    data_section: dict[str, Any] = {"train": [str(d) for d in (data if isinstance(data, list) else [data])],
                                    "num_workers": spec.num_workers}
    if dpo:
        data_section["allowed_tasks"] = ["robustness"]
    if spec.speed_perturb is not None:
        data_section["speed_perturb"] = list(spec.speed_perturb)
    if spec.gain_db:
        data_section["gain_db"] = spec.gain_db
    if spec.group_by_length > 1:
        data_section["group_by_length"] = spec.group_by_length
    recipe = {
        "name": name, "stage": stage, "model": model,
        "data": data_section,
        "train": train,
        "optim": {"lr_max": spec.lr_max, "lr_min": spec.lr_min, "warmup_ratio": spec.warmup_ratio,
                  **({"lr_scale": lr_scale} if lr_scale else {})},
        "output": {"dir": str(out), "save_every": save_every, "keep_last": 1, "log_every": 1, "plots": False},
    }
    if dpo:
        recipe["dpo"] = {"beta": 0.1, "loss_type": "sigmoid", "text_weight": 1.0, "speech_weight": 1.0}
    return recipe


def write_recipes(work: Path, cfg: BuildConfig, sft: Path, dpo: Path, merge: bool = True,
                  ctc: Path | list[Path] | None = None, original_vocab: int | None = None,
                  read_aloud: Path | None = None) -> dict[str, Path]:
    """One YAML recipe per stage (checked by the recipe schema on load).

    ``merge=False`` writes the ablation that skips the Core-Cocktail merge: stage 2 continues from
    stage 1 directly, and stage 2 and DPO train into ``work/runs_nomerge`` (recipes in
    ``work/recipes_nomerge``); the stages before the merge are shared with the main build.  With a
    ``vocab_ctc`` adapter the speech CTC stage (data ``ctc``, one file or several) comes first and
    pre-alignment starts from it; with ``cfg.freeze_speech_in`` every later stage keeps that path frozen.
    With ``cfg.train_new_tokens`` the stages after it train the embedding rows from ``original_vocab`` on.
    ``read_aloud`` (the read-aloud turns) joins the SFT data of every stage but DPO.
    """
    import yaml

    runs = work / "runs"
    out_runs, rdir = (runs, work / "recipes") if merge else (work / "runs_nomerge", work / "recipes_nomerge")
    rdir.mkdir(parents=True, exist_ok=True)
    with_ctc = merge and cfg.speech_adapter == "vocab_ctc"
    starts = {
        "pre_alignment": runs / CTC_STAGE / "final" if with_ctc else work / "init",
        "core_cocktail_stage1": runs / "pre_alignment" / "final",
        "core_cocktail_stage2": runs / "merged" if merge else runs / "core_cocktail_stage1" / "final",
        "dpo": out_runs / "core_cocktail_stage2" / "final",
    }
    whisper = list(cfg.frozen_encoder_prefixes())
    frozen = FROZEN_AFTER_CTC if cfg.speech_adapter == "vocab_ctc" and cfg.freeze_speech_in else whisper
    if frozen is FROZEN_AFTER_CTC and cfg.ctc_spelling_buckets:
        frozen = [*FROZEN_AFTER_CTC, SPELLING_PREFIX]
    # With no Whisper layer left to train, the encoder's scale would govern nothing (the adapter and the
    # bos/eos rows have their own).
    drop = (ENCODER_PREFIX,) if cfg.encoder_trainable_layers == 0 else ()
    if cfg.train_new_tokens and original_vocab is None:
        raise ValueError("BuildConfig.train_new_tokens needs the backbone's original vocabulary size")
    rows = original_vocab if cfg.train_new_tokens else None
    out = {}
    for i, name in enumerate(STAGES if merge else STAGES[2:], 0 if merge else 2):
        data = dpo if name == "dpo" else [sft, read_aloud] if read_aloud else sft
        r = _recipe(name, cfg.stages[name], {"path": str(starts[name]), "dtype": "float32"}, data, out_runs / name,
                    cfg.seed + i, name == "dpo", frozen=frozen, new_token_rows=rows, drop_scales=drop,
                    speech_loss=cfg.joint_speech_loss)
        out[name] = rdir / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(r, sort_keys=False))
    if with_ctc:
        if ctc is None or cfg.ctc is None:
            raise ValueError("a vocab_ctc build needs the CTC data and BuildConfig.ctc")
        r = _recipe(CTC_STAGE, cfg.ctc, {"path": str(work / "init"), "dtype": "float32"},
                    list(ctc) if isinstance(ctc, list) else ctc,
                    runs / CTC_STAGE, cfg.seed + len(STAGES), False, stage="ctc", frozen=whisper, drop_scales=drop)
        out[CTC_STAGE] = rdir / f"{CTC_STAGE}.yaml"
        out[CTC_STAGE].write_text(yaml.safe_dump(r, sort_keys=False))
    return out


def _answers_stage(work: Path, questions, cfg: BuildConfig) -> dict[str, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from funaudiochat.default_model.answers import generate_answers, read_answer_cache
    from funaudiochat.pretrained import smollm2_backbone_dir

    cache = work / "answers.jsonl"
    done = read_answer_cache(cache)
    if all(q.id in done for q in questions):
        return {q.id: done[q.id] for q in questions}
    bdir = smollm2_backbone_dir()
    lm = AutoModelForCausalLM.from_pretrained(bdir, dtype=torch.float32)
    return generate_answers(lm, AutoTokenizer.from_pretrained(bdir), questions, cache,
                            cfg.answer_batch, cfg.answer_max_new_tokens)


def _vocab_stage(benchdata: str | Path | None, ctc: Path, work: Path, n: int) -> Path | None:
    """Extra CTC sentences for the words the build's own transcripts (``ctc``) lack."""
    from funaudiochat.default_model.vocab_sentences import build_vocab_speech

    known = [json.loads(line)["text"] for line in ctc.read_text(encoding="utf-8").split("\n") if line.strip()]
    return build_vocab_speech(benchdata, known, work, n)


def _read_aloud_stage(benchdata: str | Path | None, work: Path, n: int) -> Path | None:
    """Read-aloud turns of pool sentences that the CTC vocabulary set did not already speak."""
    from funaudiochat.default_model.read_aloud import build_read_aloud

    vocab = work / "data" / "ctc_vocab.jsonl"
    lines = vocab.read_text(encoding="utf-8").split("\n") if vocab.is_file() else []
    return build_read_aloud(benchdata, [json.loads(x)["text"] for x in lines if x.strip()], work, n)


def read_aloud_data(work: Path, cfg: BuildConfig) -> Path | None:
    """The build's read-aloud turns when it made any (``cfg.read_aloud`` > 0 and a pool was found)."""
    path = work / "data" / "read_aloud.jsonl"
    return path if cfg.read_aloud and path.is_file() else None


def _init_stage(work: Path, seed: int, speech_adapter: str, text_layout: str = "ahead",
                encoder: str = "tiny.en", ctc_spelling_buckets: int = 0) -> Path:
    from funaudiochat.default_model.parts import assemble_default
    from funaudiochat.training.fsutil import atomic_directory

    init = work / "init"
    if (init / "config.json").is_file():
        config = json.loads((init / "config.json").read_text())
        made_with = {"speech adapter": (config["audio_config"].get("continuous_adapter", "linear"), speech_adapter),
                     "text layout": (config.get("text_layout", "ahead"), text_layout),
                     "speech encoder": (_init_parts(init).get("encoder", "tiny.en"), encoder),
                     "CTC spelling buckets": (config["audio_config"].get("ctc_spelling_buckets", 0),
                                              ctc_spelling_buckets)}
        for what, (value, wanted) in made_with.items():
            if value != wanted:
                raise ValueError(
                    f"{init} was made with the {value!r} {what}, this build uses {wanted!r}; every stage after "
                    f"it would differ, so use a new --work folder (the questions, answers and speech data can "
                    f"be copied into it to skip their stages)")
        return init
    model, tok, vocab = assemble_default(seed=seed, speech_adapter=speech_adapter, encoder=encoder,
                                         ctc_spelling_buckets=ctc_spelling_buckets)
    model.config.text_layout = text_layout
    with atomic_directory(init, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "original_vocab.json").write_text(json.dumps({"original_vocab": vocab, "encoder": encoder}))
    return init


def _init_parts(init: Path) -> dict[str, Any]:
    """What the init stage recorded: the backbone's vocabulary before the audio tokens were added and the
    Whisper encoder (init dirs from before session 18 lack it: they are tiny.en)."""
    path = init / "original_vocab.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _original_vocab(init: Path) -> int:
    vocab = _init_parts(init).get("original_vocab")
    if vocab is None:
        raise FileNotFoundError(f"{init / 'original_vocab.json'} is missing; the init stage did not finish, "
                                "delete that folder and rerun the build")
    return vocab


def _train_stage(recipe_path: Path) -> None:
    from funaudiochat.training.recipes import load_recipe
    from funaudiochat.training.trainer import train

    train(load_recipe(recipe_path), resume=True)


def _merge_stage(work: Path, alpha: float) -> None:
    from funaudiochat.training.merge import merge_checkpoints

    out = work / "runs" / "merged"
    if (out / "config.json").is_file():
        return
    merge_checkpoints(work / "runs" / "pre_alignment" / "final", work / "runs" / "core_cocktail_stage1" / "final",
                      out, alpha=alpha, prefixes=("language_model.",), overwrite=True)


def final_model_dir(work: Path) -> Path:
    """The build's last trained model: the SRH-refined one when that stage ran, else DPO's."""
    srh = work / "runs" / SRH_STAGE / "final"
    return srh if (srh / "config.json").is_file() else work / "runs" / "dpo" / "final"


def _srh_stage(work: Path, spec: SRHRefineSpec, seed: int, read_aloud: Path | None = None) -> None:
    """Train the SRH alone on the DPO model's cached states for the spoken replies.

    Those are the ``spoken_qa`` records, plus every read-aloud turn of ``read_aloud`` when given.
    """
    from transformers import AutoTokenizer

    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
    from funaudiochat.processing import FunAudioChatProcessor
    from funaudiochat.training.dataset import ConversationDataset, SFTCollator, load_records
    from funaudiochat.training.fsutil import atomic_directory
    from funaudiochat.training.srh_refine import cache_rows, evaluate_srh, reinitialise_head, train_srh

    run = work / "runs" / SRH_STAGE
    if (run / "final" / "config.json").is_file():
        return
    start = work / "runs" / "dpo" / "final"
    model = FunAudioChatForConditionalGeneration.from_pretrained(start, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(start)
    files = [work / "data" / "sft.jsonl"] + ([read_aloud] if read_aloud else [])
    records = [r for r in load_records(files, "sft", work / "data") if r[1].task in ("spoken_qa", READ_ALOUD_TASK)]
    dataset = ConversationDataset(records, FunAudioChatProcessor(tokenizer, model.config), "sft")
    collate = SFTCollator(dataset.processor)
    # Batches of similar length: padding is most of a mixed batch's positions, and each row's states
    # do not depend on the others'.  Each record is encoded once (its features are ~0.1 MB).
    items = sorted((dataset[j] for j in range(len(dataset))), key=lambda item: len(item.input_ids))
    batches = (collate(items[i : i + 8]) for i in range(0, len(items), 8))
    rows = cache_rows(model, batches, spec.context_groups, total=-(-len(items) // 8))
    random.Random(seed).shuffle(rows)
    n_val = min(spec.val_rows, len(rows) - 1)
    val, train_rows = rows[:n_val], rows[n_val:]
    run.mkdir(parents=True, exist_ok=True)
    metrics = run / "metrics.jsonl"
    metrics.unlink(missing_ok=True)  # a killed stage starts over: it has no checkpoints, and takes minutes
    before = evaluate_srh(model, val, spec.batch_size) if val else None
    audio = model.config.audio_config
    if spec.prev_scale is not None and spec.prev_scale != audio.srh_prev_scale:
        logger.info("SRH previous-token scale %g -> %g: the head starts afresh", audio.srh_prev_scale, spec.prev_scale)
        audio.srh_prev_scale = spec.prev_scale
        reinitialise_head(model, seed)
    train_srh(model, train_rows, spec.steps, spec.batch_size, spec.lr_max, spec.lr_min, seed=seed,
              val_rows=val, eval_every=max(spec.steps // 12, 1), metrics_path=metrics,
              group_by_length=spec.group_by_length)
    with atomic_directory(run / "final", overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "srh_refine.json").write_text(json.dumps({
            "start": str(start), "rows": len(train_rows), "held_out_rows": len(val), "spec": dataclasses.asdict(spec),
            "held_out_before": before, "held_out_after": evaluate_srh(model, val, spec.batch_size) if val else None,
        }, indent=2) + "\n")


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.language_model(input_ids=ids).logits


def _package_stage(work: Path, out_dir: Path, cfg: BuildConfig, timings: dict) -> BuildResult:
    from transformers import AutoTokenizer

    from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

    init = work / "init"
    vocab = _original_vocab(init)
    base = FunAudioChatForConditionalGeneration.from_pretrained(init, dtype=torch.float32).eval()
    base_lm = {k: v.clone() for k, v in base.state_dict().items() if k.startswith(pkg.LM_PREFIX)}
    trained = FunAudioChatForConditionalGeneration.from_pretrained(final_model_dir(work), dtype=torch.float32).eval()
    unshipped = pkg.pip_encoder_prefixes(trained, base, cfg.frozen_encoder_prefixes())
    files = pkg.extract_package(trained, base_lm, vocab, cfg.total_lora_rank, unshipped=unshipped)
    shipped = pkg.apply_package(base, files, vocab, unshipped=unshipped).eval()  # the model the package describes
    shipped.config.audio_config.srh_prev_scale = trained.config.audio_config.srh_prev_scale
    tok = AutoTokenizer.from_pretrained(init)
    diff = float((_logits(shipped, tok) - _logits(trained, tok)).abs().max())
    logger.info("packaged vs trained fp32 model: max |logit diff| %.3g (fp16 storage)", diff)
    info = {"config": dataclasses.asdict(cfg), "timings_s": timings, "max_logit_diff_vs_trained_fp32": diff,
            "questions_file": "questions.jsonl (work dir)"}
    pkg.save_package(files, out_dir, vocab, info, speech_adapter=cfg.speech_adapter, text_layout=cfg.text_layout,
                     encoder=cfg.encoder, from_pip=unshipped, ctc_spelling_buckets=cfg.ctc_spelling_buckets,
                     srh_prev_scale=trained.config.audio_config.srh_prev_scale)
    total = json.loads((out_dir / pkg.MANIFEST).read_text())["total_bytes"]
    if total > 60e6:
        logger.warning("package is %.1f MB, above the 60 MB budget", total / 1e6)
    return BuildResult(out_dir, work, timings, shipped, tok, diff)


def run_build(out_dir: str | Path, work_dir: str | Path, smoke: bool = False,
              benchdata: str | Path | None = DEFAULT_BENCHDATA, config: BuildConfig | None = None,
              duplex: bool = False, duplex_config: Any = None) -> BuildResult:
    """Run (or resume) every stage and write the package to ``out_dir``.

    ``duplex=True`` then runs the full-duplex stage (:mod:`funaudiochat.default_model.duplex_build`,
    configured by ``duplex_config``) and adds its extra to the same package.
    """
    from funaudiochat.default_model.speech_data import build_speech_data

    cfg = config or (BuildConfig.smoke() if smoke else BuildConfig.cpu_base())
    work, out = Path(work_dir), Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    timer = _Timer(work / "timings.json")
    qpath = work / "questions.jsonl"
    if qpath.is_file():
        questions = read_questions(qpath)
    else:
        questions = timer.run("questions", training_questions, benchdata, cfg.n_questions)
        write_questions(qpath, questions)
    logger.info("%d training questions (ids in %s)", len(questions), qpath)
    answers = timer.run("answers", _answers_stage, work, questions, cfg)
    data = timer.run("speech_data", build_speech_data, questions, answers, work, answer_asr=cfg.answer_asr)
    ctc = [data.ctc]
    if cfg.speech_adapter == "vocab_ctc" and cfg.vocab_sentences:
        vocab = timer.run("vocab_sentences", _vocab_stage, benchdata, data.ctc, work, cfg.vocab_sentences)
        ctc += [vocab] if vocab is not None else []
    read = timer.run("read_aloud", _read_aloud_stage, benchdata, work, cfg.read_aloud) if cfg.read_aloud else None
    init = timer.run("init_model", _init_stage, work, cfg.seed, cfg.speech_adapter, cfg.text_layout, cfg.encoder,
                     cfg.ctc_spelling_buckets)
    recipes = write_recipes(work, cfg, data.sft, data.dpo, ctc=ctc, original_vocab=_original_vocab(init),
                            read_aloud=read)
    if CTC_STAGE in recipes:
        timer.run(CTC_STAGE, _train_stage, recipes[CTC_STAGE])
    for name in STAGES[:2]:
        timer.run(name, _train_stage, recipes[name])
    timer.run("merge", _merge_stage, work, cfg.merge_alpha)
    for name in STAGES[2:]:
        timer.run(name, _train_stage, recipes[name])
    if cfg.srh is not None:
        timer.run(SRH_STAGE, _srh_stage, work, cfg.srh, cfg.seed + len(STAGES), read)
    result = timer.run("package", _package_stage, work, out, cfg, timer.times)
    if duplex:
        from funaudiochat.default_model.duplex_build import run_duplex_build

        result.duplex = run_duplex_build(work, out, base_dir=out, smoke=smoke, config=duplex_config)
    return result


def run_no_merge_ablation(work_dir: str | Path, config: BuildConfig | None = None, smoke: bool = False) -> dict[str, float]:
    """Stage 2 and DPO again, from stage 1 without the merge (the ablation the Core-Cocktail claim needs).

    Needs a finished (or at least stage-1-complete) build in ``work_dir``; returns the stage times,
    also written to ``work/timings_nomerge.json``.
    """
    cfg = config or (BuildConfig.smoke() if smoke else BuildConfig.cpu_base())
    work = Path(work_dir)
    if not (work / "runs" / "core_cocktail_stage1" / "final" / "config.json").is_file():
        raise FileNotFoundError(f"{work}: no finished Core-Cocktail stage 1; run build-default with this work dir first")
    data = work / "data"
    recipes = write_recipes(work, cfg, data / "sft.jsonl", data / "dpo.jsonl", merge=False,
                            original_vocab=_original_vocab(work / "init"), read_aloud=read_aloud_data(work, cfg))
    timer = _Timer(work / "timings_nomerge.json")
    for name in STAGES[2:]:
        timer.run(name, _train_stage, recipes[name])
    return timer.times
