"""User simulators: the dynamics of a userlm-env environment.

A simulator turns conversation states into the next user turns, for a whole batch at once, and
keeps no per-conversation state of its own (everything lives in
:class:`userlm_env.types.ConversationState`). Build one by name with :func:`make_simulator`:

* ``"sharded"``: rule-based, reveals one shard per turn (:mod:`simulators.sharded`).
* ``"userlm"``: a User Language Model in-process (:mod:`simulators.userlm`).
* ``"userlm_server"``: a UserLM behind an OpenAI-compatible server
  (:mod:`simulators.userlm_server`).
* ``"prompted"``: an assistant LLM prompted to role-play the user
  (:mod:`simulators.prompted`).
* ``"human"``: a person at the terminal (:mod:`simulators.human`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from userlm_env.registry import Registry
from userlm_env.types import ConversationState, UserTurn

__all__ = ["SIMULATORS", "Simulator", "make_simulator"]


@runtime_checkable
class Simulator(Protocol):
    """Produces the next user turn of each conversation in a batch."""

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Return one :class:`UserTurn` per state, in order.

        ``states[i].messages`` ends with an assistant message, or is empty for the first turn.
        """
        ...


SIMULATORS: Registry[Simulator] = Registry("simulator")
SIMULATORS.register("sharded", "simulators.sharded:ShardedSimulator")
SIMULATORS.register("userlm", "simulators.userlm:UserLMSimulator")
SIMULATORS.register("userlm_server", "simulators.userlm_server:UserLMServerSimulator")
SIMULATORS.register("prompted", "simulators.prompted:PromptedSimulator")
SIMULATORS.register("human", "simulators.human:HumanSimulator")


def make_simulator(name: str, **kwargs: Any) -> Simulator:
    """Build the simulator registered as ``name`` with ``kwargs``.

    Example: ``make_simulator("userlm", model="smollm2-135m-instruct")``.
    """
    return SIMULATORS.make(name, **kwargs)
