"""The rule-based math sharder: a word problem becomes its question plus one shard per fact.

:func:`shard_math` puts the question first (shard 1) and then the problem's facts, one sentence
or clause each. Every number of the problem lands in exactly one shard, stray answer-format
instructions ("Give the result as your final answer.") are dropped, and the result holds 3 to 10
shards (checked on all 1,319 GSM8k test problems); only a problem too short to cut in three
yields fewer, never invented text. The same input always yields the same shards.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from userlm_env.errors import DataError
from userlm_env.intents.text_units import (
    MAX_SHARDS,
    MIN_SHARDS,
    Halves,
    merge_down,
    split_sentences,
    tidy,
    word_count,
)
from userlm_env.types import Shard

__all__ = [
    "is_stray_instruction",
    "shard_math",
    "split_clause",
    "split_phrase",
    "strip_stray_instructions",
]

_ASK_WORDS = (
    r"how|what|which|who|whom|whose|when|where|why|calculate|find|determine|compute|"
    r"estimate|figure out|work out"
)
_ASK = re.compile(rf"\b(?:{_ASK_WORDS})\b", re.IGNORECASE)
_LEAD_FACT = re.compile(rf"^(?P<fact>.+[,;])\s+(?P<ask>(?:{_ASK_WORDS})\b.*)$", re.IGNORECASE)
_LEAD_CONDITION = re.compile(
    r"^(?P<fact>(?:if|when|after|since|given|assuming)\b.+?)\s+(?P<ask>(?:how|what)\b.*)$",
    re.IGNORECASE,
)
_TRAILING_CONDITION = re.compile(
    r"^(?P<ask>.+?)\s+(?P<cond>(?:if|when|after|given|assuming|since)\b[^?]+)$", re.IGNORECASE
)
_AUXILIARY_END = re.compile(
    r"\b(?:is|are|was|were|do|does|did|will|would|can|could|has|have|had|should)$",
    re.IGNORECASE,
)
_VERB_START = re.compile(r"\s+(?=(?:is|are|was|were|has|have|had|will|can|costs?|takes?)\s)")
_PHRASE = re.compile(
    r"\s+(?=(?:out of|in|for|at|by|with|from|on|over|after|before|during|per|to|than|each|every)\s)"
)
_STRAY = re.compile(
    r"^(?:(?:give|provide|put|write|present|report)\s+(?:the|your)\s+(?:final\s+)?"
    r"(?:result|answer)\b|do\s+not\s+include\s+(?:the\s+)?units\b|"
    r"(?:answer|respond)\s+with\s+(?:only|just)\b|(?:express|state)\s+your\s+(?:final\s+)?answer\b)",
    re.IGNORECASE,
)
# Clause boundaries, strongest first; a fact is split at the best one near its middle.
_CLAUSE_SEPARATORS = (
    re.compile(r";\s+"),
    re.compile(r",\s+(?=(?:and|but|so|then|while|whereas|which|who)\b)"),
    re.compile(r",\s+(?=[A-Za-z$])"),
    re.compile(r"\s+(?=(?:and|but|then|while|so)\s)"),
)
_MIN_CLAUSE_WORDS = 3


def is_stray_instruction(sentence: str) -> bool:
    """Whether ``sentence`` only formats the answer ("Do not include units.")."""
    return bool(_STRAY.match(sentence.strip()))


def strip_stray_instructions(question: str) -> str:
    """``question`` without its answer-format sentences (GSM-Symbolic appends them).

    A question without such sentences is returned unchanged (whitespace included).
    """
    sentences = split_sentences(question)
    kept = [s for s in sentences if not is_stray_instruction(s)]
    return question if len(kept) == len(sentences) else " ".join(kept)


def shard_math(question: str) -> tuple[Shard, ...]:
    """Shard a math word problem: shard 1 asks the question, the others state its facts.

    All shards are required and keep the problem's own words (only capitalisation and end
    punctuation change). Problems too short for three shards are cut further, from the most
    to the least natural cut (see :func:`_ensure_enough`); a problem with no cut at all yields
    fewer than three shards rather than invented ones. More than nine facts are merged
    pairwise (the shortest adjacent pair first) down to nine.

    Raises:
        DataError: ``question`` has no text besides answer-format instructions.
    """
    sentences = [s for s in split_sentences(question) if not is_stray_instruction(s)]
    if not sentences:
        raise DataError(f"math question has no content: {question!r}")
    ask, facts = _question_and_facts(sentences)
    ask, facts = _ensure_enough(ask, facts)
    facts = merge_down(facts, MAX_SHARDS - 1)
    texts = [tidy(ask), *(tidy(f) for f in facts)]
    return tuple(Shard(id=i, text=t) for i, t in enumerate(texts, start=1))


def _question_and_facts(sentences: list[str]) -> tuple[str, list[str]]:
    """Pick the question sentence; the rest, in order, are facts."""
    index = _question_index(sentences)
    facts = sentences[:index] + sentences[index + 1 :]
    lead, ask = _split_lead_fact(sentences[index])
    if lead:
        facts.insert(index, lead)
    return ask, facts


def _question_index(sentences: list[str]) -> int:
    """The last sentence with a "?", else the last one with a question word, else the last."""
    for test in (lambda s: "?" in s, lambda s: bool(_ASK.search(s))):
        for i in range(len(sentences) - 1, -1, -1):
            if test(sentences[i]):
                return i
    return len(sentences) - 1


def _split_lead_fact(sentence: str) -> tuple[str, str]:
    """Split "If X, how many Y?" into ("If X,", "how many Y?"); ("", sentence) otherwise."""
    for pattern in (_LEAD_FACT, _LEAD_CONDITION):
        match = pattern.match(sentence)
        if match and word_count(match["fact"]) >= _MIN_CLAUSE_WORDS:
            return match["fact"], match["ask"]
    return "", sentence


def _ensure_enough(ask: str, facts: list[str]) -> tuple[str, list[str]]:
    """Split until there are 2+ facts, from the most to the least natural cut.

    First facts at clause boundaries, then the question's trailing condition ("... if X?"),
    then the question's trailing phrase ("... in 4 weeks?"), then facts' trailing phrases,
    and as a last resort a fact's subject from its predicate.
    """
    facts = _split_until_enough(facts, split_clause)
    for move in (_TRAILING_CONDITION, None):
        if len(facts) < MIN_SHARDS - 1:
            ask, facts = _move_tail(ask, facts, move)
    facts = _split_until_enough(facts, split_phrase)
    return ask, _split_until_enough(facts, _split_at_verb)


def _split_until_enough(facts: list[str], splitter: Callable[[str], Halves | None]) -> list[str]:
    """Split the longest splittable fact with ``splitter`` until there are 2+ facts."""
    while len(facts) < MIN_SHARDS - 1:
        for i in sorted(range(len(facts)), key=lambda j: -word_count(facts[j])):
            halves = splitter(facts[i])
            if halves:
                facts = [*facts[:i], *halves, *facts[i + 1 :]]
                break
        else:
            return facts
    return facts


def _move_tail(
    ask: str, facts: list[str], pattern: re.Pattern[str] | None
) -> tuple[str, list[str]]:
    """Move the question's trailing condition (or, without a pattern, phrase) into a fact."""
    body = ask.rstrip("?.! ")
    end = ask[len(body) :].strip() or "?"
    if pattern is not None:
        match = pattern.match(body)
        halves = (match["ask"], match["cond"]) if match else None
    else:
        halves = split_phrase(body)
    if not halves or min(word_count(halves[0]), word_count(halves[1])) < _MIN_CLAUSE_WORDS - 1:
        return ask, facts
    if _AUXILIARY_END.search(halves[0]):  # "How many mugs are | in the lounge?" stays whole
        return ask, facts
    return halves[0] + end, [*facts, halves[1]]


def split_clause(text: str) -> Halves | None:
    """Split ``text`` at its strongest clause boundary nearest the middle (3+ words a side)."""
    middle = len(text) / 2
    for separator in _CLAUSE_SEPARATORS:
        cuts = [
            (m.start(), m.end())
            for m in separator.finditer(text)
            if min(word_count(text[: m.start()]), word_count(text[m.end() :])) >= _MIN_CLAUSE_WORDS
        ]
        if cuts:
            start, end = min(cuts, key=lambda cut: abs(cut[0] - middle))
            return text[:start].strip(), text[end:].strip()
    return None


def split_phrase(text: str) -> Halves | None:
    """Split off ``text``'s last prepositional phrase ("... | for breakfast"), if any."""
    cuts = [
        m.start()
        for m in _PHRASE.finditer(text)
        if word_count(text[: m.start()]) >= _MIN_CLAUSE_WORDS and word_count(text[m.end() :]) >= 2
    ]
    return (text[: cuts[-1]].strip(), text[cuts[-1] :].strip()) if cuts else None


def _split_at_verb(text: str) -> Halves | None:
    """Last resort: split a fact before its verb ("40% of the pupils | are boys")."""
    cuts = [m.start() for m in _VERB_START.finditer(text) if word_count(text[: m.start()]) >= 2]
    cuts = [c for c in cuts if word_count(text[c:]) >= 2]
    if not cuts:
        return None
    middle = len(text) / 2
    cut = min(cuts, key=lambda c: abs(c - middle))
    return text[:cut].strip(), text[cut:].strip()
