"""Rule-based math sharder: unit behaviour and properties on the whole GSM8k test split."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.intents.data import gsm8k_rows
from userlm_env.errors import DataError
from userlm_env.intents.sharding import (
    shard_math,
    split_clause,
    split_sentences,
    strip_stray_instructions,
)

NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
WORD = re.compile(r"[a-z]+")
ASKS = re.compile(r"\?|\b(?:how|what|which|who|calculate|find|determine|compute)\b", re.I)


def number_counts(text: str) -> Counter[str]:
    return Counter(NUMBER.findall(text))


def check_math_properties(question: str) -> list[str]:
    """The problems with the shards of ``question`` (empty when all properties hold)."""
    shards = shard_math(question)
    problems = []
    if not 3 <= len(shards) <= 10:
        problems.append(f"{len(shards)} shards")
    if [s.id for s in shards] != list(range(1, len(shards) + 1)):
        problems.append("ids not 1..n")
    if not all(s.required for s in shards):
        problems.append("a math shard is not required")
    if not ASKS.search(shards[0].text):
        problems.append(f"shard 1 is not the question: {shards[0].text!r}")
    kept = strip_stray_instructions(question)
    shard_numbers = sum((number_counts(s.text) for s in shards), Counter())
    if shard_numbers != number_counts(kept):
        problems.append(f"numbers differ: {number_counts(kept) - shard_numbers}")
    joined = " ".join(s.text for s in shards).lower()
    lost = set(WORD.findall(kept.lower())) - set(WORD.findall(joined))
    if lost:
        problems.append(f"words lost: {sorted(lost)}")
    return problems


# --------------------------------------------------------------------------- sentences


def test_split_sentences_keeps_abbreviations_and_decimals_together() -> None:
    text = "Mr. Smith paid $2.50 at 3 p.m. yesterday. He left. How much was it?"
    assert split_sentences(text) == [
        "Mr. Smith paid $2.50 at 3 p.m. yesterday.",
        "He left.",
        "How much was it?",
    ]


def test_split_sentences_strict_case_needs_a_capital_after_the_stop() -> None:
    assert len(split_sentences("it is x. then y.")) == 1
    assert split_sentences("it is x. then y.", strict_case=False) == ["it is x.", "then y."]


def test_split_clause_prefers_strong_boundaries_and_keeps_numbers_whole() -> None:
    assert split_clause("He bought 1,200 apples; she sold 30 of them") == (
        "He bought 1,200 apples",
        "she sold 30 of them",
    )
    assert split_clause("Two words") is None


# --------------------------------------------------------------------------- shards


def test_question_is_shard_one_and_facts_follow_in_order() -> None:
    shards = shard_math(
        "Tom has 3 apples. He buys 5 more at the shop. How many apples does Tom have now?"
    )
    assert [s.text for s in shards] == [
        "How many apples does Tom have now?",
        "Tom has 3 apples.",
        "He buys 5 more at the shop.",
    ]
    assert all(s.required for s in shards)


def test_leading_condition_of_the_question_becomes_a_fact() -> None:
    shards = shard_math(
        "A pen costs $2. A book costs $7. If Ann buys 3 pens and 1 book, how much does she pay?"
    )
    assert shards[0].text == "How much does she pay?"
    assert shards[-1].text == "If Ann buys 3 pens and 1 book."


def test_question_without_question_mark_is_found_by_its_verb() -> None:
    shards = shard_math("Ann is 10 years old. Bo is 2 years older. Calculate their total age.")
    assert shards[0].text == "Calculate their total age."


def test_answer_format_instructions_are_dropped() -> None:
    question = (
        "Sam has 4 cats. Each cat eats 2 cans a day. How many cans do they eat in a day? "
        "Give the result as your final answer. Do not include units."
    )
    shards = shard_math(question)
    texts = " ".join(s.text for s in shards)
    assert "final answer" not in texts
    assert "units" not in texts
    assert len(shards) == 3


def test_short_problem_is_split_into_three_shards() -> None:
    shards = shard_math("Claire makes a 3 egg omelet every morning. How many eggs in 4 weeks?")
    assert len(shards) == 3
    assert (
        check_math_properties(
            "Claire makes a 3 egg omelet every morning. How many eggs in 4 weeks?"
        )
        == []
    )


def test_long_problem_is_merged_down_to_ten_shards() -> None:
    facts = " ".join(f"Box {i} holds {i * 10} marbles." for i in range(1, 15))
    question = f"{facts} How many marbles are there in all?"
    shards = shard_math(question)
    assert len(shards) == 10
    assert check_math_properties(question) == []


def test_sharding_is_deterministic() -> None:
    question = "Ann has 5 dogs and 3 cats. Bo has twice as many dogs. How many dogs in total?"
    assert shard_math(question) == shard_math(question)


@pytest.mark.parametrize("question", ["", "   ", "Give the result as your final answer."])
def test_empty_problem_raises(question: str) -> None:
    with pytest.raises(DataError, match="no content"):
        shard_math(question)


def test_strip_stray_instructions_leaves_plain_questions_untouched() -> None:
    question = "Ann has 5 dogs.  How many legs?"
    assert strip_stray_instructions(question) == question
    assert strip_stray_instructions(question + " Do not include units.") == (
        "Ann has 5 dogs. How many legs?"
    )


# --------------------------------------------------------------------------- the whole split


def test_properties_hold_on_every_gsm8k_test_problem() -> None:
    rows = gsm8k_rows()
    assert len(rows) == 1319
    failures = {}
    for index, row in enumerate(rows):
        problems = check_math_properties(row["question"])
        if problems:
            failures[index] = problems
    assert failures == {}
