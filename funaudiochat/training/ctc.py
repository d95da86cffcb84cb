"""Speech CTC alignment: the ``ctc`` training stage of a ``vocab_ctc`` model.

The encoder and adapter learn to emit the transcript's backbone tokens (CTC at 5 Hz, blank last)
without running the backbone, so each step costs an encoder pass and one matrix product with the
embedding table.  After it, the backbone reads user speech as near-copies of its own token
embeddings (``modeling/vocab_adapter.py``).

Data: JSONL, one utterance per line, ``{"audio": "wav/q1.wav", "text": "what is the capital of
france"}`` (docs/data-format.md).  Relative audio paths are resolved against ``audio_root`` or the
file's folder.  Transcripts are normalised (:func:`normalize_transcript`) because speech carries no
case or punctuation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from funaudiochat.audio.features import batch_features
from funaudiochat.audio.io import audio_seconds, load_audio
from funaudiochat.modeling.model import FunAudioChatOutput
from funaudiochat.speech.audio import speed_perturb
from funaudiochat.training.data import DataError
from funaudiochat.training.dataset import DatasetError

_NOT_SPOKEN = re.compile(r"[^a-z0-9' ]+")
_WORD_OR_STOP = re.compile(r"[A-Za-z0-9']+|[.!?](?=\s|$)")

#: How transcripts are cased (a recipe's ``data.transcript_case``): ``lower``, or ``proper`` (names keep their capital).
CTC_CASES = ("lower", "proper")


def normalize_transcript(text: str, case: str = "lower") -> str:
    """Digits and apostrophes kept, everything else a word break; cased as ``case`` says.

    ``proper`` keeps the case of each word written capitalised inside a sentence and lowers the
    first word of every sentence, so only names and acronyms stay capitalised.  Why: the backbone's
    tokenizer is cased, and a lowered name is split into rare pieces that a readout seldom hears
    (" France" is one token, " france" two).  Session 19 measured a small gain only (4 more names
    heard in 181; docs/default-model-history.md), so ``lower`` stays the default.  Text without any
    lower-case letter (LibriSpeech's capitals) carries no case information and is lowered.
    """
    if case not in CTC_CASES:
        raise ValueError(f"unknown transcript case {case!r}; choose one of {', '.join(CTC_CASES)}")
    text = text.replace("\u2019", "'")
    if case == "lower" or not any(c.islower() for c in text):
        return " ".join(_NOT_SPOKEN.sub(" ", text.lower()).split())
    words, first = [], True
    for piece in _WORD_OR_STOP.findall(text):
        if piece in ".!?":
            first = True
            continue
        words.append(piece.lower() if first and piece != "I" else piece)
        first = False
    return " ".join(words)


def transcript_ids(tokenizer, text: str, case: str = "lower") -> list[int]:
    """Backbone token ids of a normalised transcript; a leading space gives every word its mid-sentence form."""
    return list(tokenizer(" " + normalize_transcript(text, case), add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class CTCRecord:
    path: Path
    line: int
    audio: Path
    text: str


def load_ctc_records(
    paths: Sequence[str | Path], audio_root: str | Path | None = None
) -> list[CTCRecord]:
    """Read and check every line of every file; all problems are raised together (:class:`DatasetError`)."""
    if not paths:
        raise ValueError("no training data files given")
    records: list[CTCRecord] = []
    errors: list[tuple[Path, DataError]] = []
    for raw in paths:
        path = Path(raw)
        root = Path(audio_root) if audio_root is not None else path.parent
        try:
            # Not splitlines(): JSON text may hold U+2028 and other characters it treats as line breaks.
            lines = path.read_text(encoding="utf-8").split("\n")
        except OSError as e:
            errors.append((path, DataError(0, "file", f"cannot read: {e.strerror or e}")))
            continue
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append((path, DataError(n, "json", f"malformed JSON ({e.msg}, column {e.colno})")))
                continue
            if not isinstance(obj, dict):
                errors.append((path, DataError(n, "json", "a line must be an object with 'audio' and 'text'")))
                continue
            audio, text = obj.get("audio"), obj.get("text")
            problems = []
            if not isinstance(audio, str) or not audio:
                problems.append(DataError(n, "audio", "missing or not a path string"))
            elif not (root / audio).is_file():
                problems.append(DataError(n, "audio", f"file not found: {root / audio}"))
            if not isinstance(text, str):
                problems.append(DataError(n, "text", "missing or not a string"))
            elif not normalize_transcript(text):
                problems.append(DataError(n, "text", f"no spoken words in {text!r}"))
            errors += [(path, e) for e in problems]
            if not problems:
                records.append(CTCRecord(path, n, root / audio, text))
    if errors:
        raise DatasetError(errors)
    if not records:
        raise ValueError(f"no utterances in {', '.join(map(str, paths))}")
    return records


class CTCDataset(Dataset):
    """Items: (16 kHz waveform, target token ids); audio is decoded lazily (in DataLoader workers).

    With ``speed`` ``(low, high)`` and/or ``gain_db``, every read of an utterance is perturbed afresh:
    a random speed (tempo and pitch) and level.  The draws come from ``(seed, index, n-th read of
    that index)``, plus the DataLoader worker's seed in a worker process: each worker counts reads on
    its own copy, and its seed, new every epoch, keeps the passes different.  Runs are reproducible.
    """

    def __init__(
        self,
        records: Sequence[CTCRecord],
        tokenizer,
        max_audio_seconds: float | None = 360.0,
        speed: Sequence[float] | None = None,
        gain_db: float = 0.0,
        seed: int = 0,
        case: str = "lower",
    ) -> None:
        self.records = list(records)
        self.targets = [transcript_ids(tokenizer, r.text, case) for r in self.records]
        self.max_audio_seconds = max_audio_seconds
        if speed is not None and not (len(speed) == 2 and 0 < speed[0] <= speed[1]):
            raise ValueError(f"speed must be (low, high) with 0 < low <= high, got {speed}")
        self.speed = None if speed is None else (float(speed[0]), float(speed[1]))
        self.gain_db = float(gain_db)
        self.seed = seed
        self._reads = [0] * len(self.records)

    def _perturb(self, wave: np.ndarray, index: int) -> np.ndarray:
        if self.speed is None and not self.gain_db:
            return wave
        worker = torch.utils.data.get_worker_info()
        entropy = [self.seed, index, self._reads[index]] + ([] if worker is None else [worker.seed])
        rng = np.random.default_rng(entropy)
        self._reads[index] += 1
        if self.speed is not None:
            wave = speed_perturb(wave, float(rng.uniform(*self.speed)))
        if self.gain_db:
            wave = np.clip(wave * 10.0 ** (rng.uniform(-self.gain_db, self.gain_db) / 20.0), -1.0, 1.0)
        return wave.astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.records)

    def lengths(self) -> list[float]:
        """Seconds of each recording, from its header (``data.group_by_length`` batches by it)."""
        return [audio_seconds(r.audio) for r in self.records]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[int]]:
        r = self.records[index]
        wave = load_audio(r.audio, max_seconds=self.max_audio_seconds, name=f"{r.path}:{r.line}: {r.audio}")
        return torch.from_numpy(self._perturb(wave, index)), self.targets[index]


def dataset_for(records: Sequence[CTCRecord], tokenizer, data, seed: int) -> CTCDataset:
    """The stage's dataset as a recipe's ``data`` section (:class:`~funaudiochat.training.recipes.DataSection`) asks."""
    return CTCDataset(records, tokenizer, data.max_audio_seconds, speed=data.speed_perturb,
                      gain_db=data.gain_db, seed=seed, case=data.transcript_case)


class CTCCollator:
    """Pads a batch: log-mel features with their mask, and targets [B, U_max] with their lengths."""

    def __init__(self, n_mels: int) -> None:
        self.n_mels = n_mels

    def __call__(self, items: Sequence[tuple[torch.Tensor, list[int]]]) -> dict[str, torch.Tensor]:
        feats, mask = batch_features([w for w, _ in items], self.n_mels)
        lengths = torch.tensor([len(t) for _, t in items], dtype=torch.long)
        targets = torch.zeros(len(items), max(int(lengths.max()), 1), dtype=torch.long)
        for i, (_, t) in enumerate(items):
            targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return {
            "input_features": feats,
            "feature_attention_mask": mask,
            "ctc_targets": targets,
            "ctc_target_lengths": lengths,
        }


def speech_ctc_loss(
    model: nn.Module,
    input_features: torch.Tensor,
    feature_attention_mask: torch.Tensor,
    ctc_targets: torch.Tensor,
    ctc_target_lengths: torch.Tensor,
) -> torch.Tensor:
    """Mean per-token CTC loss; an utterance too short for its transcript contributes zero."""
    logits, lengths = model.speech_ctc_logits(input_features, feature_attention_mask)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [T, B, V + 1]
    return F.ctc_loss(
        log_probs, ctc_targets, lengths, ctc_target_lengths,
        blank=logits.shape[-1] - 1, reduction="mean", zero_infinity=True,
    )


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path per utterance, repeats merged and blanks (the last class) dropped."""
    blank = logits.shape[-1] - 1
    out = []
    for best, n in zip(logits.argmax(-1).tolist(), lengths.tolist()):
        ids, prev = [], None
        for b in best[:n]:
            if b != prev and b != blank:
                ids.append(b)
            prev = b
        out.append(ids)
    return out


class SpeechCTCForward(nn.Module):
    """Runs the CTC objective through ``__call__`` so that DDP and autocast see it (as ``DuplexForward`` does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> FunAudioChatOutput:
        return FunAudioChatOutput(loss=speech_ctc_loss(self.model, **batch))
