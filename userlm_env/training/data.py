"""Human-assistant conversations for training a User LM: loading, filtering, de-duplication, splits.

Sources (paper section 2.2, appendix A):

* a local JSONL file, one conversation per line (:func:`read_conversations`), with the fields
  ``conversation_id``, ``user_id`` (or ``hashed_ip``), ``country``, ``language``, ``messages``
  (OpenAI format, user and assistant roles only) and optionally ``intent``; other fields are kept
  in :attr:`Conversation.metadata`;
* the Hugging Face hub when online (:func:`load_hub_conversations`): ``allenai/WildChat-1M`` or
  ``HannahRoseKirk/prism-alignment`` (``datasets`` is imported lazily).

Pipeline (:func:`prepare_conversations`): language filter -> near-duplicate removal ->
user-level splits.

Near-duplicate removal and user-level splits live in :mod:`userlm_env.training.curation`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from userlm_env.errors import DataError
from userlm_env.training.curation import (
    DedupReport,
    Splits,
    assign_splits,
    first_turn_ngrams,
    remove_near_duplicates,
)
from userlm_env.types import Message

__all__ = [
    "HUB_DATASETS",
    "Conversation",
    "DataConfig",
    "DedupReport",
    "PreparedData",
    "Splits",
    "assign_splits",
    "conversation_from_record",
    "filter_language",
    "first_turn_ngrams",
    "load_hub_conversations",
    "prepare_conversations",
    "prism_record",
    "read_conversations",
    "remove_near_duplicates",
    "wildchat_record",
    "with_intent",
    "write_conversations",
]

#: Hub dataset names understood by :func:`load_hub_conversations`.
HUB_DATASETS = {"wildchat": "allenai/WildChat-1M", "prism": "HannahRoseKirk/prism-alignment"}
_KNOWN_FIELDS = frozenset(
    {"conversation_id", "user_id", "hashed_ip", "country", "language", "messages", "intent"}
)
_ROLES = frozenset({"user", "assistant"})


@dataclass(frozen=True)
class Conversation:
    """One human-assistant conversation with the facts the trainer needs.

    Attributes:
        conversation_id: Unique id of the conversation.
        user_id: Who wrote the user turns (WildChat: the hashed IP address).
        country: The user's country, as the source names it.
        language: The conversation's language name (``"English"``).
        messages: User and assistant messages in order (OpenAI format).
        intent: The high-level intent ("You are a user chatting with ... to ..."), if known.
        metadata: Any other fields of the source record.
    """

    conversation_id: str
    user_id: str
    country: str
    language: str
    messages: tuple[Message, ...]
    intent: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def first_user_turn(self) -> str:
        """The text of the first user message."""
        return next(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def user_turns(self) -> int:
        """How many user messages the conversation has (K in the paper)."""
        return sum(m["role"] == "user" for m in self.messages)

    def to_record(self) -> dict[str, Any]:
        """The JSON record this conversation is read from (inverse of the JSONL reader)."""
        record = {**self.metadata, "conversation_id": self.conversation_id}
        record.update(user_id=self.user_id, country=self.country, language=self.language)
        record["messages"] = [dict(m) for m in self.messages]
        if self.intent is not None:
            record["intent"] = self.intent
        return record


# --- reading and validation ------------------------------------------------------------------


def conversation_from_record(record: Any, where: str = "record") -> Conversation:
    """Validate one record and build its :class:`Conversation` (``DataError`` names ``where``)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    text_fields = {
        "conversation_id": record.get("conversation_id"),
        "user_id (or hashed_ip)": record.get("user_id", record.get("hashed_ip")),
        "country": record.get("country"),
        "language": record.get("language"),
    }
    texts = {name: _nonempty_text(value, name, where) for name, value in text_fields.items()}
    intent = record.get("intent")
    if intent is not None and (not isinstance(intent, str) or not intent.strip()):
        raise DataError(f"{where}: field 'intent' must be a non-empty string or absent")
    return Conversation(
        conversation_id=texts["conversation_id"],
        user_id=texts["user_id (or hashed_ip)"],
        country=texts["country"],
        language=texts["language"],
        messages=_checked_messages(record.get("messages"), where),
        intent=intent,
        metadata={k: v for k, v in record.items() if k not in _KNOWN_FIELDS},
    )


def _nonempty_text(value: object, name: str, where: str) -> str:
    """``value`` when it is a non-empty string; otherwise a ``DataError`` naming field ``name``."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def _checked_messages(messages: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    checked: list[Message] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise DataError(f"{where}: message {index} has role {role!r}; use user or assistant")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: message {index} must have non-empty string content")
        checked.append(Message(role=role, content=content))
    if not any(m["role"] == "user" for m in checked):
        raise DataError(f"{where}: the conversation has no user message")
    return tuple(checked)


def read_conversations(path: str | os.PathLike[str]) -> list[Conversation]:
    """Read and validate a JSONL file of conversations (blank lines are skipped).

    Raises:
        DataError: The file is missing, a line is not JSON, a record is malformed, or two records
            share a ``conversation_id``; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"conversation file {path} does not exist")
    conversations: list[Conversation] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        conversation = conversation_from_record(_parse_json(line, where), where)
        if conversation.conversation_id in seen:
            first = seen[conversation.conversation_id]
            raise DataError(f"{where}: duplicate conversation_id (first on line {first})")
        seen[conversation.conversation_id] = number
        conversations.append(conversation)
    return conversations


def _parse_json(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None


def write_conversations(conversations: Iterable[Conversation], path: str | os.PathLike[str]) -> int:
    """Write conversations as JSONL (readable by :func:`read_conversations`); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(json.dumps(conversation.to_record(), ensure_ascii=False) + "\n")
            count += 1
    return count


# --- hub datasets ----------------------------------------------------------------------------


def load_hub_conversations(
    name: str, *, split: str = "train", limit: int | None = None
) -> list[Conversation]:
    """Download a hub dataset (``"wildchat"`` or ``"prism"``) and convert its conversations.

    Records that cannot be used (an empty turn, no user message) are dropped; the converted
    ones pass the same validation as JSONL records.

    Raises:
        DataError: Unknown name, ``datasets`` not installed, or the hub cannot be reached.
    """
    if name not in HUB_DATASETS:
        raise DataError(f"unknown hub dataset {name!r}; known: {sorted(HUB_DATASETS)}")
    rows = _hub_rows(HUB_DATASETS[name], "conversations" if name == "prism" else None, split)
    convert = wildchat_record if name == "wildchat" else prism_record
    conversations: list[Conversation] = []
    for index, row in enumerate(rows):
        if limit is not None and len(conversations) >= limit:
            break
        try:
            conversations.append(conversation_from_record(convert(row), f"{name}[{index}]"))
        except DataError:
            continue  # hub data has a few empty turns; they are skipped, not repaired
    return conversations


def _hub_rows(repo: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"loading {repo} needs the `datasets` package (pip install 'userlm-env[datasets]'); "
            "offline, pass a local JSONL file of conversations instead"
        ) from None
    try:
        return datasets.load_dataset(repo, config, split=split, streaming=True)
    except Exception as error:  # datasets raises many types (ConnectionError, FileNotFound...)
        raise DataError(
            f"cannot load {repo} from the Hugging Face hub ({type(error).__name__}: {error}); "
            "offline, pass a local JSONL file of conversations instead"
        ) from error


def wildchat_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One WildChat-1M row as a record for :func:`conversation_from_record` (the hashed IP
    address stands for the user)."""
    return {
        "conversation_id": row.get("conversation_hash"),
        "hashed_ip": row.get("hashed_ip"),
        "country": row.get("country") or "unknown",
        "language": row.get("language"),
        "messages": [
            {"role": t.get("role"), "content": t.get("content")} for t in row["conversation"]
        ],
        "model": row.get("model"),
    }


def prism_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One PRISM ``conversations`` row as a record for :func:`conversation_from_record`.

    PRISM shows the user several model responses per turn; only the chosen one
    (``if_chosen``) continues the conversation, so the others are dropped.
    """
    turns = [
        {"role": "user" if t.get("role") == "user" else "assistant", "content": t.get("content")}
        for t in row.get("conversation_history") or []
        if t.get("role") == "user" or t.get("if_chosen")
    ]
    return {
        "conversation_id": row.get("conversation_id"),
        "user_id": row.get("user_id"),
        "country": "unknown",  # PRISM keeps countries in its separate survey table
        "language": "English",
        "messages": turns,
        "conversation_type": row.get("conversation_type"),
    }


# --- language filter -------------------------------------------------------------------------


def filter_language(
    conversations: Iterable[Conversation], languages: Sequence[str] = ("English",)
) -> list[Conversation]:
    """Keep conversations whose language is one of ``languages`` (case-insensitive)."""
    wanted = {language.casefold() for language in languages}
    return [c for c in conversations if c.language.casefold() in wanted]


# --- the whole pipeline ----------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where conversations come from and how they are filtered and split."""

    source: str = "jsonl"  # "jsonl" (read `path`), "wildchat" or "prism" (hub, online)
    path: str | None = None  # the JSONL file when source is "jsonl"
    hub_split: str = "train"  # split of the hub dataset to stream
    limit: int | None = None  # keep at most this many hub conversations (None: all)
    languages: tuple[str, ...] = ("English",)  # languages kept; () keeps every language
    dedup_threshold: int | None = 100  # 7-gram document frequency marking a template; None: off
    keep_representative: bool = False  # keep the first conversation of each template
    split_seed: int = 0  # seed of the user-level split hash
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train/validation/test users


@dataclass(frozen=True)
class PreparedData:
    """The outcome of :func:`prepare_conversations`."""

    splits: Splits
    loaded: int  # conversations read from the source
    after_language: int  # conversations left after the language filter
    dedup: DedupReport | None  # None when de-duplication is off


def prepare_conversations(config: DataConfig) -> PreparedData:
    """Load, filter, de-duplicate and split conversations as ``config`` says."""
    if config.source == "jsonl":
        if not config.path:
            raise DataError("DataConfig.path must name a JSONL file when source is 'jsonl'")
        loaded = read_conversations(config.path)
    else:
        loaded = load_hub_conversations(config.source, split=config.hub_split, limit=config.limit)
    kept = filter_language(loaded, config.languages) if config.languages else list(loaded)
    after_language, report = len(kept), None
    if config.dedup_threshold is not None:
        kept, report = remove_near_duplicates(
            kept, config.dedup_threshold, keep_representative=config.keep_representative
        )
    splits = assign_splits(kept, seed=config.split_seed, fractions=config.fractions)
    return PreparedData(splits, len(loaded), after_language, report)


def with_intent(conversation: Conversation, intent: str) -> Conversation:
    """A copy of ``conversation`` carrying ``intent``."""
    return replace(conversation, intent=intent)
