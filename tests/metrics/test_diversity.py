"""Pairwise Jaccard as matrix operations against hand values and the pair-by-pair reference."""

from __future__ import annotations

import random

import numpy as np
import pytest

from userlm_env.metrics import diversity
from userlm_env.metrics.diversity import (
    EpisodeHistory,
    diversity_against,
    jaccard,
    mean_pairwise_jaccard,
    naive_mean_pairwise_jaccard,
    pairwise_jaccard,
    unigram_difference,
)

A, B, C = frozenset("abc"), frozenset("bcd"), frozenset("xyz")


def test_jaccard_by_hand() -> None:
    assert jaccard(A, B) == pytest.approx(2 / 4)
    assert jaccard(A, C) == 0.0
    assert jaccard(frozenset(), frozenset()) == 1.0


def test_pairwise_matrix_by_hand() -> None:
    matrix = pairwise_jaccard([A, B, C])
    expected = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(matrix, expected)
    assert mean_pairwise_jaccard([A, B, C]) == pytest.approx(0.5 / 3)
    assert unigram_difference([A, B, C]) == pytest.approx(1 - 0.5 / 3)
    assert mean_pairwise_jaccard([A]) is None and unigram_difference([]) is None


def test_empty_sets_and_singleton_words() -> None:
    assert mean_pairwise_jaccard([frozenset(), frozenset()]) == 1.0
    assert mean_pairwise_jaccard([frozenset("a"), frozenset("b")]) == 0.0  # no shared word


def test_matrix_equals_the_pair_by_pair_reference_on_random_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(diversity, "_BLOCK_ROWS", 64)  # several row blocks for 300 sets
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(60)]
    for n in (2, 5, 40, 300):  # 300 > _PRUNE_ABOVE: single-set words leave the matrix
        sets = [frozenset(rng.sample(vocabulary, rng.randint(0, 25))) for _ in range(n)]
        naive = naive_mean_pairwise_jaccard(sets)
        assert mean_pairwise_jaccard(sets) == pytest.approx(naive, abs=1e-9)


def test_diversity_against_earlier_episodes() -> None:
    assert diversity_against(A, []) is None
    assert diversity_against(A, [B, C]) == pytest.approx(1 - (0.5 + 0.0) / 2)


def test_history_keeps_the_latest_per_intent_and_clears() -> None:
    history = EpisodeHistory(max_per_intent=2)
    for words in (A, B, C):
        history.add("i1", words)
    history.add("i2", A)
    assert history.earlier("i1") == (B, C) and history.earlier("i2") == (A,)
    assert history.earlier("unknown") == ()
    history.clear()
    assert history.earlier("i1") == ()
    with pytest.raises(ValueError):
        EpisodeHistory(max_per_intent=0)
