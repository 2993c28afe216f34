"""Verifiable tasks: each scores an assistant reply against an intent's reference.

A task is the RL reward *and* the evaluation metric: the env calls exactly this code.

* ``"gsm8k"`` (:class:`userlm_env.tasks.math.MathTask`): extract the final number of a reply
  and compare it with the reference answer.
* ``"humaneval"`` (:class:`userlm_env.tasks.code.CodeTask`): extract the function the reply
  defines and run the problem's unit tests in the sandbox (:mod:`userlm_env.tasks.sandbox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from userlm_env.registry import Registry
from userlm_env.types import Intent, Score

__all__ = ["TASKS", "Task", "make_task"]


@runtime_checkable
class Task(Protocol):
    """Scores assistant replies. ``score_many`` lets tasks batch expensive checks."""

    name: str

    def score(self, reply: str, intent: Intent) -> Score:
        """Score one reply to one intent."""
        ...

    def score_many(self, replies: Sequence[str], intents: Sequence[Intent]) -> list[Score]:
        """Score ``replies[i]`` against ``intents[i]`` for every ``i``."""
        ...


TASKS: Registry[Task] = Registry("task")
TASKS.register("gsm8k", "userlm_env.tasks.math:MathTask")
TASKS.register("humaneval", "userlm_env.tasks.code:CodeTask")


def make_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as ``name`` (``"gsm8k"``, ``"humaneval"``)."""
    return TASKS.make(name, **kwargs)
