"""One training loop for every stage (speech CTC, pre-alignment, Core-Cocktail SFT, DPO, duplex) on Hugging Face Accelerate.

Data order.  Each optimizer step consumes one *global batch* of ``batch_size * grad_accum * processes``
sample indices from a :class:`ResumableSampler` (one seeded permutation per epoch, same on every
process).  Micro-step ``m`` of process ``r`` takes slice ``(m * processes + r) * batch_size`` of it, so a
run on 2 processes without accumulation sees exactly the micro-batches that 1 process with
``grad_accum=2`` sees, and a resumed run continues the same order.

Loss scaling.  Each micro-batch loss is the model's token mean; Accelerate divides it by
``grad_accum`` and DDP averages over processes, so the step's gradient is the mean of the micro-batch
mean losses (not a token mean over the global batch).

Output folder::

    recipe.yaml        the resolved recipe
    metrics.jsonl      one line per logged step (step, loss, text_loss, speech_loss, lr, tokens_per_s, ...)
    curves.png         loss and lr curves (needs matplotlib)
    checkpoints/       resumable checkpoints (model, optimizer, scheduler, sampler, RNG)
    final/             save_pretrained model + tokenizer, written atomically
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from funaudiochat.training import checkpoint as ckpt
from funaudiochat.training.recipes import Recipe, dump_recipe

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
FINAL_NAME = "final"
CHECKPOINTS_NAME = "checkpoints"
INFO_NAME = "training_info.json"

#: Called after every optimizer step (after any checkpoint of that step) on every process.
StepCallback = Callable[[int, "TrainingState"], None]


@dataclass
class TrainingState:
    """What a callback may look at."""

    step: int
    total_steps: int
    metrics: dict[str, Any]
    output_dir: Path


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    metrics_path: Path
    resumed_from: Path | None


# ----------------------------------------------------------------------------------- data order
def draw(sampler: ckpt.ResumableSampler, n: int) -> list[int]:
    """Next ``n`` indices of the sampler's order, crossing epoch boundaries, and advance it."""
    out: list[int] = []
    while len(out) < n:
        rest = sampler.order(sampler.state.epoch)[sampler.state.position :]
        take = rest[: n - len(out)]
        out += take
        sampler.advance(len(take))
    return out


class RankBatchSampler:
    """This process's micro-batches for the remaining steps, planned on a copy of the sampler."""

    def __init__(
        self, sampler: ckpt.ResumableSampler, steps: int, batch_size: int, grad_accum: int, rank: int, world: int
    ) -> None:
        self.state = sampler.state_dict()
        self.lengths = sampler.lengths
        self.steps, self.batch_size, self.grad_accum = steps, batch_size, grad_accum
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[int]]:
        plan = ckpt.ResumableSampler(self.state["num_samples"], shuffle=self.state["shuffle"],
                                     lengths=self.lengths, group=self.state["group"])
        plan.load_state_dict(self.state)
        size = self.batch_size * self.grad_accum * self.world
        for _ in range(self.steps):
            batch = draw(plan, size)
            for m in range(self.grad_accum):
                start = (m * self.world + self.rank) * self.batch_size
                yield batch[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.steps * self.grad_accum


def total_steps(recipe: Recipe, num_samples: int, world: int) -> int:
    t = recipe.train
    if t.max_steps is not None:
        return t.max_steps
    global_batch = t.batch_size * t.grad_accum * world
    return max(1, math.ceil(t.epochs * num_samples / global_batch))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps: int):
    """Warmup + cosine such that the *first* step uses the warmup's first lr and the *last* ``lr_min``.

    The lr used at optimizer step ``s`` (0-based) is the schedule at ``s``; decaying over ``steps - 1``
    makes the final step's lr exactly ``lr_min`` (and, without warmup, the first exactly ``lr_max``).
    Warmup starts at ``lr_max / (W + 1)`` so no step is wasted at lr 0.
    """
    from funaudiochat.training.schedules import warmup_cosine_scheduler

    o = recipe.optim
    warmup = o.warmup_steps if o.warmup_steps is not None else int(o.warmup_ratio * steps)
    horizon = max(steps - 1, 1)
    if warmup >= horizon and warmup > 0:
        raise ValueError(f"optim.warmup_steps ({warmup}) must be smaller than the run's steps - 1 ({horizon})")
    return warmup_cosine_scheduler(
        optimizer, warmup, horizon, o.lr_max, o.lr_min, warmup_init_ratio=1.0 / (warmup + 1) if warmup else 0.0
    )


def build_optimizer(
    model: torch.nn.Module, recipe: Recipe, no_decay: Sequence[torch.nn.Parameter] = ()
) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not on biases and norm scales, nor on ``no_decay``, the
    partly trained embedding tables); ``optim.lr_scale`` puts parameters under a prefix in their own
    group, whose ``lr_scale`` the scheduler applies."""
    o = recipe.optim
    prefixes = sorted(o.lr_scale, key=len, reverse=True)
    used: set[str] = set()
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hit = next((x for x in prefixes if name.startswith(x)), None)
        if hit is not None:
            used.add(hit)
        decay = p.ndim >= 2 and not any(p is q for q in no_decay)
        groups.setdefault((o.lr_scale[hit] if hit else 1.0, decay), []).append(p)
    unused = [x for x in o.lr_scale if x not in used]
    if unused:
        raise ValueError(f"optim.lr_scale: no trainable parameter starts with {unused}")
    param_groups = [
        {"params": ps, "weight_decay": o.weight_decay if decay else 0.0, "lr_scale": scale}
        for (scale, decay), ps in sorted(groups.items(), key=lambda kv: (kv[0][0] != 1.0, not kv[0][1]))
    ]
    return torch.optim.AdamW(param_groups, lr=o.lr_max, betas=tuple(o.betas), eps=o.eps)


# ----------------------------------------------------------------------------------- logging
class MetricsLog:
    """metrics.jsonl (+ TensorBoard) on the main process; on resume, lines past the step are dropped."""

    def __init__(self, out_dir: Path, resume_step: int, tensorboard: bool) -> None:
        self.path = out_dir / METRICS_NAME
        if self.path.exists():
            keep = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        keep.append(line)
                except ValueError:
                    continue
            self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                logger.warning("output.tensorboard is set but tensorboard is not installed; skipping it")

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in _flatten(row).items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ----------------------------------------------------------------------------------- checkpoints
def _is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def _save_sharded_checkpoint(accelerator, root: Path, step: int, sampler, scheduler, extra: dict, keep_last: int) -> None:
    """DeepSpeed/FSDP: every process writes its shard with ``accelerator.save_state`` into a temp folder;
    the main process adds trainer_state.json (listing every file) and renames it into place."""
    import shutil

    final = root / ckpt.checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / ckpt.SCHEDULER_NAME)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        state = {"step": step, "sampler": sampler.state_dict(), "extra": extra, "files": files, "sharded": True}
        (tmp / ckpt.STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in ckpt.list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _load_sharded_checkpoint(accelerator, path: Path, scheduler, sampler) -> dict:
    state = json.loads((path / ckpt.STATE_NAME).read_text())
    accelerator.load_state(str(path))
    scheduler.load_state_dict(torch.load(path / ckpt.SCHEDULER_NAME, weights_only=True))
    sampler.load_state_dict(state["sampler"])
    return state


# ----------------------------------------------------------------------------------- the loop
def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _prepare_output(out_dir: Path, resume: bool, is_main: bool) -> None:
    final = out_dir / FINAL_NAME
    has_ckpt = bool(ckpt.list_checkpoints(out_dir / CHECKPOINTS_NAME))
    if not resume and (final.exists() or has_ckpt):
        raise FileExistsError(
            f"{out_dir} already holds a run ({'final model' if final.exists() else 'checkpoints'}); "
            "pass --resume to continue it or choose another output.dir"
        )
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)


def train(recipe: Recipe, resume: bool = False, callbacks: Sequence[StepCallback] = ()) -> TrainResult:
    """Run one stage.  With ``resume`` the latest complete checkpoint in ``output.dir`` is continued
    (a fresh start if there is none); a finished run (``final/`` present) is left alone."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from funaudiochat.processing import FunAudioChatProcessor
    from funaudiochat.training.dataset import ConversationDataset, DPOCollator, SFTCollator, load_records
    from funaudiochat.training.model_setup import (
        apply_lora,
        build_model,
        configure_trainable,
        merge_lora_adapters,
        train_new_token_rows,
        trainable_after_lora,
    )

    t, out_dir, is_dpo = recipe.train, recipe.output_dir, recipe.stage == "dpo"
    is_duplex = recipe.stage == "duplex"
    is_ctc = recipe.stage == "ctc"
    speech = None if t.speech_loss else False  # None: the head runs where the batch has speech targets
    accelerator = Accelerator(
        gradient_accumulation_steps=t.grad_accum,
        mixed_precision=t.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=t.find_unused_parameters)],
    )
    if accelerator.gradient_accumulation_steps != t.grad_accum:
        raise ValueError(
            f"the accelerate config/environment sets gradient accumulation to {accelerator.gradient_accumulation_steps} "
            f"but the recipe has train.grad_accum={t.grad_accum}; remove it from the accelerate config"
        )
    main = accelerator.is_main_process
    final_dir = out_dir / FINAL_NAME
    if resume and final_dir.exists():
        logger.warning("%s is complete (final model present); nothing to resume", out_dir)
        return TrainResult(out_dir, final_dir, -1, out_dir / METRICS_NAME, None)
    _prepare_output(out_dir, resume, main)
    sharded = _is_sharded(accelerator)
    if sharded and t.lora is not None:
        raise ValueError("train.lora with DeepSpeed/FSDP is not supported by this trainer; use DDP")
    if sharded and is_duplex:
        raise ValueError("the duplex stage with DeepSpeed/FSDP is not supported by this trainer; use DDP")

    # Data first: a bad record must stop the run before the (possibly slow) model load.
    if is_duplex:
        from funaudiochat.duplex import batch as duplex_batch
        from funaudiochat.duplex.model import DuplexForward, enable_duplex

        records = duplex_batch.load_duplex_records(recipe.data.train, recipe.data.audio_root)
    elif is_ctc:
        from funaudiochat.training import ctc

        records = ctc.load_ctc_records(recipe.data.train, recipe.data.audio_root)
    else:
        records = load_records(recipe.data.train, recipe.stage, recipe.data.audio_root, recipe.data.allowed_tasks)
    set_seed(t.seed, device_specific=True)
    model, tokenizer = build_model(recipe.model)
    if is_duplex:
        enable_duplex(model)  # a half-duplex starting point gets a fresh action head; a duplex one keeps its own
    config = model.config
    processor = FunAudioChatProcessor(tokenizer, config)
    if is_duplex:
        collate = duplex_batch.DuplexCollator(processor)
        dataset = duplex_batch.DuplexDataset(records, collate, recipe.data.max_audio_seconds)
    elif is_ctc:
        if model.speech_vocab_adapter is None:
            raise ValueError(
                f"{recipe.name}: the ctc stage needs a model with audio_config.continuous_adapter='vocab_ctc' "
                f"(the released layout's linear adapter has no CTC output)"
            )
        collate = ctc.CTCCollator(config.audio_config.num_mel_bins)
        dataset = ctc.dataset_for(records, tokenizer, recipe.data, t.seed)
    else:
        collate = DPOCollator(processor) if is_dpo else SFTCollator(processor)
        dataset = ConversationDataset(records, processor, recipe.stage, recipe.data.max_audio_seconds)
    world, rank = accelerator.num_processes, accelerator.process_index
    steps = total_steps(recipe, len(dataset), world)
    global_batch = t.batch_size * t.grad_accum * world

    reference = None
    if is_dpo:  # frozen copy of the starting weights
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    configure_trainable(model, t.freeze, t.trainable)  # also checks the prefixes exist
    if t.lora is not None:
        apply_lora(model, t.lora)
        trainable_after_lora(model, t.freeze, t.trainable)
    no_decay = train_new_token_rows(model, t.new_token_rows) if t.new_token_rows is not None else []
    if t.gradient_checkpointing:
        # transformers 5 renamed it activation_checkpointing_enable (the old name warns)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = build_optimizer(model, recipe, no_decay)
    scheduler = build_scheduler(optimizer, recipe, steps)
    lengths, group = None, 0
    if recipe.data.group_by_length > 1:
        lengths, group = dataset.lengths(), recipe.data.group_by_length * global_batch
    sampler = ckpt.ResumableSampler(len(dataset), seed=t.seed, shuffle=recipe.data.shuffle, lengths=lengths, group=group)
    extra = {"total_steps": steps, "global_batch": global_batch, "stage": recipe.stage, "name": recipe.name}

    ckpt_root = out_dir / CHECKPOINTS_NAME
    latest = ckpt.find_latest_checkpoint(ckpt_root) if resume else None
    step = 0
    if latest is not None and not sharded:
        state = ckpt.load_checkpoint(latest, model, optimizer, scheduler, sampler)
        _check_resume(state, extra, latest)
        step = state["step"]
    elif resume and latest is None:
        logger.warning("--resume: no checkpoint in %s; starting from scratch", ckpt_root)

    if is_duplex:  # the duplex objective runs through __call__ so that DDP and autocast see it
        d = recipe.duplex
        model = DuplexForward(model, d.action_weight, d.text_weight, d.speech_weight)
    if is_ctc:
        model = ctc.SpeechCTCForward(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = t.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.gradient_accumulation_steps != t.grad_accum:  # DeepSpeed's config wins in prepare()
        raise ValueError(
            f"the DeepSpeed config sets gradient_accumulation_steps={accelerator.gradient_accumulation_steps} "
            f"but the recipe has train.grad_accum={t.grad_accum}; leave it out of the DeepSpeed config"
        )
    if latest is not None and sharded:
        state = _load_sharded_checkpoint(accelerator, latest, scheduler, sampler)
        _check_resume(state, extra, latest)
        step = state["step"]
    if reference is not None:
        reference.to(accelerator.device)

    if main:
        dump_recipe(recipe, out_dir / "recipe.yaml")
    log = MetricsLog(out_dir, step, recipe.output.tensorboard) if main else None
    loader = DataLoader(
        dataset,
        batch_sampler=RankBatchSampler(sampler, steps - step, t.batch_size, t.grad_accum, rank, world),
        collate_fn=collate,
        num_workers=recipe.data.num_workers,
    )
    batches = iter(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = t.max_grad_norm if t.max_grad_norm is not None else float("inf")
    bar = tqdm(total=steps, initial=step, disable=not main, file=sys.stderr, desc=recipe.name, dynamic_ncols=True)
    logger.info(
        "%s: %d steps, global batch %d (%d x %d accum x %d processes), %d samples",
        recipe.name, steps, global_batch, t.batch_size, t.grad_accum, world, len(dataset),
    )
    device = accelerator.device
    row: dict[str, Any] = {}
    while step < steps:
        started = time.perf_counter()
        # loss, text_sum, text_n, speech_sum, speech_n, tokens (summed over micro-batches)
        sums = torch.zeros(6, dtype=torch.float64)
        action_sums = torch.zeros(3, dtype=torch.float64)  # duplex: action loss, correct steps, steps
        dpo_metrics: list[dict[str, torch.Tensor]] = []
        dpo_tasks: list[str | None] = []
        grad_norm = None
        lr = scheduler.get_last_lr()[0]
        for _ in range(t.grad_accum):
            batch = next(batches)
            tasks = batch.pop("tasks", None)
            batch = _to_device(batch, device)
            sums[5] += float(batch["ctc_target_lengths"].sum() if is_ctc else batch["attention_mask"].sum())
            with accelerator.accumulate(model):
                if is_dpo:
                    loss, out, res = _dpo_step(model, reference, config, batch, recipe, speech)
                    dpo_metrics.append(res.metrics())
                    dpo_tasks += tasks
                else:
                    # SFT needs the 49k-way text head only where there are labels (most positions are prompt)
                    out = (model(**batch) if is_duplex or is_ctc
                           else model(**batch, labelled_logits_only=True, compute_speech_logits=speech))
                    loss = out.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums[0] += float(loss.detach())
            if out.text_loss is not None:
                sums[1] += float(out.text_loss.detach())
                sums[2] += 1
            if out.speech_loss is not None:
                sums[3] += float(out.speech_loss.detach())
                sums[4] += 1
            if is_duplex:
                action_sums += torch.tensor(
                    [float(out.action_loss.detach()), float(out.action_correct), float(out.action_steps)]
                )
        scheduler.step()
        draw(sampler, global_batch)
        step += 1

        sums = accelerator.reduce(sums.to(device), reduction="sum").cpu()
        elapsed = time.perf_counter() - started
        row = {
            "step": step,
            "loss": float(sums[0] / (t.grad_accum * world)),
            "text_loss": float(sums[1] / sums[2]) if sums[2] else None,
            "speech_loss": float(sums[3] / sums[4]) if sums[4] else None,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": float(sums[5]) / elapsed,
            "epoch": sampler.state.epoch + sampler.state.position / len(dataset),
        }
        if is_dpo:
            row.update(_dpo_row(accelerator, dpo_metrics, dpo_tasks, recipe, gather_object))
        if is_duplex:
            action_sums = accelerator.reduce(action_sums.to(device), reduction="sum").cpu()
            row["action_loss"] = float(action_sums[0] / (t.grad_accum * world))
            row["action_accuracy"] = float(action_sums[1] / action_sums[2]) if action_sums[2] else None
        if main and (step % recipe.output.log_every == 0 or step == steps):
            log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
        bar.update(1)

        if recipe.output.save_every and step % recipe.output.save_every == 0 and step < steps:
            if sharded:
                _save_sharded_checkpoint(accelerator, ckpt_root, step, sampler, scheduler, extra, recipe.output.keep_last)
            else:
                if main:
                    ckpt.save_checkpoint(
                        ckpt_root, step, _unwrap(accelerator, model), optimizer, scheduler, sampler,
                        extra=extra, keep_last=recipe.output.keep_last,
                    )
                accelerator.wait_for_everyone()
        state_view = TrainingState(step, steps, row, out_dir)
        for callback in callbacks:
            callback(step, state_view)
    bar.close()

    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model) if sharded else None
    unwrapped = _unwrap(accelerator, model)
    if t.lora is not None and t.lora.merge_at_end:
        merge_lora_adapters(unwrapped)
    if t.gradient_checkpointing:
        disable = getattr(unwrapped, "activation_checkpointing_disable", None) or unwrapped.gradient_checkpointing_disable
        disable()
    if main:
        _save_final(unwrapped, tokenizer, final_dir, state_dict, {**extra, "steps": step, "last_metrics": row})
        log.close()
        if recipe.output.plots:
            _plot(out_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(out_dir, final_dir, step, out_dir / METRICS_NAME, latest)


def _unwrap(accelerator, model) -> torch.nn.Module:
    """The FunAudioChat model under the DDP/compile wrappers and the duplex or CTC training adapter."""
    inner = accelerator.unwrap_model(model)
    from funaudiochat.duplex.model import DuplexForward
    from funaudiochat.training.ctc import SpeechCTCForward

    return inner.model if isinstance(inner, (DuplexForward, SpeechCTCForward)) else inner


def _check_resume(state: dict, extra: dict, path: Path) -> None:
    saved = state.get("extra") or {}
    for key in ("total_steps", "global_batch", "stage"):
        if key in saved and saved[key] != extra[key]:
            raise ValueError(
                f"{path}: checkpoint was written with {key}={saved[key]!r} but this run has {extra[key]!r}; "
                "resume with the same recipe (steps, batch size, accumulation, processes)"
            )


def _dpo_step(model, reference, config, batch: dict, recipe: Recipe, speech: bool | None = None):
    """Policy and reference log-probs of chosen (first half) and rejected (second half) replies.

    ``speech=False`` leaves the speech head out of both (text log-probs only).
    """
    from funaudiochat.training.dpo import dpo_loss
    from funaudiochat.training.logprobs import reply_logprobs

    d = recipe.dpo
    out = model(**batch, compute_speech_logits=speech)
    with torch.no_grad():
        ref_out = reference(**batch, compute_speech_logits=speech)
    _, _, pol = reply_logprobs(config, batch, out, d.text_weight, d.speech_weight, d.average)
    _, _, ref = reply_logprobs(config, batch, ref_out, d.text_weight, d.speech_weight, d.average)
    half = pol.shape[0] // 2
    res = dpo_loss(pol[:half], pol[half:], ref[:half], ref[half:], d.beta, d.label_smoothing, d.loss_type)
    return res.loss, out, res


def _dpo_row(accelerator, metrics: list[dict[str, torch.Tensor]], tasks: list, recipe: Recipe, gather_object) -> dict:
    """Per-task DPO metrics over the global batch (all processes)."""
    from funaudiochat.training.dpo import aggregate_by_task

    local = {k: torch.cat([m[k] for m in metrics]).float() for k in metrics[0]}
    merged = {k: accelerator.gather(v.to(accelerator.device)).cpu() for k, v in local.items()}
    all_tasks = gather_object(tasks) if accelerator.num_processes > 1 else tasks
    per_task = aggregate_by_task(all_tasks, merged, known_tasks=recipe.data.allowed_tasks)
    overall = per_task.pop("all")
    return {
        "accuracy": overall["accuracy"],
        "margin": overall["margin"],
        "chosen_reward": overall["chosen_reward"],
        "rejected_reward": overall["rejected_reward"],
        "tasks": per_task,
    }


def _save_final(model, tokenizer, final_dir: Path, state_dict, info: dict) -> None:
    from funaudiochat.training.fsutil import atomic_directory

    with atomic_directory(final_dir, overwrite=True) as tmp:
        if state_dict is not None:
            model.save_pretrained(tmp, state_dict=state_dict)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2, default=str) + "\n")
    logger.info("saved the final model to %s", final_dir)


def _plot(out_dir: Path) -> None:
    try:
        from funaudiochat.training.plots import plot_training_curves

        plot_training_curves(out_dir / METRICS_NAME, out_dir / CURVES_NAME)
    except ImportError:
        logger.warning("matplotlib is not installed; no %s", CURVES_NAME)
