"""Tests of the GSM8k reward: answer extraction, attempts, comparison and scoring."""

from __future__ import annotations

from fractions import Fraction

import pytest

from userlm_env.errors import DataError
from userlm_env.tasks import make_scorer
from userlm_env.tasks.math import MathScorer, extract_answer, is_answer_attempt, parse_number
from userlm_env.types import Intent, Shard


def math_intent(answer: str) -> Intent:
    return Intent(
        task="gsm8k",
        intent_id="gsm8k/3",
        instruction="How many apples?",
        shards=(Shard(1, "How many apples?"),),
        reference={"answer": answer},
    )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("18", 18),
        ("The total is 18.", 18),
        ("She pays $18 in total.", 18),
        ("It costs $1,234 overall.", 1234),
        ("That is 1,234,567 grains.", 1234567),
        ("He earns $18.00 per day.", 18),
        ("The price is 12.50 dollars.", Fraction(25, 2)),
        ("It is .5 of the cake.", Fraction(1, 2)),
        ("So the answer is \\boxed{18}.", 18),
        ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
        ("We get $\\boxed{1{,}234}$", 1234),
        ("The answer is **18**.", 18),
        ("**Final answer: 72**", 72),
        ("5 + 7 = 12\n#### 12", 12),
        ("#### 1,000", 1000),
        ("The temperature drops to -5 degrees.", -5),
        ("x = -3.5", Fraction(-7, 2)),
        ("A difference of −4 (unicode minus).", -4),
        ("3/4 of the class", Fraction(3, 4)),
        ("She uses 25% of her salary.", 25),
        ("The answer is eighteen.", 18),
        ("The answer is twenty-one.", 21),
        ("Final answer: one hundred and five", 105),
        ("The answer is two thousand three hundred", 2300),
        ("Answer: minus seven", -7),
        ("There are no digits here, just twelve eggs.", 12),
    ],
)
def test_extract_answer(reply: str, expected: int | Fraction) -> None:
    assert extract_answer(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Final answer: 18. Because 3 * 6 = 18 and 20 - 2 = 18, we also checked 99.", 18),
        ("The answer is 42, not 41 or 40.", 42),
        ("answer: 7 (I first thought 8)", 7),
        ("First 5 then 6. The answer is 11. Double-check: 5 + 6 = 11, so 3 steps.", 11),
        ("The answer is 5... wait. Final answer: 6, since 2 * 3 = 6 plus 0.", 6),
        ("Step 1: 10 apples. Step 2: 20 apples. The total is 30 apples.", 30),
    ],
)
def test_markers_win_over_later_numbers(reply: str, expected: int) -> None:
    assert extract_answer(reply) == expected


def test_boxed_wins_over_markers() -> None:
    assert extract_answer("The answer is 5. Correction: \\boxed{6}") == 6


def test_number_words_do_not_replace_digits() -> None:
    assert extract_answer("The total is 18. Let me know if one more thing is needed.") == 18


@pytest.mark.parametrize("reply", ["", "   ", "I am not sure.", "Let me think about it."])
def test_no_number_gives_none(reply: str) -> None:
    assert extract_answer(reply) is None


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "  \n ",
        "How many apples does Sam have at the start?",
        "Could you tell me the price per box? I need it to compute the total.",
        "Do you mean 5 apples or 6?",
        "Is the 20% discount applied before tax?",
        "Let me look at this one more time. How many boxes are there?",
    ],
)
def test_questions_and_empty_replies_are_not_attempts(reply: str) -> None:
    assert not is_answer_attempt(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "18",
        "So 3 * 6 = 18. Does that help?",
        "The answer is 18. Anything else?",
        "Final answer: eighteen",
        "She ends up with twelve eggs.",
        "Is it 18? Final answer: 18",
        "\\boxed{4}",
        "#### 7",
    ],
)
def test_claimed_answers_are_attempts(reply: str) -> None:
    assert is_answer_attempt(reply)


def test_answer_is_taken_from_statements_not_questions() -> None:
    assert extract_answer("The total is 18 apples. Should I also count the 20 pears?") == 18


@pytest.mark.parametrize(
    ("text", "expected"),
    [("18", 18), ("1,234", 1234), ("-3.5", Fraction(-7, 2)), ("$12.00", 12), ("0.25", 0.25)],
)
def test_parse_number(text: str, expected: float) -> None:
    assert parse_number(text) == expected


def test_parse_number_rejects_text_without_number() -> None:
    with pytest.raises(DataError, match="not a number"):
        parse_number("eighteen-ish")


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("The answer is 18.", "18"),
        ("Total: $1,234.00", "1,234"),
        ("She uses 25%.", "25"),
        ("She uses 25%.", "0.25"),
        ("That is 3/4 of it.", "0.75"),
        ("It comes to 0.3333333333 of the cake.", "0.3333333333"),
        ("The answer is 2.0000000001", "2"),
        ("It comes to -12.", "-12"),
    ],
)
def test_correct_answers_are_solved(reply: str, answer: str) -> None:
    score = MathScorer().score(reply, math_intent(answer))
    assert (score.attempted, score.solved, score.reward) == (True, True, 1.0)


def test_wrong_answer_is_attempted_not_solved() -> None:
    score = MathScorer().score("The answer is 17.", math_intent("18"))
    assert (score.attempted, score.solved, score.reward) == (True, False, 0.0)
    assert score.detail == "expected 18, got 17"


def test_integers_compare_exactly() -> None:
    assert not MathScorer().score("10000001", math_intent("10000000")).solved
    assert not MathScorer().score("1/3", math_intent("0.33")).solved


def test_clarifying_question_is_not_an_attempt() -> None:
    score = MathScorer().score("How many boxes are there?", math_intent("18"))
    assert (score.attempted, score.solved, score.reward) == (False, False, 0.0)


def test_score_many_matches_score() -> None:
    scorer = MathScorer()
    replies = ["18", "17", "How many?"]
    intents = [math_intent("18")] * 3
    expected = [scorer.score(r, i) for r, i in zip(replies, intents, strict=True)]
    assert scorer.score_many(replies, intents) == expected


def test_score_many_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 replies for 1 intents"):
        MathScorer().score_many(["1", "2"], [math_intent("1")])


def test_bad_inputs_raise_typed_errors() -> None:
    intent = Intent(task="gsm8k", intent_id="gsm8k/9", instruction="?", shards=(Shard(1, "?"),))
    with pytest.raises(DataError, match="no reference answer"):
        MathScorer().score("18", intent)
    with pytest.raises(TypeError, match="reply must be a str"):
        MathScorer().score(18, math_intent("18"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rel_tol"):
        MathScorer(rel_tol=0.5)


def test_registry_builds_the_math_task() -> None:
    task = make_scorer("gsm8k")
    assert isinstance(task, MathScorer) and task.name == "gsm8k"


def test_gsm8k_reference_answers_parse(gsm8k_path: object) -> None:
    import json
    from pathlib import Path

    lines = Path(str(gsm8k_path)).read_text().splitlines()[:200]
    for line in lines:
        solution = json.loads(line)["answer"]
        expected = parse_number(solution.split("####")[-1])
        assert extract_answer(solution) == expected
