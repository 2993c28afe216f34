"""Assistants: the policies a userlm-env environment evaluates or trains.

An assistant answers a batch of conversations at once and keeps no state between calls.
Build one by name with :func:`make_assistant`:

* ``"oracle"``, ``"wrong"``, ``"echo"``: scripted (:mod:`assistants.scripted`).
* ``"litellm"``: any LiteLLM model string (:mod:`assistants.litellm`).
* ``"hf"``: a local transformers model, batched (:mod:`assistants.hf`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from userlm_env.registry import Registry
from userlm_env.types import ConversationState

__all__ = ["ASSISTANTS", "Assistant", "make_assistant"]


@runtime_checkable
class Assistant(Protocol):
    """Produces the next assistant reply of each conversation in a batch."""

    def respond(self, states: Sequence[ConversationState]) -> list[str]:
        """Return one reply per state; ``states[i].messages`` ends with a user message."""
        ...


ASSISTANTS: Registry[Assistant] = Registry("assistant")
ASSISTANTS.register("oracle", "assistants.scripted:OracleAssistant")
ASSISTANTS.register("wrong", "assistants.scripted:WrongAssistant")
ASSISTANTS.register("litellm", "assistants.litellm:LiteLLMAssistant")
ASSISTANTS.register("hf", "assistants.hf:HFAssistant")


def make_assistant(name: str, **kwargs: Any) -> Assistant:
    """Build the assistant registered as ``name`` with ``kwargs``."""
    return ASSISTANTS.make(name, **kwargs)
