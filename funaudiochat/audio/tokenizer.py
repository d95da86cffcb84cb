"""Speech tokenizers: 16 kHz waveform -> 25 Hz discrete speech-token ids.

One interface, :class:`SpeechTokenizer` (``encode``, ``codebook_size``, ``frame_rate``), two backends:

* :class:`S3Tokenizer` wraps the ``s3tokenizer`` package (CosyVoice's supervised semantic tokenizer,
  the one the released model was trained with).  Its ONNX weights are only published on a model hub,
  so they must already be in a local folder; otherwise construction fails with the expected file name.
* :class:`KMeansSpeechTokenizer` is the embedded default: k-means centroids over our Whisper encoder's
  hidden states, average-pooled from 50 Hz to 25 Hz.  Whisper's top layer is trained to predict text,
  so its states are mostly phonetic and largely speaker-independent, which is what a "semantic"
  speech token should be.  Centroids are a small versioned artefact (safetensors + JSON manifest).
"""

from __future__ import annotations

import abc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from funaudiochat.packages import sha256_file

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "SpeechTokenizer",
    "KMeansSpeechTokenizer",
    "S3Tokenizer",
    "S3_MODELS",
    "TOKENIZER_FORMAT_VERSION",
    "default_tokenizer_dir",
    "load_tokenizer",
    "sha256_file",
]

SAMPLE_RATE = 16_000
TOKENIZER_FORMAT_VERSION = 1
"""Bumped whenever the meaning of saved centroids changes (features, pooling, normalisation)."""
_CENTROIDS_FILE = "centroids.safetensors"
_MANIFEST_FILE = "tokenizer.json"

S3_MODELS: dict[str, tuple[int, int]] = {
    # name: (codebook size, frame rate in Hz)
    "speech_tokenizer_v1": (4096, 50),
    "speech_tokenizer_v1_25hz": (4096, 25),
    "speech_tokenizer_v2_25hz": (6561, 25),
    "speech_tokenizer_v3_25hz": (6561, 25),
}


def default_tokenizer_dir() -> Path:
    """The k-means tokenizer shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "speech_tokenizer"


def _check_audio(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples at 16 kHz, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got dtype {x.dtype}")
    if x.size < 640:
        raise ValueError(f"audio too short for one 25 Hz token: {x.size} samples < 640 (40 ms at 16 kHz)")
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN/Inf samples")
    return x.astype(np.float32, copy=False)


class SpeechTokenizer(abc.ABC):
    """Waveform (16 kHz mono float) -> speech-token ids in ``[0, codebook_size)`` at ``frame_rate`` Hz."""

    @property
    @abc.abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def frame_rate(self) -> int: ...

    @abc.abstractmethod
    def encode(self, audio_16k: np.ndarray) -> list[int]:
        """Token ids for one utterance; ``int(len(audio) * frame_rate / 16000)`` of them."""

    def token_count(self, n_samples: int) -> int:
        """How many ids ``encode`` returns for `n_samples` samples (the processor's allotment)."""
        return int(n_samples * self.frame_rate / SAMPLE_RATE)


# ------------------------------------------------------------------------------------------ k-means


@dataclass(frozen=True)
class KMeansManifest:
    """What ``tokenizer.json`` records, so that a centroid file is never used with the wrong features."""

    version: int
    encoder_source: str  # "tiny.en" or "base" (pip CTranslate2 Whisper)
    codebook_size: int
    dim: int
    frame_rate: int
    sha256: str
    training: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "funaudiochat-kmeans-speech-tokenizer",
            "version": self.version,
            "encoder_source": self.encoder_source,
            "features": "SpeechEncoder.hidden_states (post ln_post, 50 Hz), avg-pooled k=s=2 to 25 Hz, "
                        "standardised with the stored mean/std",
            "codebook_size": self.codebook_size,
            "dim": self.dim,
            "frame_rate": self.frame_rate,
            "files": {_CENTROIDS_FILE: {"sha256": self.sha256}},
            "training": self.training,
        }


def build_whisper_encoder(source: str) -> torch.nn.Module:
    """Our ``SpeechEncoder`` with the pip Whisper encoder weights; one 30-s attention window.

    ``n_window=1500`` gives Whisper's own 30-s context (what its weights were trained with), so the
    hidden states equal Whisper's for inputs up to 30 s; longer inputs are split into 30-s windows.
    """
    import torch

    from funaudiochat.audio.whisper_weights import ct2_encoder_state_dict, find_pip_whisper
    from funaudiochat.config import FunAudioChatAudioEncoderConfig
    from funaudiochat.modeling.encoder import SpeechEncoder

    sd, hp = ct2_encoder_state_dict(find_pip_whisper(source))
    cfg = FunAudioChatAudioEncoderConfig(**hp.config_kwargs(), output_dim=hp.d_model, n_window=1500)
    enc = SpeechEncoder(cfg)
    missing, unexpected = enc.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    bad = [k for k in missing if not k.startswith(("proj.", "audio_bos_eos_token."))]
    if bad or unexpected:
        raise RuntimeError(f"Whisper {source} weights do not fit SpeechEncoder: missing {bad}, unexpected {unexpected}")
    return enc.eval().requires_grad_(False).to(torch.float32)


def pooled_hidden_states(encoder: torch.nn.Module, audio_16k: np.ndarray) -> torch.Tensor:
    """[T25, d] 25 Hz features: 50 Hz hidden states average-pooled in pairs, cut to the token count."""
    import torch

    from funaudiochat.audio.features import log_mel

    x = _check_audio(audio_16k)
    n_tokens = int(x.size * 25 / SAMPLE_RATE)
    with torch.inference_mode():
        mel = log_mel(x, n_mels=encoder.config.num_mel_bins)[None]
        h, lens = encoder.hidden_states(mel)
        h = h[0, : int(lens[0])]
        t = h.shape[0] // 2
        pooled = h[: 2 * t].reshape(t, 2, -1).mean(dim=1)
    if pooled.shape[0] < n_tokens:  # cannot happen with Whisper's frame arithmetic; kept as a guard
        pooled = torch.cat([pooled, pooled[-1:].expand(n_tokens - pooled.shape[0], -1)])
    return pooled[:n_tokens]


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """argmin_k ||x - c_k||^2 for each row of `x`, in blocks to bound memory."""
    import torch

    c2 = (centroids * centroids).sum(1)
    out = []
    for s in range(0, x.shape[0], block):
        xb = x[s: s + block]
        out.append((c2[None, :] - 2.0 * xb @ centroids.T).argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class KMeansSpeechTokenizer(SpeechTokenizer):
    """Whisper-encoder states -> nearest k-means centroid; deterministic and CPU-cheap."""

    def __init__(self, encoder: torch.nn.Module, centroids: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 manifest: KMeansManifest) -> None:
        if centroids.dim() != 2 or centroids.shape[1] != mean.numel() or mean.numel() != std.numel():
            raise ValueError(f"inconsistent tokenizer tensors: centroids {tuple(centroids.shape)}, "
                             f"mean {tuple(mean.shape)}, std {tuple(std.shape)}")
        d_model = encoder.config.d_model
        if centroids.shape[1] != d_model:
            raise ValueError(f"centroids have dim {centroids.shape[1]} but the {manifest.encoder_source} "
                             f"encoder gives {d_model}")
        self.encoder = encoder
        self.centroids = centroids.float()
        self.mean = mean.float()
        self.std = std.float()
        self.manifest = manifest

    @property
    def codebook_size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def frame_rate(self) -> int:
        return 25

    def features(self, audio_16k: np.ndarray) -> torch.Tensor:
        """Standardised 25 Hz features [T25, d] (what the centroids live in)."""
        return (pooled_hidden_states(self.encoder, audio_16k) - self.mean) / self.std

    def encode(self, audio_16k: np.ndarray) -> list[int]:
        return nearest_centroid(self.features(audio_16k), self.centroids).tolist()

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, *, encoder: torch.nn.Module | None = None,
                        verify_hash: bool = True) -> KMeansSpeechTokenizer:
        """Load ``tokenizer.json`` + ``centroids.safetensors`` from `folder` (default: the shipped one)."""
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else default_tokenizer_dir()
        manifest_path, weights = folder / _MANIFEST_FILE, folder / _CENTROIDS_FILE
        for p in (manifest_path, weights):
            if not p.is_file():
                raise FileNotFoundError(
                    f"speech tokenizer file missing: {p} (train one with "
                    "`python -m funaudiochat.audio.train_codec tokenizer --out DIR`)")
        try:
            meta = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path}: invalid JSON ({err})") from err
        if meta.get("format") != "funaudiochat-kmeans-speech-tokenizer":
            raise ValueError(f"{manifest_path}: not a k-means speech tokenizer manifest")
        if meta.get("version") != TOKENIZER_FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: tokenizer format version {meta.get('version')} is not supported "
                             f"(this code reads version {TOKENIZER_FORMAT_VERSION})")
        expected = meta["files"][_CENTROIDS_FILE]["sha256"]
        if verify_hash:
            actual = sha256_file(weights)
            if actual != expected:
                raise ValueError(f"{weights}: sha256 {actual} does not match the manifest's {expected}")
        manifest = KMeansManifest(version=meta["version"], encoder_source=meta["encoder_source"],
                                  codebook_size=meta["codebook_size"], dim=meta["dim"],
                                  frame_rate=meta["frame_rate"], sha256=expected, training=meta.get("training", {}))
        t = load_file(str(weights))
        if t["centroids"].shape != (manifest.codebook_size, manifest.dim):
            raise ValueError(f"{weights}: centroids shape {tuple(t['centroids'].shape)} != manifest "
                             f"({manifest.codebook_size}, {manifest.dim})")
        enc = encoder if encoder is not None else build_whisper_encoder(manifest.encoder_source)
        return cls(enc, t["centroids"], t["mean"], t["std"], manifest)

    def save(self, folder: str | Path) -> Path:
        """Write fp16 centroids and the manifest (with the file's sha256) to `folder`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / _CENTROIDS_FILE
        tensors = {"centroids": self.centroids.half().contiguous(), "mean": self.mean.half().contiguous(),
                   "std": self.std.half().contiguous()}
        save_file(tensors, str(weights), metadata={"format": "funaudiochat-kmeans-speech-tokenizer"})
        weights.chmod(0o644)  # safetensors creates 0600 files; the artefact is meant to be shared
        # What was saved is fp16: keep this object consistent with a reload.
        self.centroids, self.mean, self.std = (tensors[k].float() for k in ("centroids", "mean", "std"))
        m = self.manifest
        self.manifest = KMeansManifest(m.version, m.encoder_source, self.codebook_size, int(self.centroids.shape[1]),
                                       25, sha256_file(weights), m.training)
        (folder / _MANIFEST_FILE).write_text(json.dumps(self.manifest.to_json(), indent=2) + "\n")
        return folder


# ------------------------------------------------------------------------------------------ S3 (CosyVoice)


class S3Tokenizer(SpeechTokenizer):
    """CosyVoice S3 tokenizer through the ``s3tokenizer`` package, from a local ``<name>.onnx``.

    The released Fun-Audio-Chat uses ``speech_tokenizer_v3_25hz`` (6561 ids at 25 Hz).  Nothing is
    downloaded: put the ONNX file (from the CosyVoice model repositories) in `weights_dir`.
    """

    def __init__(self, weights_dir: str | Path, name: str = "speech_tokenizer_v3_25hz", device: str = "cpu") -> None:
        if name not in S3_MODELS:
            raise ValueError(f"unknown S3 tokenizer {name!r}; choose from {', '.join(S3_MODELS)}")
        path = Path(weights_dir) / f"{name}.onnx"
        if not path.is_file():
            raise FileNotFoundError(
                f"S3 tokenizer weights not found: expected {path} (the {name} ONNX file from the CosyVoice "
                "model repository; it cannot be downloaded here)")
        try:
            import s3tokenizer
        except ImportError as err:
            raise ImportError(f"the S3 tokenizer backend needs the 's3tokenizer' package and its dependencies "
                              f"(pip install s3tokenizer; it imports torchaudio): {err}") from err
        self._s3 = s3tokenizer
        self.name = name
        self.device = device
        # load_model accepts a file path; it picks the v2/v3 architecture from the name in the path.
        self.model = s3tokenizer.load_model(str(path)).to(device).eval()
        self._codebook, self._rate = S3_MODELS[name]

    @property
    def codebook_size(self) -> int:
        return self._codebook

    @property
    def frame_rate(self) -> int:
        return self._rate

    def encode(self, audio_16k: np.ndarray) -> list[int]:
        import torch

        x = torch.from_numpy(_check_audio(audio_16k))
        mel = self._s3.log_mel_spectrogram(x)  # [128, T] at 100 Hz
        mels, mel_lens = self._s3.padding([mel])
        with torch.inference_mode():
            codes, code_lens = self.model.quantize(mels.to(self.device), mel_lens.to(self.device))
        ids = codes[0, : int(code_lens[0])].tolist()
        return ids[: self.token_count(x.numel())]


def load_tokenizer(backend: str = "kmeans", path: str | Path | None = None, **kwargs: Any) -> SpeechTokenizer:
    """``"kmeans"`` (default, shipped) or ``"s3"`` (needs `path` = folder with the ONNX file)."""
    if backend == "kmeans":
        return KMeansSpeechTokenizer.from_pretrained(path, **kwargs)
    if backend == "s3":
        if path is None:
            raise ValueError("the s3 tokenizer backend needs path= (a folder holding <name>.onnx)")
        return S3Tokenizer(path, **kwargs)
    raise ValueError(f"unknown speech tokenizer backend {backend!r}; choose 'kmeans' or 's3'")
