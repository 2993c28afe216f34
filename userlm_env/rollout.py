"""Run many episodes of simulator x assistant in rolling batches, and record them.

:func:`run_episodes` keeps up to ``batch_size`` conversations in flight: each iteration makes one
batched assistant call and one :meth:`ConversationCore.advance` (hence one batched simulator
call), and new conversations join as soon as others finish. Every finished episode is handed to
``on_done`` at once, so a crash later never loses it (:class:`JsonlWriter` appends, flushes and
fsyncs each record).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from userlm_env.core import ConversationCore
from userlm_env.types import ConversationState, Intent

__all__ = [
    "EpisodeJob",
    "EpisodeRecord",
    "JsonlWriter",
    "first_per_task",
    "make_jobs",
    "read_records",
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
        return f"{self.intent.task_id}#{self.repeat}"


@dataclass
class EpisodeRecord:
    """A finished (or failed) episode, as written to ``results.jsonl``."""

    key: str
    task: str
    intent_id: str
    repeat: int
    seed: int
    turns: int
    solved: bool
    attempts: int
    termination_reason: str | None
    coverage: float
    revealed: list[list[int]]
    messages: list[dict[str, str]]
    user_turn_metadata: list[dict[str, Any]] = field(default_factory=list)
    reply_labels: list[str] = field(default_factory=list)
    cost: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), ensure_ascii=False, default=str)


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
        EpisodeJob(intent, repeat, zlib.crc32(f"{seed}:{intent.task_id}:{repeat}".encode()))
        for intent in intents
        for repeat in range(n_per_intent)
    ]


def record_of(job: EpisodeJob, state: ConversationState, error: str | None = None) -> EpisodeRecord:
    """The record of an episode from its final state."""
    return EpisodeRecord(
        key=job.key,
        task=job.intent.task,
        intent_id=job.intent.task_id,
        repeat=job.repeat,
        seed=job.seed,
        turns=sum(1 for t in state.user_turns if not t.ended),
        solved=state.solved,
        attempts=sum(1 for s in state.scores if s.attempted),
        termination_reason=state.termination_reason,
        coverage=len(state.revealed_ids) / len(job.intent.shards),
        revealed=[list(ids) for ids in state.revealed],
        messages=[dict(m) for m in state.messages],
        user_turn_metadata=[dict(t.metadata) for t in state.user_turns],
        reply_labels=list(state.reply_labels),
        error=error,
    )


def run_episodes(
    jobs: Iterable[EpisodeJob],
    core: ConversationCore,
    assistant: Any,
    *,
    batch_size: int = 16,
    on_done: Callable[[EpisodeRecord], None] | None = None,
) -> list[EpisodeRecord]:
    """Run every job to its end and return the records in completion order.

    A failure confined to one episode (an assistant row that came back as an exception, a
    simulator call that fails for that conversation alone) ends that episode with ``error`` set;
    the others go on. When a batched call fails, its conversations are retried one by one to
    find which ones fail.
    """
    runner = _Runner(core, assistant, on_done)
    queue = list(jobs)
    queue.reverse()
    while queue or runner.active:
        fresh = [queue.pop() for _ in range(min(batch_size - len(runner.active), len(queue)))]
        runner.start(fresh)
        runner.step()
    return runner.records


class _Runner:
    """The in-flight conversations of :func:`run_episodes` and their book-keeping."""

    def __init__(
        self,
        core: ConversationCore,
        assistant: Any,
        on_done: Callable[[EpisodeRecord], None] | None,
    ) -> None:
        self.core, self.assistant, self.on_done = core, assistant, on_done
        self.active: list[tuple[EpisodeJob, ConversationState]] = []
        self.records: list[EpisodeRecord] = []
        self.costs: dict[str, float | None] = {}

    def start(self, jobs: Sequence[EpisodeJob]) -> None:
        pairs = [(j, ConversationState(intent=j.intent, seed=j.seed)) for j in jobs]
        started = self._isolate(pairs, lambda batch: self.core.start([s for _, s in batch]))
        self.active.extend(started)

    def step(self) -> None:
        replies = self.assistant.respond([state for _, state in self.active])
        self._add_costs(getattr(self.assistant, "last_costs", None))
        ok, ok_replies = [], []
        for pair, reply in zip(self.active, replies, strict=True):
            if isinstance(reply, BaseException):
                self._finish(*pair, error=_describe(reply))
            else:
                ok.append(pair)
                ok_replies.append(reply)
        by_state = {id(state): reply for (_, state), reply in zip(ok, ok_replies, strict=True)}

        def advance(batch: list[tuple[EpisodeJob, ConversationState]]) -> None:
            self.core.advance([s for _, s in batch], [by_state[id(s)] for _, s in batch])

        survivors = self._isolate(ok, advance)
        for pair in [p for p in survivors if p[1].over]:
            self._finish(*pair)
        self.active = [p for p in survivors if not p[1].over]

    def _isolate(
        self,
        pairs: list[tuple[EpisodeJob, ConversationState]],
        call: Callable[[list[tuple[EpisodeJob, ConversationState]]], Any],
    ) -> list[tuple[EpisodeJob, ConversationState]]:
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

    def _add_costs(self, costs: Sequence[float | None] | None) -> None:
        if costs is None:
            return
        for (job, _), cost in zip(self.active, costs, strict=False):
            known = self.costs.get(job.key, 0.0)
            self.costs[job.key] = None if cost is None or known is None else known + cost

    def _finish(self, job: EpisodeJob, state: ConversationState, error: str | None = None) -> None:
        record = record_of(job, state, error=error)
        priced = hasattr(self.assistant, "last_costs")  # local assistants cost nothing
        record.cost = self.costs.pop(job.key, None) if priced else 0.0
        self.records.append(record)
        if self.on_done is not None:
            self.on_done(record)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


class JsonlWriter:
    """Appends one JSON line per record, flushed and fsynced before returning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: EpisodeRecord) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a results file; a torn last line (a crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
