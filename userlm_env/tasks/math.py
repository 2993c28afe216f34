"""The GSM8k verifiable reward: find the number a reply gives as its answer and compare it.

Extraction, in order of precedence:

1. the last ``\\boxed{...}`` (LaTeX), then the last ``#### N`` line (GSM8k's own format);
2. the last answer marker ("Final answer:", "The answer is", "answer:"): the first number after
   it wins over any number written later;
3. otherwise the last number of the reply's statements (question sentences are skipped when the
   statements hold a number), and if the reply holds no digits at all, the last number word.

Numbers may carry ``$`` signs, thousands separators (``1,234``), trailing zeros (``18.00``), a
sign, decimals, a percent sign (``25%`` matches 25, and 0.25), simple fractions (``3/4``) or be
spelled out ("twenty-one", "one hundred and five"). Values compare exactly as fractions, with a
tiny relative tolerance for decimals.

A reply that only asks (a clarifying question, no number stated outside its questions and no
answer marker) is not an attempt; neither is an empty reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from userlm_env.errors import DataError
from userlm_env.types import Intent, Score

__all__ = ["MathScorer", "extract_answer", "is_answer_attempt", "parse_number"]

_NUMBER = (
    r"(?<![\w./])(?P<sign>[-−])?\$?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?![\d/]))?"
    r"(?P<pct>\s?%)?"
)
_NUMBER_RE = re.compile(_NUMBER)
_MARKER_RE = re.compile(
    r"final answer\s*(?:is|=|:)?|the answer is|answer\s*(?:is|=|:)|\bans(?:wer)?\s*:",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_HASHES_RE = re.compile(r"####\s*(.+)")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+|\n")

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_WORD = "|".join(sorted([*_UNITS, *_SCALES], key=len, reverse=True))
_WORDS_RE = re.compile(
    rf"(?<![\w-])(?P<sign>minus\s+|negative\s+)?(?P<words>(?:{_WORD})(?:(?:\s+and)?[\s-]+(?:{_WORD}))*)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Found:
    """A number found in text: its value and whether it was written as a percentage."""

    value: Fraction
    percent: bool = False
    exact: bool = True


def _clean(text: str) -> str:
    """Strip markdown emphasis and the LaTeX wrappers around numbers."""
    text = text.replace("**", "").replace("__", "").replace("\\$", "$").replace("\\%", "%")
    text = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = text.replace("{,}", ",").replace("\\,", "").replace("\\!", "")
    text = re.sub(r"\\[()\[\]]", " ", text)
    return re.sub(r"\((-?[\d.,]+)\)/\((\d[\d.,]*)\)", r"\1/\2", text)


def _to_fraction(digits: str) -> Fraction:
    return Fraction(digits.replace(",", ""))


def _from_match(match: re.Match[str]) -> _Found | None:
    value = _to_fraction(match["num"])
    exact = "." not in match["num"]
    if match["den"]:
        denominator = _to_fraction(match["den"])
        if denominator == 0:
            return None
        value /= denominator
        exact = exact and "." not in match["den"]
    if match["sign"]:
        value = -value
    return _Found(value, percent=bool(match["pct"]), exact=exact)


def _words_value(words: str) -> int:
    """Value of a run of English number words ("one hundred and five" -> 105)."""
    total, current = 0, 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word in _UNITS:
            current += _UNITS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total += max(current, 1) * _SCALES[word]
            current = 0
    return total + current


def _numbers(text: str) -> list[_Found]:
    found = (_from_match(m) for m in _NUMBER_RE.finditer(text))
    return [f for f in found if f is not None]


def _word_numbers(text: str) -> list[_Found]:
    found = []
    for match in _WORDS_RE.finditer(text):
        value = _words_value(match["words"])
        found.append(_Found(Fraction(-value if match["sign"] else value)))
    return found


def _first_after(text: str) -> _Found | None:
    """The first number (digits, else words) at the start of ``text``: what a marker announces."""
    head = text[:200]
    digits = _NUMBER_RE.search(head)
    words = _WORDS_RE.search(head)
    if digits and (not words or digits.start() <= words.start()):
        return _from_match(digits)
    return _word_numbers(head)[0] if words else None


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), if any."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    return text[start:]


def _statements(text: str) -> str:
    """The reply without its question sentences."""
    sentences = _SENTENCE_END_RE.split(text)
    return " ".join(s for s in sentences if not s.rstrip().endswith("?"))


def _marked(text: str) -> _Found | None:
    """The answer the reply marks explicitly (boxed, ``####``, or an answer marker)."""
    boxed = _boxed(text)
    sources = [] if boxed is None else [boxed]
    sources += reversed(_HASHES_RE.findall(text))
    sources += (text[m.end() :] for m in reversed(list(_MARKER_RE.finditer(text))))
    for source in sources:
        found = _first_after(source)
        if found is not None:
            return found
    return None


def _find(reply: str) -> _Found | None:
    text = _clean(reply)
    marked = _marked(text)
    if marked is not None:
        return marked
    statements = _statements(text)
    for source in (statements, text):
        numbers = _numbers(source)
        if numbers:
            return numbers[-1]
    words = _word_numbers(statements)
    return words[-1] if words else None


def extract_answer(reply: str) -> Fraction | None:
    """The number ``reply`` gives as its answer, or ``None`` when it states none.

    A percentage comes back as its number (``"25%"`` -> 25).
    """
    found = _find(reply)
    return None if found is None else found.value


def is_answer_attempt(reply: str) -> bool:
    """Whether ``reply`` claims an answer (and is not only a clarifying question).

    An attempt has an answer marker, or a number outside its questions; a number written in
    words ("one", "twelve") counts only when the reply does not end with a question, since
    clarifying questions often say "one".
    """
    text = _clean(reply).strip()
    if not text:
        return False
    if _marked(text) is not None:
        return True
    statements = _statements(text)
    if _numbers(statements):
        return True
    return bool(_word_numbers(statements)) and not text.endswith("?")


def parse_number(text: str) -> Fraction:
    """Parse a reference answer such as ``"18"``, ``"1,234"``, ``"-3.5"`` or ``"$12.00"``.

    Raises:
        DataError: ``text`` holds no number.
    """
    found = _numbers(_clean(text))
    if not found:
        raise DataError(f"reference answer {text!r} is not a number")
    return found[-1].value


def _equal(answer: _Found, expected: Fraction, rel_tol: float) -> bool:
    """Exact equality; answers written as decimals may miss by ``rel_tol`` (relative)."""
    tolerance = 0 if answer.exact else rel_tol * max(Fraction(1), abs(expected))
    candidates = [answer.value, answer.value / 100] if answer.percent else [answer.value]
    return any(abs(c - expected) <= tolerance for c in candidates)


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


class MathScorer:
    """Scores GSM8k-style replies: reward 1.0 iff the reply's answer equals the reference.

    Args:
        rel_tol: Relative tolerance for answers written as decimals (exact values compare
            exactly up to this tolerance too; the default only absorbs rounding noise).
    """

    name = "gsm8k"

    def __init__(self, rel_tol: float = 1e-6) -> None:
        if not 0 <= rel_tol < 0.01:
            raise ValueError(f"rel_tol must be in [0, 0.01), got {rel_tol}")
        self.rel_tol = rel_tol

    def score(self, reply: str, intent: Intent) -> Score:
        """Score one reply against ``intent.reference["answer"]``."""
        expected = self._expected(intent)
        if not isinstance(reply, str):
            raise TypeError(f"reply must be a str, got {type(reply).__name__}")
        if not is_answer_attempt(reply):
            return Score(attempted=False, solved=False, reward=0.0, detail="no answer given")
        found = _find(reply)
        if found is not None and _equal(found, expected, self.rel_tol):
            return Score(True, True, 1.0, detail=f"correct: {_show(expected)}")
        got = "nothing" if found is None else _show(found.value)
        return Score(True, False, 0.0, detail=f"expected {_show(expected)}, got {got}")

    def score_many(self, replies: Sequence[str], intents: Sequence[Intent]) -> list[Score]:
        """Score ``replies[i]`` against ``intents[i]``."""
        if len(replies) != len(intents):
            raise ValueError(f"{len(replies)} replies for {len(intents)} intents")
        return [self.score(r, i) for r, i in zip(replies, intents, strict=True)]

    def close(self) -> None:
        """Nothing to release: the math check runs in-process."""

    @staticmethod
    def _expected(intent: Intent) -> Fraction:
        if "answer" not in intent.reference:
            raise DataError(f"intent {intent.intent_id!r} has no reference answer")
        return parse_number(str(intent.reference["answer"]))
