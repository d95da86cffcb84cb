"""Whisper-style speech encoder (the released ``continuous_audio_tower``).

Log-mel frames (100 Hz) -> two convolutions (50 Hz) -> transformer layers -> LayerNorm -> average
pooling (25 Hz) -> projection to the LLM width.  Attention is limited to windows of ``2 * n_window``
mel frames (2 s in the released model), each window getting positions that restart at 0; this is what
the released weights were trained with and it keeps the encoder usable for streaming input.  Unlike
transformers' WhisperEncoder, any input length works: nothing is padded to 30 s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from funaudiochat.config import FunAudioChatAudioEncoderConfig


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table; it is not stored in checkpoints, so it is recomputed."""
    if channels % 2:
        raise ValueError(f"channels must be even, got {channels}")
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def conv_output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the stride-2 convolution (50 Hz) for mel inputs of the given lengths."""
    return (mel_lengths - 1) // 2 + 1


def encoder_output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
    """Frames after average pooling (25 Hz): the encoder's output length."""
    return conv_output_lengths(mel_lengths) // 2


class EncoderAttention(nn.Module):
    """Multi-head self-attention with Whisper's parameter layout (no bias on the key projection)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        mask = key_mask[:, None, None, :]  # [b, 1, 1, t]: every query may see the valid keys of its window
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block (Whisper)."""

    def __init__(self, config: FunAudioChatAudioEncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = EncoderAttention(d, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(self.self_attn(self.self_attn_layer_norm(x), key_mask), self.dropout, self.training)
        h = F.gelu(self.fc1(self.final_layer_norm(x)))
        x = x + F.dropout(self.fc2(h), self.dropout, self.training)
        if x.dtype == torch.float16:  # keep fp16 activations finite, as the released model does
            bound = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-bound, bound)
        return x


class SpeechEncoder(nn.Module):
    """Log-mel [B, n_mels, T] (100 Hz) -> features [B, T25, output_dim] (25 Hz)."""

    def __init__(self, config: FunAudioChatAudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer(
            "positional_embedding", sinusoids(config.max_source_positions, d), persistent=False
        )
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.ln_post = nn.LayerNorm(d)
        self.proj = nn.Linear(d, config.output_dim)
        # Present in the released weights but unused by its forward pass; kept so that it loads.
        self.audio_bos_eos_token = nn.Embedding(2, config.output_dim)

    @property
    def window(self) -> int:
        """Attention window in mel frames."""
        return 2 * self.config.n_window

    def _split_windows(
        self, features: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Cut each utterance into windows and stack them as one batch of independent chunks."""
        chunks: list[torch.Tensor] = []
        chunk_lens: list[int] = []
        per_item: list[int] = []
        for item, length in zip(features, lengths.tolist()):
            starts = range(0, length, self.window)
            per_item.append(len(starts))
            for s in starts:
                e = min(s + self.window, length)
                chunks.append(item[:, s:e])
                chunk_lens.append(e - s)
        width = max(chunk_lens)
        batch = features.new_zeros(len(chunks), features.shape[1], width)
        for i, chunk in enumerate(chunks):
            batch[i, :, : chunk.shape[1]] = chunk
        return batch, torch.tensor(chunk_lens, device=features.device), per_item

    def hidden_states(
        self, input_features: torch.Tensor, feature_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-``ln_post`` states at 50 Hz, [B, T50, d_model], and their lengths.

        This is what Whisper's own encoder returns (when the window covers the whole input).
        """
        if input_features.dim() != 3 or input_features.shape[1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must be [batch, {self.config.num_mel_bins} mel bins, frames], "
                f"got {tuple(input_features.shape)}"
            )
        b, _, t = input_features.shape
        if feature_lens is None:
            feature_lens = torch.full((b,), t, dtype=torch.long, device=input_features.device)
        feature_lens = feature_lens.to(torch.long)
        if (self.window - 1) // 2 + 1 > self.config.max_source_positions:
            raise ValueError(
                f"n_window={self.config.n_window} needs more than max_source_positions="
                f"{self.config.max_source_positions} positions"
            )
        chunks, chunk_lens, per_item = self._split_windows(input_features, feature_lens)
        frame_mask = torch.arange(chunks.shape[-1], device=chunks.device)[None, :] < chunk_lens[:, None]
        x = F.gelu(self.conv1(chunks.to(self.conv1.weight.dtype))) * frame_mask[:, None, :].to(chunks.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [chunks, t50, d]
        lens50 = conv_output_lengths(chunk_lens)
        key_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lens50[:, None]
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for layer in self.layers:
            x = layer(x, key_mask)
        x = self.ln_post(x)
        # Re-assemble each utterance from its windows.
        item_lens = conv_output_lengths(feature_lens)
        out = x.new_zeros(b, int(item_lens.max()) if b else 0, x.shape[-1])
        c = 0
        for i, n in enumerate(per_item):
            pieces = [x[c + j, : lens50[c + j]] for j in range(n)]
            c += n
            if pieces:
                joined = torch.cat(pieces)
                out[i, : joined.shape[0]] = joined
        return out, item_lens

    def forward(
        self, input_features: torch.Tensor, feature_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """25 Hz features projected to the LLM width, [B, T25, output_dim], and their lengths."""
        h, lens50 = self.hidden_states(input_features, feature_lens)
        b, t, d = h.shape
        pooled = h[:, : 2 * (t // 2)].reshape(b, t // 2, 2, d).mean(dim=2)  # average pooling, k = s = 2
        lens25 = lens50 // 2
        valid = torch.arange(pooled.shape[1], device=pooled.device)[None, :] < lens25[:, None]
        return self.proj(pooled) * valid[..., None].to(pooled.dtype), lens25
