"""Shard matchers: which shards of an intent does a user turn reveal?

* :class:`LexicalShardMatcher` (offline default) scores each shard by the weighted share of its
  content lemmas and numbers found in the turn, where a lemma shared by many shards of the
  intent weighs little. Shards are then accepted greedily, best first, and only while each one
  brings evidence the accepted ones do not already explain: a turn that says "the next odd
  number if n is odd" reveals that shard, not also "the number of stones in the next level".
* :class:`LLMJudgeShardMatcher` asks a chat model (through :class:`userlm_env.llm.LLMClient`)
  to map a conversation's user turns to shard ids; replies are validated JSON and cached on
  disk per model, intent and turn text.
* :func:`matcher_scores` measures a matcher against known shard ids (micro precision, recall
  and F1 over turns).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, TypeGuard, runtime_checkable

from userlm_env.errors import DataError
from userlm_env.json_cache import JsonCache, cache_key
from userlm_env.metrics.judge import ChatClient, ask_json
from userlm_env.metrics.text import is_number, lemma, stopwords, tokens, unigrams
from userlm_env.types import Intent, Message, Shard

__all__ = [
    "JUDGE_PROMPT_VERSION",
    "LLMJudgeShardMatcher",
    "LabelledTurn",
    "LexicalShardMatcher",
    "MatchScores",
    "ShardMatcher",
    "judge_messages",
    "match_turns",
    "matcher_scores",
    "validate_judgement",
]


@runtime_checkable
class ShardMatcher(Protocol):
    """Maps one user turn to the ids of the intent's shards it reveals."""

    def match(self, turn: str, intent: Intent) -> tuple[int, ...]:
        """Return the sorted ids of the shards of ``intent`` that ``turn`` reveals."""
        ...


def match_turns(
    matcher: ShardMatcher, turns: Sequence[str], intent: Intent
) -> list[tuple[int, ...]]:
    """Shard ids of every turn of one conversation (one judge call when the matcher batches)."""
    batched = getattr(matcher, "match_turns", None)
    if callable(batched):
        return list(batched(turns, intent))
    return [matcher.match(turn, intent) for turn in turns]


# --------------------------------------------------------------------------- lexical


@dataclass(frozen=True)
class _Profile:
    """The evidence one shard offers: weighted lemmas and the numbers it states."""

    id: int
    weights: dict[str, float]
    numbers: frozenset[str]
    bigrams: frozenset[tuple[str, str]]

    @property
    def total(self) -> float:
        return sum(self.weights.values())


@lru_cache(maxsize=4096)
def _profiles(shards: tuple[Shard, ...], stopword_weight: float) -> tuple[_Profile, ...]:
    """Per-shard evidence: each lemma weighs ``base / (number of shards that contain it)``,
    where ``base`` is 1 for content lemmas and numbers and ``stopword_weight`` for stopwords."""
    bags = [_evidence(s.text, stopword_weight) for s in shards]
    frequency = Counter(lemma for bag in bags for lemma in bag)
    return tuple(
        _Profile(
            id=shard.id,
            weights={lemma: base / frequency[lemma] for lemma, base in bag.items()},
            numbers=frozenset(t for t in bag if is_number(t)),
            bigrams=_bigrams(shard.text),
        )
        for shard, bag in zip(shards, bags, strict=True)
    )


def _evidence(text: str, stopword_weight: float) -> dict[str, float]:
    """Every lemma of ``text`` with its base weight (stopwords count a little)."""
    stops = stopwords()
    bag: dict[str, float] = {}
    for token in tokens(text):
        base = stopword_weight if token in stops else 1.0
        key = lemma(token)
        bag[key] = max(base, bag.get(key, 0.0))
    return {k: v for k, v in bag.items() if v > 0}


def _bigrams(text: str) -> frozenset[tuple[str, str]]:
    words = tokens(text)
    return frozenset(pairwise(words))


@dataclass(frozen=True)
class _Candidate:
    """A shard whose evidence passed the thresholds for one turn."""

    score: float  # weighted share of the shard's evidence found in the turn
    order: float  # word-order agreement (share of the shard's bigrams in the turn)
    mass: float  # evidence weight found
    profile: _Profile
    hit: frozenset[str]  # the lemmas found


class LexicalShardMatcher:
    """Content-word and number overlap between a turn and each shard, explained greedily.

    Args:
        threshold: Weighted share of a shard's evidence that must appear in the turn.
        number_recall: Share of a shard's numbers that must appear in the turn.
        min_new: Share of a shard's evidence weight that must be *new*, i.e. not already
            found for a better shard accepted for the same turn.
        stopword_weight: Weight of a stopword relative to a content lemma (stopwords still
            count a little, so shards made only of stopwords can be matched).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        number_recall: float = 1.0,
        min_new: float = 0.2,
        stopword_weight: float = 0.1,
    ) -> None:
        for name, value in (("threshold", threshold), ("number_recall", number_recall)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        for name, value in (("min_new", min_new), ("stopword_weight", stopword_weight)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.threshold, self.number_recall = threshold, number_recall
        self.min_new, self.stopword_weight = min_new, stopword_weight

    def match(self, turn: str, intent: Intent) -> tuple[int, ...]:
        """Ids of the shards whose evidence ``turn`` carries, sorted."""
        seen, pairs = unigrams(turn), _bigrams(turn)
        profiles = _profiles(intent.shards, self.stopword_weight)
        found = (self._candidate(p, seen, pairs) for p in profiles)
        ranked = sorted((c for c in found if c), key=lambda c: (-c.score, -c.order, -c.mass))
        return tuple(sorted(self._explain(ranked)))

    def _candidate(
        self, profile: _Profile, seen: frozenset[str], pairs: frozenset[tuple[str, str]]
    ) -> _Candidate | None:
        total = profile.total
        if total <= 0 or not self._numbers_ok(profile, seen):
            return None
        hit = frozenset(lemma for lemma in profile.weights if lemma in seen)
        mass = sum(profile.weights[lemma] for lemma in hit)
        if mass < self.threshold * total:
            return None
        order = len(profile.bigrams & pairs) / len(profile.bigrams) if profile.bigrams else 0.0
        return _Candidate(round(mass / total, 9), round(order, 9), mass, profile, hit)

    def _numbers_ok(self, profile: _Profile, seen: frozenset[str]) -> bool:
        found = len(profile.numbers & seen)
        return found >= self.number_recall * len(profile.numbers)

    def _explain(self, ranked: list[_Candidate]) -> list[int]:
        explained: set[str] = set()
        accepted = []
        for candidate in ranked:
            weights = candidate.profile.weights
            new = sum(weights[lemma] for lemma in candidate.hit - explained)
            if new > 0 and new >= self.min_new * candidate.profile.total:
                accepted.append(candidate.profile.id)
                explained |= candidate.hit
        return accepted


# --------------------------------------------------------------------------- LLM judge

#: Bump when the judge prompt changes: it is part of the cache key.
JUDGE_PROMPT_VERSION = "1"

_JUDGE_SYSTEM = """\
You label conversations for a study of simulated users. The user in each conversation wants \
help with one task. The task's information has been split into numbered shards. For every \
user turn you are shown, decide which shards the turn actually states, either word for word \
or reworded with the same meaning.

Guidelines:
- A turn may state several shards, one shard, or none (greetings, thanks, complaints, \
questions about the assistant's reply, requests for the final answer).
- A shard the user states again in a later turn counts again in that turn.
- Count a shard only when its specific content is there (its numbers, names and conditions); \
a vague allusion does not count.
- Ignore anything that is not in the shards.

Reply with one JSON object and nothing else, listing every turn in order:
{"turns": [{"turn": 1, "shards": [1]}, {"turn": 2, "shards": []}]}"""


def judge_messages(turns: Sequence[str], intent: Intent) -> list[Message]:
    """The chat messages that ask the judge to map ``turns`` to ``intent``'s shards."""
    shards = "\n".join(f"[{s.id}] {s.text}" for s in intent.shards)
    spoken = "\n".join(f"Turn {i}: {t}" for i, t in enumerate(turns, 1))
    return [
        Message(role="system", content=_JUDGE_SYSTEM),
        Message(role="user", content=f"Shards:\n{shards}\n\nUser turns:\n{spoken}"),
    ]


def validate_judgement(
    reply: dict[str, Any], n_turns: int, shard_ids: Iterable[int]
) -> list[tuple[int, ...]]:
    """Shard ids per turn from a judge reply; :class:`DataError` unless it is well formed.

    Well formed: ``{"turns": [...]}`` with exactly one entry per turn 1..n_turns, each with an
    integer ``turn`` and a list ``shards`` of known shard ids.
    """
    entries = reply.get("turns")
    if not isinstance(entries, list):
        raise DataError('"turns" must be a list')
    known, found = set(shard_ids), {}
    for entry in entries:
        turn, ids = _judged_turn(entry, n_turns, known)
        if turn in found:
            raise DataError(f"turn {turn} is listed twice")
        found[turn] = ids
    missing = sorted(set(range(1, n_turns + 1)) - set(found))
    if missing:
        raise DataError(f"turns {missing} are missing; list all {n_turns} turns")
    return [found[t] for t in range(1, n_turns + 1)]


def _judged_turn(entry: Any, n_turns: int, known: set[int]) -> tuple[int, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise DataError("each entry of turns must be an object")
    turn, ids = entry.get("turn"), entry.get("shards")
    if not _is_int(turn) or not 1 <= turn <= n_turns:
        raise DataError(f"turn must be an integer from 1 to {n_turns}, got {turn!r}")
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        raise DataError(f"shards of turn {turn} must be a list of integers")
    unknown = sorted(set(ids) - known)
    if unknown:
        raise DataError(f"turn {turn} names unknown shard ids {unknown}; known: {sorted(known)}")
    return turn, tuple(sorted(set(ids)))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _judged_ids(value: Any | None) -> tuple[int, ...]:
    """One turn's shard ids, read from the cache or just judged; ``None`` would be a bug."""
    if value is None:
        raise RuntimeError("a turn was left without judged shard ids")
    return tuple(value)


class LLMJudgeShardMatcher:
    """A chat model maps user turns to shard ids; validated, retried, cached.

    Args:
        client: An :class:`~userlm_env.llm.LLMClient` (or any :class:`ChatClient`).
        cache_dir: Folder of the per-turn cache (keyed by model, prompt version, intent and
            turn text); ``None`` disables it.
        max_tries: Replies asked per conversation before giving up with :class:`DataError`.
        seed: Sampling seed sent with every request.
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        cache_dir: str | Path | None = None,
        max_tries: int = 2,
        seed: int | None = 0,
    ) -> None:
        self.client, self.max_tries, self.seed = client, max_tries, seed
        self.cache = JsonCache(cache_dir)

    def match(self, turn: str, intent: Intent) -> tuple[int, ...]:
        """Shard ids of one turn judged on its own."""
        return self.match_turns([turn], intent)[0]

    def match_turns(self, turns: Sequence[str], intent: Intent) -> list[tuple[int, ...]]:
        """Shard ids of each turn of one conversation (one request unless all are cached)."""
        return self.match_many([(turns, intent)])[0]

    def match_many(
        self, conversations: Sequence[tuple[Sequence[str], Intent]]
    ) -> list[list[tuple[int, ...]]]:
        """Shard ids per turn for many conversations; the uncached ones go out concurrently."""
        keys = [[self._key(t, intent) for t in turns] for turns, intent in conversations]
        cached = [[self.cache.get(k) for k in row] for row in keys]
        todo = [i for i, row in enumerate(cached) if row and any(v is None for v in row)]
        if todo:
            judged = self._judge([conversations[i] for i in todo])
            for index, labels in zip(todo, judged, strict=True):
                cached[index] = [list(ids) for ids in labels]
                for key, ids in zip(keys[index], labels, strict=True):
                    self.cache.put(key, list(ids))
        return [[_judged_ids(v) for v in row] for row in cached]

    def _judge(
        self, conversations: Sequence[tuple[Sequence[str], Intent]]
    ) -> list[list[tuple[int, ...]]]:
        prompts = [judge_messages(turns, intent) for turns, intent in conversations]

        def validate(index: int, reply: dict[str, Any]) -> list[tuple[int, ...]]:
            turns, intent = conversations[index]
            return validate_judgement(reply, len(turns), (s.id for s in intent.shards))

        return ask_json(self.client, prompts, validate, max_tries=self.max_tries, seed=self.seed)

    def _key(self, turn: str, intent: Intent) -> str:
        shards = [(s.id, s.text, s.required) for s in intent.shards]
        version = JUDGE_PROMPT_VERSION
        return cache_key(
            "shards", version, self.client.config.model, intent.intent_id, shards, turn
        )


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class LabelledTurn:
    """A user turn with the shard ids it truly reveals."""

    intent: Intent
    text: str
    shard_ids: tuple[int, ...]


@dataclass(frozen=True)
class MatchScores:
    """Micro-averaged agreement of matched with true shard ids over many turns."""

    precision: float
    recall: float
    f1: float
    turns: int
    true_ids: int
    matched_ids: int


def matcher_scores(matcher: ShardMatcher, turns: Iterable[LabelledTurn]) -> MatchScores:
    """Micro precision, recall and F1 of ``matcher`` over ``turns`` (pairs of turn x shard id)."""
    hits = n_true = n_found = n_turns = 0
    for turn in turns:
        found = set(matcher.match(turn.text, turn.intent))
        truth = set(turn.shard_ids)
        hits += len(found & truth)
        n_true, n_found, n_turns = n_true + len(truth), n_found + len(found), n_turns + 1
    if n_turns == 0:
        raise ValueError("matcher_scores needs at least one turn")
    precision = hits / n_found if n_found else 1.0
    recall = hits / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return MatchScores(precision, recall, f1, n_turns, n_true, n_found)
