"""Run a Fun-Audio-Chat checkpoint over benchmark sets and score every answer (``funaudiochat eval``).

Modes:

* ``text``: text in, text out.  Measures what the backbone still knows (forgetting).
* ``s2t``: speech in, text out.
* ``s2s``: speech in, text and speech out.  The spoken answer is synthesized with the speech
  detokenizer, transcribed by the local Whisper and that transcript is scored.  The WER between the
  transcript and the written answer is recorded as mode ``s2s-align``: the paper's speech-text
  alignment metric.

Run folder layout::

    run_config.json   settings that change results; resuming with other settings is refused
    items.jsonl       append-only per-item log (flushed and fsynced): the resume state
    run.json          every scored item + summary (``funaudiochat.eval.run/v1``)
    report.md/.png    Markdown report with a bar chart
    tts/              synthesized questions (cache; or --tts-cache)
    audio/            spoken answers of s2s mode (with --save-audio)

Items already in ``items.jsonl`` are skipped, so an interrupted run resumes where it stopped.
Nothing here is specific to one checkpoint beyond :func:`funaudiochat.chat.load_engine`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from funaudiochat.evaluation.datasets import SetInfo, TaskType, describe_set, load_jsonl_set
from funaudiochat.evaluation.inputs import FUNCTION_TASKS, AudioLookup, Prompt, build_prompt, tts_audio
from funaudiochat.evaluation.normalize import normalize_text
from funaudiochat.evaluation.report import RunResult, ScoredItem, write_markdown_report, write_run_json
from funaudiochat.evaluation.scoring import score_record
from funaudiochat.evaluation.wer import edit_counts

if TYPE_CHECKING:
    from funaudiochat.generation import SamplingConfig

logger = logging.getLogger(__name__)

__all__ = ["EVAL_MODES", "ALIGN_MODE", "EvalConfig", "EvalSet", "EvalRunner", "default_data_root",
           "resolve_sets", "check_modes", "LOG_FILE", "RUN_JSON", "REPORT_MD"]

EVAL_MODES = ("text", "s2t", "s2s")
ALIGN_MODE = "s2s-align"
LOG_FILE = "items.jsonl"
CONFIG_FILE = "run_config.json"
RUN_JSON = "run.json"
REPORT_MD = "report.md"
BENCHDATA_ENV = "FUNAUDIOCHAT_BENCHDATA"


def default_data_root() -> Path:
    """``$FUNAUDIOCHAT_BENCHDATA`` if set, else ``../shared/benchdata`` relative to the working directory."""
    env = os.environ.get(BENCHDATA_ENV)
    return Path(env).expanduser() if env else Path.cwd() / ".." / "shared" / "benchdata"


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path
    info: SetInfo

    @property
    def folder(self) -> Path:
        return self.path.parent


def resolve_sets(root: Path, names: Sequence[str], split: str = "dev") -> list[EvalSet]:
    """Each name is a folder ``<root>/<name>/<split>.jsonl`` or a path to a JSONL file.

    Raises ValueError for an unknown name (listing the available sets) and for a malformed file.
    """
    if not names:
        raise ValueError("no benchmark sets given (--sets)")
    out: list[EvalSet] = []
    for name in names:
        as_path = Path(name)
        if name.endswith(".jsonl") and as_path.is_file():
            path, set_name = as_path, as_path.parent.name if as_path.stem == split else as_path.stem
        else:
            path, set_name = root / name / f"{split}.jsonl", name
            if not path.is_file():
                available = sorted(p.parent.name for p in root.glob(f"*/{split}.jsonl")) if root.is_dir() else []
                where = (f"in {root}" if root.is_dir() else
                         f"(data root {root} does not exist; set --data-root or ${BENCHDATA_ENV})")
                raise ValueError(f"unknown benchmark set {name!r}: no {path.name} {where}; "
                                 f"available: {', '.join(available) or 'none'}")
        if any(s.name == set_name for s in out):
            raise ValueError(f"benchmark set {set_name!r} given twice")
        out.append(EvalSet(set_name, path, describe_set(path, set_name)))
    return out


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    if not modes:
        raise ValueError("no evaluation modes given (--modes)")
    bad = [m for m in modes if m not in EVAL_MODES]
    if bad:
        raise ValueError(f"unknown evaluation mode(s) {', '.join(map(repr, bad))}; choose from {', '.join(EVAL_MODES)}")
    return tuple(dict.fromkeys(modes))


@dataclass(frozen=True)
class EvalConfig:
    """Everything one ``funaudiochat eval`` invocation needs."""

    model: str
    sets: tuple[str, ...]
    out: Path
    modes: tuple[str, ...] = ("text", "s2t")
    data_root: Path | None = None
    split: str = "dev"
    audio_root: Path | None = None
    limit: int | None = None
    batch_size: int = 8
    max_seconds: float = 60.0
    #: Text repetition penalty of greedy decoding (1.0 = off, the default of ``chat``).
    repetition_penalty: float = 1.0
    tts: tuple[str, ...] = ("piper", "espeak")
    asr: str = "base"
    tts_cache: Path | None = None
    tts_max_wer: float = 0.2
    judge: str | None = None
    detokenizer: str = "flow"
    detokenizer_path: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    run_name: str | None = None
    save_audio: bool = False
    progress: bool = True
    #: Item ids never to evaluate (e.g. those a model was trained on); applied before ``limit``.
    exclude_ids: frozenset[str] = frozenset()
    #: Speech sampling of s2s mode; None keeps the engine's default (the released demo settings).
    speech_sampling: SamplingConfig | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_seconds <= 0:
            raise ValueError(f"--max-seconds must be positive, got {self.max_seconds}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}")
        from funaudiochat.speech.tts import ENGINE_NAMES

        bad = [t for t in self.tts if t not in ENGINE_NAMES]
        if bad or not self.tts:
            raise ValueError(f"--tts must list engines from {', '.join(ENGINE_NAMES)}, got {','.join(self.tts)!r}")

    def result_settings(self) -> dict[str, Any]:
        """Settings that change predictions; a resumed run must keep them.

        The judge is not among them: open-ended answers judged by another judge (or by none) are
        re-judged on resume, so a judge can be added to a finished run.
        """
        return {"model": str(Path(self.model).resolve()), "max_seconds": self.max_seconds, "tts": list(self.tts), "tts_max_wer": self.tts_max_wer,
                "asr": self.asr, "detokenizer": self.detokenizer if "s2s" in self.modes else None,
                "dtype": self.dtype, "seed": self.seed} | (
                    # only when on, so runs made before the option existed still resume
                    {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}) | (
                    {"speech_sampling": asdict(self.speech_sampling)} if self.speech_sampling is not None else {})


@dataclass
class _Work:
    """One record to generate for, with its input."""

    record: Mapping[str, Any]
    prompt: Prompt
    audio: Any = None  # 16 kHz float32 for speech modes
    audio_source: str = "text"


@dataclass
class _Stats:
    generated: int = 0
    gen_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)


class EvalRunner:
    """Generates, scores and logs; ``engine``, ``asr``, ``tts_engines``, ``judge`` and ``detokenizer`` may
    be passed in (tests, sharing loaded models), otherwise they are loaded on first need."""

    def __init__(self, config: EvalConfig, engine=None, asr=None, tts_engines=None, judge=None,
                 detokenizer=None) -> None:
        self.config = replace(config, modes=check_modes(config.modes))
        self.root = Path(config.data_root) if config.data_root is not None else default_data_root()
        self.sets = resolve_sets(self.root, config.sets, config.split)
        self.out = Path(config.out)
        self._engine = engine
        self._asr = asr
        self._asr_by_language: dict[str, Any] = {}
        self._tts_engines = tts_engines
        self._judge = judge
        self._detok = detokenizer
        self.stats = _Stats()

    # ------------------------------------------------------------------ lazily loaded models
    @property
    def engine(self):
        if self._engine is None:
            from funaudiochat.chat import load_engine

            self._engine = load_engine(self.config.model, self.config.dtype)
            if self.config.device != "cpu":
                self._engine.model.to(self.config.device)
        return self._engine

    def asr(self, language: str = "en"):
        """The injected transcriber, else a local Whisper per language (Chinese sets need ``zh``)."""
        if self._asr is not None:
            return self._asr
        if language not in self._asr_by_language:
            from funaudiochat.speech.asr import LocalASR

            self._asr_by_language[language] = LocalASR(language=language)
        return self._asr_by_language[language]

    @property
    def judge(self):
        if self._judge is None and self.config.judge:
            from funaudiochat.evaluation.judge import LocalJudge

            self._judge = LocalJudge.from_pretrained(self.config.judge, self.config.dtype, self.config.device)
        return self._judge

    def detokenizer(self):
        """The speech detokenizer, checked against the model's speech codebook before any generation."""
        if self._detok is None:
            c = self.config
            try:
                from funaudiochat.audio.detokenizer import load_detokenizer

                self._detok = load_detokenizer(c.detokenizer, c.detokenizer_path)
            except (ImportError, FileNotFoundError, ValueError) as err:
                raise ValueError(f"s2s mode needs a speech detokenizer to hear the spoken answers, and "
                                 f"{c.detokenizer!r} could not be loaded: {err}") from err
        speech_vocab = self.engine.model.config.audio_config.bos_token_id
        size = getattr(self._detok, "codebook_size", None)
        if size is not None and speech_vocab is not None and size < speech_vocab:
            raise ValueError(f"s2s mode: the model speaks tokens from a codebook of {speech_vocab}, but the "
                             f"{self.config.detokenizer!r} detokenizer knows only {size}; use the detokenizer that "
                             "matches the model's speech tokenizer (for the released 8B: --detokenizer cosyvoice "
                             "--detokenizer-path <Fun-CosyVoice3-0.5B-2512 folder>)")
        return self._detok

    # ------------------------------------------------------------------ run folder
    def _check_run_folder(self) -> None:
        from funaudiochat.training.fsutil import check_settings_file

        check_settings_file(self.out / CONFIG_FILE, self.config.result_settings(), "use a fresh --out to compare")

    def _load_log(self) -> dict[tuple[str, str, str, str], ScoredItem]:
        from funaudiochat.speech.jsonl_log import load_log

        done: dict[tuple[str, str, str, str], ScoredItem] = {}
        for i, rec in enumerate(load_log(self.out / LOG_FILE), start=1):
            try:
                item = ScoredItem.from_dict(rec)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{self.out / LOG_FILE}:{i}: {exc}") from exc
            done[(item.set, item.mode, item.id, item.metric)] = item  # a later line (re-judged) wins
        return done

    # ------------------------------------------------------------------ main loop
    def run(self) -> RunResult:
        """Evaluate every (set, mode); returns the run written to ``run.json``."""
        self._check_run_folder()
        done = self._load_log()
        from funaudiochat.speech.jsonl_log import JsonlAppender

        selected: list[ScoredItem] = []
        t0 = time.perf_counter()
        with JsonlAppender(self.out / LOG_FILE) as log:
            for eset in self.sets:
                records = self._records(eset)
                for mode in self.config.modes:
                    self._run_set_mode(eset, records, mode, done, log)
                    selected += self._collect(eset, records, mode, done)
        meta = self._meta(time.perf_counter() - t0)
        run_name = self.config.run_name or self.out.resolve().name
        result = write_run_json(self.out / RUN_JSON, selected, run_name, meta)
        write_markdown_report(result, self.out / REPORT_MD)
        return result

    def _records(self, eset: EvalSet) -> list[dict[str, Any]]:
        """The set's records minus the excluded ids, then the first ``limit`` of them."""
        if not self.config.exclude_ids:
            return load_jsonl_set(eset.path, self.config.limit)
        records = [r for r in load_jsonl_set(eset.path) if str(r["id"]) not in self.config.exclude_ids]
        return records if self.config.limit is None else records[: self.config.limit]

    def _collect(self, eset: EvalSet, records: Sequence[Mapping[str, Any]], mode: str,
                 done: Mapping[tuple[str, str, str, str], ScoredItem]) -> list[ScoredItem]:
        """The logged items of this selection (so --limit also limits the report), in record order."""
        by_id: dict[tuple[str, str], list[ScoredItem]] = {}
        for (s, m, i, _), item in done.items():
            if s == eset.name and m in (mode, ALIGN_MODE if mode == "s2s" else mode):
                by_id.setdefault((m, i), []).append(item)
        out = []
        for m in (mode, ALIGN_MODE) if mode == "s2s" else (mode,):
            for r in records:
                out += by_id.get((m, str(r["id"])), [])
        return out

    def _skip(self, message: str) -> None:
        logger.warning("%s", message)
        self.stats.skipped.append(message)

    def _run_set_mode(self, eset: EvalSet, records: Sequence[Mapping[str, Any]], mode: str,
                      done: dict, log) -> None:
        task = eset.info.task
        if task is TaskType.ASR and mode != "s2t":
            self._skip(f"{eset.name} [{mode}]: skipped, ASR sets are evaluated in s2t mode only")
            return
        if task is TaskType.OPEN and self.judge is None and mode == self.config.modes[0]:
            logger.warning("%s: open-ended set and no --judge given; answers are saved but not scored", eset.name)
        self._rejudge(eset, records, mode, done, log)
        finished = {(s, m, i) for (s, m, i, _) in done}
        todo = [r for r in records if (eset.name, mode, str(r["id"])) not in finished]
        if not todo:
            logger.info("%s [%s]: all %d items already done", eset.name, mode, len(records))
            return
        if mode == "s2s":
            self.detokenizer()  # fail before any generation when no usable detokenizer exists
        work = self._prepare(eset, todo, mode)
        if not work:
            return
        from tqdm import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=f"{eset.name} [{mode}]",
                   unit="item", file=sys.stderr, disable=not self.config.progress)
        with bar:
            for start in range(0, len(work), self.config.batch_size):
                batch = work[start:start + self.config.batch_size]
                for item in self._evaluate_batch(eset, batch, mode):
                    log.append(asdict(item))
                    done[(item.set, item.mode, item.id, item.metric)] = item
                bar.update(len(batch))

    def _rejudge(self, eset: EvalSet, records, mode: str, done: dict, log) -> None:
        """Re-score logged open-ended answers saved without a judge or judged by another one."""
        if eset.info.task is not TaskType.OPEN or self.judge is None:
            return
        by_id = {str(r["id"]): r for r in records}
        stale = [it for (s, m, i, met), it in done.items()
                 if s == eset.name and m == mode and met == "judge" and i in by_id
                 and (it.score is None or it.details.get("judge") != self.judge.name)]
        if stale:
            logger.info("%s [%s]: judging %d saved answers with %s", eset.name, mode, len(stale), self.judge.name)
        for start in range(0, len(stale), self.config.batch_size):
            chunk = stale[start:start + self.config.batch_size]
            for new in self._judge_items(chunk, [by_id[it.id] for it in chunk]):
                log.append(asdict(new))
                done[(new.set, new.mode, new.id, new.metric)] = new

    def _judge_items(self, items: Sequence[ScoredItem], records: Sequence[Mapping[str, Any]]) -> list[ScoredItem]:
        judge = self.judge
        verdicts = judge.judge([str(r.get("question", "")) for r in records], [it.prediction for it in items],
                               [str(r.get("reference", "")) for r in records])
        out = []
        for it, v in zip(items, verdicts):
            details = {**it.details, "judge": judge.name, **v.to_details(),
                       "note": "approximate win rate against the reference by a local judge"}
            out.append(replace(it, score=v.win, details=details, metric="judge"))
        return out

    # ------------------------------------------------------------------ inputs
    def _prepare(self, eset: EvalSet, todo: Sequence[Mapping[str, Any]], mode: str) -> list[_Work]:
        speech_in = mode in ("s2t", "s2s")
        work = [_Work(r, build_prompt(r, eset.info.task, speech_out=mode == "s2s")) for r in todo]
        if not speech_in:
            return work
        from funaudiochat.audio.io import load_audio

        roots = [eset.folder] + ([Path(self.config.audio_root)] if self.config.audio_root else [])
        lookup = AudioLookup(roots)
        own = {str(w.record["id"]): lookup.find(w.record) for w in work}
        missing = [w for w in work if own[str(w.record["id"])] is None]
        if missing and eset.info.task is TaskType.ASR:
            self._skip(f"{eset.name} [{mode}]: skipped {len(missing)} of {len(work)} items, their audio files are "
                       f"not here (looked for audio_file under {', '.join(str(r) for r in roots)}; the benchdata "
                       "LibriSpeech sets ship transcripts only: pass --audio-root with the LibriSpeech folder)")
            work = [w for w in work if own[str(w.record["id"])] is not None]
            missing = []
        synthesized: dict[str, Path | None] = {}
        if missing:
            if eset.info.language != "en":
                logger.warning("%s: the offline TTS voices are English, so most %r questions will fail its "
                               "ASR-WER check; provide recordings (audio_file) for this set", eset.name,
                               eset.info.language)
            cache = Path(self.config.tts_cache) if self.config.tts_cache else self.out / "tts"
            logger.info("%s: synthesizing %d questions with %s (ASR check: whisper %s)", eset.name, len(missing),
                        "/".join(self.config.tts), self.config.asr)
            synthesized = tts_audio(eset.name, [w.record for w in missing],
                                    {str(w.record["id"]): w.prompt.spoken for w in missing}, cache,
                                    self.config.tts, self.config.asr, engines=self._tts_engines,
                                    asr=self._asr, progress=self.config.progress,
                                    max_wer=self.config.tts_max_wer)
        kept = []
        rejected = 0
        for w in work:
            rid = str(w.record["id"])
            path = own[rid] or synthesized.get(rid)
            if path is None:
                rejected += 1
                continue
            w.audio = load_audio(path)
            w.audio_source = "dataset" if own[rid] else "tts"
            kept.append(w)
        if rejected:
            self._skip(f"{eset.name} [{mode}]: skipped {rejected} items whose synthesized speech failed the "
                       "ASR-WER check (see the manifest in the TTS cache)")
        return kept

    def _message(self, w: _Work, mode: str):
        from funaudiochat.processing import Message

        history = [Message(role, text) for role, text in w.prompt.history]
        if mode == "text":
            return [*history, Message("user", w.prompt.user)]
        return [*history, Message("user", text=w.prompt.instruction, audio=w.audio)]

    # ------------------------------------------------------------------ generation and scoring
    def _evaluate_batch(self, eset: EvalSet, batch: Sequence[_Work], mode: str) -> list[ScoredItem]:
        from funaudiochat.generation import SamplingConfig, TurnOptions

        engine = self.engine
        options = TurnOptions(mode="s2s" if mode == "s2s" else "s2t", max_seconds=self.config.max_seconds,
                              text_sampling=SamplingConfig(repetition_penalty=self.config.repetition_penalty))
        if self.config.speech_sampling is not None:
            options = replace(options, speech_sampling=self.config.speech_sampling)
        convs = [engine.conversation(system_prompt=w.prompt.system, seed=self.config.seed) for w in batch]
        t = time.perf_counter()
        ends = engine.respond_batch(convs, [self._message(w, mode) for w in batch], options)
        self.stats.gen_seconds += time.perf_counter() - t
        self.stats.generated += len(batch)
        items: list[ScoredItem] = []
        to_judge: list[tuple[int, Mapping[str, Any]]] = []
        for w, end in zip(batch, ends):
            run_info = {"input": "text" if mode == "text" else "speech", "audio_source": w.audio_source,
                        "finish_reason": end.reason, "steps": end.steps}
            prediction = end.text
            align: ScoredItem | None = None
            if mode == "s2s":
                transcript = self._transcribe_reply(eset, w, end.speech_tokens)
                run_info.update(written_text=end.text, transcript=transcript, speech_tokens=len(end.speech_tokens))
                align = self._alignment_item(eset, w, end.text, transcript)
                if eset.info.task in FUNCTION_TASKS:
                    run_info["scored_on"] = "written text (tool calls are not spoken)"
                else:
                    prediction, run_info["scored_on"] = transcript, "ASR transcript of the spoken answer"
            item = score_record(w.record, prediction, eset.name, mode, eset.info.task)
            item.details = {**item.details, "run": run_info}
            if eset.info.task is TaskType.OPEN:
                to_judge.append((len(items), w.record))
            items.append(item)
            if align is not None:
                items.append(align)
        if to_judge and self.judge is not None:
            judged = self._judge_items([items[i] for i, _ in to_judge], [r for _, r in to_judge])
            for (i, _), new in zip(to_judge, judged):
                items[i] = new
        return items

    def _transcribe_reply(self, eset: EvalSet, w: _Work, tokens: Sequence[int]) -> str:
        if not tokens:
            return ""
        from funaudiochat.speech.audio import TARGET_SR, resample, write_wav_atomic

        audio, sr = self.detokenizer().synthesize(list(tokens))
        if self.config.save_audio:
            write_wav_atomic(self.out / "audio" / eset.name / f"{w.record['id']}.wav", audio, sr)
        wave = resample(audio, sr, TARGET_SR)
        language = eset.info.language if eset.info.language != "auto" else "en"
        if self.config.asr.endswith(".en") and language != "en":
            raise ValueError(f"{eset.name}: the answers are in {language!r}, but --asr {self.config.asr} "
                             "is English-only")
        return self.asr(language).transcribe(wave, model=self.config.asr)

    def _alignment_item(self, eset: EvalSet, w: _Work, written: str, transcript: str) -> ScoredItem:
        """Speech-text alignment: WER of the spoken answer's transcript against the written answer."""
        language = eset.info.language if eset.info.language in ("zh", "en") else "auto"
        ref = normalize_text(written, language).split()
        hyp = normalize_text(transcript, language).split()
        ec = edit_counts(ref, hyp)
        return ScoredItem(str(w.record["id"]), eset.name, ALIGN_MODE, transcript, ec.rate,
                          {"errors": ec.errors, "ref_len": ec.ref_len, "written_text": written,
                           "substitutions": ec.substitutions, "deletions": ec.deletions,
                           "insertions": ec.insertions}, metric="wer")

    def _meta(self, seconds: float) -> dict[str, Any]:
        c = self.config
        meta: dict[str, Any] = {
            "model": str(c.model), "modes": ",".join(c.modes), "sets": ",".join(s.name for s in self.sets),
            "split": c.split, "data_root": str(self.root), "limit": c.limit, "excluded_ids": len(c.exclude_ids), "batch_size": c.batch_size,
            "max_seconds": c.max_seconds, "repetition_penalty": c.repetition_penalty, "tts": ",".join(c.tts), "tts_max_wer": c.tts_max_wer, "asr": c.asr, "judge": c.judge or "none",
            "dtype": c.dtype, "device": c.device, "seed": c.seed,
            "speech_sampling": ", ".join(f"{k} {v}" for k, v in asdict(c.speech_sampling).items()) if c.speech_sampling else "default",
            "generated_this_call": self.stats.generated,
            "generation_seconds_this_call": round(self.stats.gen_seconds, 2),
            "wall_seconds_this_call": round(seconds, 2),
        }
        if self.stats.skipped:
            meta["skipped"] = "; ".join(self.stats.skipped)
        return meta

