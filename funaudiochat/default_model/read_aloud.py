"""Read-aloud turns: typed sentences answered in the assistant's voice, more material for speech out.

Why: the Speech Refined Head has to learn which speech tokens say which words, and the build's own
spoken answers are few (one per question, often a handful of words).  On session 12's backbone the
head alone reached a lower held-out loss with 1,116 read-aloud sentences added to its 1,144 replies
(5.10 against 5.14 nats, no overfitting by 600 steps where the replies alone overfit; session 14 in
docs/default-model-history.md); with 4,109 of them it reached 5.07 and was still improving after 1,200 steps
(session 15).  A read-aloud turn costs one piper synthesis (~0.5 s here) and no answer generation,
so a few thousand fit a CPU build.

* Sentences: the vocabulary pool's (:func:`vocab_sentences.pool_sentences`: LibriSpeech test
  references and MMLU-Pro questions, dev texts that no evaluation of this model reads), minus the ones
  already spoken for the CTC stage, in an order fixed by sha1 of their ids so every source is mixed in.
* Speech: piper "joe" at speed 1.0 (the assistant voice), tokenized by the shipped speech tokenizer;
  the words' start frames (``word_starts``) come from the recording, as for the answers.
* Records (SFT format, task ``read_aloud``): [``SPEECH_TO_SPEECH`` system prompt, user text
  ``READ_ALOUD_PROMPT``, assistant turn with the sentence as text and speech].  Written to
  ``data/read_aloud.jsonl``; recordings to ``data/wav_read_aloud/`` and tokens appended to
  ``data/read_aloud_tokens.jsonl`` as they are made, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from funaudiochat.prompts import SPEECH_TO_SPEECH

logger = logging.getLogger(__name__)

READ_ALOUD_TASK = "read_aloud"
#: The typed request of a read-aloud turn; ``{text}`` is the sentence.
READ_ALOUD_PROMPT = "Please read this sentence aloud: {text}"


def choose_sentences(benchdata: str | Path, exclude_texts: Iterable[str], n: int) -> list:
    """``n`` pool sentences whose text is not in ``exclude_texts`` (case-insensitive), in sha1 order of id."""
    from funaudiochat.default_model.speech_data import stable_hash
    from funaudiochat.default_model.vocab_sentences import pool_sentences

    skip = {t.strip().lower() for t in exclude_texts}
    pool = [s for s in pool_sentences(benchdata) if s.text.lower() not in skip]
    pool.sort(key=lambda s: (stable_hash("read_aloud", s.id), s.id))
    if len(pool) < n:
        logger.warning("read-aloud sentences: the pool has %d unused sentences, %d asked for", len(pool), n)
    return pool[:n]


def read_aloud_record(sentence_id: str, text: str, tokens: list[int], word_starts: list[int] | None,
                      source: str, recording: str) -> dict:
    """One SFT record: the user types a sentence, the assistant says it (``recording``: its wav, in meta)."""
    from funaudiochat.default_model.speech_data import ASSISTANT_ENGINE, ASSISTANT_VOICE, _spoken_answer

    return {"id": f"read:{sentence_id}", "task": READ_ALOUD_TASK,
            "meta": {"source": source, "tts": [ASSISTANT_ENGINE, ASSISTANT_VOICE, 1.0], "recording": recording},
            "messages": [{"role": "system", "content": SPEECH_TO_SPEECH},
                         {"role": "user", "content": READ_ALOUD_PROMPT.format(text=text)},
                         _spoken_answer(text, tokens, word_starts)]}


def build_read_aloud(benchdata: str | Path | None, exclude_texts: Iterable[str], work_dir: str | Path, n: int,
                     speech_tokenizer=None, progress: bool = True) -> Path | None:
    """Choose, speak, tokenize and list ``n`` read-aloud turns; None when ``n`` is 0 or there is no pool.

    The list is written atomically once every turn has its tokens, and validated as SFT data.
    """
    from tqdm.auto import tqdm

    from funaudiochat.default_model.speech_data import (
        ASSISTANT_ENGINE,
        ASSISTANT_VOICE,
        TTSEngines,
        read_token_cache,
        safe_name,
        speak_cached,
    )
    from funaudiochat.training.data import validate_jsonl
    from funaudiochat.training.pacing import word_starts_from_audio

    if n <= 0 or benchdata is None or not Path(benchdata).is_dir():
        if n > 0:
            logger.warning("read-aloud sentences: no benchmark folder %s, none added", benchdata)
        return None
    chosen = choose_sentences(benchdata, exclude_texts, n)
    if not chosen:
        return None
    data = Path(work_dir) / "data"
    (data / "wav_read_aloud").mkdir(parents=True, exist_ok=True)
    tok_path = data / "read_aloud_tokens.jsonl"
    tokens = read_token_cache(tok_path)
    engines = TTSEngines()
    records = []
    with tok_path.open("a", encoding="utf-8") as tok_file:
        for s in tqdm(chosen, desc="read-aloud turns", unit="sentence", disable=not progress):
            wav = f"wav_read_aloud/{safe_name(s.id)}.wav"
            audio = speak_cached(engines, data / wav, s.text, ASSISTANT_ENGINE, ASSISTANT_VOICE, 1.0)
            if s.id not in tokens:
                if speech_tokenizer is None:
                    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer

                    speech_tokenizer = KMeansSpeechTokenizer.from_pretrained()
                tokens[s.id] = [int(t) for t in speech_tokenizer.encode(audio)]
                tok_file.write(json.dumps({"id": s.id, "tokens": tokens[s.id]}) + "\n")
                tok_file.flush()
            starts = word_starts_from_audio(s.text, audio, len(tokens[s.id]))
            records.append(read_aloud_record(s.id, s.text, tokens[s.id], starts, s.source, wav))
    path = data / "read_aloud.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    _, errors = validate_jsonl(tmp, mode="sft")
    if errors:
        raise ValueError(f"{tmp}: generated read-aloud data is invalid:\n" + "\n".join(map(str, errors)))
    tmp.replace(path)
    frames = sum(len(r["messages"][-1]["speech_tokens"]) for r in records)
    logger.info("read-aloud sentences: %d turns, %.1f min of assistant speech, in %s", len(records),
                frames / 25 / 60, path)
    return path
