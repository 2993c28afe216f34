"""What an agent observes: the new user turn, or the whole conversation.

Two observation modes, chosen with ``observation_mode=`` when an env is built:

* ``"turn"`` (default): the user's newest turn as a ``str`` (``"<|endconversation|>"`` once the
  episode is over). This is what LLM RL trainers append to the chat history they keep.
* ``"conversation"``: every message so far as a tuple of ``{"role", "content"}`` dicts, in a
  Gymnasium :class:`~gymnasium.spaces.Sequence` space (it passes ``check_env`` and works in
  ``AsyncVectorEnv`` with ``shared_memory=False``), for agents that keep no history of their own.

Neither mode ever shows the intent, its shards or its reference.
"""

from __future__ import annotations

from typing import Any, Literal

from gymnasium import spaces

from userlm_env.spaces import UnicodeText
from userlm_env.types import END_MARKER, ConversationState

__all__ = [
    "MAX_OBSERVATION_CHARS",
    "OBSERVATION_MODES",
    "ObservationMode",
    "observation_space",
    "observe",
]

ObservationMode = Literal["turn", "conversation"]
#: The observation modes, the default first.
OBSERVATION_MODES: tuple[str, ...] = ("turn", "conversation")
#: Longest text (a user turn, or one message of a conversation) the spaces admit.
MAX_OBSERVATION_CHARS = 32_768
#: Longest role name ("assistant").
_MAX_ROLE_CHARS = 16


def check_mode(mode: str) -> ObservationMode:
    """``mode`` if it is an observation mode, else ``ValueError`` naming the modes."""
    if mode not in OBSERVATION_MODES:
        raise ValueError(f"observation_mode must be one of {OBSERVATION_MODES}, got {mode!r}")
    return mode  # type: ignore[return-value]


def observation_space(mode: ObservationMode) -> spaces.Space[Any]:
    """The observation space of ``mode``."""
    if mode == "turn":
        return UnicodeText(MAX_OBSERVATION_CHARS)
    message = spaces.Dict(
        {"role": UnicodeText(_MAX_ROLE_CHARS), "content": UnicodeText(MAX_OBSERVATION_CHARS)}
    )
    return spaces.Sequence(message, stack=False)


def observe(state: ConversationState, mode: ObservationMode) -> Any:
    """What the agent observes of ``state`` in ``mode``."""
    if mode == "turn":
        return END_MARKER if state.over else state.user_turns[-1].text
    return tuple({"role": m["role"], "content": m["content"]} for m in state.messages)
