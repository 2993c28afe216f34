"""Rule-based code sharder: unit behaviour and properties on all 164 HumanEval problems."""

from __future__ import annotations

import ast
import re

import pytest

from tests.intents.data import humaneval_rows
from userlm_env.errors import DataError
from userlm_env.intents.sharding import code_instruction, shard_code

EXAMPLE_START = re.compile(r"^(?:for example|e\.g\.|example)\b", re.IGNORECASE)
PROMPT = '''from typing import List


def top_k(values: List[int], k: int) -> List[int]:
    """Return the k largest values in descending order.
    If k is larger than the list, return the whole list sorted.
    Note: the input list must not be changed.

    Example:
        top_k([3, 1, 2], 2) == [3, 2]
        top_k([], 3) == []
    >>> top_k([5, 5, 1], 1)
    [5]
    """
'''


def test_goal_shard_names_the_function_and_rephrases_its_purpose() -> None:
    shards = shard_code(PROMPT, "top_k")
    assert shards[0].text == (
        "I need a Python function called `top_k` that returns the k largest values in "
        "descending order."
    )
    assert shards[0].required


def test_requirements_are_required_and_examples_are_not() -> None:
    shards = shard_code(PROMPT, "top_k")
    required = [s.text for s in shards[1:] if s.required]
    examples = [s.text for s in shards if not s.required]
    assert required == [
        "If k is larger than the list, return the whole list sorted.",
        "Note: the input list must not be changed.",
    ]
    assert examples == [
        "For example:\ntop_k([3, 1, 2], 2) == [3, 2]",
        "For example:\ntop_k([], 3) == []",
        "For example:\n>>> top_k([5, 5, 1], 1)\n[5]",
    ]
    assert [s.id for s in shards] == list(range(1, len(shards) + 1))


def test_signature_is_added_when_the_docstring_has_only_a_goal() -> None:
    prompt = (
        'def add(x: int, y: int) -> int:\n    """Add two numbers x and y\n'
        '    >>> add(1, 2)\n    3\n    """\n'
    )
    shards = shard_code(prompt, "add")
    assert shards[1].text == "Its signature should be `add(x: int, y: int) -> int`."
    assert shards[1].required
    assert len(shards) == 3


def test_helper_functions_become_a_required_shard() -> None:
    prompt = (
        "def helper(s: str) -> str:\n    return s[::-1]\n\n\n"
        'def solve(s: str) -> str:\n    """Return helper(s) twice. Keep the case."""\n'
    )
    shards = shard_code(prompt, "solve")
    helper = [s for s in shards if "def helper" in s.text]
    assert len(helper) == 1 and helper[0].required


def test_many_sentences_are_merged_down_to_ten_shards() -> None:
    sentences = " ".join(f"Rule number {i} applies to case {i}." for i in range(20))
    prompt = f'def f(x):\n    """Return x. {sentences}\n    >>> f(1)\n    1\n    """\n'
    shards = shard_code(prompt, "f")
    assert len(shards) == 10
    assert not shards[-1].required
    joined = " ".join(s.text for s in shards)
    assert all(f"case {i}." in joined for i in range(20))


def test_function_without_docstring_degrades_to_name_and_signature() -> None:
    shards = shard_code("def mystery(a, b):\n    pass\n", "mystery")
    assert [s.text for s in shards] == [
        "I need a Python function called `mystery`.",
        "Its signature should be `mystery(a, b)`.",
    ]


def test_missing_entry_point_raises() -> None:
    with pytest.raises(DataError, match="does not define the entry point 'g'"):
        shard_code("def f():\n    pass\n", "g")


def test_unparsable_prompt_raises_without_running_it() -> None:
    with pytest.raises(DataError, match="does not parse"):
        shard_code("def f(:\n", "f")


def test_code_instruction_names_the_function_and_quotes_the_prompt() -> None:
    text = code_instruction(PROMPT, "top_k")
    assert text.startswith(
        "Write a Python function `top_k(values: List[int], k: int) -> List[int]` that returns"
    )
    assert PROMPT.strip() in text


# --------------------------------------------------------------------------- all of HumanEval


def docstring_of(prompt: str, entry_point: str) -> str:
    tree = ast.parse(prompt)
    function = next(n for n in tree.body if getattr(n, "name", None) == entry_point)
    body = [n for n in function.body if isinstance(n, ast.Expr)]
    return ast.get_docstring(function) or (body[0].value.value if body else "")


def check_code_properties(row: dict) -> list[str]:
    """The problems with the shards of one HumanEval row (empty when all properties hold)."""
    name, prompt = row["entry_point"], row["prompt"]
    shards = shard_code(prompt, name)
    problems = []
    if not 3 <= len(shards) <= 10:
        problems.append(f"{len(shards)} shards")
    if [s.id for s in shards] != list(range(1, len(shards) + 1)):
        problems.append("ids not 1..n")
    if name not in shards[0].text or not shards[0].required:
        problems.append("shard 1 does not name the function or is not required")
    if any(s.required and s.text.startswith("For example:\n") for s in shards):
        problems.append("a docstring example is required")
    if any(not s.required and not EXAMPLE_START.match(s.text) for s in shards):
        problems.append("a non-required shard is not an example")
    if docstring_of(prompt, name).strip() and not any(s.required for s in shards[1:]):
        problems.append("no required shard beyond shard 1")
    doctests = [ln.strip() for ln in prompt.splitlines() if ln.strip().startswith(">>>")]
    optional = " ".join(s.text for s in shards if not s.required)
    if any(line not in optional for line in doctests):
        problems.append("a doctest line is missing from the example shards")
    return problems


def test_properties_hold_on_all_164_humaneval_problems() -> None:
    rows = humaneval_rows()
    assert len(rows) == 164
    failures = {row["task_id"]: check_code_properties(row) for row in rows}
    assert {k: v for k, v in failures.items() if v} == {}


def test_humaneval_goal_shards_state_a_purpose_for_most_problems() -> None:
    rows = humaneval_rows()
    rephrased = sum(" that " in shard_code(r["prompt"], r["entry_point"])[0].text for r in rows)
    assert rephrased >= 120  # measured 138 of 164; the rest keep the docstring's first sentence
