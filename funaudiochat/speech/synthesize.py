"""Turn a JSONL of texts into ASR-verified synthetic speech (``funaudiochat synth-data``).

For every item a deterministic list of (engine, voice, speed) attempts is drawn from the
seed and the item id. Each attempt is synthesized, transcribed with local Whisper and kept
only if its WER against the text is below the threshold; otherwise the next voice is tried.

Output folder layout::

    synth_config.json   settings that change results; a re-run must use the same ones
    attempts.jsonl      one line per synthesis attempt: the cache, keyed by hash(text, engine, voice, speed)
    manifest.jsonl      one line per input item (accepted or not)
    wavs/<key>.wav      16 kHz 16-bit mono audio of accepted attempts

Both JSONL files are appended and fsynced line by line and every wav is written atomically,
so a killed run resumes where it stopped: finished items are skipped and finished attempts
are read from the cache instead of being synthesized again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from funaudiochat.speech.audio import TARGET_SR, add_noise_at_snr, write_wav_atomic
from funaudiochat.speech.jsonl_log import JsonlAppender, load_log
from funaudiochat.speech.tts import BUILTIN_VOICES, ENGINE_NAMES, TTSEngine, create_engine
from funaudiochat.speech.wer import wer as word_error_rate

logger = logging.getLogger(__name__)

__all__ = [
    "SynthConfig",
    "SynthStats",
    "TextItem",
    "read_items",
    "plan_attempts",
    "attempt_key",
    "synthesize_dataset",
    "build_parser",
    "main",
]

CONFIG_FILE = "synth_config.json"
ATTEMPTS_FILE = "attempts.jsonl"
MANIFEST_FILE = "manifest.jsonl"
WAV_DIR = "wavs"


class Transcriber(Protocol):
    """What the pipeline needs from an ASR object (:class:`funaudiochat.speech.asr.LocalASR` fits)."""

    def transcribe(self, audio: np.ndarray, model: str = "base", beam_size: int = 5) -> str: ...


@dataclass(frozen=True)
class SynthConfig:
    """Settings of one synthesis run. All but ``text_field``/``id_field``/``limit`` change the output."""

    text_field: str = "question"
    id_field: str = "id"
    engines: tuple[str, ...] = ("piper", "espeak")
    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)
    seed: int = 0
    wer_threshold: float = 0.2
    max_attempts: int = 3
    asr_model: str = "base"
    beam_size: int = 5
    snr_db: float | None = None
    espeak_wpm: int = 150
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.engines:
            raise ValueError("at least one TTS engine is required")
        for name in self.engines:
            if name not in ENGINE_NAMES:
                raise ValueError(f"unknown TTS engine {name!r}; choose from {', '.join(ENGINE_NAMES)}")
        if not self.speeds or any(not (0.25 <= s <= 4.0) for s in self.speeds):
            raise ValueError(f"speeds must be a non-empty list within [0.25, 4.0], got {self.speeds}")
        if not (0.0 < self.wer_threshold <= 1.0):
            raise ValueError(f"wer_threshold must be in (0, 1], got {self.wer_threshold}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")

    def result_settings(self) -> dict[str, Any]:
        """The settings that determine the output files, stored next to them."""
        d = dataclasses.asdict(self)
        for k in ("text_field", "id_field", "limit"):
            d.pop(k)
        d["engines"] = list(self.engines)
        d["speeds"] = list(self.speeds)
        return d


@dataclass
class SynthStats:
    """Counts for one call of :func:`synthesize_dataset` (not cumulative over runs)."""

    items: int = 0
    skipped_done: int = 0
    synthesized: int = 0
    cache_hits: int = 0
    accepted: int = 0
    rejected: int = 0
    audio_seconds: float = 0.0
    wers: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TextItem:
    id: str
    text: str
    line: int


def read_items(path: Path, text_field: str = "question", id_field: str = "id") -> list[TextItem]:
    """Parse and validate the whole input first, so bad data fails before any synthesis starts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input JSONL not found: {path}")
    items: list[TextItem] = []
    seen: dict[str, int] = {}
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            if id_field not in rec:
                raise ValueError(f"{path}:{lineno}: missing id field {id_field!r}")
            text = rec.get(text_field)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{lineno}: field {text_field!r} must be a non-empty string, got {text!r}")
            item_id = str(rec[id_field])
            if item_id in seen:
                raise ValueError(f"{path}:{lineno}: duplicate id {item_id!r} (first on line {seen[item_id]})")
            seen[item_id] = lineno
            items.append(TextItem(item_id, text.strip(), lineno))
    return items


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from a hash of `parts` (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def plan_attempts(
    item_id: str,
    seed: int,
    voices: Mapping[str, Sequence[str]],
    speeds: Sequence[float],
    max_attempts: int,
) -> list[tuple[str, str, float]]:
    """Deterministic (engine, voice, speed) attempts for one item, all with distinct voices.

    Voices are drawn without replacement with weight 1/len(engine's voices), so every engine
    is equally likely to come first however many voices it has; speeds are drawn uniformly.
    """
    rng = random.Random(_stable_int("plan", seed, item_id))
    pool = [(e, v) for e in sorted(voices) for v in voices[e]]
    weights = [1.0 / len(voices[e]) for e, _ in pool]
    # Weighted sampling without replacement (Efraimidis-Spirakis): sort by u^(1/w), largest first.
    keys = [rng.random() ** (1.0 / w) for w in weights]
    order = sorted(range(len(pool)), key=lambda i: keys[i], reverse=True)[:max_attempts]
    return [(pool[i][0], pool[i][1], float(rng.choice(list(speeds)))) for i in order]


def attempt_key(text: str, engine: str, voice: str, speed: float) -> str:
    """Cache key of one synthesis: a hash of exactly what determines the audio."""
    blob = json.dumps([text, engine, voice, round(float(speed), 6)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _check_settings(out_dir: Path, config: SynthConfig) -> None:
    """Refuse to mix results made with different settings in one output folder."""
    from funaudiochat.training.fsutil import check_settings_file

    check_settings_file(out_dir / CONFIG_FILE, config.result_settings(), "use a fresh --out-dir")


class _LazyResources:
    """Creates TTS engines and the ASR only when a synthesis is actually needed."""

    def __init__(
        self,
        config: SynthConfig,
        engines: Mapping[str, TTSEngine] | None,
        asr: Transcriber | None,
    ) -> None:
        self._config = config
        self._engines: dict[str, TTSEngine] = dict(engines or {})
        self._asr = asr

    def engine(self, name: str) -> TTSEngine:
        if name not in self._engines:
            kwargs: dict[str, Any] = {"base_wpm": self._config.espeak_wpm} if name == "espeak" else {}
            self._engines[name] = create_engine(name, **kwargs)
        return self._engines[name]

    def asr(self) -> Transcriber:
        if self._asr is None:
            from funaudiochat.speech.asr import LocalASR

            self._asr = LocalASR()
        return self._asr


def _voices_for(config: SynthConfig, engines: Mapping[str, TTSEngine] | None) -> dict[str, tuple[str, ...]]:
    """Voice lists per engine, without loading models unless the caller passed engines in."""
    return {
        name: tuple(engines[name].voices) if engines is not None and name in engines else BUILTIN_VOICES[name]
        for name in config.engines
    }


def _run_attempt(
    item: TextItem,
    engine: str,
    voice: str,
    speed: float,
    key: str,
    out_dir: Path,
    config: SynthConfig,
    resources: _LazyResources,
) -> dict[str, Any]:
    audio, sr = resources.engine(engine).synthesize(item.text, voice=voice, speed=speed, sample_rate=TARGET_SR)
    asr_text = resources.asr().transcribe(audio, model=config.asr_model, beam_size=config.beam_size)
    error = word_error_rate(item.text, asr_text)
    accepted = error < config.wer_threshold
    rel_path = None
    if accepted:
        if config.snr_db is not None:
            audio = add_noise_at_snr(audio, config.snr_db, seed=_stable_int("noise", config.seed, key))
            peak = float(np.max(np.abs(audio)))
            if peak > 0.999:  # rescale instead of clipping, which would change the SNR
                audio = audio * np.float32(0.999 / peak)
        rel_path = f"{WAV_DIR}/{key}.wav"
        write_wav_atomic(out_dir / rel_path, audio, sr)
    return {
        "key": key,
        "text": item.text,
        "engine": engine,
        "voice": voice,
        "speed": speed,
        "path": rel_path,
        "duration": round(audio.shape[0] / sr, 4),
        "asr_text": asr_text,
        "wer": round(error, 6),
        "accepted": accepted,
    }


def synthesize_dataset(
    input_path: Path,
    out_dir: Path,
    config: SynthConfig | None = None,
    engines: Mapping[str, TTSEngine] | None = None,
    asr: Transcriber | None = None,
    progress: bool = True,
    on_attempt: Callable[[dict[str, Any]], None] | None = None,
) -> SynthStats:
    """Synthesize every item of `input_path` into `out_dir` (see the module docstring for the layout).

    `engines` and `asr` may be passed in to share loaded models (e.g. between tests); missing
    ones are created on first use. `on_attempt` is called after each newly recorded attempt.
    """
    from tqdm import tqdm

    config = config or SynthConfig()
    out_dir = Path(out_dir)
    items = read_items(Path(input_path), config.text_field, config.id_field)
    if config.limit is not None:
        items = items[: config.limit]
    _check_settings(out_dir, config)
    cache = {rec["key"]: rec for rec in load_log(out_dir / ATTEMPTS_FILE)}
    done = {rec["id"]: rec for rec in load_log(out_dir / MANIFEST_FILE)}
    for item in items:  # checked up front so that no work is done on a mismatched folder
        prev = done.get(item.id)
        if prev is not None and prev.get("text") != item.text:
            raise ValueError(
                f"{input_path}:{item.line}: text of id {item.id!r} differs from the one in "
                f"{out_dir / MANIFEST_FILE}; use a fresh --out-dir"
            )
    resources = _LazyResources(config, engines, asr)
    voices = _voices_for(config, engines)
    stats = SynthStats(items=len(items))
    logger.info(
        "%d items, %d already in the manifest, %d cached attempts; output in %s",
        len(items), sum(i.id in done for i in items), len(cache), out_dir,
    )
    with (
        JsonlAppender(out_dir / ATTEMPTS_FILE) as attempts_log,
        JsonlAppender(out_dir / MANIFEST_FILE) as manifest_log,
        tqdm(total=len(items), file=sys.stderr, unit="utt", disable=not progress, desc="synth") as bar,
    ):
        for item in items:
            if item.id in done:
                stats.skipped_done += 1
                bar.update(1)
                continue
            plan = plan_attempts(item.id, config.seed, voices, config.speeds, config.max_attempts)
            best: dict[str, Any] | None = None
            for n_try, (engine, voice, speed) in enumerate(plan, start=1):
                key = attempt_key(item.text, engine, voice, speed)
                rec = cache.get(key)
                if rec is not None and (not rec["accepted"] or (out_dir / rec["path"]).is_file()):
                    stats.cache_hits += 1
                else:
                    rec = _run_attempt(item, engine, voice, speed, key, out_dir, config, resources)
                    attempts_log.append(rec)
                    cache[key] = rec
                    stats.synthesized += 1
                    if on_attempt is not None:
                        on_attempt(rec)
                if not rec["accepted"]:
                    logger.debug(
                        "rejected %s (%s %s x%.2f): WER %.3f, heard %r",
                        item.id, engine, voice, speed, rec["wer"], rec["asr_text"],
                    )
                if best is None or rec["accepted"] or rec["wer"] < best["wer"]:
                    best = rec
                if rec["accepted"]:
                    break
            assert best is not None
            line = {"id": item.id, "attempts": n_try, **{k: v for k, v in best.items() if k != "text"}}
            line["text"] = item.text
            manifest_log.append(line)
            done[item.id] = line
            stats.accepted += int(best["accepted"])
            stats.rejected += int(not best["accepted"])
            stats.wers.append(float(best["wer"]))
            if best["accepted"]:
                stats.audio_seconds += float(best["duration"])
            bar.update(1)
            bar.set_postfix(accepted=stats.accepted, rejected=stats.rejected)
    logger.info(
        "done: %d new items (%d accepted, %d rejected), %d skipped, %d syntheses, %d cache hits, %.1f s audio",
        stats.accepted + stats.rejected, stats.accepted, stats.rejected, stats.skipped_done,
        stats.synthesized, stats.cache_hits, stats.audio_seconds,
    )
    return stats


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    d = SynthConfig()
    p = argparse.ArgumentParser(
        prog="funaudiochat synth-data",
        description="Synthesize speech for a JSONL of texts with offline TTS, "
        "keeping utterances that local Whisper understands.",
    )
    p.add_argument("input", type=Path, help="JSONL file, one object per line")
    p.add_argument("--out-dir", type=Path, required=True, help="output folder (re-run with the same one to resume)")
    p.add_argument("--text-field", default=d.text_field, help="field holding the text (default: %(default)s)")
    p.add_argument("--id-field", default=d.id_field, help="field holding a unique item id (default: %(default)s)")
    p.add_argument("--engines", type=_name_list, default=d.engines, help="comma list from: " + ", ".join(ENGINE_NAMES))
    p.add_argument(
        "--speeds", type=_float_list, default=d.speeds, help="comma list of rate multipliers (default: 0.9,1.0,1.1)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--wer-threshold", type=float, default=d.wer_threshold, help="keep utterances whose ASR WER is below this"
    )
    p.add_argument("--max-attempts", type=int, default=d.max_attempts, help="voices to try per item before giving up")
    p.add_argument("--asr-model", choices=("base", "tiny.en"), default=d.asr_model)
    p.add_argument("--beam-size", type=int, default=d.beam_size)
    p.add_argument("--snr-db", type=float, default=None, help="add white noise at this SNR to the saved audio")
    p.add_argument("--espeak-wpm", type=int, default=d.espeak_wpm, help="espeak words per minute at speed 1.0")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 bad input or settings)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("funaudiochat").setLevel(args.log_level)
    try:
        config = SynthConfig(
            text_field=args.text_field,
            id_field=args.id_field,
            engines=args.engines,
            speeds=args.speeds,
            seed=args.seed,
            wer_threshold=args.wer_threshold,
            max_attempts=args.max_attempts,
            asr_model=args.asr_model,
            beam_size=args.beam_size,
            snr_db=args.snr_db,
            espeak_wpm=args.espeak_wpm,
            limit=args.limit,
        )
        stats = synthesize_dataset(args.input, args.out_dir, config, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        logger.error("%s", exc)
        return 2
    total = stats.accepted + stats.rejected
    rate = stats.accepted / total if total else float("nan")
    logger.info("acceptance rate of this run: %.3f (%d/%d)", rate, stats.accepted, total)
    return 0
