"""The rule-based users of the Lost-in-Conversation settings: sharded, FULL and CONCAT.

One class, :class:`ShardedSimulator`, covers every setting through a small config:

* ``opening`` says what the first user turn is: ``"shard"`` (shard 1, the goal; the SHARDED
  setting), ``"full"`` (the intent's fully specified instruction; registered as ``"full"``) or
  ``"concat"`` (every shard in one message; registered as ``"concat"``). The two one-message
  openings reveal every shard at once.
* ``strategy`` says how a sharded user restates what it said (the paper's user-side
  strategies): ``"plain"`` never restates, ``"recap"`` adds one final turn restating every shard
  once all are out, ``"snowball"`` restates the shards said before in every turn, then adds the
  new one.

Once every shard is out (and after the recap, if any) the user ends the conversation as soon as
the assistant has made an answer attempt, and otherwise nudges it for the final answer. Every turn
names exactly the shards it states in ``shard_ids`` (a restatement included), so the env's
coverage and the Repeat Required metric see repetitions. Restating turns use the shards' own
words and nothing else, so the rule-based users never add demands. Deterministic and model-free,
these users are the reference for testing envs, rewards and shard matchers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from userlm_env.errors import UnknownNameError
from userlm_env.estimate import CallBudget
from userlm_env.types import END_MARKER, ConversationState, Intent, Shard, UserTurn

__all__ = [
    "Opening",
    "ShardedSimulator",
    "ShardedSimulatorConfig",
    "Strategy",
    "concat_simulator",
    "full_simulator",
    "stated",
]

Opening = Literal["shard", "full", "concat"]
Strategy = Literal["plain", "recap", "snowball"]


@dataclass(frozen=True)
class ShardedSimulatorConfig:
    """Settings of :class:`ShardedSimulator`."""

    # asked once every shard is out and the assistant has not attempted an answer
    nudge: str = "That is everything I have. Can you give me your final answer now?"
    required_first: bool = True  # required shards before the others (examples, trivial cases)
    opening: Opening = "shard"  # first turn: "shard" (shard 1), "full" (instruction), "concat"
    strategy: Strategy = "plain"  # restating: "plain" (never), "recap" (at the end), "snowball"

    def __post_init__(self) -> None:
        _check_choice("opening", self.opening, get_args(Opening))
        _check_choice("strategy", self.strategy, get_args(Strategy))
        if self.opening != "shard" and self.strategy != "plain":
            raise ValueError(
                f"strategy {self.strategy!r} restates shards revealed one per turn; the "
                f"{self.opening!r} opening reveals them all at once (use strategy 'plain')"
            )


def _check_choice(field: str, value: object, known: tuple[str, ...]) -> None:
    if value not in known:
        raise UnknownNameError(
            f"unknown sharded-simulator {field} {value!r}; known: {', '.join(known)}"
        )


def stated(shards: Iterable[Shard]) -> str:
    """The texts of ``shards``, in the given order, as one message.

    One shard per line; a blank line between shards when any of them spans several lines (code
    examples), so that every shard's boundary stays visible. Nothing is added to the shards'
    own words.
    """
    texts = [shard.text.strip() for shard in shards]
    separator = "\n\n" if any("\n" in text for text in texts) else "\n"
    return separator.join(texts)


class ShardedSimulator:
    """A rule-based user: an opening turn, then one unrevealed shard per turn.

    Shard 1 comes first, then the others (required ones first unless ``required_first`` is off).
    All state it reads lives in :class:`ConversationState` (``user_turns``, ``revealed`` and
    ``scores``), so one instance serves any batch.

    Args:
        config: The settings (defaults: the plain sharded user).
        **overrides: Fields of :class:`ShardedSimulatorConfig` to replace.
    """

    def __init__(self, config: ShardedSimulatorConfig | None = None, **overrides: Any) -> None:
        base = config or ShardedSimulatorConfig()
        self.config = ShardedSimulatorConfig(**{**base.__dict__, **overrides})

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """The next user turn of every state."""
        return [self._next_turn(state) for state in states]

    def call_budget(self) -> CallBudget:
        """No model is called (:mod:`userlm_env.estimate`); :meth:`rule_turns` bounds its turns."""
        return CallBudget.without_model("rule-based")

    def rule_turns(self, intent: Intent) -> list[str]:
        """Texts at least as long as each turn it can say for ``intent``: the opening, every
        shard (all of them at once when it restates), and the nudge."""
        cfg = self.config
        if cfg.opening == "full":
            texts = [intent.instruction]
        elif cfg.opening == "concat" or cfg.strategy != "plain":
            texts = [stated(intent.shards)]  # a restating turn says at most every shard
        else:
            texts = [stated([shard]) for shard in intent.shards]
        return [*texts, cfg.nudge]

    def _next_turn(self, state: ConversationState) -> UserTurn:
        if not state.user_turns and self.config.opening != "shard":
            return _opening_turn(state.intent, self.config.opening)
        shard = self._next_shard(state)
        if shard is not None:
            return self._shard_turn(state, shard)
        if self.config.strategy == "recap" and not _recapped(state):
            return _recap_turn(state)
        if state.scores and state.scores[-1].attempted:
            return UserTurn(text=END_MARKER, ended=True, shard_ids=())
        return UserTurn(text=self.config.nudge, shard_ids=(), metadata={"nudge": True})

    def _shard_turn(self, state: ConversationState, shard: Shard) -> UserTurn:
        """The turn revealing ``shard``; a snowball turn first restates the shards said."""
        before = _said(state) if self.config.strategy == "snowball" else []
        shards = [*before, shard]
        return UserTurn(
            text=stated(shards),
            shard_ids=tuple(s.id for s in shards),
            metadata={"shard": shard.id, "restated": tuple(s.id for s in before)},
        )

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


def _opening_turn(intent: Intent, opening: Opening) -> UserTurn:
    """The one-message first turn of the FULL or CONCAT setting: it reveals every shard."""
    text = intent.instruction if opening == "full" else stated(intent.shards)
    return UserTurn(
        text=text, shard_ids=tuple(s.id for s in intent.shards), metadata={"opening": opening}
    )


def _said(state: ConversationState) -> list[Shard]:
    """The shards revealed so far, in the order they first came up."""
    ids = dict.fromkeys(i for turn_ids in state.revealed for i in turn_ids)
    return [state.intent.shard(i) for i in ids]


def _recapped(state: ConversationState) -> bool:
    return any(turn.metadata.get("recap") for turn in state.user_turns)


def _recap_turn(state: ConversationState) -> UserTurn:
    """Every shard again, in the order the user first said them."""
    shards = _said(state)
    return UserTurn(
        text=stated(shards), shard_ids=tuple(s.id for s in shards), metadata={"recap": True}
    )


def full_simulator(
    config: ShardedSimulatorConfig | None = None, **overrides: Any
) -> ShardedSimulator:
    """The FULL setting's user: the fully specified instruction first, then the endgame."""
    return ShardedSimulator(config, **overrides, opening="full")


def concat_simulator(
    config: ShardedSimulatorConfig | None = None, **overrides: Any
) -> ShardedSimulator:
    """The CONCAT setting's user: every shard in one first message, then the endgame."""
    return ShardedSimulator(config, **overrides, opening="concat")
