"""``funaudiochat build-default`` and ``build-default-duplex`` commands (registered by ``funaudiochat/cli.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def _duplex_config(args: argparse.Namespace, smoke: bool):
    """The duplex stage's config, with ``--dialogues N`` meaning one pass over N dialogues."""
    from funaudiochat.default_model.duplex_build import DuplexBuildConfig, expected_steps

    cfg = DuplexBuildConfig.smoke() if smoke else DuplexBuildConfig()
    if args.dialogues is not None:
        if args.dialogues < 1:
            raise SystemExit(f"error: --dialogues must be >= 1, got {args.dialogues}")
        cfg.n_dialogues = args.dialogues
        cfg.stage.max_steps = expected_steps(cfg)
    return cfg


def _log_duplex(res) -> None:
    logger.info("duplex: %d dialogues (%d clock steps, %.0f%% listen), training %s", res.n_dialogues, res.n_steps,
                100 * res.listen_share, res.curve)
    logger.info("duplex stage times (s): %s", res.timings)


def _build_config(args: argparse.Namespace, base):
    """``base`` (the preset) with the flags given on top, checked as a whole.

    Why flags only override: with no flags the build is the preset, so ``build-default --out O --work W``
    remakes the shipped model (``cpu-base``) and ``--preset cpu`` session 6's.  Choosing another encoder without
    ``--encoder-trainable-layers`` trains all of its layers, and the linear adapter drops the spelling
    table unless one is asked for.
    """
    from funaudiochat.default_model.build import SRHRefineSpec
    from funaudiochat.default_model.parts import frozen_whisper_prefixes

    changes: dict = {"speech_adapter": args.speech_adapter, "text_layout": args.text_layout}
    if args.srh_refine is not None:
        if args.smoke:
            raise SystemExit("error: --smoke already sizes every stage (its SRH stage included); leave out --srh-refine")
        if args.srh_refine < 0:
            raise SystemExit(f"error: --srh-refine needs a step count >= 0 (0: no SRH stage), got {args.srh_refine}")
        changes["srh"] = SRHRefineSpec(steps=args.srh_refine) if args.srh_refine else None
        if not args.srh_refine and args.joint_speech_loss is None:
            changes["joint_speech_loss"] = True  # without the stage, only the joint stages train the head
    srh = changes.get("srh", base.srh)
    if args.srh_prev_scale is not None:
        if srh is None or not 0 < args.srh_prev_scale < math.inf:
            raise SystemExit(f"error: --srh-prev-scale needs an SRH stage (--srh-refine, or the preset's) and a finite "
                             f"value > 0, got {args.srh_prev_scale}")
        changes["srh"] = dataclasses.replace(srh, prev_scale=args.srh_prev_scale)
    if args.joint_speech_loss is not None:
        changes["joint_speech_loss"] = args.joint_speech_loss
    for flag, value in (("--vocab-sentences", args.vocab_sentences), ("--read-aloud", args.read_aloud),
                        ("--ctc-spelling-buckets", args.ctc_spelling_buckets)):
        if value is not None and value < 0:
            raise SystemExit(f"error: {flag} must be >= 0, got {value}")
    if args.vocab_sentences is not None:
        changes["vocab_sentences"] = args.vocab_sentences
    if args.read_aloud is not None:
        changes["read_aloud"] = args.read_aloud
    if args.no_freeze_speech_in:
        changes["freeze_speech_in"] = False
    if args.train_new_tokens is not None:
        changes["train_new_tokens"] = args.train_new_tokens
    encoder = args.encoder or base.encoder
    layers = args.encoder_trainable_layers
    if layers is None and encoder == base.encoder:
        layers = base.encoder_trainable_layers
    if layers is not None:
        try:
            frozen_whisper_prefixes(encoder, layers)
        except ValueError as exc:
            raise SystemExit(f"error: --encoder-trainable-layers: {exc}") from None
    changes["encoder"], changes["encoder_trainable_layers"] = encoder, layers
    spelling = args.ctc_spelling_buckets
    if spelling is None:
        spelling = base.ctc_spelling_buckets if args.speech_adapter == "vocab_ctc" else 0
    elif spelling and args.speech_adapter != "vocab_ctc":
        raise SystemExit("error: --ctc-spelling-buckets: ctc_spelling_buckets needs speech_adapter 'vocab_ctc'")
    changes["ctc_spelling_buckets"] = spelling
    if args.steps:
        if args.smoke:
            raise SystemExit("error: --smoke already sizes every stage; leave out --steps")
        changes["stages"], changes["ctc"] = _stage_steps(args.steps, base)
    if args.group_by_length is not None:
        if args.group_by_length < 0:
            raise SystemExit(f"error: --group-by-length must be >= 0 (0: random batches), got {args.group_by_length}")
        n = args.group_by_length
        changes["stages"] = {name: dataclasses.replace(spec, group_by_length=n)
                             for name, spec in changes.get("stages", base.stages).items()}
        ctc = changes.get("ctc", base.ctc)
        changes["ctc"] = dataclasses.replace(ctc, group_by_length=n) if ctc is not None else None
        srh = changes.get("srh", base.srh)
        changes["srh"] = dataclasses.replace(srh, group_by_length=n) if srh is not None else None
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def _stage_steps(items: list[str], base) -> tuple[dict, object]:
    """Copies of ``base``'s stage specs with ``STAGE=N`` step counts applied (the preset stays untouched)."""
    from funaudiochat.default_model.build import CTC_STAGE

    stages = {name: dataclasses.replace(spec) for name, spec in base.stages.items()}
    ctc = dataclasses.replace(base.ctc) if base.ctc is not None else None
    known = ([CTC_STAGE] if ctc is not None else []) + list(stages)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise SystemExit(f"error: --steps takes STAGE=N with STAGE one of {', '.join(known)}, got {item!r}")
        try:
            steps = int(value)
        except ValueError:
            steps = 0
        if steps < 1:
            raise SystemExit(f"error: --steps {name} needs a whole number of steps >= 1, got {value!r}")
        (ctc if name == CTC_STAGE else stages[name]).max_steps = steps
    return stages, ctc


def _cmd_build(args: argparse.Namespace) -> int:
    from funaudiochat.default_model.build import DEFAULT_PRESET, BuildConfig, run_build

    if args.scale <= 0:
        raise SystemExit(f"error: --scale must be > 0, got {args.scale}")
    if args.smoke and args.preset is not None:
        raise SystemExit("error: --smoke already sizes every stage; leave out --preset")
    if args.preset != "gpu" and args.scale != 1.0:
        raise SystemExit("error: --scale applies to --preset gpu only")
    presets = {"cpu": BuildConfig, "cpu-base": BuildConfig.cpu_base, "gpu": lambda: BuildConfig.gpu(args.scale)}
    cfg = _build_config(args, BuildConfig.smoke() if args.smoke else presets[args.preset or DEFAULT_PRESET]())
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="funaudiochat-build-"))
    logger.info("work dir: %s", work)
    dcfg = _duplex_config(args, args.smoke) if args.duplex else None
    res = run_build(args.out, work, smoke=args.smoke, benchdata=args.benchdata, config=cfg, duplex=args.duplex,
                    duplex_config=dcfg)
    logger.info("stage times (s): %s", res.timings)
    if res.duplex is not None:
        _log_duplex(res.duplex)
    if args.ablation_no_merge:
        from funaudiochat.default_model.build import run_no_merge_ablation

        times = run_no_merge_ablation(work, config=cfg, smoke=args.smoke)
        logger.info("no-merge ablation in %s: %s", work / "runs_nomerge", times)
    print(res.out_dir)
    return 0


def _cmd_build_duplex(args: argparse.Namespace) -> int:
    from funaudiochat.default_model.duplex_build import run_duplex_build

    res = run_duplex_build(args.work, args.out, base_dir=args.base, config=_duplex_config(args, args.smoke))
    _log_duplex(res)
    print(res.out_dir)
    return 0


def add_build_parser(sub: argparse._SubParsersAction) -> None:
    from funaudiochat.default_model.build import DEFAULT_BENCHDATA

    p = sub.add_parser("build-default", help="build the embedded default model funaudiochat-tiny",
                       description="Reproducible, resumable build of funaudiochat-tiny (docs/default-model.md).")
    p.add_argument("--out", required=True, help="folder for the shipped weights + manifest.json")
    p.add_argument("--work", default=None, help="work dir for caches and checkpoints (reuse it to resume)")
    p.add_argument("--smoke", action="store_true", help="a handful of items and steps (minutes on a CPU)")
    p.add_argument("--preset", choices=("cpu", "cpu-base", "gpu"), default=None,
                   help="'cpu-base' (default): the shipped recipe (Whisper base with its top 2 layers trained, the "
                   "added rows trained, a spelling table; 83 minutes on 2 cores from an empty work dir, session "
                   "28); 'cpu': session 6's recipe (Whisper tiny.en; 80 minutes on 2 cores), shipped until session "
                   "22; 'gpu': the cpu recipe at about 25x the samples in bf16 with 4x the batch (10 minutes on one "
                   "H200); docs/default-model.md")
    p.add_argument("--scale", type=float, default=1.0,
                   help="with --preset gpu: multiply every stage's step count (default 1)")
    p.add_argument("--steps", action="append", default=[], metavar="STAGE=N",
                   help="train STAGE for N steps instead of the preset's (repeatable; STAGE is ctc_alignment, "
                   "pre_alignment, core_cocktail_stage1, core_cocktail_stage2 or dpo; cpu-base: 520, 120, 130, 50 "
                   "and 30; the SRH stage's count is --srh-refine)")
    p.add_argument("--speech-adapter", choices=("vocab_ctc", "linear"), default="vocab_ctc",
                   help="how user speech reaches the backbone: 'vocab_ctc' (default) reads it as the "
                   "backbone's own tokens, trained first by CTC; 'linear' is the released adapter, as in "
                   "the builds before session 5 (docs/default-model-history.md)")
    p.add_argument("--text-layout", choices=("ahead", "paced"), default="ahead",
                   help="where a spoken reply's text tokens sit among its speech: 'ahead' (default, the "
                   "released layout) or 'paced' (each word just before its speech, <|sil|> between; "
                   "docs/default-model-history.md, session 14)")
    p.add_argument("--srh-refine", type=int, default=None, metavar="STEPS",
                   help="after DPO, train the Speech Refined Head alone for STEPS steps on cached backbone "
                   "states (default: the preset's, 400 in cpu-base as shipped, none in cpu and gpu; 0: no SRH "
                   "stage; docs/default-model.md)")
    p.add_argument("--srh-prev-scale", type=float, default=None, metavar="X",
                   help="the SRH stage's config.srh_prev_scale; a new value starts the head afresh (default: the "
                   "preset's, 30 in cpu-base; session 24: 30 lets the tiny model's head use its previous token)")
    p.add_argument("--joint-speech-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="train the SRH by its speech loss in pre-alignment, Core-Cocktail and DPO too (default: "
                   "the preset's, off in cpu-base, whose SRH stage trains a fresh head; on otherwise, and on "
                   "with --srh-refine 0)")
    p.add_argument("--vocab-sentences", type=int, default=None, metavar="N",
                   help="extra CTC recordings: N benchmark dev sentences chosen for the words the training "
                   "transcripts lack (default: 2000, 4 with --smoke; 0: none; vocab_ctc only)")
    p.add_argument("--read-aloud", type=int, default=None, metavar="N",
                   help="N read-aloud turns (a typed sentence spoken back in the assistant voice, piper joe) "
                   "added to the SFT stages and the SRH stage: more speech-out material (default: 0, 2 with "
                   "--smoke; docs/default-model.md)")
    p.add_argument("--no-freeze-speech-in", action="store_true",
                   help="let the stages after the CTC stage train the encoder and the CTC readout too "
                   "(session 6's recipe; the default freezes them, docs/default-model.md)")
    p.add_argument("--train-new-tokens", action=argparse.BooleanOptionalAction, default=None,
                   help="train the embedding rows of the added audio tokens in the stages after the CTC "
                   "stage (default: the preset's, on in cpu-base as shipped, off in cpu and gpu; "
                   "docs/default-model.md)")
    p.add_argument("--encoder", choices=("tiny.en", "base"), default=None,
                   help="the pip Whisper encoder of the speech-in path (default: the preset's, base in cpu-base as "
                   "shipped, tiny.en in cpu and gpu; base hears more real speech, docs/default-model-history.md, "
                   "session 17)")
    p.add_argument("--encoder-trainable-layers", type=int, default=None, metavar="K",
                   help="train only the top K Whisper layers (and the final layer norm when K > 0); the rest "
                   "stay as pip ships them in every stage and the package leaves them out (default: the "
                   "preset's, 2 in cpu-base as shipped and all layers otherwise, and all layers of an encoder other than "
                   "the preset's; 0 freezes the encoder, leaving the linear adapter to read it alone)")
    p.add_argument("--ctc-spelling-buckets", type=int, default=None, metavar="N",
                   help="give the CTC readout a spelling table of N hashed character n-gram buckets, so rare "
                   "tokens share what their letters learnt (default: the preset's, 8192 in cpu-base as shipped, 0 "
                   "in cpu and gpu, 256 with --smoke, and 0 with --speech-adapter linear; docs/default-model.md; "
                   "vocab_ctc only)")
    p.add_argument("--group-by-length", type=int, default=None, metavar="N",
                   help="cut every training stage's batches from windows of N batches sorted by length, so "
                   "they pad little (default 0: random batches in every preset, 2 with --smoke; session 29 measured "
                   "the CTC stage 1.19x faster at 16, hearing as much; docs/default-model.md)")
    p.add_argument("--benchdata", default=str(DEFAULT_BENCHDATA),
                   help="benchmark dev data folder; without it built-in questions are used")
    p.add_argument("--ablation-no-merge", action="store_true",
                   help="afterwards, train stage 2 and DPO again from stage 1 without the merge "
                   "(into WORK/runs_nomerge; not shipped, for the Core-Cocktail ablation)")
    p.add_argument("--duplex", action="store_true",
                   help="afterwards, run the full-duplex stage and add duplex.safetensors to the package")
    p.add_argument("--dialogues", type=int, default=None, metavar="N",
                   help="with --duplex: train on N dialogues, once each (default: the build config's)")
    p.set_defaults(func=_cmd_build)

    d = sub.add_parser("build-default-duplex", help="add full duplex to a finished funaudiochat-tiny build",
                       description="Duplex data, duplex training and the duplex.safetensors extra on top of a "
                       "finished build-default work dir (docs/default-model.md, 'Full duplex'). The half-duplex "
                       "files of --base are copied unchanged into --out.")
    d.add_argument("--work", required=True, help="work dir of a finished build-default (runs/dpo/final)")
    d.add_argument("--out", required=True, help="folder for the package with the duplex extra")
    d.add_argument("--base", default=None,
                   help="the half-duplex package of that build (default: the shipped funaudiochat/assets/default_model)")
    d.add_argument("--smoke", action="store_true", help="two short dialogues and two steps")
    d.add_argument("--dialogues", type=int, default=None, metavar="N",
                   help="train on N dialogues, once each (default 400, about 15 min on 2 idle CPU cores)")
    d.set_defaults(func=_cmd_build_duplex)
