"""The one step logic of userlm-env, written for a *batch* of conversations.

:class:`ConversationCore` starts and advances any number of :class:`ConversationState` at once:
one simulator call per batch, one batched scoring call per task. ``ConversationEnv`` is the batch
of one, the vector env is the batch of N, and the rollout helpers used by the experiment scripts
call it directly, so the loop exists exactly once:

    start:   states -> Simulator.respond(states) -> first user turns
    advance: replies -> validate -> Task.score_many -> solved? terminate
             else turn limit? truncate, else Simulator.respond -> next user turn (or user ends)

Every step yields a :class:`StepOutcome` whose ``info`` is described in
:func:`ConversationCore.info`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from userlm_env.errors import EpisodeStateError, ReplyTooLongError, UserLMEnvError
from userlm_env.labels import HeuristicLabeler, ReplyLabeler
from userlm_env.metrics.diversity import EpisodeHistory, diversity_against
from userlm_env.metrics.episode import EpisodeMetricsConfig, EpisodeView, episode_metrics, pace
from userlm_env.metrics.shards import LexicalShardMatcher, ShardMatcher
from userlm_env.metrics.text import unigrams
from userlm_env.tasks import Task, make_task
from userlm_env.types import END_MARKER, ConversationState, Message, Score, UserTurn

__all__ = [
    "DEFAULT_MAX_REPLY_CHARS",
    "ConversationCore",
    "SimulatorError",
    "StepOutcome",
    "TerminationReason",
]

#: Replies longer than this many characters are rejected with :class:`ReplyTooLongError`.
DEFAULT_MAX_REPLY_CHARS = 32_768
#: How often a simulator may end a conversation before its first word before we give up.
_FIRST_TURN_TRIES = 3


_Mark = tuple[int, int, int, int, int, str | None]


def _mark(state: ConversationState) -> _Mark:
    """Lengths of a state's lists (and its end reason), to roll a failed step back."""
    return (
        len(state.messages),
        len(state.user_turns),
        len(state.scores),
        len(state.revealed),
        len(state.reply_labels),
        state.termination_reason,
    )


class TerminationReason:
    """Values of ``info["termination_reason"]``."""

    SOLVED = "solved"
    USER_ENDED = "user_ended"
    MAX_TURNS = "max_turns"


class SimulatorError(UserLMEnvError, RuntimeError):
    """The simulator broke its contract (wrong number of turns, ended before speaking)."""


@dataclass
class StepOutcome:
    """What one conversation yields for one ``reset`` or ``step``."""

    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """The episode is over (terminated or truncated)."""
        return self.terminated or self.truncated


class ConversationCore:
    """Starts and advances batches of conversations.

    Args:
        simulator: Produces user turns (see :class:`simulators.Simulator`).
        max_turns: Assistant replies allowed before the episode is truncated.
        matcher: Maps user turns to the shards they reveal when the simulator does not say.
        tasks: Scorers by task name; missing ones are built from the task registry.
        max_reply_chars: Longest accepted assistant reply, in characters.
        labeler: Labels each reply (answer attempt, clarification...); heuristic by default.
        metrics: Settings of the episode metrics in the final ``info`` (drift length, the
            Add Demands detector...).

    Attributes:
        history: User-turn unigrams of the finished episodes per intent, for the ``diversity``
            value of ``info`` (the envs clear it on a seeded ``reset``).
    """

    def __init__(
        self,
        simulator: Any,
        *,
        max_turns: int = 8,
        matcher: ShardMatcher | None = None,
        tasks: Mapping[str, Task] | None = None,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
        labeler: ReplyLabeler | None = None,
        metrics: EpisodeMetricsConfig | None = None,
    ) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.simulator = simulator
        self.max_turns = max_turns
        self.matcher = matcher or LexicalShardMatcher()
        self.tasks: dict[str, Task] = dict(tasks or {})
        self.max_reply_chars = max_reply_chars
        self.labeler = labeler or HeuristicLabeler()
        self.metrics = metrics or EpisodeMetricsConfig()
        self.history = EpisodeHistory()

    # ------------------------------------------------------------------ public API
    def start(self, states: Sequence[ConversationState]) -> list[StepOutcome]:
        """Ask the simulator for the first user turn of each (fresh) state."""
        for state in states:
            if state.messages or state.user_turns:
                raise ValueError(f"state for {state.intent.task_id} is not fresh")
        turns = self._first_turns(states)
        for state, turn in zip(states, turns, strict=True):
            self._record_user_turn(state, turn)
        return [self._outcome(state, None) for state in states]

    def advance(
        self, states: Sequence[ConversationState], replies: Sequence[Any]
    ) -> list[StepOutcome]:
        """Score one assistant reply per state and produce the next user turns.

        Raises (before changing any state): ``TypeError`` for a non-``str`` reply,
        :class:`ReplyTooLongError` for an over-long one, :class:`EpisodeStateError` for a state
        that was never started or whose episode is over. If the simulator fails, every state is
        rolled back to how it was, so the same step can be retried.
        """
        if len(states) != len(replies):
            raise ValueError(f"{len(states)} states but {len(replies)} replies")
        for state, reply in zip(states, replies, strict=True):
            self._validate(state, reply)
        marks = [_mark(s) for s in states]
        try:
            return self._advance(states, replies)
        except BaseException:
            for state, mark in zip(states, marks, strict=True):
                self._rollback(state, mark)
            raise

    def score(self, states: Sequence[ConversationState], replies: Sequence[str]) -> list[Score]:
        """Score ``replies[i]`` for ``states[i]``, batching per task."""
        by_task: dict[str, list[int]] = defaultdict(list)
        for index, state in enumerate(states):
            by_task[state.intent.task].append(index)
        scores: list[Score | None] = [None] * len(states)
        for task_name, indices in by_task.items():
            task = self._task(task_name)
            batch = task.score_many(
                [replies[i] for i in indices], [states[i].intent for i in indices]
            )
            for index, score in zip(indices, batch, strict=True):
                scores[index] = score
        return [s for s in scores if s is not None]

    # ------------------------------------------------------------------ internals
    def _task(self, name: str) -> Task:
        if name not in self.tasks:
            self.tasks[name] = make_task(name)
        return self.tasks[name]

    def _validate(self, state: ConversationState, reply: Any) -> None:
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

    def _advance(
        self, states: Sequence[ConversationState], replies: Sequence[str]
    ) -> list[StepOutcome]:
        for state, reply in zip(states, replies, strict=True):
            state.messages.append(Message(role="assistant", content=reply))
        scores = self.score(states, replies)
        labels = self.labeler.label_many(replies, scores)
        need_turn: list[ConversationState] = []
        for state, score, label in zip(states, scores, labels, strict=True):
            state.scores.append(score)
            state.reply_labels.append(label)
            if score.solved:
                self._end(state, TerminationReason.SOLVED)
            elif len(state.scores) >= self.max_turns:
                self._end(state, TerminationReason.MAX_TURNS)
            else:
                need_turn.append(state)
        if need_turn:
            turns = self._call_simulator(need_turn)
            for state, turn in zip(need_turn, turns, strict=True):
                self._record_user_turn(state, turn)
                if turn.ended:
                    self._end(state, TerminationReason.USER_ENDED)
        return [self._outcome(s, sc) for s, sc in zip(states, scores, strict=True)]

    def _first_turns(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        turns = self._call_simulator(states)
        for _ in range(_FIRST_TURN_TRIES - 1):
            pending = [i for i, t in enumerate(turns) if t.ended]
            if not pending:
                break
            retried = self._call_simulator([states[i] for i in pending])
            for index, turn in zip(pending, retried, strict=True):
                turns[index] = turn
        if any(t.ended for t in turns):
            raise SimulatorError("the simulator ended a conversation before its first user turn")
        return turns

    def _call_simulator(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        turns = list(self.simulator.respond(states))
        if len(turns) != len(states):
            raise SimulatorError(f"simulator returned {len(turns)} turns for {len(states)} states")
        for turn in turns:
            if not isinstance(turn, UserTurn):
                raise SimulatorError(f"simulator returned {type(turn).__name__}, not UserTurn")
        return turns

    def _record_user_turn(self, state: ConversationState, turn: UserTurn) -> None:
        state.user_turns.append(turn)
        if turn.ended:
            state.revealed.append(())
            return
        state.messages.append(Message(role="user", content=turn.text))
        ids = turn.shard_ids
        if ids is None:
            ids = self.matcher.match(turn.text, state.intent)
        state.revealed.append(tuple(sorted(ids)))

    @staticmethod
    def _end(state: ConversationState, reason: str) -> None:
        state.termination_reason = reason

    @staticmethod
    def _rollback(state: ConversationState, mark: _Mark) -> None:
        del state.messages[mark[0] :]
        del state.user_turns[mark[1] :]
        del state.scores[mark[2] :]
        del state.revealed[mark[3] :]
        del state.reply_labels[mark[4] :]
        state.termination_reason = mark[5]

    def _outcome(self, state: ConversationState, score: Score | None) -> StepOutcome:
        reason = state.termination_reason
        observation = END_MARKER if reason is not None else state.user_turns[-1].text
        intent_id = state.intent.task_id
        info = self.info(
            state, score, reason, earlier=self.history.earlier(intent_id), metrics=self.metrics
        )
        if reason is not None:
            self.history.add(intent_id, _user_unigrams(state))
        return StepOutcome(
            observation=observation,
            reward=score.reward if score is not None else 0.0,
            terminated=reason in (TerminationReason.SOLVED, TerminationReason.USER_ENDED),
            truncated=reason == TerminationReason.MAX_TURNS,
            info=info,
        )

    @staticmethod
    def info(
        state: ConversationState,
        score: Score | None,
        reason: str | None,
        *,
        earlier: Sequence[frozenset[str]] = (),
        metrics: EpisodeMetricsConfig | None = None,
    ) -> dict[str, Any]:
        """The ``info`` dict of a step.

        Keys: ``messages`` (OpenAI chat format, copied), ``turn`` (user turns so far),
        ``intent_id``, ``task``, ``attempted``/``solved``/``score_detail`` (of the reply just
        scored; ``False``/``False``/``""`` at reset), ``solved_any`` (any reply so far),
        ``reply_label`` (of the reply just scored; ``None`` at reset),
        ``termination_reason`` (``None`` while running, else ``"solved"``, ``"user_ended"``
        or ``"max_turns"``), ``revealed_shards`` (sorted ids revealed so far), ``coverage``
        (their fraction of all shards), ``user_ended``, ``user_turn_metadata``,
        ``pace`` (the latest spoken user turn: ``turn``, ``words``, ``cumulative_words``,
        ``new_shards``), ``diversity`` (``1 -`` mean unigram Jaccard of this episode's user
        turns so far with each of the ``earlier`` episodes on the intent; ``None`` without
        any) and, once the episode ended, ``episode_metrics`` (see
        :func:`userlm_env.metrics.episode.episode_metrics`).
        """
        revealed = sorted(state.revealed_ids)
        view = EpisodeView.from_state(state)
        info = {
            "messages": [dict(m) for m in state.messages],
            "turn": state.turn,
            "intent_id": state.intent.task_id,
            "task": state.intent.task,
            "attempted": bool(score and score.attempted),
            "solved": bool(score and score.solved),
            "score_detail": score.detail if score else "",
            "solved_any": state.solved,
            "reply_label": state.reply_labels[-1] if score else None,
            "termination_reason": reason,
            "revealed_shards": revealed,
            "coverage": len(revealed) / len(state.intent.shards),
            "user_ended": state.user_turns[-1].ended,
            "user_turn_metadata": dict(state.user_turns[-1].metadata),
            "pace": pace(view),
            "diversity": diversity_against(unigrams(view.user_texts), earlier),
        }
        if reason is not None:
            info["episode_metrics"] = episode_metrics(view, metrics)
        return info


def _user_unigrams(state: ConversationState) -> frozenset[str]:
    return unigrams(t.text for t in state.user_turns if not t.ended)
