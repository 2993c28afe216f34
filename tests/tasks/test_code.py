"""Tests of the HumanEval reward: code extraction, program building and scoring in the sandbox."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.tasks.conftest import canonical_reply, humaneval_intent
from userlm_env.errors import DataError
from userlm_env.tasks import Scorer, make_scorer
from userlm_env.tasks.code import CodeScorer, build_program, extract_code, find_code_blocks
from userlm_env.types import Intent, Shard

FUNCTION = "def add(a, b):\n    return a + b\n"
Problems = dict[str, dict[str, Any]]


# --- extraction ---------------------------------------------------------------------------------


def test_fenced_python_block_is_extracted() -> None:
    reply = f"Here it is:\n\n```python\n{FUNCTION}```\n\nHope it helps."
    assert extract_code(reply, "add") == FUNCTION


@pytest.mark.parametrize("fence", ["```", "```py", "```Python", "~~~python", "```python3"])
def test_fence_variants(fence: str) -> None:
    closing = fence[:3]
    assert extract_code(f"{fence}\n{FUNCTION}{closing}", "add") == FUNCTION


def test_last_block_defining_the_entry_point_wins() -> None:
    first = "def add(a, b):\n    return 0\n"
    usage = "```python\nprint(add(1, 2))\n```"
    reply = f"```python\n{first}```\nBetter:\n```python\n{FUNCTION}```\n{usage}"
    assert extract_code(reply, "add") == FUNCTION


def test_blocks_in_other_languages_are_ignored() -> None:
    reply = f"```bash\n{FUNCTION}```\n```python\n{FUNCTION}```"
    assert find_code_blocks(reply) == [FUNCTION]


def test_unclosed_fence_runs_to_the_end() -> None:
    assert extract_code(f"```python\n{FUNCTION}", "add") == FUNCTION


def test_bare_code_amid_prose() -> None:
    reply = f"Sure, this works:\n\nimport math\n{FUNCTION}\nThis adds two numbers.\n"
    assert extract_code(reply, "add") == f"import math\n{FUNCTION}".rstrip("\n")


def test_indented_bare_code_is_dedented() -> None:
    reply = "Try this:\n\n    def add(a, b):\n        return a + b\n\nDone."
    assert extract_code(reply, "add") == "def add(a, b):\n    return a + b"


def test_bare_code_only() -> None:
    assert extract_code(FUNCTION, "add") == FUNCTION.rstrip("\n")


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "Could you tell me what the function should return for empty input?",
        "```python\ndef subtract(a, b):\n    return a - b\n```",
        "```python\n    return a + b\n```",
        "You could write add(a, b) returning a + b.",
    ],
)
def test_no_entry_point_means_no_code(reply: str) -> None:
    assert extract_code(reply, "add") is None


# --- program building ---------------------------------------------------------------------------


def test_build_program_prepends_prompt_imports_and_missing_helpers(
    problems: Problems,
) -> None:
    problem = problems["HumanEval/38"]  # decode_cyclic; the prompt defines encode_cyclic
    body = "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n"
    program = build_program(body, problem)
    assert "def encode_cyclic" in program.source
    assert program.source.endswith(body)
    assert program.setup == problem["prompt"] and program.entry_point == "decode_cyclic"


def test_build_program_keeps_the_replys_own_helpers(problems: Problems) -> None:
    problem = problems["HumanEval/38"]
    own = "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"
    assert build_program(own, problem).source.count("def encode_cyclic") == 1


def test_build_program_adds_typing_import(problems: Problems) -> None:
    problem = problems["HumanEval/0"]
    program = build_program("def has_close_elements(n: List[float], t): ...\n", problem)
    assert program.source.startswith("from typing import List\n")


def test_bad_reference_raises_data_error() -> None:
    with pytest.raises(DataError, match="needs prompt, test, entry_point"):
        build_program(FUNCTION, {"prompt": "x"})


# --- scoring ------------------------------------------------------------------------------------


@pytest.mark.sandbox
def test_canonical_solution_passes(code_scorer: CodeScorer, problems: Problems) -> None:
    problem = problems["HumanEval/2"]
    score = code_scorer.score(canonical_reply(problem), humaneval_intent(problem))
    assert (score.attempted, score.solved, score.reward) == (True, True, 1.0)
    assert score.detail == "passed"


@pytest.mark.sandbox
def test_wrong_solution_fails(code_scorer: CodeScorer, problems: Problems) -> None:
    problem = problems["HumanEval/2"]
    reply = "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"
    score = code_scorer.score(reply, humaneval_intent(problem))
    assert (score.attempted, score.solved, score.reward) == (True, False, 0.0)
    assert score.detail == "tests failed: AssertionError"


@pytest.mark.sandbox
def test_body_only_reply_uses_prompt_helpers(code_scorer: CodeScorer, problems: Problems) -> None:
    problem = problems["HumanEval/32"]  # find_zero needs the prompt's poly()
    reply = f"```python\ndef find_zero(xs: list):\n{problem['canonical_solution']}```"
    assert code_scorer.score(reply, humaneval_intent(problem)).solved


@pytest.mark.sandbox
def test_not_attempted_reply(code_scorer: CodeScorer, problems: Problems) -> None:
    intent = humaneval_intent(problems["HumanEval/0"])
    score = code_scorer.score("What should happen for an empty list?", intent)
    assert (score.attempted, score.solved, score.reward) == (False, False, 0.0)
    assert "has_close_elements" in score.detail


@pytest.mark.sandbox
def test_syntax_error_is_a_failed_attempt(code_scorer: CodeScorer, problems: Problems) -> None:
    reply = "```python\ndef has_close_elements(numbers, threshold:\n    return True\n```"
    score = code_scorer.score(reply, humaneval_intent(problems["HumanEval/0"]))
    assert score.attempted and not score.solved
    assert score.detail.startswith("load failed: SyntaxError")


@pytest.mark.sandbox
def test_flooding_output_then_passing_still_passes(
    code_scorer: CodeScorer, problems: Problems
) -> None:
    problem = problems["HumanEval/2"]
    reply = (
        "```python\nimport sys\nsys.stdout.write('x' * 10_000_000)\nprint(flush=True)\n"
        "def truncate_number(number: float) -> float:\n    print('y' * 100_000)\n"
        "    return number % 1.0\n```"
    )
    assert code_scorer.score(reply, humaneval_intent(problem)).solved
    result = code_scorer.sandbox.run(code_scorer.program_for(reply, humaneval_intent(problem)))
    limit = code_scorer.sandbox.config.output_limit_bytes
    assert result.passed and limit <= len(result.stdout) < limit + 100
    assert result.stdout.endswith("more bytes dropped]")


@pytest.mark.sandbox
def test_numpy_imports_in_the_sandbox(code_scorer: CodeScorer, problems: Problems) -> None:
    problem = problems["HumanEval/2"]
    reply = (
        "```python\nimport numpy as np\n\ndef truncate_number(number: float) -> float:\n"
        "    return float(number - np.floor(number))\n```"
    )
    assert code_scorer.score(reply, humaneval_intent(problem)).solved


@pytest.mark.sandbox
def test_usable_from_several_threads(code_scorer: CodeScorer, problems: Problems) -> None:
    picked = [problems[f"HumanEval/{i}"] for i in range(8)]
    results: list[bool] = []

    def work(problem: dict[str, Any]) -> None:
        results.append(
            code_scorer.score(canonical_reply(problem), humaneval_intent(problem)).solved
        )

    threads = [threading.Thread(target=work, args=(p,)) for p in picked]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8


@pytest.mark.sandbox
def test_all_canonical_solutions_pass(code_scorer: CodeScorer, problems: Problems) -> None:
    intents = [humaneval_intent(p) for p in problems.values()]
    scores = code_scorer.score_many([canonical_reply(p) for p in problems.values()], intents)
    failed = [(i.intent_id, s.detail) for i, s in zip(intents, scores, strict=True) if not s.solved]
    assert failed == []
    assert len(scores) == 164


@pytest.mark.sandbox
def test_score_many_mixes_attempts_and_non_attempts(
    code_scorer: CodeScorer, problems: Problems
) -> None:
    problem = problems["HumanEval/2"]
    intent = humaneval_intent(problem)
    replies = ["no code here?", canonical_reply(problem), "```python\nx = 1\n```"]
    scores = code_scorer.score_many(replies, [intent] * 3)
    outcomes = [(s.attempted, s.solved) for s in scores]
    assert outcomes == [(False, False), (True, True), (False, False)]


def test_construction_is_cheap_and_lazy() -> None:
    scorer = CodeScorer()
    assert scorer.sandbox._pool is None
    assert isinstance(scorer, Scorer) and scorer.name == "humaneval"
    scorer.close()


def test_registry_builds_the_code_scorer() -> None:
    scorer = make_scorer("humaneval")
    assert isinstance(scorer, CodeScorer)
    scorer.close()


def test_bad_inputs_raise_typed_errors(code_scorer: CodeScorer) -> None:
    shards = (Shard(1, "?"),)
    intent = Intent(task="humaneval", intent_id="HumanEval/x", instruction="?", shards=shards)
    with pytest.raises(DataError):
        code_scorer.score(FUNCTION, intent)
    good = Intent(
        task="humaneval",
        intent_id="HumanEval/y",
        instruction="?",
        shards=shards,
        reference={"prompt": "def add(a, b):\n", "test": "def check(c): 0", "entry_point": "add"},
    )
    with pytest.raises(TypeError, match="reply must be a str"):
        code_scorer.score(None, good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 replies for 2 intents"):
        code_scorer.score_many([FUNCTION], [good, good])
