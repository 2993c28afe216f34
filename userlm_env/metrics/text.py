"""Text normalisation shared by every metric: tokens, numbers, lemmas and stopwords.

Lemmas come from ``simplemma`` and English stopwords from the ``stop-words`` package (both
maintained, offline, no data downloads). Numbers are kept as digits (thousands separators
removed, ``"three"`` read as ``"3"``) and are never treated as stopwords. Identifiers such as
``has_close_elements`` stay one token, so code words survive as content words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

__all__ = [
    "content_lemmas",
    "content_set",
    "is_number",
    "lemma",
    "numbers",
    "stopwords",
    "tokens",
    "unigrams",
    "word_count",
]

_NUMBER_PATTERN = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_TOKEN = re.compile(rf"{_NUMBER_PATTERN}|[^\W\d][\w'’]*")
_NUMBER = re.compile(_NUMBER_PATTERN)
# Cardinal number words read as digits, so "three eggs" and "3 eggs" match. "one" is left out:
# it is far more often a pronoun ("the longest one") than a count.
_UNITS = (
    "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_TENS = "thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS = {word: str(n) for n, word in enumerate(_UNITS.split()) if word != "_"} | {
    word: str(10 * n) for n, word in enumerate(_TENS.split(), 3)
}


def tokens(text: str) -> list[str]:
    """Lower-cased word and number tokens of ``text``; numbers as plain digits."""
    return [_clean(t) for t in _TOKEN.findall(text)]


def _clean(token: str) -> str:
    if token[0].isdigit():
        token = token.replace(",", "")
        return token[: token.index(".")] if re.fullmatch(r"\d+\.0+", token) else token
    word = token.lower().replace("’", "'").strip("'")
    word = word.removesuffix("'s")  # possessive: "Janet's ducks" speaks of Janet
    return _NUMBER_WORDS.get(word, word)


def is_number(token: str) -> bool:
    """Whether a token from :func:`tokens` is a number."""
    return bool(token) and token[0].isdigit()


def numbers(text: str) -> list[str]:
    """The numbers written with digits in ``text``, normalised like :func:`tokens` does."""
    return [_clean(n) for n in _NUMBER.findall(text)]


def word_count(text: str) -> int:
    """Whitespace-separated words of ``text`` (how long a turn reads)."""
    return len(text.split())


@cache
def stopwords() -> frozenset[str]:
    """English stopwords of the ``stop-words`` package (words only; numbers never are)."""
    from stop_words import get_stop_words

    return frozenset(w.lower() for w in get_stop_words("en") if not w[:1].isdigit())


@cache
def lemma(token: str) -> str:
    """The lemma of one lower-cased token (numbers unchanged)."""
    if is_number(token):
        return token
    import simplemma

    return simplemma.lemmatize(token, lang="en").lower()


def content_lemmas(text: str) -> list[str]:
    """Lemmas of the non-stopword tokens of ``text``, numbers included, in order."""
    stops = stopwords()
    return [lemma(t) for t in tokens(text) if t and (is_number(t) or t not in stops)]


def content_set(texts: str | Iterable[str]) -> frozenset[str]:
    """The set of content lemmas of one text or of several texts together."""
    if isinstance(texts, str):
        return frozenset(content_lemmas(texts))
    return frozenset(w for text in texts for w in content_lemmas(text))


def unigrams(texts: str | Iterable[str]) -> frozenset[str]:
    """The set of lemmatised unigrams (stopwords kept) of one text or several together."""
    if isinstance(texts, str):
        texts = (texts,)
    return frozenset(lemma(t) for text in texts for t in tokens(text) if t)
