"""A local LLM judge for open-ended sets (AlpacaEval-style): an *approximation* of a GPT-4 judge.

AlpacaEval scores a model by how often a strong judge prefers its answer over a reference answer.
No hosted judge is reachable here, so any local causal LM directory (for example the backbone, or a
Fun-Audio-Chat checkpoint itself) plays the judge.  Instead of parsing generated text, the judge
reads the next-token probabilities of the two answer labels after a pairwise prompt, which is
deterministic and costs one forward pass per order.  Both orders are asked and averaged, because
small judges prefer one position regardless of content.  Numbers from a small judge are only
comparable with numbers from the same judge; they are not AlpacaEval win rates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["JUDGE_PROMPT", "JudgeVerdict", "LocalJudge"]

JUDGE_PROMPT = (
    "You are an impartial judge. Two assistants answered the same user question. Decide which answer "
    "is more helpful, correct, relevant and complete. Ignore length unless it hurts the answer.\n\n"
    "Question:\n{question}\n\n"
    "Answer {first}:\n{answer_first}\n\n"
    "Answer {second}:\n{answer_second}\n\n"
    "Which answer is better? Reply with one letter, {first} or {second}."
)

#: Characters kept of each answer, so that long answers fit a small judge's context.
MAX_ANSWER_CHARS = 3000


@dataclass(frozen=True)
class JudgeVerdict:
    """``win`` is P(candidate better than reference), averaged over both presentation orders."""

    win: float
    p_candidate_first: float
    p_candidate_second: float

    def to_details(self) -> dict[str, float]:
        return {"p_candidate_first": round(self.p_candidate_first, 6),
                "p_candidate_second": round(self.p_candidate_second, 6)}


class LocalJudge:
    """Pairwise preference judge backed by a local causal LM (``model(input_ids=...).logits``)."""

    def __init__(self, model, tokenizer, name: str = "local", labels: tuple[str, str] = ("A", "B"),
                 batch_size: int = 4) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.labels = labels
        self.batch_size = max(1, batch_size)
        self.label_ids = tuple(self._label_id(lab) for lab in labels)
        if self.label_ids[0] == self.label_ids[1]:
            raise ValueError(f"judge {name}: labels {labels} map to the same token id {self.label_ids[0]}")

    def _label_id(self, label: str) -> int:
        ids = self.tokenizer.encode(label, add_special_tokens=False)
        unk = self.tokenizer.unk_token_id
        if len(ids) != 1 or (unk is not None and ids[0] == unk):
            raise ValueError(f"judge {self.name}: label {label!r} is not a single known token of its tokenizer "
                             f"(got ids {ids}); pass other labels")
        return int(ids[0])

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, dtype: str = "float32", device: str = "cpu",
                        **kwargs) -> "LocalJudge":
        """Load any causal LM directory, or a Fun-Audio-Chat checkpoint (its text path is used)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"judge model directory has no config.json: {path}")
        model_type = json.loads(cfg_path.read_text(encoding="utf-8")).get("model_type")
        torch_dtype = getattr(torch, dtype)
        if model_type == "funaudiochat":
            from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration

            model = FunAudioChatForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        logger.info("loaded judge %s (%s)", path, model_type)
        return cls(model.to(device), tokenizer, name=str(path.resolve()), **kwargs)

    # ------------------------------------------------------------------ prompting
    def prompt(self, question: str, first: str, second: str) -> str:
        text = JUDGE_PROMPT.format(question=question.strip(), first=self.labels[0], second=self.labels[1],
                                   answer_first=first.strip()[:MAX_ANSWER_CHARS] or "(empty)",
                                   answer_second=second.strip()[:MAX_ANSWER_CHARS] or "(empty)")
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True, enable_thinking=False)
        return text + "\n"

    @torch.inference_mode()
    def _first_label_probs(self, prompts: Sequence[str]) -> list[float]:
        """P(label 0) / (P(label 0) + P(label 1)) at the next token of each prompt."""
        out: list[float] = []
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        dev = self.model.device
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts[start:start + self.batch_size]]
            width = max(len(ids) for ids in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(chunk):  # left padding: the next token is always the last column
                ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                position_ids=positions.to(dev)).logits[:, -1].float()
            pair = logits[:, list(self.label_ids)].softmax(-1)
            out.extend(float(p) for p in pair[:, 0])
        return out

    def judge(self, questions: Sequence[str], candidates: Sequence[str],
              references: Sequence[str]) -> list[JudgeVerdict]:
        """One verdict per (question, candidate answer, reference answer)."""
        if not len(questions) == len(candidates) == len(references):
            raise ValueError("judge: questions, candidates and references differ in length")
        prompts = [self.prompt(q, c, r) for q, c, r in zip(questions, candidates, references)]
        prompts += [self.prompt(q, r, c) for q, c, r in zip(questions, candidates, references)]
        probs = self._first_label_probs(prompts)
        n = len(questions)
        verdicts = []
        for i in range(n):
            first, second = probs[i], 1.0 - probs[n + i]
            verdicts.append(JudgeVerdict((first + second) / 2, first, second))
        return verdicts
