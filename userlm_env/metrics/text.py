"""Text normalisation shared by every metric: tokens, numbers, lemmas and stopwords.

Lemmas come from ``simplemma`` and English stopwords from the ``stop-words`` package (both
maintained, offline, no data downloads). Numbers are kept verbatim (commas removed) and are never
treated as stopwords.
"""

from __future__ import annotations

import re
from functools import cache

__all__ = ["content_lemmas", "is_number", "lemma", "numbers", "stopwords", "tokens", "unigrams"]

_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?|[A-Za-z_][A-Za-z_']*")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def tokens(text: str) -> list[str]:
    """Lower-cased word and number tokens of ``text`` (numbers without thousands separators)."""
    return [_clean(t) for t in _TOKEN.findall(text)]


def _clean(token: str) -> str:
    if token[0].isdigit():
        token = token.replace(",", "").rstrip(".")
        return token[:-3] if token.endswith(".00") else token
    return token.lower().strip("'")


def is_number(token: str) -> bool:
    """Whether a token from :func:`tokens` is a number."""
    return bool(token) and token[0].isdigit()


def numbers(text: str) -> list[str]:
    """The numbers in ``text``, normalised like :func:`tokens` does."""
    return [_clean(n) for n in _NUMBER.findall(text)]


@cache
def stopwords() -> frozenset[str]:
    """English stopwords (words only; numbers are never stopwords)."""
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


def unigrams(text: str) -> frozenset[str]:
    """The set of lemmatised unigrams of ``text`` (stopwords kept)."""
    return frozenset(lemma(t) for t in tokens(text) if t)
