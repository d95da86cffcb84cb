"""Spoken training data: questions in varied synthetic voices, answers in the assistant voice.

* Question audio: espeak-ng voices and piper "joe" at speeds 0.9/1.0/1.1, chosen per question from
  sha1(id) so the same item always gets the same voice (deterministic and resumable).
* Answer audio: piper "joe" (the assistant voice the detokenizer speaks), turned into 25 Hz speech
  tokens with the shipped :class:`KMeansSpeechTokenizer` (1024 tokens).
* SFT JSONL (docs/data-format.md), three (or four) records per question, each under the system prompt that
  inference uses for its mode (``funaudiochat.prompts``), so the model learns what the CLI, the server
  and ``funaudiochat eval`` ask of it:

  - ``spoken_qa``: user audio -> answer text + speech tokens (``SPEECH_TO_SPEECH`` or ``SPOKEN_CHAT``);
  - ``spoken_qa_text``: user audio -> answer text only (``SPEECH_TO_TEXT``);
  - ``asr``: user audio + ``TRANSCRIBE_INSTRUCTION`` -> the question's text (``SPEECH_TO_TEXT``).
    Transcription gives every question word a target, which aligns the new adapter with the
    frozen backbone much faster than the short answers alone (the pre-alignment stage);
  - with ``answer_asr`` (the GPU preset), ``asr`` (id ``<qid>:asr_answer``): the answer's recording
    -> the answer's text, twice the transcription material from audio that exists anyway.
* CTC JSONL (``training/ctc.py``) for a ``vocab_ctc`` model's first stage: every recording with its
  words, i.e. the clean and the noisy question and the spoken answer.
* DPO JSONL, one task ("robustness"): the question with white noise at 5-15 dB SNR; chosen = the
  clean answer, rejected = the answer to a different question.

Every file is written once and reused on the next run (wav files, ``answer_tokens.jsonl``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from funaudiochat.default_model.questions import Question
from funaudiochat.prompts import SPEECH_TO_SPEECH, SPEECH_TO_TEXT, SPOKEN_CHAT, TRANSCRIBE_INSTRUCTION

logger = logging.getLogger(__name__)

QUESTION_SPEEDS = (0.9, 1.0, 1.1)
ASSISTANT_ENGINE, ASSISTANT_VOICE = "piper", "joe"
SFT_TASK = "spoken_qa"
TEXT_REPLY_TASK = "spoken_qa_text"
ASR_TASK = "asr"
DPO_TASK = "robustness"


@dataclass(frozen=True)
class SpeechData:
    sft: Path
    dpo: Path
    ctc: Path
    n_sft: int
    n_dpo: int


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (sha1; Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.sha1("|".join(map(str, parts)).encode("utf-8")).digest()[:8], "big")


_h = stable_hash


def question_voice(qid: str) -> tuple[str, str, float]:
    """(engine, voice, speed) for a question; one in four questions uses piper, the rest espeak."""
    from funaudiochat.speech.tts import BUILTIN_VOICES

    h = _h("voice", qid)
    speed = QUESTION_SPEEDS[(h >> 8) % len(QUESTION_SPEEDS)]
    if h % 4 == 0:
        return "piper", "joe", speed
    voices = BUILTIN_VOICES["espeak"]
    return "espeak", voices[(h >> 16) % len(voices)], speed


def safe_name(qid: str) -> str:
    """``qid`` as a file name: every character but letters, digits, ``-`` and ``_`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in qid)


_safe = safe_name


class TTSEngines:
    """TTS engines by name, each created on first use (piper takes a moment to load)."""

    def __init__(self) -> None:
        self._engines: dict = {}

    def get(self, name: str):
        if name not in self._engines:
            from funaudiochat.speech.tts import create_engine

            self._engines[name] = create_engine(name)
        return self._engines[name]


_Engines = TTSEngines


def speak_cached(engines: TTSEngines, path: Path, text: str, engine: str, voice: str, speed: float):
    """``text`` spoken by ``engine``/``voice`` at ``speed`` as 16 kHz float32, cached in the wav ``path``.

    An existing file is read instead of synthesizing; a new one is written atomically, so a killed run
    never leaves a truncated wav that a rerun would trust.  The first call returns the synthesized
    samples, later ones the 16-bit samples read back from the file.
    """
    from funaudiochat.speech.audio import load_audio, write_wav_atomic

    if path.is_file():
        return load_audio(path)
    audio, sr = engines.get(engine).synthesize(text, voice=voice, speed=speed)
    write_wav_atomic(path, audio, sr)
    return audio


_speak = speak_cached


def write_noisy_copy(path: Path, clean, item_id: str, snr_range: tuple[float, float] = (5.0, 15.0)) -> None:
    """White noise at an SNR and seed fixed by ``item_id``, so every build writes the same file; kept if present."""
    from funaudiochat.speech.audio import add_noise_at_snr, write_wav_atomic

    if path.is_file():
        return
    lo, hi = snr_range
    snr = lo + (hi - lo) * (_h("snr", item_id) % 1000) / 999
    write_wav_atomic(path, add_noise_at_snr(clean, snr, seed=_h("noise", item_id) % 2**32), 16000)


def answer_recording(work_dir: str | Path, item_id: str) -> Path:
    """Where the speech-data stage writes the spoken answer (assistant voice) of ``item_id``."""
    return Path(work_dir) / "data" / "wav" / f"{_safe(item_id)}_a.wav"


def read_token_cache(path: Path) -> dict[str, list[int]]:
    """Speech tokens of the spoken answers by item id (``answer_tokens.jsonl``); unreadable lines are skipped."""
    out: dict[str, list[int]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").split("\n"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # blank or interrupted write; recomputed below
            out[obj["id"]] = obj["tokens"]
    return out


def _answer_asr_record(q: Question, answer: str, audio: str) -> dict:
    """Transcription of the answer's recording (assistant voice): more words for the speech adapter."""
    return {"id": f"{q.id}:asr_answer", "task": ASR_TASK,
            "meta": {"source": q.source, "tts": [ASSISTANT_ENGINE, ASSISTANT_VOICE, 1.0]},
            "messages": [
                {"role": "system", "content": SPEECH_TO_TEXT},
                {"role": "user", "content": TRANSCRIBE_INSTRUCTION, "audio": audio},
                {"role": "assistant", "content": answer}]}


def _spoken_answer(answer: str, tokens: list[int], word_starts: list[int] | None) -> dict:
    """An assistant turn with speech; ``word_starts`` lets a paced model lay out its text."""
    turn = {"role": "assistant", "content": answer, "speech_tokens": tokens}
    if word_starts is not None:
        turn["word_starts"] = word_starts
    return turn


def _sft_records(
    q: Question, answer: str, tokens: list[int], audio: str, tts: tuple, word_starts: list[int] | None = None
) -> list[dict]:
    """The three SFT records of one question (spoken reply, text reply, transcription)."""
    meta = {"source": q.source, "tts": list(tts)}
    spoken_prompt = SPOKEN_CHAT if _h("prompt", q.id) % 2 else SPEECH_TO_SPEECH
    return [
        {"id": q.id, "task": SFT_TASK, "meta": meta, "messages": [
            {"role": "system", "content": spoken_prompt},
            {"role": "user", "audio": audio},
            _spoken_answer(answer, tokens, word_starts)]},
        {"id": f"{q.id}:text", "task": TEXT_REPLY_TASK, "meta": meta, "messages": [
            {"role": "system", "content": SPEECH_TO_TEXT},
            {"role": "user", "audio": audio},
            {"role": "assistant", "content": answer}]},
        {"id": f"{q.id}:asr", "task": ASR_TASK, "meta": meta, "messages": [
            {"role": "system", "content": SPEECH_TO_TEXT},
            {"role": "user", "content": TRANSCRIBE_INSTRUCTION, "audio": audio},
            {"role": "assistant", "content": q.text}]},
    ]


def build_speech_data(
    questions: Sequence[Question],
    answers: Mapping[str, str],
    work_dir: str | Path,
    speech_tokenizer=None,
    snr_range: tuple[float, float] = (5.0, 15.0),
    answer_asr: bool = False,
    progress: bool = True,
) -> SpeechData:
    """Synthesize, tokenize and write ``sft.jsonl`` + ``dpo.jsonl`` under ``work_dir/data``.

    ``answer_asr`` adds a fourth record per question: the transcription of the answer's recording.
    """
    from tqdm.auto import tqdm

    from funaudiochat.training.ctc import load_ctc_records
    from funaudiochat.training.data import validate_jsonl
    from funaudiochat.training.pacing import word_starts_from_audio

    if len(questions) < 2:
        raise ValueError(f"need at least 2 questions for preference pairs, got {len(questions)}")
    missing = [q.id for q in questions if q.id not in answers]
    if missing:
        raise ValueError(f"no answer for questions {missing[:5]} (run the answers stage first)")
    data = Path(work_dir) / "data"
    wav = data / "wav"
    wav.mkdir(parents=True, exist_ok=True)
    engines = TTSEngines()
    tok_path = data / "answer_tokens.jsonl"
    tokens = read_token_cache(tok_path)
    sft, dpo, ctc = [], [], []
    starts: dict[str, list[int] | None] = {}
    with tok_path.open("a", encoding="utf-8") as tok_file:
        for q in tqdm(questions, desc="speech data", unit="question", disable=not progress):
            name = _safe(q.id)
            engine, voice, speed = question_voice(q.id)
            q_audio = _speak(engines, wav / f"{name}_q.wav", q.text, engine, voice, speed)
            write_noisy_copy(wav / f"{name}_q_noisy.wav", q_audio, q.id, snr_range)
            if q.id not in tokens:
                a_audio = _speak(engines, wav / f"{name}_a.wav", answers[q.id], ASSISTANT_ENGINE, ASSISTANT_VOICE, 1.0)
                if speech_tokenizer is None:
                    from funaudiochat.audio.tokenizer import KMeansSpeechTokenizer

                    speech_tokenizer = KMeansSpeechTokenizer.from_pretrained()
                tokens[q.id] = speech_tokenizer.encode(a_audio)
                tok_file.write(json.dumps({"id": q.id, "tokens": tokens[q.id]}) + "\n")
                tok_file.flush()
            # The answer's recording exists for its speech tokens; a cached-token rerun whose wav is gone
            # re-speaks it deterministically.  It doubles the transcription material at no TTS cost, and
            # gives the words' start frames for the paced text layout.
            a_audio = _speak(engines, wav / f"{name}_a.wav", answers[q.id], ASSISTANT_ENGINE, ASSISTANT_VOICE, 1.0)
            starts[q.id] = word_starts_from_audio(answers[q.id], a_audio, len(tokens[q.id]))
            sft.extend(_sft_records(q, answers[q.id], tokens[q.id], f"wav/{name}_q.wav", (engine, voice, speed),
                                    starts[q.id]))
            if answer_asr:
                sft.append(_answer_asr_record(q, answers[q.id], f"wav/{name}_a.wav"))
            ctc += [{"id": f"{q.id}:{kind}", "audio": f"wav/{name}_{kind}.wav", "text": text}
                    for kind, text in (("q", q.text), ("q_noisy", q.text), ("a", answers[q.id]))]
    for i, q in enumerate(questions):
        other = questions[(i + 1) % len(questions)]
        if answers[other.id] == answers[q.id]:
            continue  # chosen and rejected must differ
        dpo.append({
            "id": f"{q.id}:noisy", "task": DPO_TASK,
            "messages": [{"role": "system", "content": SPEECH_TO_SPEECH},
                         {"role": "user", "audio": f"wav/{_safe(q.id)}_q_noisy.wav"}],
            "chosen": _spoken_answer(answers[q.id], tokens[q.id], starts[q.id]),
            "rejected": _spoken_answer(answers[other.id], tokens[other.id], starts[other.id]),
            "meta": {"rejected_from": other.id},
        })
    out = SpeechData(data / "sft.jsonl", data / "dpo.jsonl", data / "ctc.jsonl", len(sft), len(dpo))
    for path, rows, mode in ((out.sft, sft, "sft"), (out.dpo, dpo, "dpo"), (out.ctc, ctc, "ctc")):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
        if mode == "ctc":
            load_ctc_records([path])  # raises with every bad line
            continue
        _, errors = validate_jsonl(path, mode=mode)
        if errors:
            raise ValueError(f"{path}: generated data is invalid:\n" + "\n".join(map(str, errors)))
    logger.info("speech data: %d SFT, %d DPO, %d CTC records in %s", out.n_sft, out.n_dpo, len(ctc), data)
    return out
