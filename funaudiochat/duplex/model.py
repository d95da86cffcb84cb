"""The duplex model: per-step user features, step inputs and the action head (docs/duplex.md).

The duplex model is the half-duplex model run on a fixed 5 Hz clock: one backbone position per
200 ms step, whose input is the sum of the user's audio of that step (``U[t]``), the text token and
the 5 speech tokens the assistant emitted at the step before.  A small linear ``duplex_head`` on the
backbone's hidden state says what the assistant does with its voice (listen, start, speak, stop,
backchannel).

``U[t]`` is computed here, and only here, so that training and the streaming engine see exactly the
same thing: the encoder runs on the last (at most) 2 s of audio ending at the end of step ``t``, as
an utterance of its own, and the last five 25 Hz frames of that window are averaged.  Nothing after
step ``t`` can reach ``U[t]``.  Windows of equal length are encoded together, one encoder call per
length (all windows after the first 2 s have the same length), so a whole record costs a handful of
calls while every window is still computed at exactly the shape it has when streamed.  A step's
result depends on how many steps are computed together only through float rounding (BLAS blocking
differs between batch sizes when several threads run; the tests allow 1e-5).

:func:`duplex_forward` is the teacher-forced training pass (action, text and speech losses) over the
batches of :mod:`funaudiochat.duplex.batch`.

Weights live on the model (``duplex_head``), the duplex settings on ``model.config.duplex``; a
half-duplex config has no ``duplex`` and builds no head, so old checkpoints load unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ModelOutput

from funaudiochat.audio.features import batch_features
from funaudiochat.duplex.timeline import ACTIONS, STEP_SECONDS
from funaudiochat.modeling.targets import srh_teacher_inputs

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIONS",
    "DuplexForward",
    "DuplexOutput",
    "UserFeatureCache",
    "duplex_forward",
    "STEP_SAMPLES",
    "WINDOW_SECONDS",
    "SAMPLE_RATE",
    "action_logits",
    "duplex_settings",
    "enable_duplex",
    "has_duplex",
    "step_inputs",
    "user_step_features",
    "user_step_features_batch",
]

SAMPLE_RATE = 16_000
#: Samples of one 200 ms step at 16 kHz.
STEP_SAMPLES = 3200
#: Seconds of audio the encoder sees for one step (fewer at the start of a conversation).
WINDOW_SECONDS = 2.0
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
#: 25 Hz encoder frames per step (the ones averaged into ``U[t]``).
FRAMES_PER_STEP = 5
#: Most windows sent to the encoder in one call (bounds activation memory on long records).
MAX_WINDOWS_PER_CALL = 256
#: Initial bias of the action head: strongly prefer ``listen`` until trained (exp(3) ~ 20x).
LISTEN_BIAS = 3.0


def duplex_settings() -> dict:
    """The ``config.duplex`` dict that :func:`enable_duplex` writes."""
    return {
        "actions": list(ACTIONS),
        "step_seconds": STEP_SECONDS,
        "window_seconds": WINDOW_SECONDS,
    }


def has_duplex(model: nn.Module) -> bool:
    """Whether ``model`` carries a duplex head (its config has ``duplex`` set)."""
    return getattr(model, "duplex_head", None) is not None and bool(getattr(model.config, "duplex", None))


def enable_duplex(model: nn.Module) -> nn.Module:
    """Give a half-duplex model an action head and ``config.duplex``; returns the same model.

    The head starts with small weights and a bias towards ``listen``, so an untrained duplex model
    stays quiet.  A model that already has the head is returned unchanged.
    """
    if has_duplex(model):
        return model
    cfg = model.config
    if cfg.audio_config.group_size != FRAMES_PER_STEP:
        raise ValueError(
            f"the duplex model needs group_size {FRAMES_PER_STEP} (one 200 ms step = {FRAMES_PER_STEP} "
            f"speech tokens at 25 Hz), got {cfg.audio_config.group_size}"
        )
    ref = model.get_input_embeddings().weight
    head = nn.Linear(cfg.text_config.hidden_size, len(ACTIONS), device=ref.device, dtype=ref.dtype)
    init_action_head(head)
    model.duplex_head = head
    cfg.duplex = duplex_settings()
    logger.info("added a duplex action head (%d actions) to the model", len(ACTIONS))
    return model


@torch.no_grad()
def init_action_head(head: nn.Linear) -> None:
    """Small weights and a bias favouring ``listen``."""
    nn.init.normal_(head.weight, std=1e-3)
    nn.init.zeros_(head.bias)
    head.bias[ACTIONS.index("listen")] = LISTEN_BIAS


def _as_waveform(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = audio if isinstance(audio, torch.Tensor) else torch.from_numpy(np.asarray(audio))
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D mono 16 kHz waveform, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected float samples in [-1, 1], got dtype {x.dtype}")
    return x.detach().to(torch.float32)


def _step_range(n_samples: int, n_steps: int | None, start_step: int) -> range:
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    available = n_samples // STEP_SAMPLES
    if n_steps is None:
        n_steps = max(available - start_step, 0)
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if start_step + n_steps > available:
        raise ValueError(
            f"steps {start_step}..{start_step + n_steps - 1} need {STEP_SAMPLES * (start_step + n_steps)} "
            f"samples but the audio has {n_samples} ({available} whole steps)"
        )
    return range(start_step, start_step + n_steps)


def _window(wave: torch.Tensor, step: int) -> torch.Tensor:
    end = STEP_SAMPLES * (step + 1)
    return wave[max(0, end - WINDOW_SAMPLES) : end]


def _encode_windows(model: nn.Module, windows: Sequence[torch.Tensor], project: bool = True) -> torch.Tensor:
    """``U`` for each window, [N, H]: encoder on the window alone, mean of its last 5 frames.

    ``project=False`` stops before ``continual_output_matching`` (what :class:`UserFeatureCache` keeps);
    ``project=True`` also applies the model's ``read_user_speech`` (its ``vocab_ctc`` adapter, if any).
    """
    enc = model.continuous_audio_tower
    param = next(enc.parameters())
    if not windows:
        return param.new_zeros(0, model.config.text_config.hidden_size)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(w.numel(), []).append(i)
    n_mels = enc.config.num_mel_bins
    # A frozen encoder keeps no activations for backward (a record has one 2 s window per step).
    enc_grad = torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())
    pooled = []
    order = []
    for _, idx in sorted(by_length.items()):
        for c in range(0, len(idx), MAX_WINDOWS_PER_CALL):
            chunk = idx[c : c + MAX_WINDOWS_PER_CALL]
            feats, mask = batch_features([windows[i] for i in chunk], n_mels, device=param.device)
            with torch.set_grad_enabled(enc_grad):
                frames, lens = enc(feats.to(param.dtype), mask.sum(-1))
            n = int(lens[0])
            if n < FRAMES_PER_STEP:
                raise ValueError(
                    f"a {windows[chunk[0]].numel()}-sample window gave {n} encoder frames, fewer than {FRAMES_PER_STEP}"
                )
            # The projection is affine, so it commutes with the mean.  Applying it to the five frames
            # keeps every matrix product at >= 5 rows (CPU BLAS takes other paths for 1-3 rows), which
            # keeps streaming one step at a time within float rounding of training.
            last = frames[:, n - FRAMES_PER_STEP : n]
            if project:
                last = model.audio_tower.continual_output_matching(last)
            pooled.append(last.mean(dim=1))
            order.extend(chunk)
    out = torch.cat(pooled)[torch.tensor(order, device=param.device).argsort()]
    return model.read_user_speech(out) if project else out


def user_step_features(
    model: nn.Module,
    audio: np.ndarray | torch.Tensor,
    n_steps: int | None = None,
    start_step: int = 0,
) -> torch.Tensor:
    """``U[t]`` for steps ``start_step`` .. ``start_step + n_steps - 1``, shape [n_steps, hidden].

    ``audio`` is the 16 kHz microphone signal from the start of the conversation (at least
    ``3200 * (start_step + n_steps)`` samples; later samples are ignored).  ``n_steps`` defaults to
    every whole step after ``start_step``.  Gradients flow into the encoder if it requires them.
    """
    wave = _as_waveform(audio)
    steps = _step_range(wave.numel(), n_steps, start_step)
    return _encode_windows(model, [_window(wave, t) for t in steps])


def user_step_features_batch(
    model: nn.Module, audios: Sequence[np.ndarray | torch.Tensor], n_steps: Sequence[int]
) -> torch.Tensor:
    """``U`` of several conversations at once, [B, max(n_steps), hidden], zero past each one's end.

    Row ``b`` equals ``user_step_features(model, audios[b], n_steps[b])``; all windows of the batch
    go through the encoder together (grouped by length).
    """
    if len(audios) != len(n_steps):
        raise ValueError(f"{len(audios)} waveforms but {len(n_steps)} step counts")
    windows: list[torch.Tensor] = []
    for audio, n in zip(audios, n_steps):
        wave = _as_waveform(audio)
        windows.extend(_window(wave, t) for t in _step_range(wave.numel(), int(n), 0))
    flat = _encode_windows(model, windows)
    width = max((int(n) for n in n_steps), default=0)
    out = flat.new_zeros(len(audios), width, flat.shape[-1])
    offset = 0
    for b, n in enumerate(n_steps):
        out[b, : int(n)] = flat[offset : offset + int(n)]
        offset += int(n)
    return out


class UserFeatureCache:
    """Encoder outputs of each training conversation, kept while the encoder is frozen.

    ``U[t]`` re-encodes 2 s of audio for every 200 ms step, which costs several times the backbone
    pass of a record; with the encoder frozen that work is the same in every epoch.  The cache keeps
    the step means before ``continual_output_matching`` (which may train), keyed by the audio's
    hash.  The projection is then applied to the mean rather than to the five frames: equal up to
    float rounding.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._items)

    def features(self, model: nn.Module, audios: Sequence[torch.Tensor], n_steps: Sequence[int]) -> torch.Tensor:
        """Like :func:`user_step_features_batch`, [B, max(n_steps), hidden], from the cache where possible."""
        if len(audios) != len(n_steps):
            raise ValueError(f"{len(audios)} waveforms but {len(n_steps)} step counts")
        rows = []
        for audio, n in zip(audios, n_steps):
            wave = _as_waveform(audio)[: STEP_SAMPLES * int(n)]
            key = (hashlib.sha1(wave.numpy().tobytes()).hexdigest(), int(n))
            if key not in self._items:
                windows = [_window(wave, t) for t in _step_range(wave.numel(), int(n), 0)]
                with torch.no_grad():
                    self._items[key] = _encode_windows(model, windows, project=False)
            rows.append(self._items[key])
        width = max((int(n) for n in n_steps), default=0)
        hidden = model.config.text_config.hidden_size
        means = rows[0].new_zeros(len(rows), width, hidden) if rows else torch.zeros(0, width, hidden)
        for b, row in enumerate(rows):
            means[b, : row.shape[0]] = row
        return model.read_user_speech(model.audio_tower.continual_output_matching(means))


def encoder_frozen(model: nn.Module) -> bool:
    """Whether no parameter of the speech encoder trains (the condition for :class:`UserFeatureCache`)."""
    return not any(p.requires_grad for p in model.continuous_audio_tower.parameters())


def step_inputs(
    model: nn.Module, user_feats: torch.Tensor, prev_text: torch.Tensor, prev_speech: torch.Tensor
) -> torch.Tensor:
    """Backbone inputs [B, T, H] = ``U`` + ``E_text(prev_text)`` + ``G(prev_speech)``.

    ``user_feats`` is [B, T, H], ``prev_text`` [B, T] text ids and ``prev_speech`` [B, T, 5] speech
    ids: what the assistant emitted at the step before (``<|sil|>`` and speech pads when silent).
    """
    b, t = prev_text.shape
    k = model.config.audio_config.group_size
    if user_feats.shape[:2] != (b, t) or prev_speech.shape != (b, t, k):
        raise ValueError(
            f"step_inputs: user_feats {tuple(user_feats.shape)}, prev_text {tuple(prev_text.shape)} and "
            f"prev_speech {tuple(prev_speech.shape)} must be [B, T, H], [B, T] and [B, T, {k}]"
        )
    text = model.get_input_embeddings()(prev_text)
    speech = model.audio_tower.group_tokens(prev_speech.reshape(b, t * k))
    return user_feats.to(text.dtype) + text + speech.to(text.dtype)


def action_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Action logits [..., len(ACTIONS)] from backbone hidden states [..., H]."""
    if getattr(model, "duplex_head", None) is None:
        raise ValueError("this model has no duplex head; call enable_duplex(model) first")
    return model.duplex_head(hidden.to(model.duplex_head.weight.dtype))


# ----------------------------------------------------------------------------------- training forward
@dataclass
class DuplexOutput(ModelOutput):
    """``loss`` = action_weight * ``action_loss`` + text_weight * ``text_loss`` + speech_weight * ``speech_loss``.

    Logits are per step: ``action_logits`` [B, T, n_actions], ``text_logits`` [B, T, V] and
    ``speech_logits`` [B, 5T, V_speech] (None when the batch has no speech target).  A part with no
    target in the batch is None and left out of ``loss``.
    """

    loss: torch.Tensor | None = None
    action_loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    speech_loss: torch.Tensor | None = None
    action_logits: torch.Tensor | None = None
    text_logits: torch.Tensor | None = None
    speech_logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    action_correct: torch.Tensor | None = None  # steps whose argmax action is right
    action_steps: torch.Tensor | None = None  # labelled steps


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    if not bool((labels != -100).any()):
        return None
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)


def duplex_forward(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    action_weight: float = 1.0,
    text_weight: float = 1.0,
    speech_weight: float = 1.0,
    feature_cache: UserFeatureCache | None = None,
) -> DuplexOutput:
    """Teacher-forced duplex pass over a batch of ``funaudiochat.duplex.batch.DuplexCollator``.

    Each row is its system prompt followed by one position per step (``step_inputs``); the hidden
    state of step ``t`` gives the action, the text token and, through the Speech Refined Head
    conditioned on it and on the embedding of that text token, the 5 speech tokens of step ``t``.
    ``feature_cache`` is used only while the encoder is frozen.
    """
    cfg = model.config
    k = cfg.audio_config.group_size
    prefix_ids, prefix_len = batch["input_ids"], batch["prefix_lengths"]
    n_steps, step_mask = batch["n_steps"], batch["step_mask"]
    text_labels, speech_labels = batch["text_labels"], batch["speech_labels"]
    b, t = step_mask.shape
    audio = batch["user_audio"]
    if feature_cache is not None and encoder_frozen(model):
        user = feature_cache.features(model, [audio[r] for r in range(b)], n_steps.tolist())
    else:
        user = user_step_features_batch(model, [audio[r] for r in range(b)], n_steps.tolist())
    if user.shape[1] < t:
        user = F.pad(user, (0, 0, 0, t - user.shape[1]))
    steps = step_inputs(model, user, batch["prev_text"], batch["prev_speech"])
    embed = model.get_input_embeddings()
    prefix = embed(prefix_ids)

    # prompt then steps in each row, right-padded to the longest
    mask = batch["attention_mask"]
    width = mask.shape[1]
    rows = []
    for r in range(b):
        p, n = int(prefix_len[r]), int(n_steps[r])
        row = torch.cat([prefix[r, :p], steps[r, :n]])
        rows.append(F.pad(row, (0, 0, 0, width - row.shape[0])))
    hidden_all = model.backbone()(inputs_embeds=torch.stack(rows), attention_mask=mask).last_hidden_state
    index = (prefix_len[:, None] + torch.arange(t, device=mask.device)[None, :]).clamp(max=width - 1)
    hidden = hidden_all.gather(1, index[..., None].expand(b, t, hidden_all.shape[-1]))

    ignore = cfg.ignore_index
    actions = action_logits(model, hidden)
    action_labels = batch["action_labels"]
    action_loss = _ce(actions, action_labels)
    labelled = action_labels != ignore
    correct = ((actions.argmax(-1) == action_labels) & labelled).sum()

    text_logits = model.language_model.get_output_embeddings()(hidden)
    text_loss = _ce(text_logits, text_labels)

    speech_logits = speech_loss = None
    flat = speech_labels.reshape(b, t * k)
    if model.audio_invert_tower is not None and bool((flat != ignore).any()):
        # The SRH helpers use the half-duplex convention (position p predicts the group of p + 1);
        # one leading empty group makes step t predict its own group s[t], fed s[t]'s previous token.
        shifted = torch.cat([flat.new_full((b, k), ignore), flat], dim=1)
        prev, targets = srh_teacher_inputs(shifted, k, ignore)
        said = embed(text_labels.masked_fill(text_labels == ignore, cfg.sil_id))
        speech_logits, speech_loss = model.refined_speech(
            hidden, said, prev[:, : t * k], targets[:, : t * k], step_mask
        )

    loss = None
    for weight, part in ((action_weight, action_loss), (text_weight, text_loss), (speech_weight, speech_loss)):
        if part is not None:
            loss = weight * part if loss is None else loss + weight * part
    return DuplexOutput(
        loss=loss,
        action_loss=action_loss,
        text_loss=text_loss,
        speech_loss=speech_loss,
        action_logits=actions,
        text_logits=text_logits,
        speech_logits=speech_logits,
        hidden_states=hidden,
        action_correct=correct,
        action_steps=labelled.sum(),
    )


class DuplexForward(nn.Module):
    """Training adapter: ``forward(**batch)`` runs :func:`duplex_forward` on the wrapped model.

    Training code that calls the model through ``__call__`` (DDP, mixed-precision autocast) can
    then train the duplex objective; the wrapped model is ``.model``.
    """

    def __init__(
        self, model: nn.Module, action_weight: float = 1.0, text_weight: float = 1.0, speech_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.model = model
        self.weights = (action_weight, text_weight, speech_weight)
        self.feature_cache = UserFeatureCache()

    def forward(self, **batch: torch.Tensor) -> DuplexOutput:
        a, t, s = self.weights
        return duplex_forward(self.model, batch, action_weight=a, text_weight=t, speech_weight=s,
                              feature_cache=self.feature_cache)
