"""Conversations -> model inputs (token ids, labels, audio items), and batching.

The layout is ChatML, as in the released model::

    <|im_start|>system\\n{prompt}<|im_end|>\\n
    <|im_start|>user\\n<|audio_bos|><|AUDIO|>*U<|audio_eos|>[\\n{instruction}]<|im_end|>\\n
    <|im_start|>assistant\\n<|audio_bos|><|AUDIO|>*G<|audio_eos|><|im_end|>\\n   (spoken reply)
    <|im_start|>assistant\\n{text}<|im_end|>\\n                                   (text reply)

User audio enters through encoder features; its speech ids are pads (int(duration * 25) of them).
A spoken assistant reply carries its S3 speech tokens, prefixed with ``speech_delay`` BOS tokens, and
its transcript, which the model aligns one token per 5 Hz step (see ``modeling/targets.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from funaudiochat.audio.features import log_mel
from funaudiochat.audio.frames import speech_token_count
from funaudiochat.config import FunAudioChatConfig

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One turn.  ``audio`` is 16 kHz mono float32; ``speech_tokens`` are S3 ids without the delay."""

    role: str
    text: str | None = None
    audio: np.ndarray | None = None
    speech_tokens: Sequence[int] | None = None
    #: Start frame (25 Hz speech-token index) of each whitespace-separated word of ``text`` in the
    #: spoken reply; read only by models with the paced text layout (``config.text_layout``).
    word_starts: Sequence[int] | None = None
    #: Whether an assistant turn is a training target (ignored for other roles).
    train: bool = True

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")
        if self.role == "assistant" and self.audio is not None:
            raise ValueError("assistant turns carry speech_tokens, not a waveform")
        if self.text is None and self.audio is None and self.speech_tokens is None:
            raise ValueError(f"a {self.role} turn needs text, audio or speech_tokens")


@dataclass
class AudioSlot:
    """One audio item of an example, in order of appearance."""

    speech_ids: list[int]
    features: torch.Tensor | None = None  # [n_mels, frames] for items with a waveform
    text_ids: list[int] | None = None  # transcript of a spoken assistant reply


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    audio: list[AudioSlot] = field(default_factory=list)


class FunAudioChatProcessor:
    """Turns :class:`Message` lists into model inputs with a Hugging Face tokenizer."""

    def __init__(self, tokenizer, config: FunAudioChatConfig, n_mels: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.n_mels = n_mels or config.audio_config.num_mel_bins
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"the tokenizer lacks the ChatML tokens {missing}")
        self.im_start, self.im_end = ids["<|im_start|>"], ids["<|im_end|>"]
        if tokenizer.convert_tokens_to_ids("<|AUDIO|>") != config.audio_token_index:
            raise ValueError(
                f"tokenizer id of <|AUDIO|> ({tokenizer.convert_tokens_to_ids('<|AUDIO|>')}) differs from "
                f"config.audio_token_index ({config.audio_token_index}); use the tokenizer saved with the model"
            )

    # ----------------------------------------------------------------- pieces
    def text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def header(self, role: str) -> list[int]:
        return [self.im_start, *self.text(f"{role}\n")]

    def audio_run(self, n_speech: int) -> list[int]:
        k = self.config.audio_config.group_size
        groups = -(-n_speech // k)
        return [self.config.audio_bos_id, *[self.config.audio_token_index] * groups, self.config.audio_eos_id]

    def user_audio_slot(self, audio: np.ndarray) -> AudioSlot:
        n = speech_token_count(len(audio))
        if n == 0:
            raise ValueError(f"user audio of {len(audio)} samples is shorter than one 40 ms speech frame")
        feats = log_mel(audio, self.n_mels)
        return AudioSlot(speech_ids=[self.config.audio_config.pad_token_id] * n, features=feats)

    def spoken_reply_slot(
        self, speech_tokens: Sequence[int], text: str | None, word_starts: Sequence[int] | None = None
    ) -> AudioSlot:
        a = self.config.audio_config
        bad = [t for t in speech_tokens if not 0 <= int(t) < a.bos_token_id]
        if bad:
            raise ValueError(f"speech tokens must be in [0, {a.bos_token_id}); got {bad[:5]}")
        ids = [a.bos_token_id] * self.config.speech_delay + [int(t) for t in speech_tokens]
        # The last group is completed with speech EOS, so the model learns to end mid-group; a pad there
        # would be no target at all, and generation could not stop cleanly after an odd length.
        ids += [a.eos_token_id] * (-len(ids) % a.group_size)
        if text and self.config.text_layout == "paced":
            return AudioSlot(speech_ids=ids, text_ids=self.paced_text(text, word_starts, len(ids) // a.group_size))
        return AudioSlot(speech_ids=ids, text_ids=self.text(text) if text else [])

    def paced_text(self, text: str, word_starts: Sequence[int] | None, n_groups: int) -> list[int]:
        """A spoken reply's text slots in the paced layout (``training/pacing.py``)."""
        from funaudiochat.training.pacing import paced_text_slots, token_start_frames

        if word_starts is None:
            raise ValueError("this model uses the paced text layout: a spoken reply with text needs word_starts")
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("the paced text layout needs a fast tokenizer (character offsets of its tokens)")
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        frames = token_start_frames(text, enc["offset_mapping"], word_starts)
        k = self.config.audio_config.group_size
        try:
            return paced_text_slots(enc["input_ids"], frames, n_groups, self.config.sil_id, k, self.config.speech_delay // k)
        except ValueError as exc:  # more tokens than groups: the released layout's truncation, and say so
            logger.warning("%s; using the packed layout, truncated", exc)
            return list(enc["input_ids"][:n_groups])

    # ----------------------------------------------------------------- conversations
    def encode(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        speak: bool = False,
    ) -> EncodedExample:
        """Token ids, labels (assistant turns that ``train``) and audio items of a conversation.

        With ``add_generation_prompt`` the sequence ends with the assistant header, plus
        ``<|audio_bos|>`` when ``speak`` asks for a spoken reply.
        """
        ids: list[int] = []
        labels: list[int] = []
        slots: list[AudioSlot] = []
        nl = self.text("\n")

        def add(tokens: list[int], learn: bool) -> None:
            ids.extend(tokens)
            labels.extend(tokens if learn else [-100] * len(tokens))

        for m in messages:
            learn = m.role == "assistant" and m.train
            add(self.header(m.role), False)
            if m.role == "assistant" and m.speech_tokens is not None:
                slot = self.spoken_reply_slot(m.speech_tokens, m.text, m.word_starts)
                slots.append(slot)
                add(self.audio_run(len(slot.speech_ids)), learn)
            else:
                if m.audio is not None:
                    slot = self.user_audio_slot(m.audio)
                    slots.append(slot)
                    add(self.audio_run(len(slot.speech_ids)), False)
                    if m.text:
                        add(nl, False)
                if m.text:
                    body = m.text
                    if m.role == "tool":
                        body = f"<tool_response>\n{m.text}\n</tool_response>"
                    add(self.text(body), learn)
            add([self.im_end], learn)
            add(nl, False)
        if add_generation_prompt:
            add(self.header("assistant"), False)
            if speak:
                add([self.config.audio_bos_id], False)
        return EncodedExample(ids, labels, slots)

    def collate(
        self, examples: Sequence[EncodedExample], with_labels: bool = True, padding_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        """Padded batch in the model's forward keywords (right padding for training, left for generation)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not examples:
            raise ValueError("collate needs at least one example")
        a = self.config.audio_config
        pad_text = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        length = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), length), pad_text, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for r, e in enumerate(examples):
            n = len(e.input_ids)
            cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
            input_ids[r, cols] = torch.tensor(e.input_ids, dtype=torch.long)
            attention[r, cols] = 1
            labels[r, cols] = torch.tensor(e.labels, dtype=torch.long)
        batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention}
        if with_labels:
            batch["labels"] = labels
        slots = [s for e in examples for s in e.audio]
        if not slots:
            return batch
        width = max(len(s.speech_ids) for s in slots)
        speech = torch.full((len(slots), width), a.pad_token_id, dtype=torch.long)
        speech_mask = torch.zeros_like(speech)
        text_width = max([len(s.text_ids or []) for s in slots] + [1])
        text = torch.full((len(slots), text_width), pad_text, dtype=torch.long)
        text_mask = torch.zeros_like(text)
        for i, s in enumerate(slots):
            speech[i, : len(s.speech_ids)] = torch.tensor(s.speech_ids)
            speech_mask[i, : len(s.speech_ids)] = 1
            if s.text_ids:
                text[i, : len(s.text_ids)] = torch.tensor(s.text_ids)
                text_mask[i, : len(s.text_ids)] = 1
        batch.update(speech_ids=speech, speech_attention_mask=speech_mask)
        if any(s.text_ids is not None for s in slots):
            batch.update(text_ids=text, text_attention_mask=text_mask)
        exist = torch.tensor([s.features is not None for s in slots])
        batch["feature_exist_mask"] = exist
        feats = [s.features for s in slots if s.features is not None]
        if feats:
            frames = max(f.shape[1] for f in feats)
            features = torch.zeros(len(feats), self.n_mels, frames)
            fmask = torch.zeros(len(feats), frames, dtype=torch.long)
            for i, f in enumerate(feats):
                features[i, :, : f.shape[1]] = f
                fmask[i, : f.shape[1]] = 1
            batch.update(input_features=features, feature_attention_mask=fmask)
        return batch
