"""Run many episodes of simulator x assistant in rolling batches, and record them.

:func:`run_episodes` keeps up to ``batch_size`` conversations in flight: each iteration makes one
batched assistant call and one :meth:`ConversationCore.advance` (hence one batched simulator
call), and new conversations join as soon as others finish. The assistant sees each
conversation's messages only (and the intent id, which scripted assistants use to find their
answer key). No per-step metrics are computed: each finished episode's metrics are computed
once, into its :class:`EpisodeRecord`, which is handed to ``on_done`` at once, so a crash later
never loses it (:class:`userlm_env.records.JsonlWriter` appends, flushes and fsyncs each
record).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from userlm_env.core import ConversationCore
from userlm_env.metrics.episode import (
    EpisodeMetricsConfig,
    EpisodeView,
    episode_metrics,
    shard_coverage,
)
from userlm_env.protocols import Assistant
from userlm_env.records import EpisodeRecord, intent_summary
from userlm_env.types import AssistantReply, ConversationState, Intent

__all__ = [
    "EpisodeJob",
    "first_per_task",
    "make_jobs",
    "record_of",
    "run_episodes",
]


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to run: which intent, which repetition, which seed."""

    intent: Intent
    repeat: int
    seed: int

    @property
    def key(self) -> str:
        """Stable identity of the episode, used to resume runs."""
        return f"{self.intent.intent_id}#{self.repeat}"


def first_per_task(intents: Sequence[Intent], limit: int | None) -> list[Intent]:
    """The first ``limit`` intents of each task (all of them when ``limit`` is ``None``)."""
    if limit is None:
        return list(intents)
    seen: dict[str, int] = {}
    kept = []
    for intent in intents:
        seen[intent.task] = seen.get(intent.task, 0) + 1
        if seen[intent.task] <= limit:
            kept.append(intent)
    return kept


def make_jobs(intents: Sequence[Intent], n_per_intent: int, seed: int = 0) -> list[EpisodeJob]:
    """``n_per_intent`` jobs per intent, each with a seed fixed by (seed, intent, repeat)."""
    return [
        EpisodeJob(intent, repeat, zlib.crc32(f"{seed}:{intent.intent_id}:{repeat}".encode()))
        for intent in intents
        for repeat in range(n_per_intent)
    ]


def record_of(
    job: EpisodeJob,
    state: ConversationState,
    error: str | None = None,
    *,
    cost: float | None = 0.0,
    metrics: EpisodeMetricsConfig | None = None,
) -> EpisodeRecord:
    """The record of an episode from its final state; the episode metrics are computed here
    (once) unless the episode failed."""
    turns = [*state.user_turns, *([state.ending] if state.ending is not None else [])]
    return EpisodeRecord(
        key=job.key,
        task=job.intent.task,
        intent_id=job.intent.intent_id,
        repeat=job.repeat,
        seed=job.seed,
        user_turns=len(state.user_turns),
        replies=len(state.scores),
        solved=state.solved,
        attempts=sum(1 for s in state.scores if s.attempted),
        termination_reason=state.termination_reason,
        coverage=shard_coverage(job.intent, state.revealed_ids),
        revealed=[list(ids) for ids in state.revealed],
        messages=[{"role": m["role"], "content": m["content"]} for m in state.messages],
        user_turn_metadata=[dict(t.metadata) for t in turns],
        reply_labels=list(state.reply_labels),
        cost=cost,
        error=error,
        intent=intent_summary(job.intent),
        metrics={} if error else episode_metrics(EpisodeView.from_state(state), metrics),
    )


def run_episodes(
    jobs: Iterable[EpisodeJob],
    core: ConversationCore,
    assistant: Assistant,
    *,
    batch_size: int = 16,
    on_done: Callable[[EpisodeRecord], None] | None = None,
    metrics: EpisodeMetricsConfig | None = None,
    may_start: Callable[[], bool] | None = None,
) -> list[EpisodeRecord]:
    """Run every job to its end and return the records in completion order.

    ``may_start`` is asked before new episodes are started; once it says ``False`` (a spending
    cap reached), no further job starts and the episodes in flight run to their end, so every
    started episode has its record and the jobs left are exactly those never started.

    A failure confined to one episode (an assistant row that came back with an error, a
    simulator call that fails for that conversation alone) ends that episode with ``error`` set;
    the others go on. When a batched call fails, its conversations are retried one by one to
    find which ones fail. ``metrics`` configures the episode metrics of the records.
    """
    runner = _Runner(core, assistant, on_done, metrics)
    queue = list(jobs)
    queue.reverse()
    while queue or runner.active:
        if queue and may_start is not None and not may_start():
            queue.clear()
            if not runner.active:
                break
        fresh = [queue.pop() for _ in range(min(batch_size - len(runner.active), len(queue)))]
        runner.start(fresh)
        runner.step()
    return runner.records


_Pair = tuple[EpisodeJob, ConversationState]


class _Runner:
    """The in-flight conversations of :func:`run_episodes` and their book-keeping."""

    def __init__(
        self,
        core: ConversationCore,
        assistant: Assistant,
        on_done: Callable[[EpisodeRecord], None] | None,
        metrics: EpisodeMetricsConfig | None,
    ) -> None:
        self.core, self.assistant, self.on_done = core, assistant, on_done
        self.metrics = metrics
        self.active: list[_Pair] = []
        self.records: list[EpisodeRecord] = []
        self.costs: dict[str, float | None] = {}

    def start(self, jobs: Sequence[EpisodeJob]) -> None:
        pairs = [(j, ConversationState(intent=j.intent, seed=j.seed)) for j in jobs]
        started = self._isolate(pairs, lambda batch: self.core.start([s for _, s in batch]))
        self.active.extend(started)

    def step(self) -> None:
        replies = self._replies()
        ok: list[_Pair] = []
        for pair, reply in zip(self.active, replies, strict=True):
            self._add_cost(pair[0].key, reply.cost)
            if reply.error is not None:
                self._finish(*pair, error=reply.error)
            else:
                ok.append(pair)
        by_state = {id(s): r.text for (_, s), r in zip(self.active, replies, strict=True)}

        def advance(batch: list[_Pair]) -> None:
            self.core.advance([s for _, s in batch], [by_state[id(s)] for _, s in batch])

        survivors = self._isolate(ok, advance)
        for pair in [p for p in survivors if p[1].over]:
            self._finish(*pair)
        self.active = [p for p in survivors if not p[1].over]

    def _replies(self) -> list[AssistantReply]:
        """One reply per active conversation; a failed assistant call fails every row."""
        states = [state for _, state in self.active]
        try:
            replies = self.assistant.respond(
                [list(s.messages) for s in states],
                intent_ids=[s.intent.intent_id for s in states],
                seeds=[s.turn_seed() for s in states],
            )
        except Exception as error:
            return [AssistantReply.failed(error) for _ in states]
        if len(replies) != len(states):
            mismatch = ValueError(f"the assistant gave {len(replies)} replies for {len(states)}")
            return [AssistantReply.failed(mismatch) for _ in states]
        return list(replies)

    def _isolate(self, pairs: list[_Pair], call: Callable[[list[_Pair]], Any]) -> list[_Pair]:
        """Run ``call`` on the batch; if it fails, on each pair alone. Returns the pairs that
        succeeded; the others are finished with their error."""
        if not pairs:
            return []
        try:
            call(pairs)
            return pairs
        except Exception as error:
            if len(pairs) == 1:
                self._finish(*pairs[0], error=_describe(error))
                return []
        survivors = []
        for pair in pairs:
            try:
                call([pair])
                survivors.append(pair)
            except Exception as error:
                self._finish(*pair, error=_describe(error))
        return survivors

    def _add_cost(self, key: str, cost: float | None) -> None:
        known = self.costs.get(key, 0.0)
        self.costs[key] = None if cost is None or known is None else known + cost

    def _finish(self, job: EpisodeJob, state: ConversationState, error: str | None = None) -> None:
        cost = self.costs.pop(job.key, 0.0)
        record = record_of(job, state, error=error, cost=cost, metrics=self.metrics)
        self.records.append(record)
        if self.on_done is not None:
            self.on_done(record)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]
