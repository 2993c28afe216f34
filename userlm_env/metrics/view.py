"""``EpisodeView``: one conversation as every metric reads it.

Built from a live :class:`~userlm_env.types.ConversationState` or from a ``results.jsonl``
record (which carries its intent, without the reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from userlm_env.errors import DataError
from userlm_env.types import ConversationState, Intent, Shard

__all__ = ["EpisodeView", "intent_of_record"]


@dataclass(frozen=True)
class EpisodeView:
    """One conversation as the metrics read it.

    Attributes:
        intent: What the user wanted.
        user_texts: The spoken user turns (an end marker is not a turn).
        revealed: The shard ids each spoken user turn revealed, aligned with ``user_texts``.
        assistant_texts: The assistant replies; reply ``i`` answers user turn ``i``.
        user_ended: The user ended the conversation.
        solved: An assistant reply solved the task.
    """

    intent: Intent
    user_texts: tuple[str, ...]
    revealed: tuple[tuple[int, ...], ...]
    assistant_texts: tuple[str, ...] = ()
    user_ended: bool = False
    solved: bool = False

    def __post_init__(self) -> None:
        if len(self.user_texts) != len(self.revealed):
            raise ValueError(
                f"{len(self.user_texts)} user turns but {len(self.revealed)} revealed entries"
            )

    @classmethod
    def from_state(cls, state: ConversationState) -> EpisodeView:
        """The view of a live (or finished) conversation."""
        return cls(
            intent=state.intent,
            user_texts=tuple(t.text for t in state.user_turns),
            revealed=tuple(tuple(ids) for ids in state.revealed),
            assistant_texts=tuple(m["content"] for m in state.messages if m["role"] == "assistant"),
            user_ended=state.user_ended,
            solved=state.solved,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any], intent: Intent | None = None) -> EpisodeView:
        """The view of a ``results.jsonl`` record (:class:`userlm_env.rollout.EpisodeRecord`);
        the intent is the one the record carries unless given."""
        intent = intent or intent_of_record(record)
        if record.get("intent_id") != intent.intent_id:
            raise DataError(f"record {record.get('key')!r} is not about intent {intent.intent_id}")
        messages = record.get("messages") or []
        users = [m["content"] for m in messages if m.get("role") == "user"]
        revealed = [tuple(ids) for ids in record.get("revealed") or []][: len(users)]
        if len(revealed) != len(users):
            raise DataError(f"record {record.get('key')!r}: fewer revealed entries than turns")
        return cls(
            intent=intent,
            user_texts=tuple(users),
            revealed=tuple(revealed),
            assistant_texts=tuple(m["content"] for m in messages if m.get("role") == "assistant"),
            user_ended=record.get("termination_reason") == "user_ended",
            solved=bool(record.get("solved")),
        )

    def revealed_ids(self) -> frozenset[int]:
        """Every shard id revealed at least once."""
        return frozenset(i for ids in self.revealed for i in ids)


def intent_of_record(record: Mapping[str, Any]) -> Intent:
    """The intent a ``results.jsonl`` record carries (without its reference: records never
    hold the answer key).

    Raises:
        DataError: The record has no usable ``intent`` (written by an older version).
    """
    spec = record.get("intent")
    if not isinstance(spec, Mapping) or not spec.get("shards"):
        raise DataError(f"record {record.get('key')!r} carries no intent; re-run the episodes")
    shards = tuple(Shard(int(s["id"]), str(s["text"]), bool(s["required"])) for s in spec["shards"])
    return Intent(
        task=str(record.get("task")),
        intent_id=str(record.get("intent_id")),
        instruction=str(spec.get("instruction", "")),
        shards=shards,
    )
