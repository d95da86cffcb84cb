"""Configuration classes for Fun-Audio-Chat.

The field names and defaults follow the released Fun-Audio-Chat-8B ``config.json`` so that the
released checkpoint loads unchanged (see ``docs/architecture.md``).  Everything that the paper leaves
open (grouping factor, grouping mode, fusion mode, loss weights) is a field, so that other sizes and
ablations are one config away.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

#: Text-side special tokens, with the ids they have in the released Qwen3 vocabulary.
SPECIAL_TEXT_TOKENS: dict[str, int] = {
    "<|AUDIO|>": 151669,
    "<|audio_bos|>": 151670,
    "<|audio_eos|>": 151671,
    "<|audio_pad|>": 151672,
    "<|sil|>": 151673,
}

#: Size of the S3Tokenizer codebook (3^8 finite scalar quantisation levels).
SPEECH_CODEBOOK = 6561

#: Qwen3-0.6B body, which the released SRH uses (shapes are certain; see the design notes).
RELEASED_SRH_CONFIG: dict[str, Any] = {
    "model_type": "qwen3",
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}

GROUPING_MODES = ("mean", "concat")
FUSION_MODES = ("replace", "add")
#: How user-speech vectors become backbone inputs: ``linear`` as released, or ``vocab_ctc``
#: (``modeling/vocab_adapter.py``: CTC posteriors over the backbone's own tokens, mixed embeddings).
ADAPTER_MODES = ("linear", "vocab_ctc")
#: Text layouts of spoken replies (``FunAudioChatConfig.text_layout``).
TEXT_LAYOUTS = ("ahead", "paced")


def check_srh_prev_scale(value: object) -> float:
    """``value`` as ``srh_prev_scale`` (a finite number > 0, not a bool), or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"srh_prev_scale must be a finite number > 0, got {value!r}")
    return float(value)


class FunAudioChatAudioEncoderConfig(PretrainedConfig):
    """Speech side of the model: Whisper-style encoder, speech-token grouping and the SRH.

    One config serves three modules, as in the released checkpoint.  ``grouping_mode="mean"`` is what
    the released weights use (mean of k embeddings, then Linear(H, H)); ``"concat"`` is the paper's
    Eq. 1 (concatenate k embeddings, then Linear(kH, H)).
    """

    model_type = "funaudiochat_audio_encoder"
    attribute_map: ClassVar[dict[str, str]] = {
        "num_hidden_layers": "encoder_layers",
        "num_attention_heads": "encoder_attention_heads",
        "intermediate_size": "encoder_ffn_dim",
    }

    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_function: str = "gelu"
    activation_dropout: float = 0.0
    scale_embedding: bool = False
    init_std: float = 0.02
    max_source_positions: int = 1500
    n_window: int = 100
    output_dim: int = 4096
    group_size: int = 5
    codebook_size: int = SPEECH_CODEBOOK + 4
    bos_token_id: int | None = SPEECH_CODEBOOK
    eos_token_id: int | None = SPEECH_CODEBOOK + 1
    pad_token_id: int | None = SPEECH_CODEBOOK + 2
    continuous_features_mode: str = "replace"
    grouping_mode: str = "mean"
    continuous_adapter: str = "linear"
    #: ``vocab_ctc`` only: the CTC reads over the first this-many rows of the backbone's embedding
    #: table (its own vocabulary, without tokens added for audio); null means every row.
    ctc_vocab_size: int | None = None
    #: ``vocab_ctc`` only: hashed-n-gram buckets of the adapter's spelling table (0: none;
    #: ``modeling/vocab_adapter.py``) and the number of n-grams over the CTC vocabulary, which fixes
    #: the shape of its saved bag buffers (``modeling.build.assemble_from_parts`` sets both).
    ctc_spelling_buckets: int = 0
    ctc_spelling_grams: int = 0
    crq_transformer_config: dict | None = None
    enable_audio_invert_tower: bool = True
    #: Factor on the previous-token embedding that the SRH adds to each sub-frame condition (released:
    #: 1.0).  The condition's size follows the backbone's hidden state; in funaudiochat-tiny it is about
    #: 30 times the embedding's, and at 1.0 that head learnt to ignore its previous token
    #: (docs/default-model-history.md, session 24).
    srh_prev_scale: float = 1.0

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.grouping_mode not in GROUPING_MODES:
            raise ValueError(f"grouping_mode must be one of {GROUPING_MODES}, got {self.grouping_mode!r}")
        if self.continuous_features_mode not in FUSION_MODES:
            raise ValueError(
                f"continuous_features_mode must be one of {FUSION_MODES}, got {self.continuous_features_mode!r}"
            )
        if self.continuous_adapter not in ADAPTER_MODES:
            raise ValueError(f"continuous_adapter must be one of {ADAPTER_MODES}, got {self.continuous_adapter!r}")
        if self.ctc_vocab_size is not None and self.ctc_vocab_size < 1:
            raise ValueError(f"ctc_vocab_size must be >= 1 or null, got {self.ctc_vocab_size}")
        if self.ctc_spelling_buckets < 0 or self.ctc_spelling_grams < 0:
            raise ValueError("ctc_spelling_buckets and ctc_spelling_grams must be >= 0, got "
                             f"{self.ctc_spelling_buckets} and {self.ctc_spelling_grams}")
        if self.ctc_spelling_buckets and (self.continuous_adapter != "vocab_ctc" or self.ctc_spelling_grams < 1):
            raise ValueError("ctc_spelling_buckets needs continuous_adapter='vocab_ctc' and ctc_spelling_grams >= 1 "
                             f"(got {self.continuous_adapter!r}, {self.ctc_spelling_grams})")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        check_srh_prev_scale(self.srh_prev_scale)
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by encoder_attention_heads "
                f"({self.encoder_attention_heads})"
            )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.codebook_size:
                raise ValueError(f"{name}={value} is outside the speech codebook of size {self.codebook_size}")
        if isinstance(self.crq_transformer_config, PretrainedConfig):
            self.crq_transformer_config = self.crq_transformer_config.to_diff_dict() | {
                "model_type": self.crq_transformer_config.model_type
            }

    def srh_backbone_config(self) -> PretrainedConfig:
        """The SRH body's config as a transformers config object (built from the stored dict)."""
        spec = dict(self.crq_transformer_config or RELEASED_SRH_CONFIG)
        model_type = spec.pop("model_type", "qwen3")
        return AutoConfig.for_model(model_type, **spec)


class FunAudioChatConfig(PretrainedConfig):
    """Top-level config: ``audio_config`` plus any transformers causal-LM ``text_config``.

    The special text-token ids live on ``text_config`` (``audio_bos_index``, ``audio_eos_index``,
    ``sil_index``) because that is where the released checkpoint keeps them.
    """

    model_type = "funaudiochat"
    attribute_map: ClassVar[dict[str, str]] = {"audio_token_id": "audio_token_index"}
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "audio_config": SubConfigSpec(config_class=FunAudioChatAudioEncoderConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
    }

    audio_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    audio_token_index: int = SPECIAL_TEXT_TOKENS["<|AUDIO|>"]
    ignore_index: int = -100
    #: Number of speech BOS tokens that delay speech behind text (2 LLM steps at k = 5).
    speech_delay: int = 10
    text_loss_weight: float = 1.0
    speech_loss_weight: float = 1.0
    #: The official training code halves user-audio features too (averaging them with a zeroed text
    #: embedding) while inference does not; False keeps training and inference consistent.
    halve_user_audio_in_training: bool = False
    #: Where a spoken reply's text tokens sit in its audio run: ``"ahead"`` (the released layout, one
    #: per group from the start, then ``<|sil|>``) or ``"paced"`` (each token in the group before its
    #: speech starts, ``<|sil|>`` between; ``funaudiochat/training/pacing.py``).
    text_layout: str = "ahead"
    #: Full-duplex settings (``funaudiochat.duplex.model.enable_duplex``); when set the model has an
    #: action head (``duplex_head``).  None for half-duplex models.
    duplex: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        defaults = {
            "audio_bos_index": SPECIAL_TEXT_TOKENS["<|audio_bos|>"],
            "audio_eos_index": SPECIAL_TEXT_TOKENS["<|audio_eos|>"],
            "sil_index": SPECIAL_TEXT_TOKENS["<|sil|>"],
        }
        for key, value in defaults.items():
            if getattr(self.text_config, key, None) is None:
                setattr(self.text_config, key, value)
        if self.audio_config.output_dim != self.text_config.hidden_size:
            raise ValueError(
                f"audio_config.output_dim ({self.audio_config.output_dim}) must equal the backbone's "
                f"hidden_size ({self.text_config.hidden_size})"
            )
        self.hidden_size = self.text_config.hidden_size
        if self.text_layout not in TEXT_LAYOUTS:
            raise ValueError(f"text_layout must be one of {TEXT_LAYOUTS}, got {self.text_layout!r}")

    @property
    def audio_bos_id(self) -> int:
        return self.text_config.audio_bos_index

    @property
    def audio_eos_id(self) -> int:
        return self.text_config.audio_eos_index

    @property
    def sil_id(self) -> int:
        return self.text_config.sil_index


def released_8b_config() -> FunAudioChatConfig:
    """The documented Fun-Audio-Chat-8B config (Qwen3-8B backbone, Whisper-large-v3 encoder)."""
    text = AutoConfig.for_model(
        "qwen3",
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=262144,
        rope_theta=5000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=151643,
        eos_token_id=151643,
    )
    audio = FunAudioChatAudioEncoderConfig(output_dim=4096, crq_transformer_config=dict(RELEASED_SRH_CONFIG))
    return FunAudioChatConfig(audio_config=audio, text_config=text, use_cache=False)


def tiny_config(group_size: int = 5, grouping_mode: str = "mean", backbone: str = "qwen3", **overrides: Any) -> FunAudioChatConfig:
    """A few-million-parameter config with the released structure, for tests and examples.

    The text vocabulary is small, so the special tokens get ids at its end.
    """
    vocab = 512
    # Same order as SPECIAL_TEXT_TOKENS: <|AUDIO|>, bos, eos, pad, sil take the last five ids.
    special = {"audio_bos_index": vocab - 4, "audio_eos_index": vocab - 3, "sil_index": vocab - 1}
    common = dict(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if backbone == "qwen3":
        text = AutoConfig.for_model("qwen3", head_dim=32, **common, **special)
    elif backbone == "llama":
        text = AutoConfig.for_model("llama", **common, **special)
    else:
        raise ValueError(f"tiny_config knows backbones 'qwen3' and 'llama', got {backbone!r}")
    srh = {
        "model_type": "qwen3",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 8192,
        "vocab_size": 16,
    }
    audio = FunAudioChatAudioEncoderConfig(
        num_mel_bins=80,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        d_model=64,
        max_source_positions=1500,
        n_window=50,
        output_dim=128,
        group_size=group_size,
        grouping_mode=grouping_mode,
        crq_transformer_config=srh,
    )
    return FunAudioChatConfig(
        audio_config=audio, text_config=text, audio_token_index=vocab - 5, **overrides
    )
