"""Sentence and fragment helpers shared by the rule-based sharders.

:func:`split_sentences` cuts text at sentence boundaries without splitting abbreviations;
:func:`tidy` turns a fragment into a sentence; :func:`merge_down` joins the smallest adjacent
pieces until few enough remain. ``MIN_SHARDS`` and ``MAX_SHARDS`` bound every sharding.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_SHARDS",
    "MIN_SHARDS",
    "Halves",
    "merge_down",
    "split_sentences",
    "tidy",
    "word_count",
]

MIN_SHARDS = 3
MAX_SHARDS = 10

Halves = tuple[str, str]

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc e.g i.e a.m p.m approx lbs oz ft mph min hr hrs".split()  # noqa: SIM905
)
_BOUNDARY = re.compile(r"(?<![.])[.!?](?![.])[\"')\]]*(?= )")
_STRICT_NEXT = re.compile(r"[A-Z0-9\"'($£€]")


def split_sentences(text: str, *, strict_case: bool = True) -> list[str]:
    """Split ``text`` into sentences (whitespace is normalised to single spaces).

    A boundary is a single ``.``, ``!`` or ``?`` after a word character, followed by a space,
    that does not end a known abbreviation ("Ms.", "p.m.", "e.g."). With ``strict_case`` the
    next sentence must also start with a capital letter, a digit, a quote or a currency sign;
    docstrings often start sentences in lower case, so the code sharder turns it off.
    """
    text = " ".join(text.split())
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if _is_boundary(text, match.start(), match.end(), strict_case):
            sentences.append(text[start : match.end()].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _is_boundary(text: str, punct: int, end: int, strict_case: bool) -> bool:
    """Whether the punctuation at ``punct`` (its run ending at ``end``) ends a sentence."""
    before = text[max(punct - 2, 0) : punct]
    if not (before[-1:].isalnum() or before[-1:] in ")]%" or re.fullmatch(r"\w[\"']", before)):
        return False
    word = text[:punct].rsplit(" ", 1)[-1].lower()
    if text[punct] == "." and word in _ABBREVIATIONS:
        return False
    following = text[end + 1 : end + 2]
    return bool(following) and (not strict_case or bool(_STRICT_NEXT.match(following)))


def word_count(text: str) -> int:
    """Number of whitespace-separated words in ``text``."""
    return len(text.split())


def tidy(text: str) -> str:
    """Capitalise a fragment and make it end like a sentence."""
    text = text.strip().rstrip(",;:").strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!)\"'" else text + "."


def _merge_smallest_pair(items: list[str], sep: str) -> list[str]:
    """Join the adjacent pair with the fewest words in total."""
    sizes = [word_count(items[i]) + word_count(items[i + 1]) for i in range(len(items) - 1)]
    i = sizes.index(min(sizes))
    return [*items[:i], items[i] + sep + items[i + 1], *items[i + 2 :]]


def merge_down(items: list[str], target: int, sep: str = " ") -> list[str]:
    """Merge adjacent items until at most ``target`` (>= 1) remain."""
    while len(items) > max(target, 1):
        items = _merge_smallest_pair(items, sep)
    return items
