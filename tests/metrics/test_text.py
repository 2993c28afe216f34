"""Tokens, numbers, lemmas and stopwords shared by every metric."""

from __future__ import annotations

from userlm_env.metrics.text import (
    content_lemmas,
    content_set,
    numbers,
    stopwords,
    tokens,
    unigrams,
    word_count,
)


def test_tokens_normalise_numbers_identifiers_and_possessives() -> None:
    text = "Janet’s ducks lay 16 eggs: $80,000, 2.0 and [1,2,3] for has_close_elements"
    assert tokens(text) == [
        "janet", "ducks", "lay", "16", "eggs", "80000", "2", "and", "1", "2", "3", "for",
        "has_close_elements",
    ]  # fmt: skip


def test_number_words_read_as_digits_but_not_one() -> None:
    assert tokens("three apples and twenty pears, the longest one") == [
        "3", "apples", "and", "20", "pears", "the", "longest", "one",
    ]  # fmt: skip
    assert numbers("pay $1,250.50 for 3 items") == ["1250.50", "3"]


def test_content_lemmas_drop_stopwords_and_keep_numbers() -> None:
    assert "the" in stopwords() and "3" not in stopwords()
    assert content_lemmas("The ducks are laying three eggs every day") == [
        "duck", "lay", "3", "egg", "day",
    ]  # fmt: skip
    assert content_set(["ducks swim", "eggs"]) == {"duck", "swim", "egg"}


def test_unigrams_keep_stopwords_and_merge_texts() -> None:
    assert unigrams("The ducks are laying") == {"the", "duck", "be", "lay"}
    assert unigrams(["ducks", "Ducks!"]) == {"duck"}
    assert word_count("  two   words ") == 2
