"""Metrics of one simulated conversation (paper appendix D.3) and simulator faithfulness flags.

An :class:`EpisodeView` is what every metric reads: the intent, the spoken user turns, the
shard ids each turn revealed, the assistant replies and how the episode ended. Build it from a
live :class:`~userlm_env.types.ConversationState` or from a ``results.jsonl`` record.

Per-episode metrics: Intent Coverage, Repeat Required, Skip Non-Required (``None`` when the
intent has no non-required shard), Add Demands (novel information beyond the intent, found by a
:class:`DemandDetector`: lexical by default, an LLM judge optionally). Faithfulness flags:

* ``role_break``: a user turn reads like the assistant's (assistant boilerplate, a solution
  in code, or the reference answer the user is not supposed to know).
* ``drift``: ``drift_turns`` consecutive user turns reveal no shard while a required shard is
  still unrevealed (turns after every required shard is out, such as requests for the final
  answer, never count).
* ``premature_end``: the user ended the conversation before every required shard was out.

:func:`pace` describes one user turn (its length and the shards it newly revealed).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from userlm_env.errors import DataError
from userlm_env.json_cache import JsonCache, cache_key
from userlm_env.metrics.judge import ChatClient, ask_json
from userlm_env.metrics.text import content_set, is_number, numbers, word_count
from userlm_env.types import ConversationState, Intent, Message, Shard

__all__ = [
    "DemandDetector",
    "EpisodeMetricsConfig",
    "EpisodeView",
    "LLMDemandJudge",
    "LexicalDemandDetector",
    "RoleBreakDetector",
    "drift_run",
    "episode_metrics",
    "intent_coverage",
    "pace",
    "premature_end",
    "intent_of_record",
    "repeat_required",
    "shard_coverage",
    "skip_non_required",
]


@dataclass(frozen=True)
class EpisodeView:
    """One conversation as the metrics read it.

    Attributes:
        intent: What the user wanted.
        user_texts: The spoken user turns (an end marker is not a turn).
        revealed: The shard ids each spoken user turn revealed, aligned with ``user_texts``.
        assistant_texts: The assistant replies; reply ``i`` answers user turn ``i``.
        user_ended: The user ended the conversation.
        solved: An assistant reply solved the task.
    """

    intent: Intent
    user_texts: tuple[str, ...]
    revealed: tuple[tuple[int, ...], ...]
    assistant_texts: tuple[str, ...] = ()
    user_ended: bool = False
    solved: bool = False

    def __post_init__(self) -> None:
        if len(self.user_texts) != len(self.revealed):
            raise ValueError(
                f"{len(self.user_texts)} user turns but {len(self.revealed)} revealed entries"
            )

    @classmethod
    def from_state(cls, state: ConversationState) -> EpisodeView:
        """The view of a live (or finished) conversation."""
        return cls(
            intent=state.intent,
            user_texts=tuple(t.text for t in state.user_turns),
            revealed=tuple(tuple(ids) for ids in state.revealed),
            assistant_texts=tuple(m["content"] for m in state.messages if m["role"] == "assistant"),
            user_ended=state.user_ended,
            solved=state.solved,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any], intent: Intent | None = None) -> EpisodeView:
        """The view of a ``results.jsonl`` record (:class:`userlm_env.rollout.EpisodeRecord`);
        the intent is the one the record carries unless given."""
        intent = intent or intent_of_record(record)
        if record.get("intent_id") != intent.intent_id:
            raise DataError(f"record {record.get('key')!r} is not about intent {intent.intent_id}")
        messages = record.get("messages") or []
        users = [m["content"] for m in messages if m.get("role") == "user"]
        revealed = [tuple(ids) for ids in record.get("revealed") or []][: len(users)]
        if len(revealed) != len(users):
            raise DataError(f"record {record.get('key')!r}: fewer revealed entries than turns")
        return cls(
            intent=intent,
            user_texts=tuple(users),
            revealed=tuple(revealed),
            assistant_texts=tuple(m["content"] for m in messages if m.get("role") == "assistant"),
            user_ended=record.get("termination_reason") == "user_ended",
            solved=bool(record.get("solved")),
        )

    def revealed_ids(self) -> frozenset[int]:
        """Every shard id revealed at least once."""
        return frozenset(i for ids in self.revealed for i in ids)


def intent_of_record(record: Mapping[str, Any]) -> Intent:
    """The intent a ``results.jsonl`` record carries (without its reference: records never
    hold the answer key).

    Raises:
        DataError: The record has no usable ``intent`` (written by an older version).
    """
    spec = record.get("intent")
    if not isinstance(spec, Mapping) or not spec.get("shards"):
        raise DataError(f"record {record.get('key')!r} carries no intent; re-run the episodes")
    shards = tuple(Shard(int(s["id"]), str(s["text"]), bool(s["required"])) for s in spec["shards"])
    return Intent(
        task=str(record.get("task")),
        intent_id=str(record.get("intent_id")),
        instruction=str(spec.get("instruction", "")),
        shards=shards,
    )


# --------------------------------------------------------------------------- D.3 metrics


def shard_coverage(intent: Intent, revealed: Iterable[int]) -> float:
    """Share of ``intent``'s shards among the ``revealed`` shard ids (ids it does not have do
    not count). The one definition of coverage: the env's ``info``, the records and the
    suite all use it."""
    known = {s.id for s in intent.shards}
    return len(known.intersection(revealed)) / len(known)


def intent_coverage(view: EpisodeView) -> float:
    """Share of the intent's shards revealed at least once (paper eq. 1)."""
    return shard_coverage(view.intent, view.revealed_ids())


def repeat_required(view: EpisodeView) -> bool:
    """Some required shard was revealed in two or more user turns (paper eq. 2)."""
    turns_per_shard = Counter(i for ids in view.revealed for i in set(ids))
    return any(turns_per_shard[i] >= 2 for i in view.intent.required_ids)


def skip_non_required(view: EpisodeView) -> bool | None:
    """Some non-required shard was never revealed (eq. 3); ``None`` when there is none."""
    optional = {s.id for s in view.intent.shards if not s.required}
    if not optional:
        return None
    return not optional <= view.revealed_ids()


def premature_end(view: EpisodeView) -> bool:
    """The user ended the conversation while a required shard was still unrevealed."""
    return view.user_ended and not view.intent.required_ids <= view.revealed_ids()


def drift_run(view: EpisodeView) -> int:
    """Longest run of consecutive user turns that revealed nothing while a required shard
    was still unrevealed."""
    pending, run, longest = set(view.intent.required_ids), 0, 0
    for ids in view.revealed:
        run = run + 1 if not ids and pending else 0
        longest = max(longest, run)
        pending -= set(ids)
    return longest


def pace(view: EpisodeView) -> dict[str, Any]:
    """The latest user turn: its index, its words, the user's words so far, new shard ids."""
    if not view.user_texts:
        return {"user_turn": 0, "words": 0, "cumulative_words": 0, "new_shards": []}
    before = frozenset(i for ids in view.revealed[:-1] for i in ids)
    return {
        "user_turn": len(view.user_texts),
        "words": word_count(view.user_texts[-1]),
        "cumulative_words": sum(word_count(t) for t in view.user_texts),
        "new_shards": sorted(set(view.revealed[-1]) - before),
    }


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


# --------------------------------------------------------------------------- all together


@dataclass(frozen=True)
class EpisodeMetricsConfig:
    """Settings of :func:`episode_metrics` (and of the per-step ``info`` of the envs)."""

    drift_turns: int = 3  # consecutive shard-less turns (required shards pending) that drift
    demands: DemandDetector = field(default_factory=LexicalDemandDetector)  # Add Demands
    role: RoleBreakDetector = field(default_factory=RoleBreakDetector)  # role-break finder

    def __post_init__(self) -> None:
        if self.drift_turns < 1:
            raise ValueError(f"drift_turns must be >= 1, got {self.drift_turns}")


def episode_metrics(
    view: EpisodeView, config: EpisodeMetricsConfig | None = None
) -> dict[str, Any]:
    """Every per-episode metric and flag of ``view`` as a JSON-ready dict."""
    config = config or EpisodeMetricsConfig()
    demand_turns = config.demands.novel_turns(view)
    broken = config.role.broken_turns(view)
    idle = drift_run(view)
    return {
        "intent_coverage": intent_coverage(view),
        "repeat_required": repeat_required(view),
        "skip_non_required": skip_non_required(view),
        "add_demands": bool(demand_turns),
        "demand_turns": demand_turns,
        "role_break": bool(broken),
        "role_break_turns": broken,
        "drift": idle >= config.drift_turns,
        "longest_idle_run": idle,
        "premature_end": premature_end(view),
        "user_turns": len(view.user_texts),
        "user_words": sum(word_count(t) for t in view.user_texts),
    }
