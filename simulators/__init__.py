"""User simulators: the dynamics of a userlm-env environment.

A simulator (:class:`userlm_env.protocols.Simulator`, re-exported here) turns conversation states
into the next user turns, for a whole batch at once, and keeps no per-conversation state of its
own (everything lives in :class:`userlm_env.types.ConversationState`). Build one by name with
:func:`make_simulator`:

* ``"sharded"``: rule-based, reveals one shard per turn (:mod:`simulators.sharded`); its
  ``strategy`` option restates shards (``"recap"``, ``"snowball"``).
* ``"full"`` / ``"concat"``: rule-based, the whole intent in the first turn: the instruction, or
  every shard at once (:mod:`simulators.sharded`).
* ``"lic"``: an LLM user that reveals at most one shard per turn in its own words
  (:mod:`simulators.lic`).
* ``"userlm"``: a User Language Model in-process (:mod:`simulators.userlm`).
* ``"userlm_server"``: a UserLM behind an OpenAI-compatible server
  (:mod:`simulators.userlm_server`).
* ``"prompted"``: an assistant LLM prompted to role-play the user
  (:mod:`simulators.prompted`).
* ``"human"``: a person at the terminal (:mod:`simulators.human`).
"""

from __future__ import annotations

from typing import Any

from userlm_env.protocols import Simulator
from userlm_env.registry import Registry

__all__ = ["SIMULATORS", "Simulator", "make_simulator"]


SIMULATORS: Registry[Simulator] = Registry("simulator")
SIMULATORS.register("sharded", "simulators.sharded:ShardedSimulator")
SIMULATORS.register("full", "simulators.sharded:full_simulator")
SIMULATORS.register("concat", "simulators.sharded:concat_simulator")
SIMULATORS.register("userlm", "simulators.userlm:UserLMSimulator")
SIMULATORS.register("userlm_server", "simulators.userlm_server:UserLMServerSimulator")
SIMULATORS.register("prompted", "simulators.prompted:PromptedSimulator")
SIMULATORS.register("lic", "simulators.lic:LiCSimulator")
SIMULATORS.register("human", "simulators.human:HumanSimulator")


def make_simulator(name: str, **kwargs: Any) -> Simulator:
    """Build the simulator registered as ``name`` with ``kwargs``.

    Example: ``make_simulator("userlm", model="smollm2-135m-instruct")``.
    """
    return SIMULATORS.make(name, **kwargs)
