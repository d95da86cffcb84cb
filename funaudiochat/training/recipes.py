"""Training recipes: one YAML file per stage, checked against a typed schema before anything runs.

A recipe names the model to start from, the data, the stage type (``sft``, ``dpo``, ``duplex`` or ``ctc``), which modules
train, the optimiser/schedule knobs and where output goes.  The schema is a tree of dataclasses;
:func:`recipe_from_dict` walks it and reports *every* unknown key (with a "did you mean") and every
wrong type, with the dotted path of the field, in one :class:`RecipeError`.

Relative paths in a recipe are taken as they are, i.e. relative to the working directory of the
``funaudiochat train`` process (as with ``accelerate launch``), not to the recipe file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

#: Linear layers of Qwen3/Llama decoder blocks, the usual LoRA targets.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RecipeError(ValueError):
    """A recipe that does not match the schema; the message lists every problem."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        body = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the recipe:\n{body}")


# ----------------------------------------------------------------------------------- schema
@dataclass
class FromParts:
    """Assemble a new model around a pretrained causal LM (see ``modeling/build.py``)."""

    backbone: str
    #: transformers Whisper checkpoint folder whose encoder initialises the speech encoder.
    whisper: str | None = None
    #: CTranslate2 Whisper folder (``model.bin``), the offline alternative to ``whisper``.
    whisper_ct2: str | None = None
    #: Encoder shape when no Whisper weights are given (keys of ``EncoderSpec``).
    encoder: dict[str, int] | None = None
    #: SRH body config (a transformers config dict with ``model_type``); default: Qwen3-0.6B shape.
    srh: dict[str, Any] | None = None
    group_size: int = 5
    grouping_mode: Literal["mean", "concat"] = "mean"
    #: How user speech reaches the backbone: the released ``linear`` adapter, or ``vocab_ctc``
    #: (trained first by a ``stage: ctc`` recipe; docs/training.md).
    continuous_adapter: Literal["linear", "vocab_ctc"] = "linear"


@dataclass
class ModelSection:
    """Where the weights come from: exactly one of ``path``, ``from_parts``, ``tiny``."""

    #: A folder written by ``save_pretrained`` (a previous stage's ``final/`` or a release).
    path: str | None = None
    from_parts: FromParts | None = None
    #: The few-million-parameter test model (``config.tiny_config``) with its word tokenizer.
    tiny: bool = False
    #: Seed for freshly initialised weights (tiny model, new adapter/SRH of ``from_parts``).
    init_seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str | None = None


@dataclass
class DataSection:
    #: One or more JSONL files in the format of docs/data-format.md, concatenated in this order.
    train: list[str] = field(default_factory=list)
    #: Folder that relative audio paths are resolved against (default: each JSONL's folder).
    audio_root: str | None = None
    max_audio_seconds: float = 360.0
    #: Restrict task tags (DPO records), e.g. the four of the paper.
    allowed_tasks: list[str] | None = None
    #: DataLoader worker processes (audio decoding and mel features run there).
    num_workers: int = 0
    shuffle: bool = True
    #: N > 1: batches of similar length.  Each epoch's order is cut into windows of N global batches and
    #: each window sorted by length (``training.checkpoint.length_grouped``), so a batch pads little
    #: (random batches of the default build's CTC data are 2.2 times their audio).  0 or 1: off.
    #: Not for the duplex stage.
    group_by_length: int = 0
    #: ``ctc`` stage only: each time an utterance is read, play it at a speed drawn uniformly from
    #: ``[low, high]`` (e.g. ``[0.85, 1.15]``) and scale it by a gain drawn from +-``gain_db`` dB, so a
    #: few synthetic voices cover more speakers and recording levels.  Null / 0: off.
    speed_perturb: list[float] | None = None
    gain_db: float = 0.0
    #: ``ctc`` stage only: case of the target transcripts, ``lower`` or ``proper`` (names keep their
    #: capital, so they are the backbone's own single tokens; ``training.ctc.normalize_transcript``).
    transcript_case: Literal["lower", "proper"] = "lower"


@dataclass
class LoraSection:
    """LoRA adapters on the backbone (``peft``); everything else in the backbone is then frozen."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    #: Fold the adapters into the backbone before the final save (a plain checkpoint comes out).
    merge_at_end: bool = True


@dataclass
class TrainSection:
    #: Length of the run in optimizer steps, or in passes over the data (exactly one is set).
    max_steps: int | None = None
    epochs: float | None = None
    #: Micro-batch per process; the global batch is batch_size * grad_accum * processes.
    batch_size: int = 1
    grad_accum: int = 1
    #: Parameter-name prefixes to freeze (``language_model.`` for pre-alignment).
    freeze: list[str] = field(default_factory=list)
    #: If set, *only* parameters under these prefixes train (applied before ``freeze``).
    trainable: list[str] | None = None
    lora: LoraSection | None = None
    #: Also train the backbone's embedding rows from this token id on (the tokens added for audio,
    #: ``<|audio_bos|>``, ``<|sil|>``...) when the backbone is frozen or LoRA-wrapped: those rows start
    #: untrained, and the first text token of a spoken reply is predicted at ``<|audio_bos|>``. The rows
    #: below get no gradient and no weight decay, so they stay bit-identical (null: off).
    new_token_rows: int | None = None
    gradient_checkpointing: bool = False
    #: Run the Speech Refined Head and add its loss (DPO: its log-probs).  False skips the head, which
    #: then gets no gradient: for builds that train the head afterwards on cached states, where its
    #: share of every joint step would be wasted (``build-default``'s SRH stage).
    speech_loss: bool = True
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    #: Clip the global gradient norm to this value (null: no clipping, norm still logged).
    max_grad_norm: float | None = 1.0
    #: DDP must know that some modules (SRH, encoder) get no gradient in some batches.
    find_unused_parameters: bool = True
    #: Seed of the data order and of torch/python/numpy RNGs.
    seed: int = 0


@dataclass
class OptimSection:
    """AdamW with linear warmup then cosine decay from ``lr_max`` to ``lr_min``."""

    lr_max: float = 1e-4
    lr_min: float = 1e-5
    warmup_steps: int | None = None
    #: Used when ``warmup_steps`` is null: fraction of the total steps.
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    #: Parameter-name prefix -> multiplier of the scheduled lr (the longest matching prefix wins), e.g.
    #: a pretrained encoder at a tenth of the lr of the new adapter behind it.
    lr_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class DPOSection:
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    #: Sequence log-prob = text_weight * text-head term + speech_weight * SRH term.
    text_weight: float = 1.0
    speech_weight: float = 1.0
    #: Length-average the log-probs (needed for IPO; keeps 25 Hz speech from dominating).
    average: bool = False


@dataclass
class DuplexSection:
    """Weights of the full-duplex losses (docs/duplex.md): loss = sum of weight * part."""

    action_weight: float = 1.0
    text_weight: float = 1.0
    speech_weight: float = 1.0


@dataclass
class OutputSection:
    dir: str = "runs/unnamed"
    #: Save a resumable checkpoint every N optimizer steps (0: never).
    save_every: int = 0
    keep_last: int = 3
    #: Write a metrics line every N steps (the last step is always written).
    log_every: int = 1
    plots: bool = True
    tensorboard: bool = False


@dataclass
class Recipe:
    name: str
    stage: Literal["sft", "dpo", "duplex", "ctc"]
    model: ModelSection
    data: DataSection
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    duplex: DuplexSection = field(default_factory=DuplexSection)
    output: OutputSection = field(default_factory=OutputSection)

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------- conversion
_MISSING = object()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


class _Converter:
    """Builds dataclasses from plain data, collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> object:
        self.problems.append(f"{where}: {message}")
        return _MISSING

    def convert(self, value: Any, tp: Any, where: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                return self.convert(value, inner[0], where)
            return self.fail(where, f"expected {_type_name(tp)}, got {value!r}")
        if value is None:
            return self.fail(where, f"expected {_type_name(tp)}, got null")
        if origin is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                return self.fail(where, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
            return value
        if dataclasses.is_dataclass(tp):
            return self.dataclass(value, tp, where)
        if origin is list:
            (item,) = typing.get_args(tp)
            if isinstance(value, str | int | float) and item is str:
                value = [value]  # a single path where a list is expected
            if not isinstance(value, list):
                return self.fail(where, f"expected a list of {_type_name(item)}, got {type(value).__name__} {value!r}")
            out = [self.convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
            return _MISSING if any(o is _MISSING for o in out) else out
        if origin is dict:
            _, item = typing.get_args(tp)
            if not isinstance(value, Mapping):
                return self.fail(where, f"expected a mapping, got {type(value).__name__} {value!r}")
            if item is Any:
                return dict(value)
            out = {str(k): self.convert(v, item, f"{where}.{k}") for k, v in value.items()}
            return _MISSING if any(o is _MISSING for o in out.values()) else out
        if tp is Any:
            return value
        if tp is bool:
            if not isinstance(value, bool):
                return self.fail(where, f"expected true or false, got {type(value).__name__} {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return self.fail(where, f"expected an integer, got {type(value).__name__} {value!r}")
            return value
        if tp is float:
            if isinstance(value, str):
                # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the float it obviously is.
                try:
                    return float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, int | float):
                return self.fail(where, f"expected a number, got {type(value).__name__} {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                return self.fail(where, f"expected a string, got {type(value).__name__} {value!r}")
            return value
        raise TypeError(f"unsupported schema type {tp!r} at {where}")  # pragma: no cover - schema bug

    def dataclass(self, value: Any, cls: type, where: str) -> Any:
        if not isinstance(value, Mapping):
            return self.fail(where or "recipe", f"expected a mapping, got {type(value).__name__} {value!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        prefix = f"{where}." if where else ""
        for key in value:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(f"{prefix}{key}", f"unknown key (allowed: {', '.join(fields)}){hint}")
        kwargs: dict[str, Any] = {}
        ok = True
        for name, f in fields.items():
            if name in value:
                converted = self.convert(value[name], hints[name], f"{prefix}{name}")
                if converted is _MISSING:
                    ok = False
                else:
                    kwargs[name] = converted
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(f"{prefix}{name}", "missing (required)")
                ok = False
        return cls(**kwargs) if ok else _MISSING


def _check_values(recipe: Recipe) -> list[str]:
    """Cross-field and range checks that the type system cannot express."""
    p: list[str] = []
    m, t, o, out = recipe.model, recipe.train, recipe.optim, recipe.output
    sources = [name for name, on in (("path", m.path), ("from_parts", m.from_parts), ("tiny", m.tiny)) if on]
    if len(sources) != 1:
        p.append(f"model: give exactly one of path, from_parts, tiny (got {sources or 'none'})")
    if m.from_parts is not None and m.from_parts.whisper and m.from_parts.whisper_ct2:
        p.append("model.from_parts: give whisper or whisper_ct2, not both")
    if not recipe.data.train:
        p.append("data.train: at least one JSONL file is required")
    if (t.max_steps is None) == (t.epochs is None):
        p.append("train: give exactly one of max_steps and epochs")
    if t.max_steps is not None and t.max_steps < 1:
        p.append(f"train.max_steps: must be >= 1, got {t.max_steps}")
    if t.epochs is not None and not t.epochs > 0:
        p.append(f"train.epochs: must be > 0, got {t.epochs}")
    for name in ("batch_size", "grad_accum"):
        if getattr(t, name) < 1:
            p.append(f"train.{name}: must be >= 1, got {getattr(t, name)}")
    if t.max_grad_norm is not None and not t.max_grad_norm > 0:
        p.append(f"train.max_grad_norm: must be > 0 or null, got {t.max_grad_norm}")
    if t.new_token_rows is not None and (isinstance(t.new_token_rows, bool) or not isinstance(t.new_token_rows, int)
                                         or t.new_token_rows < 1):
        p.append(f"train.new_token_rows: must be a token id >= 1 or null, got {t.new_token_rows!r}")
    if recipe.stage == "ctc" and t.new_token_rows is not None:
        p.append("train.new_token_rows: the ctc stage does not run the backbone, so its embeddings would not train")
    d = recipe.data
    if d.speed_perturb is not None:
        if len(d.speed_perturb) != 2 or not 0 < d.speed_perturb[0] <= d.speed_perturb[1]:
            p.append(f"data.speed_perturb: must be [low, high] with 0 < low <= high, got {d.speed_perturb}")
    if not 0 <= d.gain_db <= 40:
        p.append(f"data.gain_db: must be in [0, 40], got {d.gain_db}")
    if isinstance(d.group_by_length, bool) or not isinstance(d.group_by_length, int) or d.group_by_length < 0:
        p.append(f"data.group_by_length: must be a whole number of batches >= 0, got {d.group_by_length!r}")
    elif d.group_by_length > 1 and recipe.stage == "duplex":
        p.append("data.group_by_length: the duplex stage's items have no length estimate; leave it at 0")
    if recipe.stage != "ctc" and (d.speed_perturb is not None or d.gain_db):
        p.append(f"data.speed_perturb / data.gain_db: only the ctc stage augments audio (stage is {recipe.stage})")
    if recipe.stage != "ctc" and d.transcript_case != "lower":
        p.append(f"data.transcript_case: only the ctc stage reads transcripts as targets (stage is {recipe.stage})")
    if recipe.stage in ("ctc", "duplex") and not t.speech_loss:
        p.append(f"train.speech_loss: only sft and dpo stages can skip the speech head (stage is {recipe.stage})")
    if recipe.stage == "ctc" and t.lora is not None:
        p.append("train.lora: the ctc stage does not run the backbone, so LoRA on it would not train")
    if t.lora is not None:
        if t.lora.r < 1:
            p.append(f"train.lora.r: must be >= 1, got {t.lora.r}")
        if not t.lora.target_modules:
            p.append("train.lora.target_modules: must name at least one module")
    if not o.lr_max > 0:
        p.append(f"optim.lr_max: must be > 0, got {o.lr_max}")
    if not 0 <= o.lr_min <= o.lr_max:
        p.append(f"optim.lr_min: must be in [0, lr_max={o.lr_max}], got {o.lr_min}")
    if o.warmup_steps is not None and o.warmup_steps < 0:
        p.append(f"optim.warmup_steps: must be >= 0, got {o.warmup_steps}")
    if not 0 <= o.warmup_ratio < 1:
        p.append(f"optim.warmup_ratio: must be in [0, 1), got {o.warmup_ratio}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        p.append(f"optim.betas: must be two numbers in [0, 1), got {o.betas}")
    for prefix, mult in o.lr_scale.items():
        if not isinstance(prefix, str) or not prefix:
            p.append(f"optim.lr_scale: keys must be non-empty parameter-name prefixes, got {prefix!r}")
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0:
            p.append(f"optim.lr_scale[{prefix!r}]: must be a number > 0, got {mult!r}")
    if not recipe.dpo.beta > 0:
        p.append(f"dpo.beta: must be > 0, got {recipe.dpo.beta}")
    if not 0 <= recipe.dpo.label_smoothing < 0.5:
        p.append(f"dpo.label_smoothing: must be in [0, 0.5), got {recipe.dpo.label_smoothing}")
    for name in ("action_weight", "text_weight", "speech_weight"):
        if getattr(recipe.duplex, name) < 0:
            p.append(f"duplex.{name}: must be >= 0, got {getattr(recipe.duplex, name)}")
    if out.save_every < 0:
        p.append(f"output.save_every: must be >= 0, got {out.save_every}")
    if out.keep_last < 1:
        p.append(f"output.keep_last: must be >= 1, got {out.keep_last}")
    if out.log_every < 1:
        p.append(f"output.log_every: must be >= 1, got {out.log_every}")
    if recipe.data.num_workers < 0:
        p.append(f"data.num_workers: must be >= 0, got {recipe.data.num_workers}")
    return p


def recipe_from_dict(data: Mapping[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate plain data against the schema; raises :class:`RecipeError` listing every problem."""
    conv = _Converter()
    recipe = conv.dataclass(data, Recipe, "")
    if conv.problems:
        raise RecipeError(source, conv.problems)
    problems = _check_values(recipe)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.max_steps=10`` -> (["train", "max_steps"], 10); the value is parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set expects KEY=VALUE with a dotted key such as train.max_steps=10, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``KEY=VALUE`` applied (intermediate mappings are created)."""
    out = copy.deepcopy(dict(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not a mapping in the recipe")
            node = child
        node[path[-1]] = value
    return out


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, validate.  Errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise RecipeError(str(path), [f"the top level must be a mapping, got {type(data).__name__}"])
    return recipe_from_dict(apply_overrides(data, overrides), source=str(path))


def dump_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> None:
    """Write the resolved recipe (after overrides and defaults) next to the run's output."""
    import yaml

    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
