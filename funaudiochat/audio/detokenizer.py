"""Speech detokenizers: 25 Hz speech-token ids -> waveform.

One interface, :class:`Detokenizer` (``synthesize``, ``stream``), two backends:

* :class:`CosyVoiceDetokenizer`: the released model's detokenizer, CosyVoice3 (chunk-aware flow-matching
  DiT to 50 Hz mel + HiFT vocoder, 24 kHz), used when the ``cosyvoice`` package and a local
  ``Fun-CosyVoice3-0.5B-2512`` folder exist.  Nothing is downloaded.
* :class:`FlowMatchingDetokenizer`: the embedded default, trained here (paper section 2.1's recipe at
  CPU size).  Token embeddings are upsampled to the 86 Hz mel frame rate, a speaker (voice) embedding
  is added, and conditional flow matching (Euler ODE from seeded noise, cosine time grid) produces an
  80-bin HiFi-GAN log-mel, which the pip-shipped HiFi-GAN turns into 22.05 kHz audio (Griffin-Lim if
  HiFi-GAN is absent).

Every layer of the embedded model has a bounded receptive field: the token and mel encoders look at
most a few frames ahead, the flow estimator is causal, and the ODE noise of mel frame f depends only on
f.  That is what lets :mod:`funaudiochat.audio.streaming` reproduce offline synthesis chunk by chunk.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from funaudiochat.packages import sha256_file
from funaudiochat.audio.vocoder import MEL, Vocoder, load_vocoder
from funaudiochat.audio.voices import VoiceBank

if TYPE_CHECKING:
    from funaudiochat.audio.streaming import DetokenizerStream

logger = logging.getLogger(__name__)

__all__ = ["Detokenizer", "FlowConfig", "TokenToMel", "FlowMatchingDetokenizer", "CosyVoiceDetokenizer",
           "DETOKENIZER_FORMAT_VERSION", "default_detokenizer_dir", "load_detokenizer", "frames_for_tokens",
           "token_of_frame", "frame_noise", "check_tokens"]

DETOKENIZER_FORMAT_VERSION = 1
_WEIGHTS_FILE = "flow.safetensors"
_MANIFEST_FILE = "detokenizer.json"
TOKEN_RATE = 25
_NOISE_BLOCK = 32


def default_detokenizer_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "speech_detokenizer"


def frames_for_tokens(n_tokens: int) -> int:
    """Mel frames (hop 256 at 22.05 kHz) covered by `n_tokens` tokens of 40 ms."""
    return (n_tokens * MEL.sample_rate) // (TOKEN_RATE * MEL.hop)


def token_of_frame(frames: torch.Tensor | int) -> torch.Tensor | int:
    """Index of the token whose 40 ms contain the centre (sample 256 f + 128) of mel frame f."""
    return ((frames * MEL.hop + MEL.hop // 2) * TOKEN_RATE) // MEL.sample_rate


def frame_noise(f0: int, f1: int, seed: int, n_mels: int = MEL.n_mels) -> torch.Tensor:
    """Standard-normal ODE start noise [n_mels, f1 - f0] that depends only on (seed, absolute frame).

    Drawn in blocks of 32 frames, each from its own seeded generator, so any frame range can be
    produced without generating what precedes it (streaming sees the same noise as offline).
    """
    if f1 <= f0:
        return torch.zeros(n_mels, 0)
    b0, b1 = f0 // _NOISE_BLOCK, (f1 - 1) // _NOISE_BLOCK
    blocks = [np.random.default_rng([seed, b]).standard_normal((_NOISE_BLOCK, n_mels), dtype=np.float32)
              for b in range(b0, b1 + 1)]
    arr = np.concatenate(blocks)[f0 - b0 * _NOISE_BLOCK: f1 - b0 * _NOISE_BLOCK]
    return torch.from_numpy(np.ascontiguousarray(arr.T))


def check_tokens(tokens: Sequence[int] | np.ndarray | torch.Tensor, codebook_size: int) -> torch.Tensor:
    """1-D int64 tensor of ids in [0, codebook_size); a clear error names the first bad id otherwise."""
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if t.dim() != 1:
        raise ValueError(f"speech tokens must be a 1-D sequence, got shape {tuple(t.shape)}")
    if t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex()):
        raise ValueError(f"speech tokens must be integers, got dtype {t.dtype}")
    t = t.long()
    bad = ((t < 0) | (t >= codebook_size)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"speech token {int(t[i])} at position {i} is out of range [0, {codebook_size}) "
                         f"({bad.numel()} out-of-range ids in total)")
    return t


class Detokenizer(abc.ABC):
    """Speech-token ids -> (float32 mono waveform, sample rate)."""

    sample_rate: int
    codebook_size: int

    @property
    @abc.abstractmethod
    def voices(self) -> tuple[str, ...]: ...

    @abc.abstractmethod
    def synthesize(self, tokens: Sequence[int] | np.ndarray, voice: str | None = None) -> tuple[np.ndarray, int]:
        """Offline synthesis of a whole token sequence."""

    @abc.abstractmethod
    def stream(self, voice: str | None = None) -> DetokenizerStream:
        """Incremental synthesis: ``push(tokens) -> [audio chunks]``, ``flush() -> last chunk``."""


# ------------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class FlowConfig:
    """Shape of the embedded token->mel flow model; receptive fields follow from it."""

    codebook_size: int = 1024
    n_voices: int = 3
    dim: int = 192
    n_mels: int = MEL.n_mels
    token_layers: int = 3
    token_kernel: int = 5
    token_lookahead: int = 1  # right context (tokens) of the first token layer; the others are causal
    mel_layers: int = 2
    mel_kernel: int = 5
    mel_lookahead: int = 1  # right context (frames) of each mel-rate encoder layer
    est_dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4)
    est_kernel: int = 3
    steps: int = 8
    temperature: float = 0.8
    sigma_min: float = 1e-4
    seed: int = 0

    @property
    def token_left(self) -> int:
        """Tokens of left context the token encoder reads."""
        return (self.token_kernel - 1 - self.token_lookahead) + (self.token_layers - 1) * (self.token_kernel - 1)

    @property
    def mel_left(self) -> int:
        return self.mel_layers * (self.mel_kernel - 1 - self.mel_lookahead)

    @property
    def mel_right(self) -> int:
        return self.mel_layers * self.mel_lookahead

    @property
    def estimator_left(self) -> int:
        """Left frames one estimator call reads; the ODE chains `steps` calls."""
        return sum((self.est_kernel - 1) * d for d in self.est_dilations)


class _PadConv(nn.Module):
    """Conv1d with explicit (left, right) zero padding, so look-ahead is a design parameter."""

    def __init__(self, cin: int, cout: int, kernel: int, left: int, right: int, dilation: int = 1) -> None:
        super().__init__()
        if left + right != (kernel - 1) * dilation:
            raise ValueError("padding must equal the receptive span")
        self.pad = (left, right)
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over channels of [B, C, T] (per frame, so it keeps the receptive field local)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class _ResConv(nn.Module):
    def __init__(self, dim: int, kernel: int, left: int, right: int) -> None:
        super().__init__()
        self.norm = _ChannelNorm(dim)
        self.conv = _PadConv(dim, dim, kernel, left, right)
        self.pw = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(F.gelu(self.conv(self.norm(x))))


class _EstimatorBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = _PadConv(dim, dim, kernel, (kernel - 1) * dilation, 0, dilation)  # causal
        self.cond = nn.Conv1d(dim, dim, 1)
        self.time = nn.Linear(dim, dim)
        self.pw = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.gelu(x)) + self.cond(cond) + self.time(temb)[:, :, None]
        return x + self.pw(F.gelu(y))


def _time_embedding(t: torch.Tensor, dim: int = 64) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class TokenToMel(nn.Module):
    """Tokens (+ voice) -> normalised log-mel by conditional flow matching with a regression prior ``mu``."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k = cfg.dim, cfg.token_kernel
        self.embed = nn.Embedding(cfg.codebook_size, d)
        self.speaker = nn.Embedding(cfg.n_voices, d)
        self.token_layers = nn.ModuleList(
            _ResConv(d, k, k - 1 - (cfg.token_lookahead if i == 0 else 0), cfg.token_lookahead if i == 0 else 0)
            for i in range(cfg.token_layers))
        mk = cfg.mel_kernel
        self.mel_layers = nn.ModuleList(
            _ResConv(d, mk, mk - 1 - cfg.mel_lookahead, cfg.mel_lookahead) for _ in range(cfg.mel_layers))
        self.mel_norm = _ChannelNorm(d)
        self.to_mu = nn.Conv1d(d, cfg.n_mels, 1)
        self.in_proj = nn.Conv1d(2 * cfg.n_mels, d, 1)
        self.time_mlp = nn.Sequential(nn.Linear(64, d), nn.GELU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(_EstimatorBlock(d, cfg.est_kernel, dl) for dl in cfg.est_dilations)
        self.out = nn.Conv1d(d, cfg.n_mels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))

    # -- conditioning
    def encode(self, tokens: torch.Tensor, token_mask: torch.Tensor, frame_tokens: torch.Tensor,
               speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, T], token_mask [B, T], frame_tokens [B, F] (index into T per mel frame), speaker [B]
        -> (cond [B, d, F], mu [B, n_mels, F])."""
        x = (self.embed(tokens) * token_mask[..., None]).transpose(1, 2)
        for layer in self.token_layers:
            x = layer(x) * token_mask[:, None, :]
        h = torch.gather(x, 2, frame_tokens[:, None, :].expand(-1, x.shape[1], -1))
        h = h + self.speaker(speaker)[:, :, None]
        for layer in self.mel_layers:
            h = layer(h)
        h = self.mel_norm(h)
        return h, self.to_mu(h)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(_time_embedding(t))
        y = self.in_proj(torch.cat([x, mu], dim=1))
        for block in self.blocks:
            y = block(y, cond, temb)
        return self.out(F.gelu(y))

    def loss(self, tokens: torch.Tensor, token_mask: torch.Tensor, frame_tokens: torch.Tensor, speaker: torch.Tensor,
             mel: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss (OT path, cosine-warped t) + L1 prior loss on ``mu``; `mel` is normalised."""
        cond, mu = self.encode(tokens, token_mask, frame_tokens, speaker)
        b = mel.shape[0]
        t = 1 - torch.cos(torch.rand(b, device=mel.device) * math.pi / 2)
        x0 = torch.randn_like(mel)
        s = self.cfg.sigma_min
        xt = (1 - (1 - s) * t[:, None, None]) * x0 + t[:, None, None] * mel
        target = mel - (1 - s) * x0
        v = self.velocity(xt, t, cond, mu)
        m = frame_mask[:, None, :].float()
        denom = m.sum() * mel.shape[1]
        fm = (((v - target) ** 2) * m).sum() / denom
        prior = ((mu - mel).abs() * m).sum() / denom
        return fm + prior, {"fm": float(fm.detach()), "prior": float(prior.detach())}

    # -- inference on a window of absolute frames
    @torch.inference_mode()
    def mel_window(self, tokens: torch.Tensor, token_offset: int, f0: int, f1: int, speaker: int,
                   n_total_tokens: int | None = None) -> torch.Tensor:
        """Log-mel [n_mels, f1 - f0] of absolute frames [f0, f1) from tokens[token_offset:] (de-normalised).

        Frames whose token lies beyond the known ones use the last known token (as offline synthesis does
        at the true end); the streaming code only keeps frames far enough from both window edges.
        """
        cfg = self.cfg
        frames = torch.arange(f0, f1)
        last = (n_total_tokens if n_total_tokens is not None else token_offset + tokens.numel()) - 1
        idx = token_of_frame(frames).clamp(max=last) - token_offset
        if int(idx.min()) < 0:
            raise ValueError(f"window starts at frame {f0}, before the first given token {token_offset}")
        idx = idx.clamp(max=tokens.numel() - 1)
        mask = torch.ones(1, tokens.numel())
        cond, mu = self.encode(tokens[None], mask, idx[None], torch.tensor([speaker]))
        x = frame_noise(f0, f1, cfg.seed, cfg.n_mels)[None] * cfg.temperature
        grid = 1 - torch.cos(torch.linspace(0, 1, cfg.steps + 1) * math.pi / 2)
        for i in range(cfg.steps):
            t = grid[i].reshape(1)
            x = x + (grid[i + 1] - grid[i]) * self.velocity(x, t, cond, mu)
        return x[0] * self.mel_std[:, None] + self.mel_mean[:, None]


# ------------------------------------------------------------------------------------------ embedded backend


@dataclass
class DetokenizerManifest:
    version: int
    config: FlowConfig
    voices: tuple[str, ...]
    tokenizer_sha256: str
    sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": "funaudiochat-flow-detokenizer", "version": self.version, "config": asdict(self.config),
                "voices": list(self.voices), "tokenizer_sha256": self.tokenizer_sha256,
                "mel": {"sample_rate": MEL.sample_rate, "n_fft": MEL.n_fft, "hop": MEL.hop, "n_mels": MEL.n_mels,
                        "f_max": MEL.f_max, "log": "natural, floor 1e-5"},
                "files": {_WEIGHTS_FILE: {"sha256": self.sha256}}, "training": self.training}


class FlowMatchingDetokenizer(Detokenizer):
    """Embedded default: token->mel flow matching + HiFi-GAN (or Griffin-Lim)."""

    def __init__(self, model: TokenToMel, voices: VoiceBank, vocoder: Vocoder | None = None,
                 manifest: DetokenizerManifest | None = None) -> None:
        if len(voices) != model.cfg.n_voices:
            raise ValueError(f"{len(voices)} voice names for a model with {model.cfg.n_voices} voice embeddings")
        self.model = model.eval()
        self.voice_bank = voices
        self.vocoder = vocoder if vocoder is not None else load_vocoder("auto")
        self.sample_rate = self.vocoder.sample_rate
        self.codebook_size = model.cfg.codebook_size
        self.manifest = manifest

    @property
    def voices(self) -> tuple[str, ...]:
        return self.voice_bank.names

    def mel(self, tokens: Sequence[int] | np.ndarray, voice: str | None = None) -> torch.Tensor:
        """Offline log-mel [80, frames_for_tokens(len(tokens))]."""
        spk = self.voice_bank.index(voice)
        t = check_tokens(tokens, self.codebook_size)
        n = frames_for_tokens(t.numel())
        if n < 1:
            raise ValueError("no speech tokens to synthesize (got an empty sequence)")
        return self.model.mel_window(t, 0, 0, n, spk)

    def synthesize(self, tokens: Sequence[int] | np.ndarray, voice: str | None = None) -> tuple[np.ndarray, int]:
        audio = self.vocoder(self.mel(tokens, voice))
        return audio.clamp(-1.0, 1.0).numpy().astype(np.float32), self.sample_rate

    def stream(self, voice: str | None = None, **kwargs: Any) -> DetokenizerStream:
        from funaudiochat.audio.streaming import FlowDetokenizerStream

        return FlowDetokenizerStream(self, voice, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, vocoder: str | Vocoder = "auto",
                        verify_hash: bool = True) -> FlowMatchingDetokenizer:
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else default_detokenizer_dir()
        manifest_path, weights = folder / _MANIFEST_FILE, folder / _WEIGHTS_FILE
        for p in (manifest_path, weights):
            if not p.is_file():
                raise FileNotFoundError(
                    f"speech detokenizer file missing: {p} (train one with "
                    "`python -m funaudiochat.audio.train_codec detokenizer --out DIR`)")
        meta = json.loads(manifest_path.read_text())
        if meta.get("format") != "funaudiochat-flow-detokenizer" or meta.get("version") != DETOKENIZER_FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: not a version-{DETOKENIZER_FORMAT_VERSION} flow detokenizer manifest")
        expected = meta["files"][_WEIGHTS_FILE]["sha256"]
        if verify_hash and sha256_file(weights) != expected:
            raise ValueError(f"{weights}: sha256 does not match the manifest's {expected}")
        cfgd = dict(meta["config"])
        cfgd["est_dilations"] = tuple(cfgd["est_dilations"])
        cfg = FlowConfig(**cfgd)
        model = TokenToMel(cfg)
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
        manifest = DetokenizerManifest(meta["version"], cfg, tuple(meta["voices"]), meta["tokenizer_sha256"],
                                       expected, meta.get("training", {}))
        voc = load_vocoder(vocoder) if isinstance(vocoder, str) else vocoder
        return cls(model, VoiceBank.from_names(manifest.voices), voc, manifest)

    def save(self, folder: str | Path, tokenizer_sha256: str, training: dict[str, Any]) -> Path:
        """fp16 weights + manifest with the weights' sha256 and the tokenizer it was trained for."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / _WEIGHTS_FILE
        state = {k: v.detach().half().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(weights), metadata={"format": "funaudiochat-flow-detokenizer"})
        weights.chmod(0o644)  # safetensors creates 0600 files; the artefact is meant to be shared
        self.model.load_state_dict({k: v.float() for k, v in state.items()})  # match what a reload gives
        self.manifest = DetokenizerManifest(DETOKENIZER_FORMAT_VERSION, self.model.cfg, self.voices,
                                            tokenizer_sha256, sha256_file(weights), training)
        (folder / _MANIFEST_FILE).write_text(json.dumps(self.manifest.to_json(), indent=2) + "\n")
        return folder


# ------------------------------------------------------------------------------------------ CosyVoice3


class CosyVoiceDetokenizer(Detokenizer):
    """CosyVoice3 token2wav (the released model's detokenizer), from a local model folder.

    Mirrors the official ``token2wav``: empty prompt, 192-d x-vector from ``spk2info.pt`` chosen by voice
    name, offline call per 30-s (750-token) segment; output is 24 kHz.  Requires the ``cosyvoice`` package
    (CosyVoice's repository on ``sys.path``, with its Matcha-TTS third-party folder) and the model folder.
    """

    SEGMENT_TOKENS = 750
    REQUIRED_FILES = ("cosyvoice3.yaml", "flow.pt", "hift.pt")

    def __init__(self, model_dir: str | Path, spk2info: str | Path | None = None, repo_dir: str | Path | None = None,
                 codebook_size: int = 6561) -> None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"CosyVoice3 model folder not found: {model_dir} "
                                    "(expected a local Fun-CosyVoice3-0.5B-2512 download)")
        missing = [f for f in self.REQUIRED_FILES if not (model_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"CosyVoice3 model folder {model_dir} lacks {', '.join(missing)}")
        spk_path = Path(spk2info) if spk2info is not None else model_dir / "spk2info.pt"
        if not spk_path.is_file():
            raise FileNotFoundError(f"CosyVoice3 speaker table not found: {spk_path} (the official "
                                    "new_spk2info.pt with 192-d x-vectors)")
        if repo_dir is not None:
            for p in (Path(repo_dir), Path(repo_dir) / "third_party" / "Matcha-TTS"):
                if str(p) not in sys.path:
                    sys.path.append(str(p))
        try:
            from cosyvoice.cli.cosyvoice import CosyVoice3
        except ImportError as err:
            raise ImportError("the CosyVoice3 detokenizer needs the 'cosyvoice' package (CosyVoice's repository, "
                              f"pass repo_dir=...): {err}") from err
        self.cosyvoice = CosyVoice3(str(model_dir), load_trt=False, load_vllm=False, fp16=False)
        self.spk2info = torch.load(spk_path, map_location="cpu", weights_only=True)
        self.sample_rate = int(self.cosyvoice.sample_rate)
        self.codebook_size = codebook_size

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(self.spk2info)

    def _embedding(self, voice: str | None) -> torch.Tensor:
        name = voice if voice is not None else next(iter(self.spk2info))
        if name not in self.spk2info:
            raise ValueError(f"unknown voice {name!r}; available voices: {', '.join(self.spk2info)}")
        return self.spk2info[name]["embedding"]

    def token2wav(self, tokens: torch.Tensor, embedding: torch.Tensor, request_id: str, token_offset: int,
                  finalize: bool) -> torch.Tensor:
        """One CosyVoice3Model.token2wav call on a token prefix; returns audio past `token_offset`."""
        model = self.cosyvoice.model
        if request_id not in model.hift_cache_dict:
            model.hift_cache_dict[request_id] = None
        return model.token2wav(token=tokens[None], prompt_token=torch.zeros(1, 0, dtype=torch.int32),
                               prompt_feat=torch.zeros(1, 0, 80), embedding=embedding, token_offset=token_offset,
                               uuid=request_id, stream=False, finalize=finalize)

    def synthesize(self, tokens: Sequence[int] | np.ndarray, voice: str | None = None) -> tuple[np.ndarray, int]:
        t = check_tokens(tokens, self.codebook_size)
        emb = self._embedding(voice)
        segments = [t[i: i + self.SEGMENT_TOKENS] for i in range(0, t.numel(), self.SEGMENT_TOKENS)]
        if len(segments) > 1 and segments[-1].numel() < 2 * TOKEN_RATE:  # merge a short tail, re-split in halves
            merged = torch.cat(segments[-2:])
            half = merged.numel() // 2
            segments[-2:] = [merged[:half], merged[half:]]
        pieces = []
        for seg in segments:
            rid = str(uuid.uuid4())
            try:
                pieces.append(self.token2wav(seg, emb, rid, 0, True).flatten())
            finally:
                self.cosyvoice.model.hift_cache_dict.pop(rid, None)
        return torch.cat(pieces).numpy().astype(np.float32), self.sample_rate

    def stream(self, voice: str | None = None) -> DetokenizerStream:
        from funaudiochat.audio.streaming import CosyVoiceStream

        return CosyVoiceStream(self, self._embedding(voice))


def load_detokenizer(backend: str = "flow", path: str | Path | None = None, **kwargs: Any) -> Detokenizer:
    """``"flow"`` (embedded default, shipped) or ``"cosyvoice"`` (needs `path` = CosyVoice3 model folder)."""
    if backend == "flow":
        return FlowMatchingDetokenizer.from_pretrained(path, **kwargs)
    if backend == "cosyvoice":
        if path is None:
            raise ValueError("the cosyvoice detokenizer needs path= (a local Fun-CosyVoice3-0.5B-2512 folder)")
        return CosyVoiceDetokenizer(path, **kwargs)
    raise ValueError(f"unknown detokenizer backend {backend!r}; choose 'flow' or 'cosyvoice'")
