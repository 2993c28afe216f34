"""The rule-based simulator: reveals one shard of the intent per turn.

This is the "Lost in Conversation" sharded user. It is deterministic, needs no model, and knows
exactly which shard each turn reveals, which makes it the reference for testing envs, rewards and
shard matchers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from userlm_env.types import END_MARKER, ConversationState, Shard, UserTurn

__all__ = ["ShardedSimulator", "ShardedSimulatorConfig"]


@dataclass(frozen=True)
class ShardedSimulatorConfig:
    """Settings of :class:`ShardedSimulator`."""

    nudge: str = "That is everything I have. Can you give me your final answer now?"
    """What the user says once every shard is out but the assistant has not answered yet."""
    required_first: bool = True
    """Reveal required shards before the non-required ones (examples, trivial cases)."""


class ShardedSimulator:
    """Reveals shard 1 first, then one unrevealed shard per turn.

    Once every shard is out the user ends the conversation as soon as the assistant has made an
    answer attempt, and otherwise nudges it for the final answer. All state it reads lives in
    :class:`ConversationState` (``revealed`` and ``scores``), so one instance serves any batch.
    """

    def __init__(self, config: ShardedSimulatorConfig | None = None, **overrides: object) -> None:
        base = config or ShardedSimulatorConfig()
        self.config = ShardedSimulatorConfig(**{**base.__dict__, **overrides})

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """The next user turn of every state."""
        return [self._next_turn(state) for state in states]

    def _next_turn(self, state: ConversationState) -> UserTurn:
        shard = self._next_shard(state)
        if shard is not None:
            return UserTurn(text=shard.text, shard_ids=(shard.id,), metadata={"shard": shard.id})
        if state.scores and state.scores[-1].attempted:
            return UserTurn(text=END_MARKER, ended=True, shard_ids=())
        return UserTurn(text=self.config.nudge, shard_ids=(), metadata={"nudge": True})

    def _next_shard(self, state: ConversationState) -> Shard | None:
        shown = state.revealed_ids
        pending = [s for s in state.intent.shards if s.id not in shown]
        if not pending:
            return None
        first = [s for s in pending if s.id == 1]
        if first:
            return first[0]
        if self.config.required_first:
            pending.sort(key=lambda s: (not s.required, s.id))
        return pending[0]
