"""Speech Refined Head (the released ``audio_invert_tower``; paper Eq. 2-4).

Each 5 Hz backbone state is un-grouped into k sub-frame vectors (Linear H -> kH, then split), and a
small causal transformer predicts the 25 Hz speech tokens autoregressively over those sub-frames.
The transformer body is any transformers base model built from ``crq_transformer_config`` (Qwen3
in the release).  Its output head shares the speech embedding matrix with the grouping module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from funaudiochat.config import FunAudioChatAudioEncoderConfig
from funaudiochat.modeling.grouping import ungroup_frames


class SpeechRefinedHead(nn.Module):
    """5 Hz hidden states -> 25 Hz speech-token logits."""

    def __init__(self, config: FunAudioChatAudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        h, k = config.output_dim, config.group_size
        body_config = config.srh_backbone_config()
        self.pre_matching = nn.Linear(h, k * h)
        self.crq_transformer = AutoModel.from_config(body_config)
        # The body consumes vectors, never token ids: its own token table would be dead weight.
        del self.crq_transformer.embed_tokens
        hc = body_config.hidden_size
        self.input_matching = nn.Linear(h, hc, bias=False)
        self.output_matching = nn.Linear(hc, h, bias=False)
        self.lm_head = nn.Linear(h, config.codebook_size, bias=False)

    def condition(self, hidden: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Un-group [B, L, H] backbone states into [B, kL, H] sub-frame conditions.

        The embedding of the text token fed at each position is added (detached, as released) so
        the head knows which word is being spoken without back-propagating into the text table.
        """
        return ungroup_frames(self.pre_matching(hidden + text_embeds.detach()), self.config.group_size)

    def embed_previous(self, prev_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of the previously emitted speech tokens; ``-100`` means none (pad row).

        Scaled by ``config.srh_prev_scale`` so that they are not lost beside a much larger condition.
        """
        ids = prev_ids.masked_fill(prev_ids < 0, self.config.pad_token_id)
        emb = F.embedding(ids, self.lm_head.weight)
        scale = self.config.srh_prev_scale
        return emb if scale == 1.0 else emb * scale

    def forward(
        self,
        conditions: torch.Tensor,
        prev_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, object]:
        """Logits [B, T, V] for T sub-frames, each given its condition and the previous token.

        ``attention_mask`` is at sub-frame resolution ([B, past + T]); ``cache`` lets the
        generation engine feed one sub-frame at a time.
        """
        x = self.input_matching(conditions + self.embed_previous(prev_ids))
        out = self.crq_transformer(
            inputs_embeds=x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        logits = self.lm_head(self.output_matching(out.last_hidden_state))
        return logits, out.cache if use_cache else None
