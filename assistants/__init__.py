"""Assistants: the policies a userlm-env environment evaluates or trains.

An assistant (:class:`userlm_env.protocols.Assistant`, re-exported here) answers a batch of
conversations at once, from their messages alone, and keeps no state between calls. Build one by
name with :func:`make_assistant`:

* ``"oracle"``, ``"wrong"``, ``"echo"``: scripted (:mod:`assistants.scripted`).
* ``"litellm"``: any LiteLLM model string (:mod:`assistants.litellm`).
* ``"hf"``: a local transformers model, batched (:mod:`assistants.hf`).
"""

from __future__ import annotations

from typing import Any

from userlm_env.protocols import Assistant
from userlm_env.registry import Registry
from userlm_env.types import AssistantReply

__all__ = ["ASSISTANTS", "Assistant", "AssistantReply", "make_assistant"]


ASSISTANTS: Registry[Assistant] = Registry("assistant")
ASSISTANTS.register("oracle", "assistants.scripted:OracleAssistant")
ASSISTANTS.register("wrong", "assistants.scripted:WrongAssistant")
ASSISTANTS.register("litellm", "assistants.litellm:LiteLLMAssistant")
ASSISTANTS.register("hf", "assistants.hf:HFAssistant")


def make_assistant(name: str, **kwargs: Any) -> Assistant:
    """Build the assistant registered as ``name`` with ``kwargs``."""
    return ASSISTANTS.make(name, **kwargs)
