"""Tests that the GSM8k scorer finds the number a reply commits to, not merely its last number.

The labelled replies live in ``fixtures/answer_replies.jsonl`` (how they were made:
``fixtures/README_answer_replies.md``); each style the scorer must handle also has one
hand-written reply here.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import pytest

from tests.tasks.answer_fixture import load_answer_replies
from userlm_env.tasks.math import MathScorer, extract_answer, is_answer_attempt, parse_number
from userlm_env.types import Intent, Shard

SOURCES = {"written", "embedded_model", "llama_server"}
KEYS = {"id", "question", "reply", "answer", "committed", "correct", "source", "style"}
QUESTION = "Janet's ducks lay 16 eggs a day. She eats 3 and bakes with 4, and sells the rest at $2 each. How much does she make a day?"  # noqa: E501


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return load_answer_replies()


def intent(answer: str, question: str = QUESTION) -> Intent:
    return Intent("gsm8k", "gsm8k/t", question, (Shard(1, question),), {"answer": answer})


def committed(reply: str, question: str = QUESTION) -> Fraction | None:
    return extract_answer(reply, question)


def test_fixture_schema(rows: list[dict[str, Any]]) -> None:
    assert len(rows) >= 200
    assert len({row["id"] for row in rows}) == len(rows)
    counts = {source: sum(row["source"] == source for row in rows) for source in SOURCES}
    assert counts["embedded_model"] >= 30 and counts["llama_server"] >= 20
    for row in rows:
        assert set(row) - {"gsm8k_line"} == KEYS and row["source"] in SOURCES, row["id"]
        assert row["question"] and row["style"] and isinstance(row["correct"], bool), row["id"]
        value = None if row["committed"] is None else parse_number(row["committed"])
        assert row["correct"] == (value == parse_number(row["answer"])), row["id"]


def test_scorer_accuracy_on_labelled_replies(rows: list[dict[str, Any]]) -> None:
    scorer, wrong = MathScorer(), []
    for row in rows:
        wanted = None if row["committed"] is None else parse_number(row["committed"])
        found = extract_answer(row["reply"], row["question"])
        solved = scorer.score(row["reply"], intent(row["answer"], row["question"])).solved
        if found != wanted or solved != row["correct"]:
            wrong.append(row["id"])
    assert 1 - len(wrong) / len(rows) >= 0.98, wrong


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The answer is 18. That's 18 dollars, or 1800 cents.", 18),
        ("She makes $18 a day, which is 1,800 cents.", 18),
        ("She earns $18 per day (that's $126 per week).", 18),
        ("Janet makes $18 a day. That's 9 eggs at $2 each.", 18),
    ],
)
def test_restated_or_converted_answer(reply: str, expected: int) -> None:
    assert committed(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("16 - 3 - 4 = 10 eggs, so 20 dollars. Wait, I made an error: 16 - 3 - 4 = 9, so 18.", 18),
        ("She sells 9 eggs for 9 * 2 = 24. Actually, 9 * 2 = 18, so she makes $18.", 18),
        ("So 24. Oops, I miscalculated: it is 22.", 22),
    ],
)
def test_correction_wins(reply: str, expected: int) -> None:
    assert committed(reply) == expected


def test_closing_offer_with_a_number() -> None:
    reply = "She makes $18 every day. Let me know if you want 2 more examples!"
    assert committed(reply) == 18


def test_answer_first_then_explanation() -> None:
    reply = "$18 a day.\n\nHere's why: 16 eggs, minus 3 eaten and 4 baked, leaves 9 sold at $2."
    assert committed(reply) == 18


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("The field holds 1 234 567 seeds.", 1234567), ("Total: 56 400 bottles.", 56400)],
)
def test_thousands_grouped_with_spaces(reply: str, expected: int) -> None:
    assert committed(reply, "How many?") == expected


@pytest.mark.parametrize(
    "reply",
    ["**Final answer: 18**", "9 × 2 = **$18**", "The answer is **18**, from 9 eggs at $2 each."],
)
def test_markdown_bold_answer(reply: str) -> None:
    assert committed(reply) == 18


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("$$9 \\times 2 = \\boxed{18}$$", 18),
        ("So each glass holds $\\boxed{\\dfrac{1}{4}}$ liter.", Fraction(1, 4)),
        ("\\boxed{3\\frac{1}{2}} cups", Fraction(7, 2)),
        ("\\[ \\boxed{2 \\times 9 = 18} \\]", 18),
        ("\\boxed{\\$1{,}250.50}", Fraction(2501, 2)),
    ],
)
def test_latex_boxed_answers(reply: str, expected: Fraction | int) -> None:
    assert committed(reply, "How much?") == expected


def test_boxed_latex_is_judged_by_math_verify() -> None:
    score = MathScorer().score("$$\\boxed{\\frac{35}{2}}$$", intent("17.5", "How long?"))
    assert score.solved


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Total = $1,150 + $100.50 = $1,250.50", Fraction(2501, 2)),
        ("She needs 6 × 3/4 = 4 1/2 cups.", Fraction(9, 2)),
        ("Each glass gets $\\frac{1}{4}$ liter.", Fraction(1, 4)),
    ],
)
def test_currency_decimals_and_fractions(reply: str, expected: Fraction) -> None:
    assert committed(reply, "How much?") == expected


@pytest.mark.parametrize(
    ("reply", "answer"),
    [("24 of 30 passed: 80%.", "80"), ("So 80 percent of them passed.", "80")],
)
def test_percent_answers(reply: str, answer: str) -> None:
    assert MathScorer().score(reply, intent(answer, "What percent of 30 passed?")).solved


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("7 − 12 = −5, so it is −5 degrees.", -5),
        ("7 - 12 = -5, so it was 5 degrees below zero.", -5),
        ("His balance is negative 12 dollars.", -12),
    ],
)
def test_negative_answers(reply: str, expected: int) -> None:
    assert committed(reply, "It was 7 degrees and dropped 12. What is it now?") == expected


def test_number_words() -> None:
    assert committed("She makes eighteen dollars a day.") == 18
    assert committed("John will be forty-one in five years.", "John is 36. Age in 5 years?") == 41


@pytest.mark.parametrize(
    "reply",
    [
        "It is either $16 or $18, depending on whether she eats the eggs first.",
        "If she sells all of them, $18. If she keeps 2, $14. I'm not sure which you mean.",
        "Somewhere between 12 and 14 dollars, depending on the day.",
    ],
)
def test_hedged_replies_commit_to_nothing(reply: str) -> None:
    assert committed(reply) is None
    score = MathScorer().score(reply, intent("18"))
    assert score.attempted and not score.solved and score.detail.endswith("got nothing")


@pytest.mark.parametrize(
    "reply", ["Let's think step by step.", "How many eggs does she eat?", "I can't help with that."]
)
def test_no_answer_at_all(reply: str) -> None:
    assert committed(reply) is None
    assert not is_answer_attempt(reply)


def test_reply_cut_off_mid_sentence_commits_to_nothing_unless_it_answered() -> None:
    steps = "She has 16 - 3 - 4 = 9 eggs left to sell at the market every day. " * 10
    assert committed(steps + "So she makes 9 * 2 = $18 a day, and over a week she") is None
    assert committed("The answer is 18. " + steps + "Over a week she") == 18


def test_code_without_a_stated_result_commits_to_nothing() -> None:
    reply = (
        "Here is a Python function for it:\n```python\ndef eggs():\n    return (16 - 7) * 2\n```"
    )
    assert committed(reply) is None


def test_question_givens_are_not_taken_for_the_answer() -> None:
    reply = "Janet makes $18 a day. She sells the eggs at $2 each."
    assert committed(reply) == 18


@pytest.mark.parametrize(
    "reply",
    ["9" * 5000, "The answer is " * 2000, "1 " + "Wait. " * 3000, "\\boxed{2^{2^{2^{2^{9}}}}}"],
)
def test_hostile_replies_are_scored_without_error(reply: str) -> None:
    score = MathScorer().score(reply, intent("18"))
    assert not score.solved


def test_scoring_in_worker_threads_leaves_signals_alone() -> None:
    replies = ["$$\\boxed{\\frac{35}{2}}$$", "\\boxed{17.5}", "The answer is 17.5."] * 4
    handler = signal.getsignal(signal.SIGALRM)
    with ThreadPoolExecutor(max_workers=4) as pool:
        scores = list(pool.map(lambda r: MathScorer().score(r, intent("17.5", "?")), replies))
    assert all(score.solved for score in scores)
    assert signal.getsignal(signal.SIGALRM) is handler and signal.alarm(0) == 0
