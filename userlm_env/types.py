"""Leaf data types shared by every part of userlm-env.

Nothing here imports from the rest of the package, so any module (simulators, assistants,
tasks, metrics, experiments) can depend on these types without import cycles.

* :class:`Shard` and :class:`Intent` describe *what the simulated user wants*: a fully specified
  instruction plus the atomic units of information ("shards") it decomposes into.
* :class:`UserTurn` is what a simulator produces for one conversation at one step.
* :class:`Score` is the verdict of a task's verifiable reward on one assistant reply.
* :class:`ConversationState` holds *all* per-conversation state, so simulators and assistants
  stay stateless and can serve a batch of conversations in one call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypedDict

__all__ = [
    "END_MARKER",
    "AssistantReply",
    "ConversationState",
    "Intent",
    "Message",
    "Role",
    "Score",
    "Shard",
    "UserTurn",
]

#: The token a user simulator emits to end a conversation (paper section 2.1).
END_MARKER = "<|endconversation|>"

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat message in OpenAI format."""

    role: Role
    content: str


@dataclass(frozen=True)
class Shard:
    """One atomic unit of information of an intent.

    Attributes:
        id: 1-based position; shard 1 states the overall goal.
        text: The information, phrased as the user could say it.
        required: Whether the assistant needs it to solve the task (examples are not).
    """

    id: int
    text: str
    required: bool = True


@dataclass(frozen=True)
class Intent:
    """A task the simulated user pursues.

    Attributes:
        task: The task the intent comes from (``"gsm8k"``, ``"gsm_symbolic"``, ``"humaneval"``):
            its name in every table, and the name its scorer is registered under
            (:data:`userlm_env.tasks.SCORERS`).
        intent_id: Stable identifier, e.g. ``"HumanEval/0"``, ``"gsm8k/17"``.
        instruction: The fully specified, single-turn instruction.
        shards: The sharded instruction; together the shards carry ``instruction``.
        reference: Task data for scoring (``{"answer": "18"}`` for math; ``prompt``, ``test``,
            ``entry_point`` and ``canonical_solution`` for code). Read-only.
    """

    task: str
    intent_id: str
    instruction: str
    shards: tuple[Shard, ...]
    reference: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError(f"intent {self.intent_id!r} has no shards")
        object.__setattr__(self, "shards", tuple(self.shards))
        object.__setattr__(self, "reference", MappingProxyType(dict(self.reference)))

    @property
    def required_ids(self) -> frozenset[int]:
        """Ids of the shards the assistant needs to solve the task."""
        return frozenset(s.id for s in self.shards if s.required)

    def shard(self, shard_id: int) -> Shard:
        """Return the shard with this id (``KeyError`` if absent)."""
        for s in self.shards:
            if s.id == shard_id:
                return s
        raise KeyError(shard_id)

    @property
    def system_prompt(self) -> str:
        """The high-level intent as a UserLM is conditioned on it (paper appendix D.3)."""
        return (
            "You are a user chatting with an assistant language model to complete the "
            f"following: {self.instruction}"
        )


@dataclass(frozen=True)
class UserTurn:
    """One simulated user turn.

    Attributes:
        text: What the user says; the end marker when ``ended`` is true. Never empty.
        ended: The user ended the conversation instead of speaking.
        shard_ids: Shards this turn reveals, when the simulator knows them (the rule-based one
            does); ``None`` lets a shard matcher decide.
        metadata: Simulator-specific facts (tries spent by guardrails, raw text, cost ...).
    """

    text: str
    ended: bool = False
    shard_ids: tuple[int, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or (not self.ended and not self.text.strip()):
            raise ValueError(
                "a user turn must carry non-empty text unless it ends the conversation"
            )


@dataclass(frozen=True)
class Score:
    """Verdict of a verifiable reward on one assistant reply.

    Attributes:
        attempted: The reply contains an answer attempt (a number, a function).
        solved: The attempt is correct.
        reward: The RL reward for this reply (1.0 when solved, else 0.0 by default).
        detail: A short human-readable reason ("wrong answer 17 != 18", "timeout").
    """

    attempted: bool
    solved: bool
    reward: float
    detail: str = ""


@dataclass(frozen=True)
class AssistantReply:
    """One assistant reply, as an :class:`~userlm_env.protocols.Assistant` returns it.

    Attributes:
        text: The reply (``""`` when ``error`` is set).
        cost: USD spent on it: ``0.0`` for local models, ``None`` when the price is unknown.
        error: Why no reply could be produced (``"LLMCallError: ..."``), else ``None``.
    """

    text: str
    cost: float | None = 0.0
    error: str | None = None

    @classmethod
    def failed(cls, error: BaseException) -> AssistantReply:
        """The reply of a row whose call failed: no text, unknown cost, the error named."""
        return cls(text="", cost=None, error=f"{type(error).__name__}: {error}"[:2000])


@dataclass
class ConversationState:
    """Everything about one conversation in progress.

    Simulators read it whole; assistants only ever see its ``messages``. Words: a *user turn*
    is a message the user spoke; the user *ending* the conversation (the end marker) is not a
    turn; an *assistant reply* is the assistant's message.

    Attributes:
        intent: What the user wants.
        seed: Per-conversation seed drawn from the env's ``np_random`` at reset; samplers
            derive per-turn seeds from it with :meth:`turn_seed`.
        messages: User turns and assistant replies so far (OpenAI format, no system message).
        user_turns: The simulator's spoken turns so far, aligned with the user messages.
        ending: The simulator's turn that ended the conversation, once the user ended it.
        scores: The scorer's verdict on each assistant reply so far.
        reply_labels: A label for each assistant reply ("answer_attempt", "clarification",
            "discussion", "other"; see :mod:`userlm_env.labels`).
        revealed: For each user turn, the shard ids it revealed.
        episode_index: How many episodes on this intent the env ran before this one.
        termination_reason: ``None`` while the episode runs, else why it ended
            (``"solved"``, ``"user_ended"``, ``"max_replies"``).
    """

    intent: Intent
    seed: int
    messages: list[Message] = field(default_factory=list)
    user_turns: list[UserTurn] = field(default_factory=list)
    ending: UserTurn | None = None
    scores: list[Score] = field(default_factory=list)
    reply_labels: list[str] = field(default_factory=list)
    revealed: list[tuple[int, ...]] = field(default_factory=list)
    episode_index: int = 0
    termination_reason: str | None = None

    @property
    def revealed_ids(self) -> frozenset[int]:
        """Every shard id revealed so far."""
        return frozenset(i for ids in self.revealed for i in ids)

    @property
    def solved(self) -> bool:
        """Whether any assistant reply so far solved the task."""
        return any(s.solved for s in self.scores)

    @property
    def started(self) -> bool:
        """Whether the first user turn was produced."""
        return bool(self.user_turns)

    @property
    def over(self) -> bool:
        """Whether the episode has ended."""
        return self.termination_reason is not None

    @property
    def user_ended(self) -> bool:
        """Whether the user ended the conversation."""
        return self.ending is not None

    @property
    def last_user_turn(self) -> UserTurn:
        """What the simulator said last: the ending, else the latest spoken turn."""
        return self.ending if self.ending is not None else self.user_turns[-1]

    @property
    def last_reply(self) -> str | None:
        """The latest assistant reply, if any."""
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                return message["content"]
        return None

    def turn_seed(self) -> int:
        """A seed for sampling the next user turn: fixed by ``seed`` and the turns so far."""
        return (self.seed * 1_000_003 + len(self.user_turns)) % (2**31 - 1)
