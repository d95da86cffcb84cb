import numpy as np
import pytest
import torch

from funaudiochat.config import tiny_config
from funaudiochat.generation import Engine
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor, Message
from funaudiochat.testing import word_tokenizer

SPEECH = list(range(100, 132))  # 10 delay + 32 = 42: the last group ends with 3 speech EOS
SYSTEM = "hello"


def user_audio(seed: int = 0, seconds: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


@pytest.fixture(scope="session")
def trained_engine() -> Engine:
    """A tiny model over-fitted on two conversations, so greedy decoding has a known answer."""
    torch.manual_seed(0)
    cfg = tiny_config()
    proc = FunAudioChatProcessor(word_tokenizer(vocab_size=512), cfg)
    model = FunAudioChatForConditionalGeneration(cfg)
    spoken = [Message("system", SYSTEM), Message("user", audio=user_audio()),
              Message("assistant", "paris is the capital", speech_tokens=SPEECH)]
    written = [Message("system", SYSTEM), Message("user", "what is two plus two ?"), Message("assistant", "four")]
    overfit(model, proc.collate([proc.encode(spoken), proc.encode(written)]), 150)
    return Engine(model, proc)


def overfit(model: FunAudioChatForConditionalGeneration, batch: dict, steps: int) -> None:
    """Adam at 3e-3 on one batch, on one thread.

    One thread: the float summation order, and so the replies to inputs the model was not trained on
    (which some tests count steps of), must not depend on the machine's thread count.
    """
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def random_engine() -> Engine:
    torch.manual_seed(1)
    cfg = tiny_config()
    return Engine(FunAudioChatForConditionalGeneration(cfg), FunAudioChatProcessor(word_tokenizer(vocab_size=512), cfg))
