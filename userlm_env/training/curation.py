"""Which training conversations are kept, and in which split: near-duplicates and user splits.

**Near-duplicates.** Every first user turn is cut into word 7-grams (lower-cased, whitespace
tokens); a 7-gram's *document frequency* is the number of conversations whose first turn contains
it. A first turn is a near-duplicate when one of its 7-grams reaches ``threshold``. As in the paper,
*all* near-duplicates are removed by default: such frequent templates are prompt scaffolds, not
natural user behaviour. ``keep_representative=True`` keeps the first conversation (in input order)
of each template instead. First turns shorter than 7 words have no 7-gram and are never removed.

**Splits.** A user is the ``user_id`` (hashed IP for WildChat). Each user belongs to one country
(their most frequent one; ties go to the alphabetically first). Within a country, users are ordered
by ``sha256(seed, user_id)`` and cut at the split fractions (90/5/5 by default), so every split
holds users from every large-enough country and no user appears in two splits.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from userlm_env.training.data import Conversation

__all__ = ["DedupReport", "Splits", "assign_splits", "first_turn_ngrams", "remove_near_duplicates"]

_SPLITS = ("train", "validation", "test")


# --- near-duplicate removal ------------------------------------------------------------------


@dataclass(frozen=True)
class DedupReport:
    """What :func:`remove_near_duplicates` did.

    Attributes:
        threshold: Document frequency from which a 7-gram marks a template.
        kept: Conversations kept.
        removed: Conversations removed as near-duplicates.
        templates: The most frequent template 7-grams and their document frequencies.
        removed_ids: Ids of the removed conversations.
    """

    threshold: int
    kept: int
    removed: int
    templates: tuple[tuple[str, int], ...]
    removed_ids: tuple[str, ...] = ()


def first_turn_ngrams(text: str, n: int = 7) -> set[str]:
    """The distinct word ``n``-grams of ``text`` (lower-cased, split on whitespace)."""
    words = text.casefold().split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def remove_near_duplicates(
    conversations: Sequence[Conversation],
    threshold: int,
    *,
    n: int = 7,
    keep_representative: bool = False,
    top: int = 20,
) -> tuple[list[Conversation], DedupReport]:
    """Drop conversations whose first user turn shares a frequent ``n``-gram (see module doc).

    Memory stays small on WildChat-sized corpora: the first pass counts 64-bit hashes of the
    n-grams in one sorted array; only the frequent n-grams are kept as text in the second pass.
    """
    if threshold < 2:
        raise ValueError(f"threshold must be at least 2 conversations, got {threshold}")
    frequent = _frequent_hashes(conversations, n, threshold)
    kept: list[Conversation] = []
    removed: list[str] = []
    represented: set[str] = set()
    templates: Counter[str] = Counter()
    for conversation in conversations:
        hits = {
            g for g in first_turn_ngrams(conversation.first_user_turn, n) if hash(g) in frequent
        }
        templates.update(hits)
        if hits and not (keep_representative and not hits & represented):
            removed.append(conversation.conversation_id)
        else:
            kept.append(conversation)
        represented |= hits
    top_templates = tuple(templates.most_common(top))
    return kept, DedupReport(threshold, len(kept), len(removed), top_templates, tuple(removed))


def _frequent_hashes(conversations: Sequence[Conversation], n: int, threshold: int) -> set[int]:
    """Hashes of the n-grams found in at least ``threshold`` first turns (one count per turn)."""
    import numpy as np

    hashes = np.fromiter(
        (hash(g) for c in conversations for g in first_turn_ngrams(c.first_user_turn, n)),
        dtype=np.int64,
    )
    values, counts = np.unique(hashes, return_counts=True)
    return {int(v) for v in values[counts >= threshold]}


# --- user-level splits -----------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    """Conversations split by user: no user appears in two splits."""

    train: list[Conversation]
    validation: list[Conversation]
    test: list[Conversation]

    def __iter__(self) -> Iterator[list[Conversation]]:
        return iter((self.train, self.validation, self.test))


def assign_splits(
    conversations: Sequence[Conversation],
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.9, 0.05, 0.05),
) -> Splits:
    """Split users per country by a seeded hash into train/validation/test (see module doc)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    split_of = _user_splits(conversations, seed, fractions)
    buckets: dict[str, list[Conversation]] = {name: [] for name in _SPLITS}
    for conversation in conversations:
        buckets[split_of[conversation.user_id]].append(conversation)
    return Splits(**buckets)


def _user_splits(
    conversations: Sequence[Conversation], seed: int, fractions: Sequence[float]
) -> dict[str, str]:
    users_by_country: dict[str, list[str]] = defaultdict(list)
    for user, country in _home_countries(conversations).items():
        users_by_country[country].append(user)
    train_end, validation_end = fractions[0], fractions[0] + fractions[1]
    split_of: dict[str, str] = {}
    for users in users_by_country.values():
        ordered = sorted(users, key=lambda user: _user_hash(seed, user))
        for rank, user in enumerate(ordered):
            position = (rank + 0.5) / len(ordered)
            split_of[user] = _pick(position, train_end, validation_end)
    return split_of


def _home_countries(conversations: Sequence[Conversation]) -> dict[str, str]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for conversation in conversations:
        counts[conversation.user_id][conversation.country] += 1
    return {user: min(c, key=lambda k: (-c[k], k)) for user, c in counts.items()}


def _user_hash(seed: int, user_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{user_id}".encode()).hexdigest()


def _pick(position: float, train_end: float, validation_end: float) -> str:
    if position < train_end:
        return "train"
    return "validation" if position < validation_end else "test"
