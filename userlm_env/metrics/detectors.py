"""The detectors behind two episode metrics: Add Demands and Role Break.

* :class:`DemandDetector` finds user turns that add information found in none of the intent's
  shards: :class:`LexicalDemandDetector` (default) or :class:`LLMDemandJudge` (a chat model).
* :class:`RoleBreakDetector` finds user turns that read like the assistant's: assistant
  boilerplate, a solution in code, or the reference answer the user is not supposed to know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from userlm_env.errors import DataError
from userlm_env.json_cache import JsonCache, cache_key
from userlm_env.metrics.judge import ChatClient, ask_json
from userlm_env.metrics.text import content_set, is_number, numbers
from userlm_env.metrics.view import EpisodeView
from userlm_env.types import Intent, Message

__all__ = [
    "ASSISTANT_PHRASES",
    "DemandDetector",
    "LLMDemandJudge",
    "LexicalDemandDetector",
    "RoleBreakDetector",
]


# --------------------------------------------------------------------------- Add Demands


@runtime_checkable
class DemandDetector(Protocol):
    """Finds the user turns that add information found in none of the intent's shards."""

    def novel_turns(self, view: EpisodeView) -> list[int]:
        """1-based indices of the user turns that introduce novel information."""
        ...


@lru_cache(maxsize=4096)
def _intent_vocabulary(instruction: str, shard_texts: tuple[str, ...]) -> frozenset[str]:
    return content_set((instruction, *shard_texts))


# Backticked or quoted literals; a single quote opens and closes only at a word boundary, so
# the apostrophes of "don't ... it's" never pair up.
_QUOTED = re.compile(r"`([^`\n]+)`|\"([^\"\n]+)\"|(?<!\w)'([^'\n]+?)'(?!\w)")


def _quoted(text: str) -> set[str]:
    return {next(g for g in m.groups() if g is not None).strip() for m in _QUOTED.finditer(text)}


@dataclass(frozen=True)
class LexicalDemandDetector:
    """A turn adds a demand when, compared with the intent (instruction and shards) and the
    assistant reply just before it, it brings a new number, a new quoted or backticked
    literal, or at least ``min_novel_words`` new content lemmas."""

    min_novel_words: int = 3  # new content lemmas that make a turn count on their own

    def novel_turns(self, view: EpisodeView) -> list[int]:
        """1-based indices of the user turns that introduce novel information."""
        intent = view.intent
        vocabulary = _intent_vocabulary(intent.instruction, tuple(s.text for s in intent.shards))
        source = intent.instruction + "\n" + "\n".join(s.text for s in intent.shards)
        flagged = []
        for index, text in enumerate(view.user_texts):
            context = _reply_before(view, index)
            if self._is_novel(text, vocabulary | content_set(context), source + "\n" + context):
                flagged.append(index + 1)
        return flagged

    def _is_novel(self, text: str, known: frozenset[str], source: str) -> bool:
        new = content_set(text) - known
        if any(is_number(w) for w in new):
            return True
        if any(q not in source for q in _quoted(text)):
            return True
        return sum(1 for w in new if not is_number(w)) >= self.min_novel_words


def _reply_before(view: EpisodeView, index: int) -> str:
    """The assistant reply that precedes user turn ``index`` (0-based), or ``""``."""
    return view.assistant_texts[index - 1] if 0 < index <= len(view.assistant_texts) else ""


_DEMAND_SYSTEM = """\
You review conversations in which a simulated user asks an assistant for help with a task. You \
get the task's information as numbered shards and the user's turns. For every user turn, list \
the pieces of information the user adds that appear in none of the shards: extra requirements, \
constraints, naming conventions, examples or test cases, preferences. Rewordings of shard \
content, greetings, thanks, complaints and requests for the answer are not new information.

Reply with one JSON object and nothing else, listing every turn in order:
{"turns": [{"turn": 1, "novel": []}, {"turn": 2, "novel": ["name the function rabbit"]}]}"""


class LLMDemandJudge:
    """Add Demands by a chat model (through :class:`userlm_env.llm.LLMClient`), cached.

    Args:
        client: The judge's client.
        cache_dir: Cache folder (keyed by model, intent and the user turns); ``None``: off.
        max_tries: Replies asked per conversation before :class:`DataError`.
    """

    def __init__(
        self, client: ChatClient, *, cache_dir: str | Path | None = None, max_tries: int = 2
    ) -> None:
        self.client, self.max_tries = client, max_tries
        self.cache = JsonCache(cache_dir)

    def novel_turns(self, view: EpisodeView) -> list[int]:
        """1-based indices of the user turns the judge found novel information in."""
        key = cache_key(
            "demands",
            "1",
            self.client.config.model,
            view.intent.intent_id,
            [s.text for s in view.intent.shards],
            list(view.user_texts),
        )
        cached = self.cache.get(key)
        if cached is None:
            cached = ask_json(
                self.client,
                [_demand_messages(view)],
                lambda _, reply: _validate_demands(reply, len(view.user_texts)),
                max_tries=self.max_tries,
            )[0]
            self.cache.put(key, cached)
        return list(cached)


def _demand_messages(view: EpisodeView) -> list[Message]:
    shards = "\n".join(f"[{s.id}] {s.text}" for s in view.intent.shards)
    spoken = "\n".join(f"Turn {i}: {t}" for i, t in enumerate(view.user_texts, 1))
    return [
        Message(role="system", content=_DEMAND_SYSTEM),
        Message(role="user", content=f"Shards:\n{shards}\n\nUser turns:\n{spoken}"),
    ]


def _validate_demands(reply: dict[str, Any], n_turns: int) -> list[int]:
    entries = reply.get("turns")
    if not isinstance(entries, list) or len(entries) != n_turns:
        raise DataError(f'"turns" must be a list with one entry for each of the {n_turns} turns')
    flagged = []
    for expected, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or entry.get("turn") != expected:
            raise DataError(f'entry {expected} must be an object with "turn": {expected}')
        novel = entry.get("novel")
        if not isinstance(novel, list) or not all(isinstance(x, str) for x in novel):
            raise DataError(f'"novel" of turn {expected} must be a list of strings')
        if any(x.strip() for x in novel):
            flagged.append(expected)
    return flagged


# --------------------------------------------------------------------------- role breaks

#: Phrases that open or close an assistant's reply, rarely a user's (lower case, regex).
ASSISTANT_PHRASES: tuple[str, ...] = (
    r"\bsure,? here(?:'s| is| are)\b",
    r"\bhere(?:'s| is) (?:the|a|an|your) (?:code|solution|implementation|function|answer)\b",
    r"\bas an ai\b",
    r"\bi(?:'m| am) an ai\b",
    r"\bi(?:'d| would) be (?:happy|glad) to help\b",
    r"\bi hope this helps\b",
    r"\blet me know if you (?:have|need)\b",
    r"\bis there anything else i can\b",
    r"\bgreat question\b",
)
_DEF = re.compile(r"^\s*def\s+\w+\s*\(", re.M)
_BODY = re.compile(r"^\s+(?:return|yield)\b", re.M)
_FENCED = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)


@dataclass(frozen=True)
class RoleBreakDetector:
    """Finds user turns that answer the user's own request or read like the assistant."""

    phrases: tuple[str, ...] = ASSISTANT_PHRASES  # assistant boilerplate (regex, lower case)

    def broken_turns(self, view: EpisodeView) -> list[int]:
        """1-based indices of the user turns that break the user role."""
        return [
            i
            for i, text in enumerate(view.user_texts, 1)
            if self.breaks_role(text, view.intent, "\n".join(view.assistant_texts[: i - 1]))
        ]

    def breaks_role(self, text: str, intent: Intent, said_before: str = "") -> bool:
        """Whether one user turn breaks the user role for ``intent``; ``said_before`` is what
        the assistant said earlier (a user may repeat an answer the assistant gave)."""
        lowered = text.lower()
        if any(re.search(p, lowered) for p in self.phrases):
            return True
        return _writes_code(text, intent) or _states_answer(text, intent, said_before)


def _writes_code(text: str, intent: Intent) -> bool:
    """New code: a function with a body, or a fenced block not copied from the instruction."""
    if _DEF.search(text) and _BODY.search(text):
        return True
    given = {line.strip() for line in intent.instruction.splitlines() if line.strip()}
    for block in _FENCED.findall(text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if any(line not in given for line in lines):
            return True
    return False


def _states_answer(text: str, intent: Intent, said_before: str) -> bool:
    """The reference answer of a math intent, unless the intent or the assistant stated it."""
    answer = intent.reference.get("answer")
    if answer is None:
        return False
    normalised = numbers(str(answer))
    if not normalised or normalised[-1] in numbers(intent.instruction + "\n" + said_before):
        return False
    return normalised[-1] in numbers(text)
