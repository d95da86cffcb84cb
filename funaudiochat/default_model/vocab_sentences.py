"""Extra recordings for the CTC stage, chosen so that more of the backbone's words get heard.

Why: the CTC readout over the backbone's vocabulary can only emit a token it has heard.  On the 210
real LLaMA-Questions recordings, the session-6 model recovered 68 % of the words that occur at least
3 times in its training transcripts, and 2 of 211 words that occur less often (docs/default-model-history.md,
"Session 7").  The questions and answers alone cover too few words, so this stage adds sentences
picked for the words they add.

* Pool: sentences from benchmark **dev** texts that no evaluation of this model reads, with no
  audio of their own: LibriSpeech test-clean / test-other reference transcripts and MMLU-Pro
  questions.  Texts are split into sentences; a sentence is kept with 5-16 words of plain letters
  (digits and symbols are read out differently from how they are written, so the transcript would
  not match the speech).
* Choice: greedy and deterministic.  A word "needs" ``target - n`` more occurrences when the
  training transcripts hold it ``n < target`` times and the pool at least ``min_pool_count`` times
  (rarer words are mostly names).  Each pick is the sentence with the most needed words per word
  spoken; ties go to the earlier sentence in pool order.
* Speech: the same voices as the questions (espeak-ng variants, piper "joe" for one in four, speed
  0.9-1.1 by sha1 of the id), written to ``data/wav_vocab/`` and listed in ``data/ctc_vocab.jsonl``
  (the CTC format).  The exact sentences used are in that file, with their source item ids.
"""

from __future__ import annotations

import heapq
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: (set folder, text field) of the dev texts the sentences come from.
POOL_SETS = (("librispeech_test_clean", "reference"), ("librispeech_test_other", "reference"),
             ("mmlu_pro_mmsu_domains", "question"))
MIN_WORDS, MAX_WORDS = 5, 16
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z ,'\-.?!;:]*$")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class Sentence:
    #: ``<source item id>#<sentence index>``: unique, and names the item it came from.
    id: str
    text: str
    source: str


def words(text: str) -> list[str]:
    """Lower-case words as the CTC transcripts count them (apostrophes kept inside a word)."""
    return _WORD.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` with 5-16 plain words; LibriSpeech's all-caps text is lower-cased."""
    if text.isupper():
        text = text.lower()
    out = []
    for s in _SENTENCE_END.split(" ".join(text.split())):
        s = s.strip()
        if _PLAIN.match(s) and MIN_WORDS <= len(s.split()) <= MAX_WORDS:
            out.append(s[0].upper() + s[1:])
    return out


def pool_sentences(benchdata: str | Path) -> list[Sentence]:
    """Every usable sentence of the pool sets' dev splits, in file order; missing sets are skipped."""
    root = Path(benchdata)
    pool: list[Sentence] = []
    seen: set[str] = set()
    for name, field in POOL_SETS:
        path = root / name / "dev.jsonl"
        if not path.is_file():
            logger.warning("vocabulary sentences: %s not found, skipped", path)
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                item_id, text = str(obj["id"]), str(obj[field])
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{path}:{n}: expected a record with 'id' and {field!r} ({exc})") from exc
            for i, s in enumerate(split_sentences(text)):
                if s.lower() not in seen:  # one recording per distinct sentence
                    seen.add(s.lower())
                    pool.append(Sentence(f"{item_id}#{i}", s, name))
    return pool


def select_sentences(pool: Sequence[Sentence], known_texts: Iterable[str], n: int, target: int = 3,
                     min_pool_count: int = 2) -> list[Sentence]:
    """Up to ``n`` sentences of ``pool`` that add the most under-heard words per word spoken.

    A sentence that adds no needed word is never picked, so fewer than ``n`` may come back.
    """
    known = Counter(w for t in known_texts for w in words(t))
    in_pool = Counter(w for s in pool for w in words(s.text))
    need = {w: target - known[w] for w, c in in_pool.items() if c >= min_pool_count and known[w] < target}
    vocab = [(set(words(s.text)), len(words(s.text))) for s in pool]

    def gain(i: int) -> float:
        ws, length = vocab[i]
        return sum(1 for w in ws if need.get(w, 0) > 0) / length

    heap = [(-gain(i), i) for i in range(len(pool))]
    heapq.heapify(heap)
    chosen: list[Sentence] = []
    while heap and len(chosen) < n:
        neg, i = heapq.heappop(heap)
        now = gain(i)
        if now < -neg:  # stale: picks since lowered it; stored scores are upper bounds
            heapq.heappush(heap, (-now, i))
            continue
        if now <= 0:
            break  # the best fresh score is 0: no sentence adds a needed word
        chosen.append(pool[i])
        for w in vocab[i][0]:
            if need.get(w, 0) > 0:
                need[w] -= 1
    return chosen


def build_vocab_speech(benchdata: str | Path | None, known_texts: Sequence[str], work_dir: str | Path,
                       n: int, progress: bool = True) -> Path | None:
    """Choose, speak and list the extra CTC sentences; None when there is no pool or ``n`` is 0.

    Recordings are cached like the questions' (a rerun reads them back), and the list is written
    atomically after every recording exists.
    """
    from tqdm.auto import tqdm

    from funaudiochat.default_model.speech_data import TTSEngines, question_voice, safe_name, speak_cached
    from funaudiochat.training.ctc import load_ctc_records

    if n <= 0 or benchdata is None or not Path(benchdata).is_dir():
        if n > 0:
            logger.warning("vocabulary sentences: no benchmark folder, none added")
        return None
    chosen = select_sentences(pool_sentences(benchdata), known_texts, n)
    if not chosen:
        return None
    data = Path(work_dir) / "data"
    wav = data / "wav_vocab"
    wav.mkdir(parents=True, exist_ok=True)
    engines = TTSEngines()
    rows = []
    for s in tqdm(chosen, desc="vocabulary sentences", unit="sentence", disable=not progress):
        engine, voice, speed = question_voice(s.id)
        name = f"wav_vocab/{safe_name(s.id)}.wav"
        speak_cached(engines, data / name, s.text, engine, voice, speed)
        rows.append({"id": f"vocab:{s.id}", "audio": name, "text": s.text, "source": s.source,
                     "tts": {"engine": engine, "voice": voice, "speed": speed}})
    path = data / "ctc_vocab.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    load_ctc_records([path])  # raises with every bad line
    added = Counter(w for r in rows for w in words(r["text"]))
    logger.info("vocabulary sentences: %d recordings, %d words, %d distinct, in %s",
                len(rows), sum(added.values()), len(added), path)
    return path
