"""The backbone's own short answers to the training questions (self-distillation targets).

Training the speech path to say what the text path says makes "speech-in accuracy vs text-in
accuracy" a meaningful measure of what the speech side loses.  Answers are greedy and short, cached
as JSONL (one line per question, appended as produced) so an interrupted build resumes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from funaudiochat.default_model.questions import Question

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer the question in one short spoken sentence, "
    "without lists, markdown or symbols."
)


def read_answer_cache(path: str | Path) -> dict[str, str]:
    """Cached answers by question id; a truncated last line (killed run) is ignored."""
    path = Path(path)
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: unreadable cache line skipped (interrupted write?)", path, n)
            continue
        out[str(obj["id"])] = str(obj["answer"])
    return out


def _clean(text: str) -> str:
    """First line, trimmed; an empty answer would make an empty training target."""
    text = text.strip().split("\n")[0].strip()
    return text or "I am not sure."


@torch.no_grad()
def generate_answers(
    lm: torch.nn.Module,
    tokenizer,
    questions: Sequence[Question],
    cache_path: str | Path,
    batch_size: int = 8,
    max_new_tokens: int = 40,
    progress: bool = True,
) -> dict[str, str]:
    """Greedy answers of the text LM to each question, resuming from ``cache_path``."""
    from tqdm.auto import tqdm

    cache_path = Path(cache_path)
    done = read_answer_cache(cache_path)
    todo = [q for q in questions if q.id not in done]
    if todo:
        logger.info("answers: %d cached, generating %d", len(done), len(todo))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lm.eval()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with cache_path.open("a", encoding="utf-8") as f, \
                tqdm(total=len(todo), desc="answers", unit="question", disable=not progress or not todo) as bar:
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                prompts = [
                    tokenizer.apply_chat_template(
                        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q.text}],
                        tokenize=False, add_generation_prompt=True,
                    )
                    for q in batch
                ]
                enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                out = lm.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                )
                texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                for q, text in zip(batch, texts, strict=True):
                    done[q.id] = _clean(text)
                    f.write(json.dumps({"id": q.id, "question": q.text, "answer": done[q.id]}, ensure_ascii=False) + "\n")
                f.flush()
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = old_side
    return {q.id: done[q.id] for q in questions}
