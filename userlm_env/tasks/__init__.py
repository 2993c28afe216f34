"""The scorers of the verifiable tasks: each scores an assistant reply against an intent.

A scorer (:class:`~userlm_env.protocols.Scorer`) is the RL reward *and* the evaluation metric:
the env calls exactly this code. A task is the kind of problem (``Intent.task``); its scorer is
registered under the task's name.

* ``"gsm8k"`` (:class:`userlm_env.tasks.math.MathScorer`): find the number a reply commits to
  as its answer (not always its last one) and compare it with the reference answer; numbers are
  read by :mod:`userlm_env.tasks.numbers`.
* ``"humaneval"`` (:class:`userlm_env.tasks.code.CodeScorer`): extract the function the reply
  defines and run the problem's unit tests in the sandbox (:mod:`userlm_env.tasks.sandbox`).
"""

from __future__ import annotations

from typing import Any

from userlm_env.protocols import Scorer
from userlm_env.registry import Registry

__all__ = ["SCORERS", "Scorer", "make_scorer"]


SCORERS: Registry[Scorer] = Registry("scorer")
SCORERS.register("gsm8k", "userlm_env.tasks.math:MathScorer")
SCORERS.register("humaneval", "userlm_env.tasks.code:CodeScorer")


def make_scorer(name: str, **kwargs: Any) -> Scorer:
    """Build the scorer registered as ``name`` (``"gsm8k"``, ``"humaneval"``)."""
    return SCORERS.make(name, **kwargs)
