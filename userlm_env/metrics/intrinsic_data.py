"""Data of the intrinsic evaluation: conversation, multiple-choice and open-question records.

Records load from JSONL files (:func:`load_jsonl`: one JSON object per line, checked, with
``file:line`` in every error) or, online, from the Hugging Face hub through ``datasets``
(:func:`load_online`: PRISM conversations, CommonsenseQA, NaturalQuestions), imported lazily
so that nothing here needs the network or the package unless asked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from userlm_env.errors import DataError
from userlm_env.training.data import prism_record
from userlm_env.types import Message

__all__ = [
    "Conversation",
    "IntrinsicData",
    "MCQItem",
    "OpenQuestion",
    "commonsense_qa_item",
    "load_jsonl",
    "load_online",
    "prism_conversation",
]


@dataclass(frozen=True)
class Conversation:
    """A real conversation: its high-level intent and its messages (OpenAI format)."""

    id: str
    intent: str
    messages: tuple[Message, ...]

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Conversation:
        messages = tuple(Message(role=m["role"], content=m["content"]) for m in row["messages"])
        if not messages or messages[0]["role"] != "user":
            raise DataError(f"conversation {row.get('id')!r} must start with a user message")
        if any(m["role"] not in ("user", "assistant") for m in messages):
            raise DataError(f"conversation {row.get('id')!r} has a role other than user/assistant")
        return cls(id=str(row["id"]), intent=str(row["intent"]), messages=messages)


@dataclass(frozen=True)
class MCQItem:
    """A multiple-choice question the simulated user asks (CommonsenseQA style)."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: str | None = None

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> MCQItem:
        choices = tuple(str(c) for c in row["choices"])
        if len(choices) < 2:
            raise DataError(f"MCQ item {row.get('id')!r} needs at least two choices")
        return cls(str(row["id"]), str(row["question"]), choices, row.get("answer"))


@dataclass(frozen=True)
class OpenQuestion:
    """An open question the simulated user asks (NaturalQuestions style)."""

    id: str
    question: str

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> OpenQuestion:
        return cls(str(row["id"]), str(row["question"]))


_RECORDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "conversations": Conversation.from_json,
    "mcq": MCQItem.from_json,
    "questions": OpenQuestion.from_json,
}


def load_jsonl(path: str | Path, kind: str) -> list[Any]:
    """Records of ``kind`` (``conversations``, ``mcq``, ``questions``) from a JSONL file."""
    if kind not in _RECORDS:
        raise ValueError(f"kind must be one of {sorted(_RECORDS)}, got {kind!r}")
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(_RECORDS[kind](json.loads(line)))
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path}:{number}: not a valid {kind} record ({error})") from None
    if not records:
        raise DataError(f"{path} holds no {kind} records")
    return records


@dataclass
class IntrinsicData:
    """Everything the intrinsic suite runs on; an empty list skips its metrics."""

    conversations: list[Conversation] = field(default_factory=list)  # termination, first turns
    mcq: list[MCQItem] = field(default_factory=list)  # role adherence
    questions: list[OpenQuestion] = field(default_factory=list)  # intent adherence


# --------------------------------------------------------------------------- online sources


def load_online(kind: str, limit: int, seed: int = 0) -> list[Any]:
    """Records of ``kind`` from the Hugging Face hub through ``datasets`` (imported lazily):
    ``mcq`` from CommonsenseQA, ``questions`` from NaturalQuestions (open), ``conversations``
    from PRISM (intent: the opening prompt, as PRISM ships no high-level intent)."""
    loaders: dict[str, Callable[[Any, int, int], list[Any]]] = {
        "mcq": _commonsense_qa,
        "questions": _natural_questions,
        "conversations": _prism,
    }
    if kind not in loaders:
        raise ValueError(f"kind must be one of {sorted(loaders)}, got {kind!r}")
    try:
        import datasets
    except ImportError as error:
        raise ImportError("online data needs `pip install datasets` (extra: datasets)") from error
    return loaders[kind](datasets, limit, seed)


def _commonsense_qa(datasets: Any, limit: int, seed: int) -> list[MCQItem]:
    rows = datasets.load_dataset("tau/commonsense_qa", split="validation").shuffle(seed=seed)
    return [commonsense_qa_item(row) for row in rows.select(range(min(limit, len(rows))))]


def _natural_questions(datasets: Any, limit: int, seed: int) -> list[OpenQuestion]:
    rows = datasets.load_dataset("google-research-datasets/nq_open", split="validation")
    rows = rows.shuffle(seed=seed).select(range(min(limit, len(rows))))
    return [OpenQuestion(f"nq/{i}", row["question"]) for i, row in enumerate(rows)]


def _prism(datasets: Any, limit: int, seed: int) -> list[Conversation]:
    rows = datasets.load_dataset("HannahRoseKirk/prism-alignment", "conversations", split="train")
    return [
        prism_conversation(row)
        for row in rows.shuffle(seed=seed).select(range(min(limit, len(rows))))
    ]


def commonsense_qa_item(row: Mapping[str, Any]) -> MCQItem:
    """One CommonsenseQA row (``choices`` as parallel ``label`` / ``text`` lists) as an item."""
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    answer = dict(zip(labels, texts, strict=True)).get(row["answerKey"])
    return MCQItem(row["id"], row["question"], tuple(texts), answer)


def prism_conversation(row: Mapping[str, Any]) -> Conversation:
    """One PRISM ``conversations`` row; its opening prompt stands in for the intent.

    The chosen responses are kept as by :func:`userlm_env.training.data.prism_record`.
    """
    messages = tuple(
        Message(role=m["role"], content=m["content"]) for m in prism_record(row)["messages"]
    )
    return Conversation(str(row["conversation_id"]), row["opening_prompt"], messages)
