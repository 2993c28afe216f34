"""Lexical diversity: exact pairwise Jaccard of unigram sets as matrix operations.

For ``n`` sets over a vocabulary ``V`` the sets become rows of a 0/1 matrix ``X`` (``n x V``);
``X @ X.T`` holds every pairwise intersection size and the union is ``|A| + |B| - |A & B|``.
For many sets, words found in a single set (which cannot be in any intersection) only count
towards the set sizes and are left out of the matrix, which keeps it small. The result equals
the plain set-by-set computation (:func:`naive_mean_pairwise_jaccard`, kept as the reference and the
benchmark's baseline) up to float rounding.

:class:`EpisodeHistory` keeps the unigram sets of earlier episodes per intent, for the
per-step ``diversity`` value of the environments.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np

__all__ = [
    "EpisodeHistory",
    "diversity_against",
    "jaccard",
    "mean_pairwise_jaccard",
    "naive_mean_pairwise_jaccard",
    "pairwise_jaccard",
    "unigram_difference",
]

#: Rows per block of the intersection product (bounds memory for thousands of sets).
_BLOCK_ROWS = 1024
#: Above this many sets, words found in a single set are left out of the matrix.
_PRUNE_ABOVE = 64


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """``|a & b| / |a | b|``; two empty sets are identical (1.0)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _incidence(sets: Sequence[Iterable[str]]) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrix (sets x words) and every set's size. With many sets, words found in one set
    only are left out of the matrix (they change sizes, never intersections)."""
    frozen = [s if isinstance(s, frozenset) else frozenset(s) for s in sets]
    ids: dict[str, int] = {}
    columns = np.fromiter((ids.setdefault(w, len(ids)) for s in frozen for w in s), dtype=np.intp)
    sizes = np.fromiter((len(s) for s in frozen), dtype=np.intp, count=len(frozen))
    rows = np.repeat(np.arange(len(frozen)), sizes)
    width = len(ids)
    if len(frozen) > _PRUNE_ABOVE and columns.size:
        shared = np.bincount(columns, minlength=width) > 1
        remap = np.cumsum(shared) - 1
        rows, columns, width = (
            rows[shared[columns]],
            remap[columns[shared[columns]]],
            int(shared.sum()),
        )
    matrix = np.zeros((len(frozen), width), dtype=np.float32)
    matrix[rows, columns] = 1.0
    return matrix, sizes.astype(np.float64)


def _intersections(matrix: np.ndarray) -> np.ndarray:
    """``matrix @ matrix.T`` in row blocks (exact: small integer counts in float32)."""
    n = matrix.shape[0]
    inter = np.empty((n, n), dtype=np.float64)
    for start in range(0, n, _BLOCK_ROWS):
        inter[start : start + _BLOCK_ROWS] = matrix[start : start + _BLOCK_ROWS] @ matrix.T
    return inter


def _ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """``inter / union`` with 1.0 where both sets are empty."""
    safe = np.where(union > 0, union, 1.0)
    return np.where(union > 0, inter / safe, 1.0)


def pairwise_jaccard(sets: Sequence[Iterable[str]]) -> np.ndarray:
    """The ``n x n`` matrix of Jaccard indices (diagonal 1.0)."""
    matrix, sizes = _incidence(sets)
    inter = _intersections(matrix)
    result = _ratio(inter, sizes[:, None] + sizes[None, :] - inter)
    np.fill_diagonal(result, 1.0)
    return result


def mean_pairwise_jaccard(sets: Sequence[Iterable[str]]) -> float | None:
    """Mean Jaccard index over the ``n (n - 1) / 2`` unordered pairs; ``None`` below 2 sets."""
    n = len(sets)
    if n < 2:
        return None
    matrix, sizes = _incidence(sets)
    first, second = np.triu_indices(n, k=1)
    inter = _intersections(matrix)[first, second]
    return float(_ratio(inter, sizes[first] + sizes[second] - inter).mean())


def unigram_difference(sets: Sequence[Iterable[str]]) -> float | None:
    """``1 - mean pairwise Jaccard`` (paper appendix D.3); ``None`` below 2 sets."""
    overlap = mean_pairwise_jaccard(sets)
    return None if overlap is None else 1.0 - overlap


def naive_mean_pairwise_jaccard(sets: Sequence[Iterable[str]]) -> float | None:
    """The same mean computed pair by pair with Python sets (reference and baseline)."""
    frozen = [frozenset(s) for s in sets]
    pairs = [jaccard(a, b) for a, b in combinations(frozen, 2)]
    return sum(pairs) / len(pairs) if pairs else None


def diversity_against(current: frozenset[str], earlier: Sequence[frozenset[str]]) -> float | None:
    """``1 - mean Jaccard`` of ``current`` with each earlier set; ``None`` without any."""
    if not earlier:
        return None
    return 1.0 - sum(jaccard(current, e) for e in earlier) / len(earlier)


class EpisodeHistory:
    """Unigram sets of the user turns of finished episodes, per intent id.

    Args:
        max_per_intent: How many of the latest episodes to keep per intent (bounds the cost
            of the per-step comparison in long runs on few intents).
    """

    def __init__(self, max_per_intent: int = 50) -> None:
        if max_per_intent < 1:
            raise ValueError(f"max_per_intent must be >= 1, got {max_per_intent}")
        self.max_per_intent = max_per_intent
        self._sets: defaultdict[str, deque[frozenset[str]]] = defaultdict(
            lambda: deque(maxlen=self.max_per_intent)
        )

    def earlier(self, intent_id: str) -> tuple[frozenset[str], ...]:
        """The kept sets of earlier episodes on ``intent_id``, oldest first."""
        return tuple(self._sets.get(intent_id, ()))

    def add(self, intent_id: str, words: frozenset[str]) -> None:
        """Remember one finished episode's user-turn unigrams."""
        self._sets[intent_id].append(words)

    def clear(self) -> None:
        """Forget every episode (a new seed starts a new experiment)."""
        self._sets.clear()
