"""Training commands for the embedded speech codec (k-means tokenizer and flow-matching detokenizer).

Usage (each step caches its output in ``--work``, so steps can be re-run independently)::

    python -m funaudiochat.audio.train_codec data --work /tmp/codec --n-joe 600 --n-espeak 200
    python -m funaudiochat.audio.train_codec tokenizer --work /tmp/codec --out funaudiochat/assets/speech_tokenizer
    python -m funaudiochat.audio.train_codec detokenizer --work /tmp/codec --tokenizer funaudiochat/assets/speech_tokenizer \\
        --out funaudiochat/assets/speech_detokenizer --minutes 22 --threads 1
    python -m funaudiochat.audio.train_codec compare-encoders --work /tmp/codec    # tiny.en vs base
    python -m funaudiochat.audio.train_codec evaluate --work /tmp/codec --report report.json  # WER, RTF, streaming

Detokenizer training can also read **extra utterances** (``--extra FILE.jsonl``, repeatable), JSON lines of
``{"audio": path, "voice": "joe", "tokens": [...], "text": "..."}`` (paths relative to the file; ``tokens``
optional, computed with ``--tokenizer`` when absent), and start from a trained detokenizer (``--init DIR``).
``extra-from-build`` writes such files from a default-model build's spoken answers (real answer text, not
the grammar below), and ``evaluate-extra`` measures the round trip on a held-out one::

    python -m funaudiochat.audio.train_codec extra-from-build --build-work build/default-model --out /tmp/codec/answers
    python -m funaudiochat.audio.train_codec detokenizer --work /tmp/codec --tokenizer funaudiochat/assets/speech_tokenizer \
        --init funaudiochat/assets/speech_detokenizer --extra /tmp/codec/answers/train.jsonl --out DIR --minutes 20 --lr 5e-4
    python -m funaudiochat.audio.train_codec evaluate-extra --manifest /tmp/codec/answers/heldout.jsonl --detokenizer DIR --n 40

``examples`` turns extra files into a portable npz (tokens and log-mels, ``--mel-bits 8`` for half the size), so
that training can run where the audio is not (a GPU machine); ``detokenizer --examples`` takes several::

    python -m funaudiochat.audio.train_codec examples --extra /tmp/codec/answers/train.jsonl \
        --tokenizer funaudiochat/assets/speech_tokenizer --out answers.npz --mel-bits 8
    python -m funaudiochat.audio.train_codec detokenizer --work . --tokenizer funaudiochat/assets/speech_tokenizer \
        --examples answers.npz --examples more.npz --device cuda --batch 64 --minutes 5 --out DIR

Training speech comes from the offline TTS engines (piper joe plus two espeak voices) reading
procedurally generated sentences, so no benchmark text is ever seen.  The evaluation sentences
(:func:`eval_sentences`) come from a different seed and are checked to be disjoint from training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

TRAIN_SEED = 1234
EVAL_SEED = 987_654

_NAMES = ("Anna", "Peter", "Maria", "the doctor", "my brother", "our teacher", "the old farmer", "a young pilot",
          "the children", "her neighbour", "the captain", "my friend Tom", "the baker", "a tall woman", "the students",
          "grandma", "the mayor", "his cousin", "the engineer", "a quiet boy")
_VERBS_T = ("found", "painted", "carried", "opened", "cleaned", "bought", "borrowed", "fixed", "dropped", "lifted",
            "ordered", "wrapped", "measured", "sold", "counted", "washed", "hid", "watched", "kept", "returned")
_ADJ = ("small", "heavy", "bright", "broken", "wooden", "yellow", "quiet", "golden", "narrow", "warm", "cold",
        "empty", "famous", "strange", "purple", "tiny", "simple", "ancient", "soft", "shiny")
_NOUNS = ("box", "letter", "garden", "window", "bicycle", "basket", "lamp", "kettle", "painting", "ticket", "bridge",
          "blanket", "piano", "map", "bottle", "jacket", "candle", "boat", "mirror", "wallet", "carpet", "engine",
          "orange", "notebook", "umbrella", "helmet", "ladder", "pumpkin", "violin", "camera")
_PLACES = ("in the kitchen", "near the station", "behind the school", "at the market", "on the beach",
           "under the table", "by the river", "in the library", "at the harbour", "on the roof", "in the forest",
           "next to the church", "in a small village", "across the street", "inside the museum")
_TIMES = ("yesterday", "this morning", "last summer", "on Monday", "every evening", "before dinner", "at midnight",
          "after the storm", "in winter", "two days ago", "at noon", "later today")
_Q_WORDS = ("Why did", "When did", "Where did", "How often did", "Could", "Should")
_VERBS_BASE = ("find", "paint", "carry", "open", "clean", "buy", "fix", "drop", "lift", "wrap", "sell", "wash",
               "hide", "watch", "keep", "return", "move", "check")
_INTRANS = ("laughed", "waited", "slept", "travelled", "sang", "smiled", "worked", "listened", "danced", "shouted",
            "whispered", "arrived", "stayed", "walked home", "called again")
_LINKS = ("because", "although", "while", "so", "and then", "but")
_NUMS = ("two", "three", "four", "seven", "ten", "twelve", "twenty", "fifty", "a hundred", "several", "many")


def _sentence(rng: random.Random) -> str:
    """One sentence from a small grammar; varied enough to cover English phone sequences."""
    kind = rng.randrange(6)
    subj, obj = rng.choice(_NAMES), f"the {rng.choice(_ADJ)} {rng.choice(_NOUNS)}"
    if kind == 0:
        s = f"{subj} {rng.choice(_VERBS_T)} {obj} {rng.choice(_PLACES)} {rng.choice(_TIMES)}."
    elif kind == 1:
        q = rng.choice(_Q_WORDS)
        s = f"{q} {subj} {rng.choice(_VERBS_BASE)} {obj} {rng.choice(_PLACES)}?"
    elif kind == 2:
        s = (f"{subj.capitalize()} {rng.choice(_INTRANS)} {rng.choice(_LINKS)} {rng.choice(_NAMES)} "
             f"{rng.choice(_VERBS_T)} {rng.choice(_NUMS)} {rng.choice(_ADJ)} {_plural(rng.choice(_NOUNS))}.")
    elif kind == 3:
        s = f"There were {rng.choice(_NUMS)} {_plural(rng.choice(_NOUNS))} {rng.choice(_PLACES)} {rng.choice(_TIMES)}."
    elif kind == 4:
        s = f"{rng.choice(_TIMES).capitalize()}, {subj} {rng.choice(_INTRANS)} {rng.choice(_PLACES)}."
    else:
        s = f"Please put {obj} {rng.choice(_PLACES)} and bring me {rng.choice(_NUMS)} {_plural(rng.choice(_NOUNS))}."
    return s[0].upper() + s[1:]


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("x", "ch", "sh", "s")) else "s")


def train_sentences(n: int, seed: int = TRAIN_SEED) -> list[str]:
    """`n` distinct training sentences (deterministic)."""
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        s = _sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def eval_sentences(n: int, exclude: set[str] | None = None) -> list[str]:
    """`n` evaluation sentences from another seed, none of which is in `exclude` (the training set)."""
    rng, out, seen = random.Random(EVAL_SEED), [], set(exclude or ())
    while len(out) < n:
        s = _sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# ----------------------------------------------------------------------------------------------- data


def cmd_data(args: argparse.Namespace) -> None:
    """Synthesize training speech at 22.05 kHz per voice into ``work/data_<voice>.npz``."""
    from funaudiochat.audio.voices import TRAINING_VOICES
    from funaudiochat.speech.tts import create_engine

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    counts = {"joe": args.n_joe}
    counts.update({name: args.n_espeak for name in TRAINING_VOICES if name != "joe"})
    total = sum(counts.values())
    sentences = train_sentences(total)
    (work / "train_sentences.txt").write_text("\n".join(sentences) + "\n")
    engines: dict[str, object] = {}
    offset = 0
    for voice, n in counts.items():
        path = work / f"data_{voice}.npz"
        texts = sentences[offset: offset + n]
        offset += n
        if path.is_file():
            logger.info("%s exists, skipping", path)
            continue
        engine_name, engine_voice = TRAINING_VOICES[voice]
        if engine_name not in engines:
            engines[engine_name] = create_engine(engine_name)
        engine = engines[engine_name]
        t0 = time.time()
        arrays = {}
        for i, text in enumerate(texts):
            audio, _ = engine.synthesize(text, voice=engine_voice, sample_rate=22050)  # type: ignore[attr-defined]
            arrays[f"a{i:05d}"] = audio.astype(np.float32)
        np.savez(path, texts=np.array(texts), **arrays)
        secs = sum(a.size for a in arrays.values()) / 22050
        logger.info("voice %s: %d utterances, %.1f min audio in %.0f s", voice, n, secs / 60, time.time() - t0)


def load_data(work: Path) -> list[tuple[str, str, np.ndarray]]:
    """All (voice, text, audio_22k) training items from ``cmd_data``'s output."""
    from funaudiochat.audio.voices import TRAINING_VOICES

    items = []
    for voice in TRAINING_VOICES:
        path = work / f"data_{voice}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: run `python -m funaudiochat.audio.train_codec data` first")
        with np.load(path) as z:
            texts = list(z["texts"])
            for i, text in enumerate(texts):
                items.append((voice, str(text), z[f"a{i:05d}"]))
    return items


# ----------------------------------------------------------------------------------------- tokenizer


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means with k-means++-style seeding on a subsample; returns (centroids, inertia/frame).

    Empty clusters are re-seeded with the points farthest from their centroid, so all k ids are used.
    """
    import torch

    from funaudiochat.audio.tokenizer import nearest_centroid

    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} frames, got {n}")
    # k-means++ seeding on a subsample (exact ++ on 100k points x 1024 is too slow on 2 cores).
    sub = x[torch.randperm(n, generator=g)[: min(n, 20 * k)]]
    cent = [sub[torch.randint(sub.shape[0], (1,), generator=g)].squeeze(0)]
    d2 = ((sub - cent[0]) ** 2).sum(1)
    for _ in range(1, k):
        idx = torch.multinomial(d2 / d2.sum(), 1, generator=g)
        cent.append(sub[idx].squeeze(0))
        d2 = torch.minimum(d2, ((sub - cent[-1]) ** 2).sum(1))
    c = torch.stack(cent)
    inertia = float("nan")
    for it in range(iters):
        assign = nearest_centroid(x, c)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        new = sums / counts.clamp(min=1)[:, None]
        dist = ((x - c[assign]) ** 2).sum(1)
        inertia = float(dist.mean())
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            far = dist.topk(empty.numel()).indices
            new[empty] = x[far]
        shift = float(((new - c) ** 2).sum(1).mean())
        c = new
        logger.info("k-means iter %d: inertia %.4f, empty %d, shift %.2e", it, inertia, empty.numel(), shift)
    return c, inertia


def _features_for(items: list[tuple[str, str, np.ndarray]], encoder: torch.nn.Module) -> tuple[list, float]:
    """Pooled 25 Hz Whisper states for each item (16 kHz resampled), plus the encode real-time factor."""
    from funaudiochat.audio.io import resample
    from funaudiochat.audio.tokenizer import pooled_hidden_states

    feats, secs, t0 = [], 0.0, time.perf_counter()
    for i, (_, _, audio) in enumerate(items):
        a16 = resample(audio, 22050, 16000)
        feats.append(pooled_hidden_states(encoder, a16))
        secs += a16.size / 16000
        if i % 100 == 0:
            logger.info("features %d/%d", i, len(items))
    return feats, (time.perf_counter() - t0) / max(secs, 1e-9)


def _split(items: list, heldout_every: int = 10) -> tuple[list, list]:
    return ([it for i, it in enumerate(items) if i % heldout_every],
            [it for i, it in enumerate(items) if not i % heldout_every])


def cmd_compare_encoders(args: argparse.Namespace) -> None:
    """Pick the tokenizer's encoder: encode speed and how much of the mel the tokens explain.

    The proxy: fit k-means (k = --k) on the training part of a subset, then on held-out utterances
    predict each 25 Hz frame's log-mel (22.05 kHz, the detokenizer target) by the mean mel of its token
    (means learned on the training part).  Higher explained variance = more acoustic-phonetic content
    reaches the detokenizer.
    """
    import torch

    from funaudiochat.audio.vocoder import mel_spectrogram
    from funaudiochat.audio.tokenizer import build_whisper_encoder, nearest_centroid

    torch.set_num_threads(args.threads)
    items = load_data(Path(args.work))
    rng = random.Random(0)
    rng.shuffle(items)
    items = items[: args.n]
    train, held = _split(items, 4)
    results = {}
    for source in args.encoders:
        enc = build_whisper_encoder(source)
        feats, rtf = _features_for(items, enc)
        f_tr, f_he = _split(feats, 4)
        x = torch.cat(f_tr)
        mean, std = x.mean(0), x.std(0) + 1e-5
        cent, _ = kmeans((x - mean) / std, args.k, iters=15)

        def frame_mels(its: list, fs: list) -> tuple[torch.Tensor, torch.Tensor]:
            ids, mels = [], []
            for (_, _, audio), f in zip(its, fs):
                mel = mel_spectrogram(torch.from_numpy(audio))  # [80, T]
                t = min(f.shape[0], int(mel.shape[1] * 25 * 256 / 22050))
                idx = ((torch.arange(t) + 0.5) / 25 * 22050 / 256).long().clamp(max=mel.shape[1] - 1)
                ids.append(nearest_centroid((f[:t] - mean) / std, cent))
                mels.append(mel[:, idx].T)
            return torch.cat(ids), torch.cat(mels)

        id_tr, mel_tr = frame_mels(train, f_tr)
        id_he, mel_he = frame_mels(held, f_he)
        sums = torch.zeros(args.k, 80).index_add_(0, id_tr, mel_tr)
        means = sums / torch.bincount(id_tr, minlength=args.k).clamp(min=1)[:, None]
        resid = ((mel_he - means[id_he]) ** 2).mean()
        total = ((mel_he - mel_he.mean(0)) ** 2).mean()
        results[source] = {"encode_rtf": round(rtf, 4), "mel_explained_variance": round(1 - float(resid / total), 4),
                           "frames_train": int(x.shape[0]), "frames_heldout": int(id_he.numel())}
        logger.info("%s: %s", source, results[source])
    print(json.dumps(results, indent=2))


def cmd_tokenizer(args: argparse.Namespace) -> None:
    """Fit k-means centroids on all training speech and save the artefact; cache tokens for the detokenizer."""
    import torch

    from funaudiochat.audio.tokenizer import (TOKENIZER_FORMAT_VERSION, KMeansManifest, KMeansSpeechTokenizer,
                                              build_whisper_encoder, nearest_centroid)

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    items = load_data(work)
    t0 = time.perf_counter()
    enc = build_whisper_encoder(args.encoder)
    feats, rtf = _features_for(items, enc)
    x = torch.cat(feats)
    mean, std = x.mean(0), x.std(0) + 1e-5
    logger.info("%d frames (%.1f min) of features, encode RTF %.3f", x.shape[0], x.shape[0] / 25 / 60, rtf)
    cent, inertia = kmeans((x - mean) / std, args.k, iters=args.iters, seed=args.seed)
    training = {"k": args.k, "iters": args.iters, "seed": args.seed, "frames": int(x.shape[0]),
                "utterances": len(items), "voices": sorted({v for v, _, _ in items}),
                "text": "procedural sentences (train_codec.train_sentences)", "inertia_per_frame": round(inertia, 4),
                "encode_rtf": round(rtf, 4), "train_seconds": round(time.perf_counter() - t0, 1)}
    manifest = KMeansManifest(TOKENIZER_FORMAT_VERSION, args.encoder, args.k, int(x.shape[1]), 25, "", training)
    tok = KMeansSpeechTokenizer(enc, cent, mean, std, manifest)
    tok.save(args.out)
    # Tokens of the training data with the *saved* (fp16) centroids, for detokenizer training.
    ids = {f"t{i:05d}": nearest_centroid((f - tok.mean) / tok.std, tok.centroids).numpy().astype(np.int16)
           for i, f in enumerate(feats)}
    np.savez(work / "tokens.npz", sha256=np.array(tok.manifest.sha256), **ids)
    usage = np.bincount(np.concatenate(list(ids.values())), minlength=args.k)
    logger.info("saved %s; ids used %d/%d; cached tokens in %s", args.out, int((usage > 0).sum()), args.k,
                work / "tokens.npz")


# --------------------------------------------------------------------------------------- detokenizer


def _detok_examples(work: Path, token_sha: str) -> list[tuple[int, np.ndarray, torch.Tensor]]:
    """(voice index, tokens int64, normalised-later log-mel [80, F]) per training utterance."""
    from funaudiochat.audio.voices import TRAINING_VOICES

    voice_index = {name: i for i, name in enumerate(TRAINING_VOICES)}
    items = load_data(work)
    with np.load(work / "tokens.npz") as z:
        if str(z["sha256"]) != token_sha:
            raise ValueError(f"{work / 'tokens.npz'} was made with another tokenizer ({z['sha256']}); "
                             "re-run the tokenizer step")
        toks = [z[f"t{i:05d}"].astype(np.int64) for i in range(len(items))]
    return [_example(voice_index[voice], tok, audio) for (voice, _, audio), tok in zip(items, toks)]


def _example(voice: int, tokens: np.ndarray, audio_22k: np.ndarray) -> tuple[int, np.ndarray, torch.Tensor]:
    """One training example: the log-mel cut to the frames the tokens cover."""
    import torch

    from funaudiochat.audio.detokenizer import frames_for_tokens
    from funaudiochat.audio.vocoder import mel_spectrogram

    mel = mel_spectrogram(torch.from_numpy(audio_22k))
    n = min(mel.shape[1], frames_for_tokens(tokens.size))
    return voice, tokens, mel[:, :n].contiguous()


def save_examples(path: Path, data: list, token_sha: str, mel_bits: int = 16) -> None:
    """Training examples (voice, tokens, log-mel) in one compressed npz, so training can run on another
    machine (a GPU) without the audio and the tokenizer.

    ``mel_bits=8`` stores each mel bin as uint8 on its own min-max grid (half the size of fp16; the rounding
    error, under 0.03 in log units, is far below the flow model's loss) for when the file must travel
    through a size-limited channel."""
    if mel_bits not in (8, 16):
        raise ValueError(f"mel_bits must be 8 or 16, not {mel_bits}")
    if not data:
        raise ValueError(f"no training examples to write to {path}")
    mels = np.concatenate([m.numpy() for _, _, m in data], axis=1).astype(np.float32)
    if mel_bits == 16:
        packed = {"mels": mels.astype(np.float16)}
    else:
        lo, hi = mels.min(axis=1), mels.max(axis=1)
        step = np.maximum(hi - lo, 1e-6) / 255.0
        q = np.rint((mels - lo[:, None]) / step[:, None]).clip(0, 255).astype(np.uint8)
        packed = {"mels_u8": q, "mel_lo": lo.astype(np.float32), "mel_step": step.astype(np.float32)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp, token_sha=np.array(token_sha), voices=np.array([v for v, _, _ in data], dtype=np.int64),
        token_len=np.array([t.size for _, t, _ in data], dtype=np.int64),
        frame_len=np.array([m.shape[1] for _, _, m in data], dtype=np.int64),
        tokens=np.concatenate([t for _, t, _ in data]).astype(np.int16), **packed)
    tmp.replace(path)


def load_examples(path: Path, token_sha: str) -> list:
    """Read a file of :func:`save_examples` (either mel precision); refuses one made for other token ids."""
    import torch

    with np.load(path) as z:
        if str(z["token_sha"]) != token_sha:
            raise ValueError(f"{path} was made with another tokenizer ({z['token_sha']}); rebuild it")
        toks = np.split(z["tokens"].astype(np.int64), np.cumsum(z["token_len"])[:-1])
        if "mels_u8" in z:
            mel = z["mel_lo"][:, None] + z["mels_u8"].astype(np.float32) * z["mel_step"][:, None]
        else:
            mel = z["mels"].astype(np.float32)
        mels = np.split(mel, np.cumsum(z["frame_len"])[:-1], axis=1)
        return [(int(v), t, torch.from_numpy(np.ascontiguousarray(m))) for v, t, m in zip(z["voices"], toks, mels)]


# ----------------------------------------------------------------------------------- extra utterances


@dataclass(frozen=True)
class ExtraUtterance:
    """One line of an extra-utterance file (see the module docstring)."""

    audio: Path
    voice: str
    tokens: tuple[int, ...] | None
    text: str | None


def read_extra_manifest(path: str | Path) -> list[ExtraUtterance]:
    """Parse and check an extra-utterance file; every error names the file and line."""
    from funaudiochat.audio.voices import TRAINING_VOICES

    path = Path(path)
    items = []
    # split on "\n" only: str.splitlines would also cut at U+2028 and friends inside JSON strings
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("audio"), str):
            raise ValueError(f'{where}: each line needs an "audio" path (a string)')
        voice = rec.get("voice", "joe")
        if voice not in TRAINING_VOICES:
            raise ValueError(f"{where}: unknown voice {voice!r}; the detokenizer's voices are {list(TRAINING_VOICES)}")
        tokens = rec.get("tokens")
        if tokens is not None and (not isinstance(tokens, list) or not tokens
                                   or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens)):
            raise ValueError(f'{where}: "tokens" must be a non-empty list of non-negative integers')
        audio = Path(rec["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        if not audio.is_file():
            raise ValueError(f"{where}: audio file {audio} not found")
        text = rec.get("text")
        items.append(ExtraUtterance(audio, voice, tuple(tokens) if tokens else None, text if isinstance(text, str) else None))
    if not items:
        raise ValueError(f"{path}: no utterances")
    return items


def extra_examples(paths: list[str | Path], tokenizer_dir: str | Path, codebook_size: int,
                   progress: bool = False) -> list:
    """(voice index, tokens, log-mel [80, F]) per utterance of the extra files, like ``_detok_examples``."""
    from funaudiochat.audio.io import load_audio
    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer
    from funaudiochat.audio.voices import TRAINING_VOICES

    voice_index = {name: i for i, name in enumerate(TRAINING_VOICES)}
    tokenizer = None
    out = []
    manifests = [(path, read_extra_manifest(path)) for path in paths]  # every file checked before the slow part
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(items) for _, items in manifests), desc="examples", unit="utt")
    for path, items in manifests:
        for item in items:
            tokens = item.tokens
            if tokens is None:
                tokenizer = tokenizer or KMeansSpeechTokenizer.from_pretrained(tokenizer_dir)
                tokens = tuple(tokenizer.encode(load_audio(item.audio, 16000, max_seconds=None)))
            if max(tokens) >= codebook_size:
                raise ValueError(f"{path}: {item.audio} has speech token {max(tokens)}, outside the codebook of "
                                 f"{codebook_size}")
            out.append(_example(voice_index[item.voice], np.asarray(tokens, dtype=np.int64),
                                load_audio(item.audio, 22050, max_seconds=None)))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return out


def grammar_examples(work: Path, tokenizer_dir: str | Path) -> list:
    """The ``data`` step's grammar speech as training examples, tokenized by the given (e.g. shipped) tokenizer,
    so it can be mixed with extra utterances without refitting the centroids as the ``tokenizer`` step does."""
    from funaudiochat.audio.io import resample
    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer
    from funaudiochat.audio.voices import TRAINING_VOICES

    voice_index = {name: i for i, name in enumerate(TRAINING_VOICES)}
    tokenizer = KMeansSpeechTokenizer.from_pretrained(tokenizer_dir)
    return [_example(voice_index[voice], np.asarray(tokenizer.encode(resample(audio, 22050, 16000)), dtype=np.int64),
                     audio) for voice, _, audio in load_data(work)]


def cmd_examples(args: argparse.Namespace) -> None:
    """Turn extra-utterance files (and the grammar speech) into one portable examples file (``detokenizer --examples``)."""
    if not args.extra and not args.grammar_work:
        raise ValueError("nothing to write: give --extra FILE.jsonl and/or --grammar-work DIR")
    tok_manifest = json.loads((Path(args.tokenizer) / "tokenizer.json").read_text())
    data = grammar_examples(Path(args.grammar_work), args.tokenizer) if args.grammar_work else []
    if args.extra:
        data += extra_examples(args.extra, args.tokenizer, tok_manifest["codebook_size"], progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_examples(out, data, tok_manifest["files"]["centroids.safetensors"]["sha256"], mel_bits=args.mel_bits)
    frames = sum(m.shape[1] for _, _, m in data)
    logger.info("wrote %d examples (%.1f min of speech, %d-bit mels, %.1f MB) to %s", len(data),
                frames * 256 / 22050 / 60, args.mel_bits, out.stat().st_size / 1e6, out)


def heldout(item_id: str, every: int) -> bool:
    """Deterministic 1-in-``every`` hold-out; salted so it is independent of the build's own id splits."""
    return int.from_bytes(hashlib.sha1(f"codec-heldout:{item_id}".encode()).digest()[:8], "big") % every == 0


def cmd_extra_from_build(args: argparse.Namespace) -> None:
    """Write train.jsonl / heldout.jsonl from a default-model build's spoken answers (piper joe)."""
    from funaudiochat.default_model.answers import read_answer_cache
    from funaudiochat.default_model.speech_data import answer_recording, read_token_cache

    if args.heldout_every < 2:
        raise ValueError(f"--heldout-every must be at least 2 (got {args.heldout_every})")
    work = Path(args.build_work)
    tokens_path, answers_path = work / "data" / "answer_tokens.jsonl", work / "answers.jsonl"
    for p in (tokens_path, answers_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} missing: run `funaudiochat build-default --work {work}` up to its speech "
                                    "data stage first")
    answers = read_answer_cache(answers_path)
    splits: dict[str, list[str]] = {"train": [], "heldout": []}
    for item_id, tokens in read_token_cache(tokens_path).items():
        wav = answer_recording(work, item_id).resolve()
        if not wav.is_file():
            raise FileNotFoundError(f"{wav} missing (the answer recording of {item_id})")
        row = {"id": item_id, "audio": str(wav), "voice": "joe", "tokens": tokens, "text": answers[item_id]}
        splits["heldout" if heldout(item_id, args.heldout_every) else "train"].append(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        tmp = out / f".{name}.jsonl.tmp"
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        tmp.replace(out / f"{name}.jsonl")  # a killed run never leaves half a file under the final name
    logger.info("wrote %d training and %d held-out answers to %s", len(splits["train"]), len(splits["heldout"]), out)


def cmd_evaluate_extra(args: argparse.Namespace) -> None:
    """Round-trip WER on utterances with a text: their tokens -> detokenizer -> ASR, against the source audio's ASR."""
    import torch

    from funaudiochat.audio.detokenizer import FlowMatchingDetokenizer
    from funaudiochat.audio.io import load_audio, resample
    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer
    from funaudiochat.speech.asr import LocalASR
    from funaudiochat.speech.wer import capped_corpus_wer, corpus_wer, word_errors

    torch.set_num_threads(args.threads)
    items = [i for i in read_extra_manifest(args.manifest) if i.text][: args.n]
    if not items:
        raise ValueError(f"{args.manifest}: no utterance has a text to score against")
    detok = FlowMatchingDetokenizer.from_pretrained(args.detokenizer, vocoder=args.vocoder)
    tokenizer = None
    asr = LocalASR(compute_type=args.compute_type, cpu_threads=args.threads)
    rows, counts_src, counts_rt = [], [], []  # (errors, reference words) per utterance
    for i, item in enumerate(items):
        source = load_audio(item.audio, 16000, max_seconds=None)
        tokens = item.tokens
        if tokens is None:
            tokenizer = tokenizer or KMeansSpeechTokenizer.from_pretrained(args.tokenizer)
            tokens = tuple(tokenizer.encode(source))
        wav, sr = detok.synthesize(list(tokens), voice=item.voice)
        hyp_src = asr.transcribe(source, model="base", beam_size=args.beam)
        hyp_rt = asr.transcribe(resample(wav, sr, 16000), model="base", beam_size=args.beam)
        e_src, n = word_errors(item.text, hyp_src)
        e_rt, _ = word_errors(item.text, hyp_rt)
        counts_src.append((e_src, n))
        counts_rt.append((e_rt, n))
        rows.append({"audio": str(item.audio), "text": item.text, "source_asr": hyp_src, "roundtrip_asr": hyp_rt,
                     "words": n, "errors_source": e_src, "errors_roundtrip": e_rt})
        if i % 10 == 0 and any(n for _, n in counts_src):
            logger.info("%d/%d  WER source %.2f%%  round trip %.2f%%", i + 1, len(items), 100 * corpus_wer(counts_src),
                        100 * corpus_wer(counts_rt))
    words = sum(n for _, n in counts_src)
    report = {"manifest": str(args.manifest), "detokenizer": str(args.detokenizer or "shipped"), "utterances": len(items),
              "words": words, "wer_source": round(100 * corpus_wer(counts_src), 2),
              "wer_roundtrip": round(100 * corpus_wer(counts_rt), 2),
              # the same with each utterance's errors capped at its length (ASR loops; speech.wer.capped_corpus_wer)
              "wer_source_capped": round(100 * capped_corpus_wer(counts_src), 2),
              "wer_roundtrip_capped": round(100 * capped_corpus_wer(counts_rt), 2),
              "utterances_over_100": {"source": sum(e > n for e, n in counts_src),
                                      "roundtrip": sum(e > n for e, n in counts_rt)},
              "rows": rows}
    text = json.dumps(report, indent=2) + "\n"
    if args.report:
        Path(args.report).write_text(text)
    logger.info("WER source audio %.2f%% (capped %.2f%%), round trip %.2f%% (capped %.2f%%); %d utterances, %d words",
                report["wer_source"], report["wer_source_capped"], report["wer_roundtrip"],
                report["wer_roundtrip_capped"], len(items), words)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


def cmd_detokenizer(args: argparse.Namespace) -> None:
    """Train the token->mel flow model for a fixed wall-clock budget; save fp16 weights + manifest."""
    import torch

    from funaudiochat.audio.detokenizer import FlowConfig, FlowMatchingDetokenizer, TokenToMel, token_of_frame
    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer
    from funaudiochat.audio.vocoder import GriffinLimVocoder
    from funaudiochat.audio.voices import TRAINING_VOICES, VoiceBank

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = Path(args.work)
    tok_manifest = json.loads((Path(args.tokenizer) / "tokenizer.json").read_text())
    token_sha = tok_manifest["files"]["centroids.safetensors"]["sha256"]
    examples = [Path(e) for e in args.examples]
    data: list = []
    if examples and all(e.is_file() for e in examples):
        for e in examples:
            data += load_examples(e, token_sha)
        source = f"{len(data)} utterances of examples files ({', '.join(str(e) for e in examples)})"
    elif len(examples) > 1:
        missing = ", ".join(str(e) for e in examples if not e.is_file())
        raise FileNotFoundError(f"--examples is given {len(examples)} times, so each file must exist; missing: {missing}")
    else:
        if not args.extra or any(work.glob("data_*.npz")):  # the grammar's speech, unless only extra files are given
            data = _detok_examples(work, token_sha)
            if examples:
                save_examples(examples[0], data, token_sha)
                logger.info("saved %d training examples to %s", len(data), examples[0])
                if args.minutes <= 0:
                    return
        source = f"{len(data)} procedural sentences (train_codec.train_sentences)"
    n_first = len(data)
    if args.extra:
        data += extra_examples(args.extra, args.tokenizer, tok_manifest["codebook_size"])
        logger.info("%d utterances + %d from %s", n_first, len(data) - n_first, ", ".join(args.extra))
        source += f" and {len(data) - n_first} extra utterances ({', '.join(str(e) for e in args.extra)})"
    if len(data) < args.batch:
        raise ValueError(f"{len(data)} training utterances, fewer than one batch of {args.batch}")
    device = torch.device(args.device)
    all_mel = torch.cat([m for _, _, m in data], dim=1)
    if args.init:
        # Fine-tuning keeps the starting model's shape and mel normalisation; only the data change.
        start = FlowMatchingDetokenizer.from_pretrained(args.init, vocoder=GriffinLimVocoder())
        if start.manifest.tokenizer_sha256 != token_sha:
            raise ValueError(f"--init {args.init} was trained for tokenizer {start.manifest.tokenizer_sha256[:12]}..., "
                             f"not {args.tokenizer} ({token_sha[:12]}...)")
        if start.voices != tuple(TRAINING_VOICES):
            raise ValueError(f"--init {args.init} has voices {start.voices}, not {tuple(TRAINING_VOICES)}")
        model = start.model
        cfg = model.cfg
    else:
        cfg = FlowConfig(codebook_size=tok_manifest["codebook_size"], n_voices=len(TRAINING_VOICES), dim=args.dim,
                         steps=args.steps, seed=args.seed)
        model = TokenToMel(cfg)
        model.mel_mean.copy_(all_mel.mean(1))
        model.mel_std.copy_(all_mel.std(1) + 1e-3)
    mean, std = model.mel_mean.clone(), model.mel_std.clone()  # the targets' normalisation
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("%d utterances, %d mel frames (%.1f min); model %.2f M params", len(data), all_mel.shape[1],
                all_mel.shape[1] * 256 / 22050 / 60, n_params / 1e6)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    budget = args.minutes * 60.0
    t0 = time.perf_counter()
    step, hist = 0, []
    model.train()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed > budget:
            break
        frac = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [data[i] for i in rng.choice(len(data), args.batch, replace=False)]
        # Random crop of at most --crop mel frames; the token encoder always sees the whole utterance.
        crops, t_max = [], max(b[1].size for b in batch)
        for _, tok, mel in batch:
            f = mel.shape[1]
            f0 = int(rng.integers(0, max(1, f - args.crop + 1)))
            crops.append((f0, min(f, f0 + args.crop)))
        f_max = max(f1 - f0 for f0, f1 in crops)
        tokens = torch.zeros(len(batch), t_max, dtype=torch.long)
        tmask = torch.zeros(len(batch), t_max)
        ftok = torch.zeros(len(batch), f_max, dtype=torch.long)
        mels = torch.zeros(len(batch), cfg.n_mels, f_max)
        fmask = torch.zeros(len(batch), f_max)
        spk = torch.tensor([b[0] for b in batch])
        for i, ((_, tok, mel), (f0, f1)) in enumerate(zip(batch, crops)):
            tokens[i, : tok.size] = torch.from_numpy(tok)
            tmask[i, : tok.size] = 1
            ftok[i, : f1 - f0] = token_of_frame(torch.arange(f0, f1)).clamp(max=tok.size - 1)
            mels[i, :, : f1 - f0] = (mel[:, f0:f1] - mean[:, None]) / std[:, None]
            fmask[i, : f1 - f0] = 1
        loss, parts = model.loss(*(x.to(device) for x in (tokens, tmask, ftok, spk, mels, fmask)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist.append((parts["fm"], parts["prior"]))
        step += 1
        if step % 50 == 0:
            fm, pr = np.mean(hist[-50:], axis=0)
            logger.info("step %d  %.0fs  lr %.2e  fm %.4f  prior %.4f", step, elapsed, lr, fm, pr)
    model.eval().cpu()
    fm, pr = np.mean(hist[-100:], axis=0)
    training = {"steps": step, "minutes": round((time.perf_counter() - t0) / 60, 2), "threads": args.threads,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "batch": args.batch, "crop_frames": args.crop, "lr": args.lr, "params": n_params,
                "utterances": len(data), "mel_frames": int(all_mel.shape[1]),
                "final_fm_loss": round(float(fm), 4), "final_prior_l1": round(float(pr), 4),
                "text": source,
                "init": str(args.init) if args.init else None,
                "voices": {k: list(v) for k, v in TRAINING_VOICES.items()}}
    detok = FlowMatchingDetokenizer(model, VoiceBank.from_names(tuple(TRAINING_VOICES)), GriffinLimVocoder())
    detok.save(args.out, token_sha, training)
    logger.info("saved %s after %d steps (%.1f min)", args.out, step, training["minutes"])


# ---------------------------------------------------------------------------------------- evaluation


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Round-trip intelligibility and speed on held-out sentences; writes a JSON report.

    text -> piper joe (16 kHz) -> our tokenizer -> our detokenizer (voice joe) -> 16 kHz -> faster-whisper
    base; the reference is the TTS audio's own WER with the same ASR settings.
    """
    import torch

    from funaudiochat.audio.detokenizer import FlowMatchingDetokenizer
    from funaudiochat.audio.io import resample
    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer
    from funaudiochat.speech.asr import LocalASR
    from funaudiochat.speech.tts import create_engine
    from funaudiochat.speech.wer import word_errors

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    trained = set(train_sentences(args.n_train))
    texts = eval_sentences(args.n, exclude=trained)
    assert not trained & set(texts)
    tts = create_engine("piper")
    asr = LocalASR(compute_type=args.compute_type, cpu_threads=args.threads)
    ref_audio, ref_hyp = _reference(work, texts, tts, asr, args.beam)
    if args.reference_only:
        return
    tok = KMeansSpeechTokenizer.from_pretrained(args.tokenizer)
    detok = FlowMatchingDetokenizer.from_pretrained(args.detokenizer, vocoder=args.vocoder)
    rows = []
    timing = {"audio_s": 0.0, "tokenize_s": 0.0, "mel_s": 0.0, "vocoder_s": 0.0, "out_audio_s": 0.0}
    err_ref = err_rt = words = 0
    out_dir = work / f"eval_{args.vocoder}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        audio = ref_audio[i]
        t0 = time.perf_counter()
        ids = tok.encode(audio)
        t1 = time.perf_counter()
        mel = detok.mel(ids, voice="joe")
        t2 = time.perf_counter()
        wav = detok.vocoder(mel).clamp(-1, 1).numpy()
        t3 = time.perf_counter()
        timing["audio_s"] += audio.size / 16000
        timing["tokenize_s"] += t1 - t0
        timing["mel_s"] += t2 - t1
        timing["vocoder_s"] += t3 - t2
        timing["out_audio_s"] += wav.size / detok.sample_rate
        wav16 = resample(wav, detok.sample_rate, 16000)
        hyp_ref = ref_hyp[i]
        hyp_rt = asr.transcribe(wav16, model="base", beam_size=args.beam)
        e_ref, n = word_errors(text, hyp_ref)
        e_rt, _ = word_errors(text, hyp_rt)
        err_ref, err_rt, words = err_ref + e_ref, err_rt + e_rt, words + n
        rows.append({"text": text, "tts_asr": hyp_ref, "roundtrip_asr": hyp_rt, "tts_errors": e_ref,
                     "roundtrip_errors": e_rt, "words": n, "tokens": len(ids)})
        if i < args.save_wavs:
            import soundfile as sf

            sf.write(str(out_dir / f"{i:03d}_tts.wav"), audio, 16000)
            sf.write(str(out_dir / f"{i:03d}_roundtrip.wav"), wav, detok.sample_rate)
        if i % 10 == 0:
            logger.info("%d/%d  WER tts %.2f%%  round trip %.2f%%", i + 1, len(texts), 100 * err_ref / words,
                        100 * err_rt / words)
    report = {
        "sentences": len(texts), "words": words, "asr": f"faster-whisper base {args.compute_type} beam {args.beam}",
        "vocoder": args.vocoder, "wer_tts": round(100 * err_ref / words, 2), "wer_roundtrip": round(100 * err_rt / words, 2),
        "rtf_tokenizer": round(timing["tokenize_s"] / timing["audio_s"], 4),
        "rtf_detokenizer_mel": round(timing["mel_s"] / timing["out_audio_s"], 4),
        "rtf_vocoder": round(timing["vocoder_s"] / timing["out_audio_s"], 4),
        "threads": args.threads, "timing": {k: round(v, 2) for k, v in timing.items()}, "rows": rows,
    }
    report["streaming"] = _measure_streaming(detok, tok, ref_audio[: args.stream_n])
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("WER tts %.2f%% round trip %.2f%%; report in %s", report["wer_tts"], report["wer_roundtrip"], args.report)


def _reference(work: Path, texts: list[str], tts: object, asr: object, beam: int) -> tuple[list, list[str]]:
    """Piper joe audio (16 kHz) and its own ASR transcript per text; cached in ``work/eval_ref.npz``."""
    cache = work / "eval_ref.npz"
    if cache.is_file():
        with np.load(cache) as z:
            if list(z["texts"])[: len(texts)] == texts and int(z["beam"]) == beam:  # a prefix is fine
                return [z[f"a{i:04d}"] for i in range(len(texts))], [str(h) for h in z["hyps"][: len(texts)]]
    audios, hyps = [], []
    for i, text in enumerate(texts):
        audio, _ = tts.synthesize(text, voice="joe", sample_rate=16000)  # type: ignore[attr-defined]
        audios.append(audio)
        hyps.append(asr.transcribe(audio, model="base", beam_size=beam))  # type: ignore[attr-defined]
        if i % 20 == 0:
            logger.info("reference %d/%d", i + 1, len(texts))
    np.savez(cache, texts=np.array(texts), hyps=np.array(hyps), beam=np.array(beam),
             **{f"a{i:04d}": a for i, a in enumerate(audios)})
    return audios, hyps


def _measure_streaming(detok: object, tok: object, audios: list[np.ndarray]) -> dict:
    """First-chunk latency (compute time for the first chunk) and per-chunk cost, vs offline equality."""
    stats = {"first_chunk_tokens": [], "first_chunk_compute_s": [], "chunk_compute_s": [], "max_abs_diff": []}
    for audio in audios:
        ids = tok.encode(audio)  # type: ignore[attr-defined]
        offline, _ = detok.synthesize(ids, voice="joe")  # type: ignore[attr-defined]
        stream = detok.stream("joe")  # type: ignore[attr-defined]
        chunks, first = [], None
        for i, t in enumerate(ids):
            t0 = time.perf_counter()
            out = stream.push([t])
            dt = time.perf_counter() - t0
            if out:
                if first is None:
                    first = i + 1
                    stats["first_chunk_compute_s"].append(dt)
                else:
                    stats["chunk_compute_s"].append(dt)
            chunks += out
        chunks.append(stream.flush())
        streamed = np.concatenate(chunks)
        stats["first_chunk_tokens"].append(first)
        stats["max_abs_diff"].append(float(np.abs(streamed - offline).max()) if streamed.size == offline.size
                                     else float("inf"))
    return {"first_chunk_tokens": max(stats["first_chunk_tokens"]),
            "first_chunk_compute_s_mean": round(float(np.mean(stats["first_chunk_compute_s"])), 3),
            "chunk_compute_s_mean": round(float(np.mean(stats["chunk_compute_s"])), 3),
            "chunk_compute_s_max": round(float(np.max(stats["chunk_compute_s"])), 3),
            "chunk_audio_s": 10 / 25, "max_abs_diff_vs_offline": max(stats["max_abs_diff"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m funaudiochat.audio.train_codec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="synthesize training speech")
    p.add_argument("--work", required=True)
    p.add_argument("--n-joe", type=int, default=600)
    p.add_argument("--n-espeak", type=int, default=200, help="utterances per espeak voice")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("compare-encoders", help="tiny.en vs base as tokenizer encoder (speed, mel R^2)")
    p.add_argument("--work", required=True)
    p.add_argument("--encoders", nargs="+", default=["tiny.en", "base"])
    p.add_argument("--n", type=int, default=200, help="utterances in the subset")
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_compare_encoders)
    p = sub.add_parser("tokenizer", help="fit the k-means speech tokenizer")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--encoder", default="tiny.en", choices=["tiny.en", "base"])
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_tokenizer)
    p = sub.add_parser("detokenizer", help="train the flow-matching token->mel model")
    p.add_argument("--work", required=True)
    p.add_argument("--tokenizer", required=True, help="folder of the tokenizer whose ids to learn")
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--steps", type=int, default=8, help="ODE steps at inference")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=256, help="mel frames per training crop")
    p.add_argument("--examples", action="append", default=[], metavar="FILE.npz",
                   help="npz of training examples: read if it exists, else computed from --work and written there "
                   "(with --minutes 0, only written); repeatable, then every file must exist (see `examples`)")
    p.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear lr warm-up steps")
    p.add_argument("--init", default=None, help="start from this trained detokenizer folder (fine-tuning; --dim is ignored)")
    p.add_argument("--extra", action="append", default=[], metavar="FILE.jsonl",
                   help="extra training utterances (repeatable; format in the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_detokenizer)
    p = sub.add_parser("evaluate", help="round-trip WER, real-time factors, streaming latency")
    p.add_argument("--work", required=True)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--detokenizer", default=None)
    p.add_argument("--vocoder", default="hifigan", choices=["hifigan", "griffinlim"])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--n-train", type=int, default=1000, help="training sentences to exclude")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--save-wavs", type=int, default=5)
    p.add_argument("--report", default=None)
    p.add_argument("--stream-n", type=int, default=5, help="utterances for the streaming measurement")
    p.add_argument("--reference-only", action="store_true", help="only synthesize + transcribe the TTS audio")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("extra-from-build", help="extra-utterance files from a default-model build's spoken answers")
    p.add_argument("--build-work", required=True, help="the build's --work folder")
    p.add_argument("--out", required=True, help="folder for train.jsonl and heldout.jsonl")
    p.add_argument("--heldout-every", type=int, default=8, help="hold out about 1 answer in N (by id hash)")
    p.set_defaults(func=cmd_extra_from_build)

    p = sub.add_parser("examples", help="extra-utterance files -> one portable npz of detokenizer training examples")
    p.add_argument("--extra", action="append", default=[], metavar="FILE.jsonl", help="repeatable")
    p.add_argument("--grammar-work", default=None, metavar="DIR",
                   help="also the grammar speech of `data --work DIR`, tokenized with --tokenizer")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (for lines without tokens, and the id check)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--mel-bits", type=int, default=16, choices=[8, 16],
                   help="log-mel precision: 16 (fp16) or 8 (uint8 per bin, half the size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_examples)

    p = sub.add_parser("evaluate-extra", help="round-trip WER on an extra-utterance file's texts")
    p.add_argument("--manifest", required=True)
    p.add_argument("--detokenizer", default=None, help="detokenizer folder (default: the shipped one)")
    p.add_argument("--tokenizer", default=None, help="for lines without tokens (default: the shipped one)")
    p.add_argument("--vocoder", default="hifigan", choices=["hifigan", "griffinlim"])
    p.add_argument("--n", type=int, default=40, help="first N utterances with a text")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--report", default=None, help="JSON report with every transcript")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_evaluate_extra)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
