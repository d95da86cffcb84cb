"""Small, self-contained models and tokenizers for tests, examples and benchmarks.

Nothing here downloads anything: the tokenizer is a word-level vocabulary built in memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from funaudiochat.config import SPECIAL_TEXT_TOKENS

BASIC_WORDS = (
    "the a an is are was what who where when how why which of in on to and or not yes no it this that "
    "capital france paris city water boils at one hundred degrees celsius sky blue color spider has "
    "eight legs planet largest jupiter hello hi thanks please tell me about you your name i am can help "
    "two three four five six seven nine ten plus equals answer question speak say good morning night"
).split()


def word_tokenizer(extra_words: tuple[str, ...] = (), vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A ChatML word-level tokenizer: ids 0..3 pad/bos/eos/unk, then chat markers, words, audio tokens.

    With ``vocab_size`` the vocabulary is padded with filler words so that the audio tokens land at
    the end of a table of that size (as ``tiny_config`` expects).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    words = ["system", "user", "assistant", "\n", "?", ".", ",", "!", *BASIC_WORDS, *extra_words]
    audio = list(SPECIAL_TEXT_TOKENS)
    vocab_list = specials + words
    if vocab_size is not None:
        filler = vocab_size - len(vocab_list) - len(audio)
        if filler < 0:
            raise ValueError(f"vocab_size {vocab_size} is too small for {len(vocab_list) + len(audio)} tokens")
        vocab_list += [f"w{i}" for i in range(filler)]
    vocab_list += audio
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"<\|[^|]+\|>|\n"), behavior="isolated"),
            pre_tokenizers.Split(" ", behavior="removed"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
    )
    fast.add_special_tokens({"additional_special_tokens": audio}, replace_extra_special_tokens=False)
    return fast


def save_tiny_backbone(path: str | Path, backbone: str = "llama", seed: int = 0, tied: bool = True) -> Path:
    """Write a tiny random causal LM and its tokenizer to ``path`` (a stand-in for a real LLM dir)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    tok = word_tokenizer()
    config = AutoConfig.for_model(
        backbone,
        vocab_size=len(tok) - len(SPECIAL_TEXT_TOKENS),  # the audio tokens are added by the builder
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    plain = word_tokenizer()
    plain.save_pretrained(path)
    return path


def synthetic_batch(
    config,
    batch_size: int = 2,
    user_seconds: float = 2.0,
    answer_seconds: float = 3.0,
    text_tokens: int = 6,
    seed: int = 0,
) -> dict:
    """Random speech-in/speech-out conversations in the model's forward format, right-padded.

    Each row: ``<|im_start|>user\\n<|audio_bos|><|AUDIO|>*U<|audio_eos|><|im_end|>\\n<|im_start|>
    assistant\\n<|audio_bos|><|AUDIO|>*G<|audio_eos|><|im_end|>``, with user features (16 kHz mel at
    100 Hz), assistant speech tokens carrying the BOS delay, and a transcript.  Lengths vary by row
    so that padding is exercised.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    a = config.audio_config
    k, delay = a.group_size, config.speech_delay
    vocab_words = config.text_config.vocab_size - 8
    rows, labels, speech, speech_mask, feats, texts = [], [], [], [], [], []
    for r in range(batch_size):
        scale = 1.0 - 0.25 * (r % 2)
        n_mel = int(user_seconds * scale * 100)
        n_user = n_mel // 4  # 25 Hz frames the encoder yields for n_mel (even) mel frames
        n_answer = delay + int(answer_seconds * scale * 25)
        u_groups, a_groups = -(-n_user // k), -(-n_answer // k)
        prompt = [1, 5, 7, config.audio_bos_id] + [config.audio_token_index] * u_groups
        prompt += [config.audio_eos_id, 2, 7, 1, 6, 7]
        reply = [config.audio_bos_id] + [config.audio_token_index] * a_groups + [config.audio_eos_id, 2]
        rows.append(prompt + reply)
        labels.append([-100] * len(prompt) + reply)
        feats.append(torch.randn(a.num_mel_bins, n_mel, generator=g))
        speech.append(torch.full((n_user,), a.pad_token_id))
        speech.append(
            torch.cat([torch.full((delay,), a.bos_token_id), torch.randint(0, 6561, (n_answer - delay,), generator=g)])
        )
        n_text = min(text_tokens, a_groups)
        texts.append(torch.zeros(0, dtype=torch.long))
        texts.append(torch.randint(16, vocab_words, (n_text,), generator=g))
    length = max(map(len, rows))
    input_ids = torch.zeros(batch_size, length, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    label_t = torch.full_like(input_ids, -100)
    for r, (row, lab) in enumerate(zip(rows, labels)):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention[r, : len(row)] = 1
        label_t[r, : len(lab)] = torch.tensor(lab)

    def pad(seqs, value):
        width = max(len(s) for s in seqs) if seqs else 0
        out = torch.full((len(seqs), max(width, 1)), value, dtype=seqs[0].dtype)
        mask = torch.zeros(len(seqs), max(width, 1), dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return out, mask

    speech_ids, speech_attention = pad(speech, a.pad_token_id)
    text_ids, text_attention = pad(texts, 0)
    n_mel_max = max(f.shape[1] for f in feats)
    features = torch.zeros(batch_size, a.num_mel_bins, n_mel_max)
    feature_mask = torch.zeros(batch_size, n_mel_max, dtype=torch.long)
    for i, f in enumerate(feats):
        features[i, :, : f.shape[1]] = f
        feature_mask[i, : f.shape[1]] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": label_t,
        "input_features": features,
        "feature_attention_mask": feature_mask,
        "feature_exist_mask": torch.tensor([i % 2 == 0 for i in range(2 * batch_size)]),
        "speech_ids": speech_ids,
        "speech_attention_mask": speech_attention,
        "text_ids": text_ids,
        "text_attention_mask": text_attention,
    }


# ----------------------------------------------------------------------------------- duplex heads
@contextlib.contextmanager
def duplex_head_bias(model, **bias: float) -> Iterator[None]:
    """Set a duplex action head's bias to ``bias`` (others 0), restored afterwards.

    An untrained head has weights of ~0, so its bias alone decides the action: tests steer the engine,
    the server and the evaluation this way.
    """
    from funaudiochat.duplex.model import ACTIONS

    head = model.duplex_head
    old = head.bias.detach().clone()
    with torch.no_grad():
        head.bias.zero_()
        for name, value in bias.items():
            head.bias[ACTIONS.index(name)] = value
    try:
        yield
    finally:
        with torch.no_grad():
            head.bias.copy_(old)


class GatedHead(torch.nn.Module):
    """Wraps an action head so that a test decides when a model step may finish (threading tests)."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def weight(self) -> torch.Tensor:  # action_logits casts to its dtype
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the gate")
        return self.head(hidden)
