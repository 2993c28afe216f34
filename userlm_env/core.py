"""The one transition of userlm-env, written for a *batch* of conversations.

:class:`ConversationCore` starts and advances any number of :class:`ConversationState` at once:
one simulator call per batch, one batched scoring call per task. ``ConversationEnv`` is the batch
of one, the vector env is the batch of N, and the rollout of the experiment scripts calls it
directly, so the loop exists exactly once:

    start:   states -> Simulator.respond(states) -> first user turns
    advance: replies -> validate -> Scorer.score_many -> solved? terminate
             else reply budget spent? truncate, else Simulator.respond -> next user turn
             (or the user ends)

The core only transitions: it changes the states and returns one :class:`Transition` each.
What an agent observes and the metrics of ``info`` are built from the states by the envs
(:mod:`userlm_env.observation`, :class:`userlm_env.tracker.EpisodeTracker`); a rollout that needs
no per-step metrics computes none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from userlm_env.errors import EpisodeStateError, ReplyTooLongError, UserLMEnvError
from userlm_env.labels import HeuristicLabeler, ReplyLabeler
from userlm_env.metrics.shards import LexicalShardMatcher, ShardMatcher
from userlm_env.protocols import Scorer, Simulator
from userlm_env.resample import Verdict, resample
from userlm_env.tasks import make_scorer
from userlm_env.types import ConversationState, Message, Score, UserTurn

__all__ = [
    "DEFAULT_MAX_REPLY_CHARS",
    "ConversationCore",
    "SimulatorError",
    "TerminationReason",
    "Transition",
]

#: Replies longer than this many characters are rejected with :class:`ReplyTooLongError`.
DEFAULT_MAX_REPLY_CHARS = 32_768
#: Simulator calls for a first user turn before a user that keeps ending is an error. A safety
#: net for simulators from elsewhere: the built-in ones never end an empty conversation.
FIRST_TURN_TRIES = 3


class TerminationReason:
    """Values of ``info["termination_reason"]``."""

    SOLVED = "solved"
    USER_ENDED = "user_ended"
    MAX_REPLIES = "max_replies"


class SimulatorError(UserLMEnvError, RuntimeError):
    """The simulator broke its contract (wrong number of turns, ended before speaking)."""


@dataclass(frozen=True)
class Transition:
    """What one ``start`` or ``advance`` did to one conversation.

    Attributes:
        reward: The scorer's reward for the reply (0.0 at the start).
        terminated: The reply solved the task, or the user ended the conversation.
        truncated: The reply budget is spent.
        score: The scorer's verdict on the reply (``None`` at the start).
    """

    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    score: Score | None = None

    @property
    def done(self) -> bool:
        """The episode is over (terminated or truncated)."""
        return self.terminated or self.truncated


@dataclass(frozen=True)
class _Mark:
    """The lengths of a state's lists and its end, to roll a failed step back."""

    messages: int
    user_turns: int
    scores: int
    revealed: int
    reply_labels: int
    ending: UserTurn | None
    termination_reason: str | None

    @classmethod
    def of(cls, state: ConversationState) -> _Mark:
        return cls(
            len(state.messages),
            len(state.user_turns),
            len(state.scores),
            len(state.revealed),
            len(state.reply_labels),
            state.ending,
            state.termination_reason,
        )

    def restore(self, state: ConversationState) -> None:
        del state.messages[self.messages :]
        del state.user_turns[self.user_turns :]
        del state.scores[self.scores :]
        del state.revealed[self.revealed :]
        del state.reply_labels[self.reply_labels :]
        state.ending, state.termination_reason = self.ending, self.termination_reason


class ConversationCore:
    """Starts and advances batches of conversations.

    Args:
        simulator: Produces the user turns.
        max_replies: Assistant replies allowed before the episode is truncated.
        matcher: Maps user turns to the shards they reveal when the simulator does not say.
        scorers: Scorers by task name; missing ones are built from the scorer registry.
        max_reply_chars: Longest accepted assistant reply, in characters.
        labeler: Labels each reply (answer attempt, clarification...); heuristic by default.
    """

    def __init__(
        self,
        simulator: Simulator,
        *,
        max_replies: int = 8,
        matcher: ShardMatcher | None = None,
        scorers: Mapping[str, Scorer] | None = None,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
        labeler: ReplyLabeler | None = None,
    ) -> None:
        if max_replies < 1:
            raise ValueError(f"max_replies must be >= 1, got {max_replies}")
        self.simulator = simulator
        self.max_replies = max_replies
        self.matcher = matcher or LexicalShardMatcher()
        self.scorers: dict[str, Scorer] = dict(scorers or {})
        self.max_reply_chars = max_reply_chars
        self.labeler = labeler or HeuristicLabeler()

    # ------------------------------------------------------------------ public API
    def start(self, states: Sequence[ConversationState]) -> list[Transition]:
        """Ask the simulator for the first user turn of each (fresh) state.

        Raises:
            ValueError: A state is not fresh.
            SimulatorError: The user ended a conversation before its first turn, every try.
        """
        for state in states:
            if state.messages or state.user_turns or state.ending is not None:
                raise ValueError(f"state for {state.intent.intent_id} is not fresh")
        turns = self._first_turns(states)
        for state, turn in zip(states, turns, strict=True):
            self._record_user_turn(state, turn)
        return [Transition() for _ in states]

    def advance(
        self, states: Sequence[ConversationState], replies: Sequence[object]
    ) -> list[Transition]:
        """Score one assistant reply per state and produce the next user turns.

        Raises (before changing any state): ``TypeError`` for a non-``str`` reply,
        :class:`ReplyTooLongError` for an over-long one, :class:`EpisodeStateError` for a state
        that was never started or whose episode is over. If the simulator fails, every state is
        rolled back to how it was, so the same step can be retried.
        """
        if len(states) != len(replies):
            raise ValueError(f"{len(states)} states but {len(replies)} replies")
        texts = [self.validate(state, reply) for state, reply in zip(states, replies, strict=True)]
        marks = [_Mark.of(s) for s in states]
        try:
            return self._advance(states, texts)
        except BaseException:
            for state, mark in zip(states, marks, strict=True):
                mark.restore(state)
            raise

    def score(self, states: Sequence[ConversationState], replies: Sequence[str]) -> list[Score]:
        """Score ``replies[i]`` for ``states[i]``, batching per task."""
        by_task: dict[str, list[int]] = defaultdict(list)
        for index, state in enumerate(states):
            by_task[state.intent.task].append(index)
        scores: dict[int, Score] = {}
        for task, indices in by_task.items():
            batch = self.scorer(task).score_many(
                [replies[i] for i in indices], [states[i].intent for i in indices]
            )
            scores.update(zip(indices, batch, strict=True))
        return [scores[i] for i in range(len(states))]

    def scorer(self, task: str) -> Scorer:
        """The scorer of ``task``, built on first use."""
        if task not in self.scorers:
            self.scorers[task] = make_scorer(task)
        return self.scorers[task]

    def close(self) -> None:
        """Release the scorers' resources (sandbox workers)."""
        for scorer in self.scorers.values():
            scorer.close()

    def validate(self, state: ConversationState, reply: object) -> str:
        """``reply`` as the reply to ``state``'s latest user turn, after checking both.

        Raises:
            TypeError: ``reply`` is not a ``str``.
            ReplyTooLongError: ``reply`` is longer than ``max_reply_chars``.
            EpisodeStateError: ``state`` was never started, or its episode is over.
        """
        if not isinstance(reply, str):
            raise TypeError(f"an assistant reply must be a str, got {type(reply).__name__}")
        if len(reply) > self.max_reply_chars:
            raise ReplyTooLongError(
                f"reply of {len(reply)} characters exceeds the limit of {self.max_reply_chars}"
            )
        if not state.started:
            raise EpisodeStateError("step() called before reset(): call reset() first")
        if state.over:
            raise EpisodeStateError(
                f"the episode already ended ({state.termination_reason}); "
                "call reset() to start a new one"
            )
        return reply

    # ------------------------------------------------------------------ internals
    def _advance(
        self, states: Sequence[ConversationState], replies: Sequence[str]
    ) -> list[Transition]:
        for state, reply in zip(states, replies, strict=True):
            state.messages.append(Message(role="assistant", content=reply))
        scores = self.score(states, replies)
        labels = self.labeler.label_many(replies, scores)
        continuing: list[ConversationState] = []
        for state, score, label in zip(states, scores, labels, strict=True):
            state.scores.append(score)
            state.reply_labels.append(label)
            if score.solved:
                state.termination_reason = TerminationReason.SOLVED
            elif len(state.scores) >= self.max_replies:
                state.termination_reason = TerminationReason.MAX_REPLIES
            else:
                continuing.append(state)
        if continuing:
            turns = self._call_simulator(continuing)
            for state, turn in zip(continuing, turns, strict=True):
                self._record_user_turn(state, turn)
        return [_transition(s, sc) for s, sc in zip(states, scores, strict=True)]

    def _first_turns(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """First turns through the shared retry loop; a retry re-seeds the conversation so
        that a seeded simulator can say something else.

        The built-in simulators never end an empty conversation (they ban and resample the end
        marker there), so this loop only ever retries for simulators from elsewhere.
        """

        def generate(pending: list[ConversationState], attempt: int) -> list[UserTurn]:
            if attempt:
                for state in pending:
                    state.seed = (state.seed * 7_919 + attempt) % (2**31 - 1)
            return self._call_simulator(pending)

        def vet(_: ConversationState, turn: UserTurn) -> Verdict[UserTurn]:
            return Verdict.reject("ended") if turn.ended else Verdict.accept(turn)

        outcomes = resample(list(states), generate, vet, tries=FIRST_TURN_TRIES)
        ended = [
            s.intent.intent_id for s, o in zip(states, outcomes, strict=True) if not o.accepted
        ]
        if ended:
            raise SimulatorError(
                f"the simulator ended {len(ended)} conversation(s) before their first user turn "
                f"in each of {FIRST_TURN_TRIES} tries (intents {ended}); a user must speak "
                "before ending"
            )
        return [outcome.value for outcome in outcomes if outcome.value is not None]

    def _call_simulator(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        turns = list(self.simulator.respond(states))
        if len(turns) != len(states):
            raise SimulatorError(f"simulator returned {len(turns)} turns for {len(states)} states")
        for turn in turns:
            if not isinstance(turn, UserTurn):
                raise SimulatorError(f"simulator returned {type(turn).__name__}, not UserTurn")
        return turns

    def _record_user_turn(self, state: ConversationState, turn: UserTurn) -> None:
        if turn.ended:
            state.ending = turn
            state.termination_reason = TerminationReason.USER_ENDED
            return
        state.user_turns.append(turn)
        state.messages.append(Message(role="user", content=turn.text))
        ids = turn.shard_ids
        if ids is None:
            ids = self.matcher.match(turn.text, state.intent)
        state.revealed.append(tuple(sorted(ids)))


def _transition(state: ConversationState, score: Score) -> Transition:
    reason = state.termination_reason
    return Transition(
        reward=score.reward,
        terminated=reason in (TerminationReason.SOLVED, TerminationReason.USER_ENDED),
        truncated=reason == TerminationReason.MAX_REPLIES,
        score=score,
    )
