"""The scorers of the verifiable tasks: each scores an assistant reply against an intent.

A scorer (:class:`~userlm_env.protocols.Scorer`) is the RL reward *and* the evaluation metric:
the env calls exactly this code. A task (``Intent.task``) names where an intent comes from, the
same name in every table; its scorer is registered under that name, and :data:`TASK_KINDS` says
which kind of answer it expects:

* ``"gsm8k"`` and ``"gsm_symbolic"``, kind ``"math"`` (:class:`userlm_env.tasks.math.MathScorer`):
  find the number a reply commits to as its answer (not always its last one) and compare it with
  the reference answer; numbers are read by :mod:`userlm_env.tasks.numbers`.
* ``"humaneval"``, kind ``"code"`` (:class:`userlm_env.tasks.code.CodeScorer`): extract the
  function the reply defines and run the problem's unit tests in the sandbox
  (:mod:`userlm_env.tasks.sandbox`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from userlm_env.protocols import Scorer
from userlm_env.registry import Registry

__all__ = ["SCORERS", "TASK_KINDS", "Scorer", "make_scorer"]

#: Each task's kind of answer: ``"math"`` (a number) or ``"code"`` (a Python function).
TASK_KINDS: Mapping[str, str] = {"gsm8k": "math", "gsm_symbolic": "math", "humaneval": "code"}

SCORERS: Registry[Scorer] = Registry("scorer")
SCORERS.register("gsm8k", "userlm_env.tasks.math:MathScorer")
SCORERS.register("gsm_symbolic", "userlm_env.tasks.math:MathScorer")
SCORERS.register("humaneval", "userlm_env.tasks.code:CodeScorer")


def make_scorer(name: str, **kwargs: Any) -> Scorer:
    """Build the scorer of the task ``name`` (``"gsm8k"``, ``"gsm_symbolic"``, ``"humaneval"``)."""
    return SCORERS.make(name, **kwargs)
