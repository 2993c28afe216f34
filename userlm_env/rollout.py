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
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), ensure_ascii=False, default=str)


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
    """Run every job to its end and return the records in completion order."""
    queue = list(jobs)
    queue.reverse()
    active: list[tuple[EpisodeJob, ConversationState]] = []
    records: list[EpisodeRecord] = []

    def finish(job: EpisodeJob, state: ConversationState) -> None:
        record = record_of(job, state)
        records.append(record)
        if on_done is not None:
            on_done(record)

    while queue or active:
        fresh = [queue.pop() for _ in range(min(batch_size - len(active), len(queue)))]
        if fresh:
            states = [ConversationState(intent=j.intent, seed=j.seed) for j in fresh]
            core.start(states)
            active.extend(zip(fresh, states, strict=True))
        replies = assistant.respond([state for _, state in active])
        core.advance([state for _, state in active], replies)
        for job, state in [pair for pair in active if pair[1].over]:
            finish(job, state)
        active = [pair for pair in active if not pair[1].over]
    return records


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
