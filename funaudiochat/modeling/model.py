"""Fun-Audio-Chat: Dual-Resolution Speech Representations on a transformers causal LM.

Module names match the released checkpoint so that it loads unchanged:

=========================  ===================================================
``continuous_audio_tower``  Whisper-style encoder + adapter (``encoder.py``)
``audio_tower``             speech-token embedding and k-grouping (``grouping.py``)
``audio_invert_tower``      Speech Refined Head (``srh.py``)
``language_model``          any transformers causal LM (Qwen3 in the release)
=========================  ===================================================

The model holds weights only: no generation state lives on it (see ``funaudiochat.generation``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers import initialization as init

from funaudiochat.config import FunAudioChatConfig
from funaudiochat.modeling.encoder import SpeechEncoder, sinusoids
from funaudiochat.modeling.grouping import SpeechTokenGrouping, pad_to_multiple
from funaudiochat.modeling.srh import SpeechRefinedHead
from funaudiochat.modeling.vocab_adapter import VocabCTCAdapter
from funaudiochat.modeling.targets import (
    aligned_text_slots,
    build_targets,
    group_counts,
    match_runs,
    srh_teacher_inputs,
)

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint's parameter names do not match the model's."""


@dataclass
class FunAudioChatOutput(ModelOutput):
    """Forward result; ``loss`` = w_text * ``text_loss`` + w_speech * ``speech_loss`` (paper Eq. 4)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    speech_loss: torch.Tensor | None = None
    speech_logits: torch.Tensor | None = None
    speech_labels: torch.Tensor | None = None
    cache: object | None = None
    last_hidden_state: torch.Tensor | None = None
    #: The text embeddings the SRH is conditioned on (with the aligned transcript at speech positions);
    #: with ``last_hidden_state`` and ``speech_labels`` they are all the head's inputs.
    text_embeds: torch.Tensor | None = None


@dataclass
class AudioEmbeddings:
    """What the audio path contributes to one forward pass."""

    inputs_embeds: torch.Tensor
    text_embeds: torch.Tensor  # embedding of the text token fed at each position (SRH input)
    runs: list
    text_slots: list
    speech_ids: torch.Tensor
    speech_mask: torch.Tensor


class FunAudioChatPreTrainedModel(PreTrainedModel):
    config_class = FunAudioChatConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    input_modalities = ("audio", "text")

    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SpeechEncoder):
            init.copy_(module.positional_embedding, sinusoids(*module.positional_embedding.shape))
        if isinstance(module, VocabCTCAdapter):
            init.zeros_(module.blank_query)
            init.zeros_(module.blank_embed)
            init.ones_(module.logit_scale)
            if module.spelling is not None:
                init.zeros_(module.spelling.weight)


class FunAudioChatForConditionalGeneration(FunAudioChatPreTrainedModel):
    """The full model.  ``forward`` accepts the released model's keywords."""

    _tied_weights_keys = {"audio_invert_tower.lm_head.weight": "audio_tower.embed_tokens.weight"}

    def __init__(self, config: FunAudioChatConfig, language_model: PreTrainedModel | None = None) -> None:
        """``language_model`` lets a caller hand over an already loaded backbone (no second copy)."""
        super().__init__(config)
        if language_model is not None:
            # Loaded weights must survive post_init(), which initialises every unflagged module.
            for module in language_model.modules():
                module._is_hf_initialized = True
            for param in language_model.parameters():
                param._is_hf_initialized = True
        audio = config.audio_config
        self.continuous_audio_tower = SpeechEncoder(audio)
        self.audio_tower = SpeechTokenGrouping(audio)
        self.audio_invert_tower = SpeechRefinedHead(audio) if audio.enable_audio_invert_tower else None
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        self.speech_vocab_adapter = (
            VocabCTCAdapter(audio.output_dim, audio.ctc_spelling_buckets, audio.ctc_spelling_grams,
                            audio.ctc_vocab_size or self.language_model.get_input_embeddings().num_embeddings)
            if audio.continuous_adapter == "vocab_ctc" else None
        )
        # Full duplex only (docs/duplex.md): one logit per action of the 5 Hz clock.
        self.duplex_head = (
            torch.nn.Linear(config.text_config.hidden_size, len(config.duplex["actions"]))
            if config.duplex else None
        )
        self.post_init()

    # ------------------------------------------------------------------ plumbing
    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """The SRH output head always shares the speech embedding (released layout), whatever
        ``tie_word_embeddings`` says; the backbone's own tying follows its own config."""
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys) if self.config.audio_config.enable_audio_invert_tower else {}

    @property
    def group_size(self) -> int:
        return self.config.audio_config.group_size

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_output_embeddings()

    def backbone(self) -> torch.nn.Module:
        """The causal LM's body (everything but its output head)."""
        return self.language_model.get_decoder() if hasattr(self.language_model, "get_decoder") else self.language_model.model

    # ------------------------------------------------------------------ audio path
    def encode_speech(
        self,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper-style features at 25 Hz for each utterance, and their lengths."""
        lens = None if feature_attention_mask is None else feature_attention_mask.sum(-1)
        return self.continuous_audio_tower(input_features, lens)

    def ctc_table(self) -> torch.Tensor:
        """The token embeddings a ``vocab_ctc`` adapter scores against, [V_ctc, H]."""
        table = self.get_input_embeddings().weight
        n = self.config.audio_config.ctc_vocab_size
        return table if n is None else table[:n]

    def read_user_speech(self, vectors: torch.Tensor) -> torch.Tensor:
        """5 Hz user-speech vectors -> what the backbone reads (the identity for the released adapter)."""
        if self.speech_vocab_adapter is None:
            return vectors
        return self.speech_vocab_adapter(vectors, self.ctc_table())

    def speech_ctc_logits(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC logits [B, T5, V_ctc + 1] (blank last) of each utterance at 5 Hz, and their lengths."""
        if self.speech_vocab_adapter is None:
            raise ValueError("speech CTC needs a model with audio_config.continuous_adapter='vocab_ctc'")
        feats, lens = self.encode_speech(input_features, feature_attention_mask)
        vectors = self.audio_tower.group_continuous(feats)
        k = self.group_size
        return self.speech_vocab_adapter.logits(vectors, self.ctc_table()), (lens + k - 1) // k

    def _continuous_features(
        self,
        n_items: int,
        n_frames: int,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor | None,
        feature_exist_mask: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Encoder output laid out per audio item at 25 Hz, zero where an item has no waveform."""
        exist = feature_exist_mask.to(torch.bool)
        n_exist = int(exist.sum())
        if input_features.shape[0] == n_items and n_items != n_exist:
            input_features = input_features[exist]
            if feature_attention_mask is not None:
                feature_attention_mask = feature_attention_mask[exist]
        if input_features.shape[0] != n_exist:
            raise ValueError(
                f"input_features has {input_features.shape[0]} rows but feature_exist_mask marks "
                f"{n_exist} of {n_items} audio items as having a waveform"
            )
        feats, lens = self.encode_speech(input_features, feature_attention_mask)
        out = feats.new_zeros(n_items, n_frames, feats.shape[-1]).to(dtype)
        for row, item in enumerate(torch.nonzero(exist).flatten().tolist()):
            n = min(int(lens[row]), n_frames)
            out[item, :n] = feats[row, :n].to(dtype)
        return out

    def embed_audio(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        speech_ids: torch.Tensor,
        speech_attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        feature_exist_mask: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
    ) -> AudioEmbeddings:
        """Write grouped speech (and aligned text) into the ``<|AUDIO|>`` positions."""
        cfg, k = self.config, self.group_size
        pad = cfg.audio_config.pad_token_id
        if speech_attention_mask is None:
            speech_attention_mask = torch.ones_like(speech_ids)
        speech_ids = pad_to_multiple(speech_ids.masked_fill(speech_attention_mask == 0, pad), k, pad)
        speech_mask = pad_to_multiple(speech_attention_mask, k, 0)
        n_items = speech_ids.shape[0]
        counts = group_counts(speech_mask.sum(-1), k)
        runs = match_runs(input_ids, cfg.audio_token_index, counts)
        if feature_exist_mask is None:
            feature_exist_mask = torch.full((n_items,), input_features is not None, device=speech_ids.device)
        cont = None
        if input_features is not None and bool(feature_exist_mask.any()):
            cont = self._continuous_features(
                n_items, speech_ids.shape[1], input_features, feature_attention_mask, feature_exist_mask,
                inputs_embeds.dtype,
            )
        grouped = self.audio_tower(speech_ids, cont, feature_exist_mask, self.read_user_speech).to(inputs_embeds.dtype)

        embed = self.get_input_embeddings()
        text_embeds = inputs_embeds.clone()
        text_slots: list[torch.Tensor | None] = [None] * n_items
        end_ids = tuple(
            i for i in (cfg.text_config.eos_token_id, cfg.text_config.pad_token_id) if isinstance(i, int)
        )
        for i, run in enumerate(runs):
            has_text = (
                text_ids is not None
                and i < text_ids.shape[0]
                and (text_attention_mask is None or bool(text_attention_mask[i].any()))
            )
            rows = grouped[i, : run.length]
            if has_text:
                mask = text_attention_mask[i] if text_attention_mask is not None else torch.ones_like(text_ids[i])
                slots = aligned_text_slots(text_ids[i], mask, run.length, cfg.sil_id, end_ids)
                text_slots[i] = slots
                slot_embeds = embed(slots)
                rows = (slot_embeds + rows) / 2
                text_embeds[run.row, run.start : run.end] = slot_embeds
            else:
                if text_ids is not None and cfg.halve_user_audio_in_training:
                    rows = rows / 2
                text_embeds[run.row, run.start : run.end] = 0
            inputs_embeds = inputs_embeds.index_put(
                (torch.full((run.length,), run.row, device=rows.device), torch.arange(run.start, run.end, device=rows.device)),
                rows,
            )
        return AudioEmbeddings(inputs_embeds, text_embeds, runs, text_slots, speech_ids, speech_mask)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        feature_exist_mask: torch.Tensor | None = None,
        speech_ids: torch.Tensor | None = None,
        speech_attention_mask: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        compute_speech_logits: bool | None = None,
        labelled_logits_only: bool = False,
        **kwargs,
    ) -> FunAudioChatOutput:
        """Training and prefill forward pass.

        ``speech_ids`` lists every audio item of the batch in order of appearance (user items carry
        pad ids and take their content from ``input_features``; assistant items carry real speech
        tokens with the BOS delay).  Text and speech logits are both at 5 Hz positions; speech
        logits are [B, k*L, V_speech].  The SRH runs when speech labels exist or when
        ``compute_speech_logits`` is set.  ``labelled_logits_only`` (training) computes the text head
        at labelled positions only, for the loss, and returns ``logits=None``.
        """
        if cache is None and "past_key_values" in kwargs:  # the released model's name for it
            cache = kwargs.pop("past_key_values")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("give input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        text_embeds = inputs_embeds
        audio = None
        if speech_ids is not None:
            if input_ids is None:
                raise ValueError("speech_ids need input_ids to locate the <|AUDIO|> placeholders")
            audio = self.embed_audio(
                input_ids, inputs_embeds, speech_ids, speech_attention_mask, input_features,
                feature_attention_mask, feature_exist_mask, text_ids, text_attention_mask,
            )
            inputs_embeds, text_embeds = audio.inputs_embeds, audio.text_embeds
        elif input_features is not None:
            raise ValueError("input_features were given without speech_ids; every audio item needs its speech_ids")

        out = self.backbone()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        head = self.language_model.get_output_embeddings()
        if labelled_logits_only and labels is None:
            raise ValueError("labelled_logits_only needs labels: it computes text logits at labelled positions only")
        logits = None if labelled_logits_only else head(hidden)

        text_loss = speech_loss = speech_logits = speech_labels = None
        ignore = self.config.ignore_index
        if labels is not None:
            text_labels = labels
            if audio is not None:
                text_labels, speech_labels = build_targets(
                    input_ids, labels, audio.runs, audio.speech_ids, audio.speech_mask, audio.text_slots,
                    k=self.group_size, audio_eos_id=self.config.audio_eos_id,
                    speech_eos_id=self.config.audio_config.eos_token_id, ignore_index=ignore,
                )
            targets = text_labels[:, 1:]
            if labelled_logits_only:
                # The 49k-way head on labelled positions only: in training most positions are prompt.
                keep = targets != ignore
                text_loss = F.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep])
            else:
                text_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=ignore)
        has_speech_targets = speech_labels is not None and bool((speech_labels != ignore).any())
        if self.audio_invert_tower is not None and (compute_speech_logits or (compute_speech_logits is None and has_speech_targets)):
            k = self.group_size
            if speech_labels is None:
                speech_labels = torch.full(
                    (hidden.shape[0], hidden.shape[1] * k), ignore, dtype=torch.long, device=hidden.device
                )
            prev, targets = srh_teacher_inputs(speech_labels, k, ignore)
            speech_logits, speech_loss = self.refined_speech(
                hidden, text_embeds, prev, targets if has_speech_targets else None, attention_mask
            )

        loss = None
        if text_loss is not None:
            loss = self.config.text_loss_weight * text_loss
            if speech_loss is not None:
                loss = loss + self.config.speech_loss_weight * speech_loss
        return FunAudioChatOutput(
            loss=loss,
            logits=logits,
            text_loss=text_loss,
            speech_loss=speech_loss,
            speech_logits=speech_logits,
            speech_labels=speech_labels,
            cache=out.cache if use_cache else None,
            last_hidden_state=hidden,
            text_embeds=text_embeds,
        )

    def refined_speech(
        self,
        hidden: torch.Tensor,
        text_embeds: torch.Tensor,
        prev_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced Speech Refined Head: logits [B, kL, V] and, with ``targets``, their loss.

        ``hidden`` [B, L, H] are backbone states, ``text_embeds`` [B, L, H] the text embeddings the
        head is conditioned on, ``prev_ids``/``targets`` [B, kL] the previous and the target speech id
        of every sub-frame (``ignore_index`` where there is none; see ``srh_teacher_inputs``) and
        ``attention_mask`` [B, L] the backbone positions' mask.
        """
        conditions = self.audio_invert_tower.condition(hidden, text_embeds)
        srh_mask = None if attention_mask is None else attention_mask.repeat_interleave(self.group_size, dim=1)
        logits, _ = self.audio_invert_tower(conditions, prev_ids, attention_mask=srh_mask)
        loss = None
        if targets is not None:
            ignore = self.config.ignore_index
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore)
        return logits, loss

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, strict: bool = True, **kwargs):
        """Load safetensors weights only; with ``strict`` any missing or unexpected key is an error."""
        kwargs.setdefault("use_safetensors", True)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys", []))
        unexpected = sorted(info.get("unexpected_keys", []))
        mismatched = sorted(str(m) for m in info.get("mismatched_keys", []))
        if strict and (missing or unexpected or mismatched):
            raise CheckpointMismatchError(
                f"checkpoint {pretrained_model_name_or_path} does not match {cls.__name__}: "
                f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}; "
                f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}; "
                f"shape mismatches {mismatched[:20]}"
            )
        return (model, info) if want_info else model
