"""A small, dependency-free language identifier for IFEval's language checks.

IFEval itself uses the `langdetect` package; we avoid the dependency with a two-stage rule:
the dominant Unicode script decides the language when only one supported language uses it
(Bengali, Kannada, Hangul, ...); otherwise function-word frequencies (and a few distinctive
letters) pick among the languages sharing the script.  Only the languages listed in
``SUPPORTED`` can be returned.  It is meant for whole responses (a sentence or more); for
very short text the answer is None.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

logger = logging.getLogger(__name__)

__all__ = ["detect_language", "dominant_script", "SUPPORTED"]

# script -> (first, last) code point ranges
_SCRIPT_RANGES: tuple[tuple[str, int, int], ...] = (
    ("latin", 0x0041, 0x024F), ("latin", 0x1E00, 0x1EFF),
    ("greek", 0x0370, 0x03FF), ("cyrillic", 0x0400, 0x04FF),
    ("hebrew", 0x0590, 0x05FF), ("arabic", 0x0600, 0x06FF), ("arabic", 0xFB50, 0xFDFF),
    ("arabic", 0xFE70, 0xFEFF), ("devanagari", 0x0900, 0x097F), ("bengali", 0x0980, 0x09FF),
    ("gurmukhi", 0x0A00, 0x0A7F), ("gujarati", 0x0A80, 0x0AFF), ("tamil", 0x0B80, 0x0BFF),
    ("telugu", 0x0C00, 0x0C7F), ("kannada", 0x0C80, 0x0CFF), ("malayalam", 0x0D00, 0x0D7F),
    ("thai", 0x0E00, 0x0E7F), ("hangul", 0xAC00, 0xD7AF), ("hangul", 0x1100, 0x11FF),
    ("hangul", 0x3130, 0x318F), ("kana", 0x3040, 0x30FF), ("han", 0x4E00, 0x9FFF),
    ("han", 0x3400, 0x4DBF),
)

_UNIQUE_SCRIPT = MappingProxyType({
    "greek": "el", "hebrew": "he", "bengali": "bn", "gurmukhi": "pa", "gujarati": "gu",
    "tamil": "ta", "telugu": "te", "kannada": "kn", "malayalam": "ml", "thai": "th",
    "hangul": "ko", "kana": "ja",
})


def _words(*groups: str) -> frozenset[str]:
    return frozenset(w for g in groups for w in g.split())


# Function words per language (frequent, short, and fairly distinctive within a script).
_STOPWORDS: Mapping[str, frozenset[str]] = MappingProxyType({
    # Latin script
    "en": _words("the and of to in is that it for you with was on are as this be have not or",
                 "by from but at they we he she his her my your will can an what which there",
                 "their would been has had were if about"),
    "de": _words("der die das und ist nicht ich sie es zu den mit von ein eine auf für dem sich",
                 "auch wir du im wie aber oder wenn noch nach bei werden haben sind war dass sein",
                 "einen einem kann ihr uns hat"),
    "fi": _words("ja on ei se että oli hän mutta kun tai ovat joka mitä myös niin kuin minä sinä",
                 "tämä siitä olla ole jos vain kanssa sen hänen voi mikä kaikki ovat olen olet",
                 "meidän heidän tämän joten"),
    "pt": _words("os as do da dos das que não um uma para com em no na por mais ao como mas",
                 "foi ele ela seu sua são você também está isso muito pelo pela já quando eu",
                 "nos nas tem"),
    "es": _words("el la los las del que y es en un una por con no para se su al lo como más",
                 "pero sus le ya este sí porque esta muy también está hay yo"),
    "fr": _words("le la les des du et est en un une que qui pas pour dans ce il elle sur au",
                 "avec ne se plus par je vous nous sont mais cette être"),
    "it": _words("il lo la di che è un una per non con del della sono si da le gli mi ma come",
                 "anche questo più nel alla"),
    "nl": _words("de het een en van is dat niet ik je op te in zijn met voor er maar om ook als",
                 "wat hij ze bij naar dit"),
    "sw": _words("na ya wa za kwa ni katika kuwa hii yake au lakini pia kama sana hiyo huo wake",
                 "cha vya mimi wewe yeye sisi ninyi wao ili hivyo kwamba kutoka baada kila zaidi",
                 "hata wakati watu"),
    "vi": _words("và của là có không những được trong cho một các người này với để đã khi",
                 "như thì đến cũng tôi bạn"),
    # Cyrillic
    "bg": _words("и на е се да за от в с не са това че по като си но ще му ги го тя той",
                 "които който която към във със бъде"),
    "ru": _words("и в не на что я с он как это по но они к у же вы за бы так из мы его от",
                 "все ты было ещё для она"),
    "uk": _words("і в не на що я з він як це по але вони до у же ви за б так із ми його від",
                 "все ти було ще для вона та є"),
    # Devanagari
    "hi": _words("है हैं और के की का में से को यह नहीं था थी पर भी एक लिए कि हो ये वह"),
    "mr": _words("आहे आणि च्या चा ची चे ला मध्ये हे ही तो ती नाही होते आहेत या व पण साठी",
                 "आपण त्या त्यांच्या"),
    "ne": _words("छ र मा लाई पनि गर्न भएको छन् हुन्छ थियो यो त्यो"),
    # Arabic script
    "fa": _words("است که را این در و با از به می هم برای آن یک شد ها اند نیز"),
    "ur": _words("ہے کے کی کا میں اور سے کو یہ نہیں ہیں تھا پر بھی ایک لیے"),
    "ar": _words("في من على إلى أن هذا التي الذي عن مع كان ما لا هو هي هذه"),
})

_SCRIPT_LANGS = MappingProxyType({
    "latin": ("en", "de", "fi", "pt", "es", "fr", "it", "nl", "sw", "vi"),
    "cyrillic": ("bg", "ru", "uk"),
    "devanagari": ("hi", "mr", "ne"),
    "arabic": ("fa", "ur", "ar"),
})

# Letters that point to one language within a shared script (bonus per occurrence, scaled).
_MARKER_LETTERS: Mapping[str, str] = MappingProxyType({
    "de": "äöüß", "fi": "äö", "pt": "ãõçê", "es": "ñ¿¡", "fr": "çèêëœ",
    "vi": "ơưđạảấầẩẫậắằẳẵặẹẻẽếềểễệịỉọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ",
    "ru": "ыэё", "uk": "їєіґ", "bg": "ъ",
    "mr": "ळ", "fa": "پچژگ", "ur": "ٹڈڑںےھ", "ar": "ةىإأ",
})

SUPPORTED: frozenset[str] = frozenset(_STOPWORDS) | frozenset(_UNIQUE_SCRIPT.values()) | {"zh"}


def _script_of(ch: str) -> str | None:
    cp = ord(ch)
    for name, lo, hi in _SCRIPT_RANGES:
        if lo <= cp <= hi:
            return name
    return None


def dominant_script(text: str) -> tuple[str | None, Counter[str]]:
    """The script with most letters in ``text`` (None if no letters) and all counts."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha() or unicodedata.category(ch).startswith("M"):
            s = _script_of(ch)
            if s:
                counts[s] += 1
    if not counts:
        return None, counts
    return counts.most_common(1)[0][0], counts


def detect_language(text: str, min_letters: int = 3) -> str | None:
    """ISO 639-1 code of the text's language among ``SUPPORTED``, or None if undecidable."""
    script, counts = dominant_script(text)
    if script is None or counts[script] < min_letters:
        return None
    if script in ("han", "kana"):
        return "ja" if counts.get("kana", 0) > 0.1 * counts[script] else "zh"
    if script in _UNIQUE_SCRIPT:
        return _UNIQUE_SCRIPT[script]
    candidates = _SCRIPT_LANGS.get(script)
    if not candidates:
        return None
    lowered = text.lower()
    tokens = re.findall(r"[^\W\d_]+", lowered)
    if not tokens:
        return None
    freq = Counter(tokens)
    n_letters = max(1, counts[script])
    scores: dict[str, float] = {}
    for lang in candidates:
        stop = _STOPWORDS[lang]
        word_score = sum(c for w, c in freq.items() if w in stop) / len(tokens)
        markers = _MARKER_LETTERS.get(lang, "")
        marker_score = sum(lowered.count(m) for m in markers) / n_letters if markers else 0.0
        scores[lang] = word_score + 5.0 * marker_score
    best = max(scores, key=lambda k: scores[k])
    if scores[best] == 0.0:
        # No evidence at all: for Latin text assume English only if it is ASCII.
        return "en" if script == "latin" and lowered.isascii() else None
    logger.debug("language scores %s -> %s", scores, best)
    return best
