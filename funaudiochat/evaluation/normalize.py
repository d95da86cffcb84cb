"""Text normalisation for scoring ASR output and short answers.

Two hypotheses that differ only in casing, punctuation, contractions or in whether a number is
spelled out ("twenty one" vs "21") should score the same.  The English normaliser follows the
rules of Whisper's English normaliser in spirit (lower-case, drop bracketed asides and fillers,
expand contractions, spelled-out numbers -> digits, strip symbols); the code is our own.  British
to American spelling is not handled.

The Chinese-aware variant keeps every CJK character as its own token, so that a WER computed on
its output is a character error rate for Chinese and a word error rate for embedded English
("mixed error rate").
"""

from __future__ import annotations

import logging
import re
import unicodedata

logger = logging.getLogger(__name__)

__all__ = [
    "normalize_english",
    "normalize_chinese",
    "normalize_text",
    "words_to_digits",
    "tokenize_mixed",
    "is_cjk_char",
    "contains_cjk",
]

# Filler words dropped entirely (disfluencies carry no content for WER).
_FILLERS = frozenset({"hmm", "hm", "mm", "mhm", "mmm", "uh", "um", "umm", "uhm", "er", "erm", "ah"})

# Contractions -> expanded form.  Applied on lower-cased text with ASCII apostrophes.
_CONTRACTIONS: tuple[tuple[str, str], ...] = (
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\bcannot\b", "can not"),
    (r"\bshan't\b", "shall not"),
    (r"\bain't\b", "is not"),
    (r"\blet's\b", "let us"),
    (r"\by'all\b", "you all"),
    (r"\bma'am\b", "madam"),
    (r"\bgonna\b", "going to"),
    (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'ve\b", " have"),
    (r"'ll\b", " will"),
    (r"'m\b", " am"),
    (r"'d\b", " would"),
    # "it's" / "that's" / "he's": "is" is the more common reading.
    (r"\b(it|that|what|there|here|he|she|who|where|how|when|this)'s\b", r"\1 is"),
)

_SPELLINGS: tuple[tuple[str, str], ...] = (
    (r"\bmr\b", "mister"),
    (r"\bmrs\b", "missus"),
    (r"\bdr\b", "doctor"),
    (r"\bst\b", "saint"),
    (r"\bok\b", "okay"),
    (r"\bcolour\b", "color"),
)

_UNITS = {
    "zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000,
           "trillion": 1_000_000_000_000}
_ORDINAL_UNITS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19,
}
_ORDINAL_TENS = {
    "twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "sixtieth": 60,
    "seventieth": 70, "eightieth": 80, "ninetieth": 90,
}
_ORDINAL_SCALES = {"hundredth": 100, "thousandth": 1_000, "millionth": 1_000_000}


def _ordinal_suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def is_cjk_char(ch: str) -> bool:
    """True for CJK ideographs, kana and hangul (scripts written without spaces)."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0xF900 <= cp <= 0xFAFF
        or 0x3040 <= cp <= 0x30FF  # hiragana + katakana
        or 0xAC00 <= cp <= 0xD7AF  # hangul syllables
    )


def contains_cjk(text: str) -> bool:
    return any(is_cjk_char(c) for c in text)


def words_to_digits(text: str) -> str:
    """Replace spelled-out English numbers by digits.

    Handles cardinals ("two hundred and five" -> "205"), hyphenated tens ("twenty-one" -> "21"),
    ordinals ("twenty first" -> "21st"), year-style pairs ("nineteen eighty four" -> "1984"),
    decimals ("three point five" -> "3.5") and "a hundred" -> "100".  Isolated "oh" is left alone.
    Input is expected lower-case and space-separated.
    """
    tokens = text.replace("-", " ").split()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        consumed, rendered = _parse_number(tokens, i)
        if consumed == 0:
            out.append(tokens[i])
            i += 1
        else:
            out.append(rendered)
            i += consumed
    return " ".join(out)


def _small_value(tokens: list[str], i: int) -> tuple[int, int] | None:
    """Parse a value 10..99 at tokens[i] (teen, tens, tens+unit).  Returns (value, consumed)."""
    if i >= len(tokens):
        return None
    t = tokens[i]
    if t in _UNITS and 10 <= _UNITS[t] <= 19:
        return _UNITS[t], 1
    if t in _TENS:
        v = _TENS[t]
        if i + 1 < len(tokens) and tokens[i + 1] in _UNITS and 1 <= _UNITS[tokens[i + 1]] <= 9:
            return v + _UNITS[tokens[i + 1]], 2
        return v, 1
    return None


def _parse_number(tokens: list[str], start: int) -> tuple[int, str]:
    """Greedy parse of one number starting at tokens[start]; (0, "") if none starts there."""
    t0 = tokens[start]
    if t0 == "oh":
        return 0, ""
    # "a hundred" / "a thousand"
    if t0 == "a" and start + 1 < len(tokens) and tokens[start + 1] in _SCALES:
        sub_tokens = ["one"] + tokens[start + 1:]
        consumed, rendered = _parse_number(sub_tokens, 0)
        return consumed, rendered
    if t0 not in _UNITS and t0 not in _TENS and t0 not in _ORDINAL_UNITS \
            and t0 not in _ORDINAL_TENS:
        return 0, ""
    # Bare ordinals ("first", "second") stay words; they are rewritten only after a number
    # ("twenty first").
    if t0 in _ORDINAL_UNITS or t0 in _ORDINAL_TENS:
        return 0, ""

    # Year-style pair: "nineteen eighty four", "twenty twenty", "nineteen oh five".
    first = _small_value(tokens, start)
    if first is not None:
        j = start + first[1]
        if j + 1 < len(tokens) and tokens[j] == "oh" and tokens[j + 1] in _UNITS \
                and 1 <= _UNITS[tokens[j + 1]] <= 9:
            return first[1] + 2, f"{first[0]}0{_UNITS[tokens[j + 1]]}"
        second = _small_value(tokens, j)
        if second is not None:
            after = j + second[1]
            if not (after < len(tokens) and tokens[after] in _SCALES):
                return first[1] + second[1], f"{first[0]}{second[0]:02d}"

    total = 0
    current = 0
    last: str | None = None
    i = start
    ordinal = False
    while i < len(tokens):
        t = tokens[i]
        if t in _UNITS and t != "oh":
            v = _UNITS[t]
            if last in ("unit", "teen") or (last == "tens" and v >= 10):
                break
            if last == "tens" and v == 0:
                break
            current += v
            last = "teen" if v >= 10 else "unit"
        elif t in _TENS:
            if last in ("unit", "teen", "tens"):
                break
            current += _TENS[t]
            last = "tens"
        elif t in _SCALES:
            if last is None:
                break
            scale = _SCALES[t]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * scale
                current = 0
            last = "scale"
        elif t == "and" and last == "scale" and i + 1 < len(tokens) and (
                tokens[i + 1] in _UNITS or tokens[i + 1] in _TENS
                or tokens[i + 1] in _ORDINAL_UNITS or tokens[i + 1] in _ORDINAL_TENS):
            i += 1
            continue
        elif t in _ORDINAL_UNITS and last in ("tens", "scale"):
            current += _ORDINAL_UNITS[t]
            ordinal = True
            i += 1
            break
        elif t in _ORDINAL_TENS and last == "scale":
            current += _ORDINAL_TENS[t]
            ordinal = True
            i += 1
            break
        elif t in _ORDINAL_SCALES and last is not None and last != "scale":
            scale = _ORDINAL_SCALES[t]
            if scale == 100:
                current *= 100
            else:
                total += current * scale
                current = 0
            ordinal = True
            i += 1
            break
        else:
            break
        i += 1
    consumed = i - start
    if consumed == 0:
        return 0, ""
    value = total + current
    rendered = str(value)
    if ordinal:
        rendered += _ordinal_suffix(value)
    elif i + 1 < len(tokens) and tokens[i] == "point" and tokens[i + 1] in _UNITS:
        digits = []
        k = i + 1
        while k < len(tokens) and tokens[k] in _UNITS and _UNITS[tokens[k]] <= 9:
            digits.append(str(_UNITS[tokens[k]]))
            k += 1
        if digits:
            rendered += "." + "".join(digits)
            consumed = k - start
    return consumed, rendered


def _strip_accents_and_symbols(text: str, keep: str = "") -> str:
    """Map accented Latin letters to ASCII and punctuation/symbols to spaces."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        cat = unicodedata.category(ch)
        if cat == "Mn":
            continue
        if ch in keep:
            out.append(ch)
        elif cat[0] in "PSC" or cat == "Zs":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_english(text: str, drop_bracketed: bool = True) -> str:
    """Whisper-style English normalisation; returns space-joined lower-case tokens.

    ``drop_bracketed`` removes ``[noise]``, ``<unk>`` and ``(asides)`` as ASR scoring wants;
    answer matching turns it off because an answer may sit in brackets.
    """
    s = text.lower()
    s = re.sub(r"[\u2018\u2019\u02bc`\u00b4]", "'", s)
    if drop_bracketed:
        s = re.sub(r"[<\[][^>\]]*[>\]]", " ", s)  # [noise], <unk>
        s = re.sub(r"\([^)]*\)", " ", s)  # (asides)
    for pattern, repl in _CONTRACTIONS:
        s = re.sub(pattern, repl, s)
    s = re.sub(r"(\d),(\d{3})\b", r"\1\2", s)  # 1,000 -> 1000 (repeat for 1,000,000)
    s = re.sub(r"(\d),(\d{3})\b", r"\1\2", s)
    s = re.sub(r"\$\s?(\d+(?:\.\d+)?)", r"\1 dollars", s)
    s = re.sub(r"£\s?(\d+(?:\.\d+)?)", r"\1 pounds", s)
    s = re.sub(r"€\s?(\d+(?:\.\d+)?)", r"\1 euros", s)
    s = s.replace("%", " percent ")
    s = s.replace("&", " and ")
    s = re.sub(r"(\d)\.(\d)", r"\1<DOT>\2", s)  # keep decimal points
    s = re.sub(r"'s\b", "s", s)  # possessive: "john's" -> "johns" (matches no-apostrophe ASR)
    s = s.replace("'", " ")
    s = _strip_accents_and_symbols(s).replace("<dot>", ".").replace("<DOT>", ".")
    s = re.sub(r"\s+", " ", s).strip()
    for pattern, repl in _SPELLINGS:
        s = re.sub(pattern, repl, s)
    s = words_to_digits(s)
    s = re.sub(r"\b(\d+) (st|nd|rd|th)\b", r"\1\2", s)
    tokens = [t for t in s.split() if t not in _FILLERS]
    return " ".join(tokens)


def tokenize_mixed(text: str) -> list[str]:
    """Split into tokens: each CJK character is a token; other runs split on whitespace."""
    tokens: list[str] = []
    buf: list[str] = []
    for ch in text:
        if is_cjk_char(ch):
            if buf:
                tokens.extend("".join(buf).split())
                buf = []
            tokens.append(ch)
        else:
            buf.append(ch)
    if buf:
        tokens.extend("".join(buf).split())
    return tokens


def normalize_chinese(text: str) -> str:
    """Chinese-aware normalisation: NFKC (full-width -> half-width), drop punctuation, lower-case
    Latin text, and put a space between every CJK character so downstream WER is per character."""
    s = unicodedata.normalize("NFKC", text).lower()
    s = re.sub(r"[<\[][^>\]]*[>\]]", " ", s)
    kept = []
    for ch in s:
        cat = unicodedata.category(ch)
        if cat[0] in "PSC" and ch != "'":
            kept.append(" ")
        else:
            kept.append(ch)
    s = "".join(kept).replace("'", "")
    return " ".join(tokenize_mixed(s))


def normalize_text(text: str, language: str = "en") -> str:
    """Dispatch on language: "en" -> English rules; "zh" (or any CJK-bearing text with "auto")
    -> Chinese-aware rules."""
    if language == "auto":
        language = "zh" if contains_cjk(text) else "en"
    if language == "en":
        return normalize_english(text)
    if language in ("zh", "ja", "ko", "yue"):
        return normalize_chinese(text)
    raise ValueError(f"unsupported language {language!r}; expected 'en', 'zh' or 'auto'")
