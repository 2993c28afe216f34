"""Shard matchers: which shards of an intent does a user turn reveal?

:class:`LexicalShardMatcher` is the offline default: a shard counts as revealed by a turn when
every number of the shard appears in the turn and enough of its content lemmas do.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from userlm_env.metrics.text import content_lemmas, is_number
from userlm_env.types import Intent

__all__ = ["LexicalShardMatcher", "ShardMatcher"]


@runtime_checkable
class ShardMatcher(Protocol):
    """Maps one user turn to the ids of the intent's shards it reveals."""

    def match(self, turn: str, intent: Intent) -> tuple[int, ...]:
        """Return the sorted ids of the shards of ``intent`` that ``turn`` reveals."""
        ...


class LexicalShardMatcher:
    """Content-word and number overlap between a turn and each shard.

    Args:
        threshold: Fraction of a shard's content lemmas (words) that must appear in the turn.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def match(self, turn: str, intent: Intent) -> tuple[int, ...]:
        """Ids of the shards whose numbers all occur in ``turn`` and whose words mostly do."""
        seen = set(content_lemmas(turn))
        return tuple(s.id for s in intent.shards if self._covers(seen, s.text))

    def _covers(self, seen: set[str], shard_text: str) -> bool:
        lemmas = content_lemmas(shard_text)
        numbers = {t for t in lemmas if is_number(t)}
        words = {t for t in lemmas if not is_number(t)}
        if not numbers <= seen:
            return False
        if not words:
            return bool(numbers)
        return len(words & seen) / len(words) >= self.threshold
