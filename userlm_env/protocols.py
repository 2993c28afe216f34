"""The extension points of userlm-env: what a simulator, an assistant and a scorer must do.

They live here, in the core package, so the core, the envs and the rollout are typed against
them without importing :mod:`simulators` or :mod:`assistants` (which re-export them). All three
are batched: one call serves many conversations, and none keeps per-conversation state between
calls (it lives in :class:`~userlm_env.types.ConversationState`).

* :class:`Simulator`: the user, the env's dynamics. It reads whole states (the intent included).
* :class:`Assistant`: the agent. It reads what a real assistant reads, message lists, never the
  intent or its reference; scripted assistants that need the answer key are given the intents
  when built and look them up by the intent id the env publishes in ``info["intent_id"]``.
* :class:`Scorer`: the verifiable reward of one task (``"gsm8k"``, ``"gsm_symbolic"``,
  ``"humaneval"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from userlm_env.types import AssistantReply, ConversationState, Intent, Message, Score, UserTurn

__all__ = ["Assistant", "Conversations", "IntentIds", "Scorer", "Seeds", "Simulator"]

#: A batch of conversations as an assistant sees them: message lists, nothing else.
Conversations = Sequence[Sequence[Message]]
#: The ``info["intent_id"]`` of each conversation of a batch (for scripted assistants).
IntentIds = Sequence[str] | None
#: A sampling seed per conversation of a batch.
Seeds = Sequence[int | None] | None


@runtime_checkable
class Simulator(Protocol):
    """Produces the next user turn of each conversation in a batch."""

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """One :class:`UserTurn` per state, in order.

        ``states[i].messages`` is empty (the first turn) or ends with an assistant reply.
        """
        ...


@runtime_checkable
class Assistant(Protocol):
    """Produces the next reply of each conversation in a batch."""

    def respond(
        self, conversations: Conversations, *, intent_ids: IntentIds = None, seeds: Seeds = None
    ) -> list[AssistantReply]:
        """One :class:`AssistantReply` per conversation, in order.

        Args:
            conversations: User and assistant messages (OpenAI format), each ending with a user
                message. No system message: an assistant adds its own.
            intent_ids: The ``info["intent_id"]`` of each conversation. Only scripted
                assistants read it (to find the answer key they were given); a real
                assistant must not need it.
            seeds: A sampling seed per conversation, for assistants that can use one.

        A failure confined to one row (an API call that failed after its retries) is returned
        in that row's ``error``; it does not fail the batch.
        """
        ...


@runtime_checkable
class Scorer(Protocol):
    """Scores assistant replies for one task: the RL reward and the evaluation metric."""

    name: str

    def score(self, reply: str, intent: Intent) -> Score:
        """Score one reply to one intent."""
        ...

    def score_many(self, replies: Sequence[str], intents: Sequence[Intent]) -> list[Score]:
        """Score ``replies[i]`` against ``intents[i]`` for every ``i`` (batched checks)."""
        ...

    def close(self) -> None:
        """Release what the scorer holds (sandbox workers); it may be used again after."""
        ...
