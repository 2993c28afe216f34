"""Which training conversations are kept, and in which split: near-duplicates and user splits.

**Near-duplicates.** Every first user turn is cut into word 7-grams (lower-cased, whitespace
tokens); a 7-gram's *document frequency* is the number of conversations whose first turn contains
it. A first turn is a near-duplicate when one of its 7-grams reaches ``threshold``. As in the paper,
*all* near-duplicates are removed by default: such frequent templates are prompt scaffolds, not
natural user behaviour. ``keep_representative=True`` keeps the first conversation (in input order)
of each template instead. First turns shorter than 7 words have no 7-gram and are never removed.

**Splits.** A user is the ``user_id`` (hashed IP for WildChat). A conversation without a user id
is its own user, keyed by its :func:`messages_fingerprint`, so identical copies stay in one split
(but one person's conversations may land in different splits; the log says how many conversations
have no user id). Each user belongs to one country: their most frequent known one (ties go to the
alphabetically first); users with no known country form one group of their own. Within a country,
users are ordered by ``sha256(seed, user)`` and cut at the split fractions (90/5/5 by default), so
every split holds users from every large-enough country and no user appears in two splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from userlm_env.training.data import Conversation
    from userlm_env.types import Message

__all__ = [
    "DedupReport",
    "Splits",
    "assign_splits",
    "first_turn_ngrams",
    "messages_fingerprint",
    "remove_near_duplicates",
    "split_user",
]

log = logging.getLogger(__name__)

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


def messages_fingerprint(messages: Sequence[Message]) -> str:
    """The SHA-256 hex digest of the messages' roles and contents (compact JSON of
    ``[[role, content], ...]``, UTF-8): equal exactly when the messages are."""
    pairs = [[m["role"], m["content"]] for m in messages]
    text = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_user(conversation: Conversation) -> str:
    """Who a conversation belongs to for the splits: its ``user_id``, or, without one, the
    conversation itself (by its messages' fingerprint)."""
    if conversation.user_id is not None:
        return conversation.user_id
    return "\x00conversation:" + messages_fingerprint(conversation.messages)


def assign_splits(
    conversations: Sequence[Conversation],
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.9, 0.05, 0.05),
) -> Splits:
    """Split users per country by a seeded hash into train/validation/test (see module doc)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    users = [split_user(conversation) for conversation in conversations]
    without = sum(conversation.user_id is None for conversation in conversations)
    if without:
        log.info(
            "splits: %d of %d conversations have no user id; each is split as its own user "
            "(identical copies stay together), so one person's conversations may land in "
            "different splits",
            without,
            len(conversations),
        )
    split_of = _user_splits(conversations, users, seed, fractions)
    buckets: dict[str, list[Conversation]] = {name: [] for name in _SPLITS}
    for conversation, user in zip(conversations, users, strict=True):
        buckets[split_of[user]].append(conversation)
    return Splits(**buckets)


def _user_splits(
    conversations: Sequence[Conversation],
    users: Sequence[str],
    seed: int,
    fractions: Sequence[float],
) -> dict[str, str]:
    users_by_country: dict[str | None, list[str]] = defaultdict(list)
    for user, country in _home_countries(conversations, users).items():
        users_by_country[country].append(user)
    train_end, validation_end = fractions[0], fractions[0] + fractions[1]
    split_of: dict[str, str] = {}
    for members in users_by_country.values():
        ordered = sorted(members, key=lambda user: _user_hash(seed, user))
        for rank, user in enumerate(ordered):
            position = (rank + 0.5) / len(ordered)
            split_of[user] = _pick(position, train_end, validation_end)
    return split_of


def _home_countries(
    conversations: Sequence[Conversation], users: Sequence[str]
) -> dict[str, str | None]:
    """Each user's most frequent known country (``None`` when none is known)."""
    counts: dict[str, Counter[str | None]] = defaultdict(Counter)
    for conversation, user in zip(conversations, users, strict=True):
        counts[user][conversation.country] += 1
    return {user: min(c, key=lambda k: (k is None, -c[k], k or "")) for user, c in counts.items()}


def _user_hash(seed: int, user_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{user_id}".encode()).hexdigest()


def _pick(position: float, train_end: float, validation_end: float) -> str:
    if position < train_end:
        return "train"
    return "validation" if position < validation_end else "test"
