"""userlm-env: train and evaluate chat assistants against realistic simulated users.

Importing the package registers the Gymnasium ids below; it stays light (no torch, no
transformers, no LiteLLM) until a simulator or task actually needs them.

* ``userlm_env/GSM8k-v0``: GSM8k math (``data_path=`` a JSONL file, or ``datasets`` online).
* ``userlm_env/GSMSymbolic-v0``: procedurally generated GSM-style math, offline.
* ``userlm_env/HumanEval-v0``: the 164 HumanEval coding problems, offline.
* ``userlm_env/Mixed-v0``: GSM-Symbolic and HumanEval together.
"""

from __future__ import annotations

import gymnasium as gym

from userlm_env.env import ConversationEnv
from userlm_env.protocols import Assistant, Scorer, Simulator
from userlm_env.types import (
    END_MARKER,
    AssistantReply,
    ConversationState,
    Intent,
    Message,
    Score,
    Shard,
    UserTurn,
)

__all__ = [
    "END_MARKER",
    "ENV_IDS",
    "Assistant",
    "AssistantReply",
    "ConversationEnv",
    "ConversationState",
    "Intent",
    "Message",
    "Score",
    "Scorer",
    "Shard",
    "Simulator",
    "UserTurn",
]

_GSM_SYMBOLIC = {"name": "gsm_symbolic", "n": 100, "seed": 0}

#: Registered ids and the intent sources behind each.
ENV_IDS: dict[str, tuple[object, ...]] = {
    "userlm_env/GSM8k-v0": ("gsm8k",),
    "userlm_env/GSMSymbolic-v0": (_GSM_SYMBOLIC,),
    "userlm_env/HumanEval-v0": ("humaneval",),
    "userlm_env/Mixed-v0": (_GSM_SYMBOLIC, "humaneval"),
}


def _register() -> None:
    for env_id, sources in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="userlm_env.env:ConversationEnv",
            vector_entry_point="userlm_env.vector:ConversationVectorEnv",
            kwargs={"sources": sources, "max_replies": 8},
            order_enforce=False,  # ConversationEnv raises its own typed EpisodeStateError
        )


_register()
