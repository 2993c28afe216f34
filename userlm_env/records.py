"""The records of finished episodes: what ``results.jsonl`` holds, and how it is written and read.

Every finished (or failed) episode becomes one :class:`EpisodeRecord`, appended as one JSON line
and fsynced before the next episode goes on (:class:`JsonlWriter`), so a crash never loses a
finished episode. A record carries what reports need without the run's config: its intent's
instruction and shards (never the reference) and the episode metrics computed when it finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from userlm_env.types import Intent

__all__ = ["EpisodeRecord", "JsonlWriter", "intent_summary", "latest_by_key", "read_records"]

_SYMBOLIC_PREFIX = "gsm_symbolic/"  # the intent ids of load_gsm_symbolic


@dataclass
class EpisodeRecord:
    """A finished (or failed) episode, as written to ``results.jsonl``.

    Attributes:
        key, task, intent_id, repeat, seed: Which episode (see :class:`EpisodeJob`).
        user_turns: Spoken user turns (the user ending the conversation is not one).
        replies: Assistant replies.
        solved, attempts: Whether a reply solved the task; replies that attempted an answer.
        termination_reason: ``"solved"``, ``"user_ended"``, ``"max_replies"`` (``None`` when
            the episode failed before its end).
        coverage: Share of the intent's shards revealed.
        revealed: The shard ids each user turn revealed.
        messages: The conversation (OpenAI format).
        user_turn_metadata: Simulator facts of each user turn, then of the ending if any.
        reply_labels: A label per assistant reply.
        cost: USD the assistant spent (``None`` when unknown).
        error: Why the episode failed, else ``None``.
        intent: The intent's instruction and shards (never its reference), for reports.
        metrics: The episode metrics, computed once when it finished (``{}`` when it failed).
        extra: Anything a caller adds.
    """

    key: str
    task: str
    intent_id: str
    repeat: int
    seed: int
    user_turns: int
    replies: int
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
    intent: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), ensure_ascii=False, default=str)


def intent_summary(intent: Intent) -> dict[str, Any]:
    """What a record keeps of its intent: the instruction and the shards, not the reference."""
    shards = [{"id": s.id, "text": s.text, "required": s.required} for s in intent.shards]
    return {"instruction": intent.instruction, "shards": shards}


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
    """Records of a results file; a torn last line (a crash mid-write) is ignored.

    Records of older versions read as this one writes them: GSM-Symbolic episodes, once recorded
    under the task ``"gsm8k"`` that scored them, carry their own task ``"gsm_symbolic"``.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(_current(json.loads(line)))
        except json.JSONDecodeError:
            continue
    return records


def _current(record: Any) -> Any:
    """``record`` with the task this version gives its intent (see :func:`read_records`)."""
    if (
        isinstance(record, dict)
        and record.get("task") == "gsm8k"
        and str(record.get("intent_id", "")).startswith(_SYMBOLIC_PREFIX)
    ):
        record["task"] = "gsm_symbolic"
    return record


def latest_by_key(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last record of each episode key (a resumed run's retry replaces its failure)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for record in records:
        latest[record["key"]] = record
    return list(latest.values())
