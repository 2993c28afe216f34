"""Human-assistant conversations for training a User LM, read as people have them; filtering,
de-duplication and user-level splits.

**Records.** Each record holds one conversation; its format is recognised per record, so one file
may mix them:

* OpenAI / TRL conversational: ``{"messages": [{"role": ..., "content": ...}, ...]}`` with roles
  ``user``, ``assistant`` and ``system`` (``developer`` counts as ``system``); ``content`` is a
  string or a list of text parts (``{"type": "text", "text": ...}``, joined with newlines);
* ShareGPT: ``{"conversations": [{"from": ..., "value": ...}, ...]}`` with ``human`` (or
  ``user``), ``gpt`` (or ``assistant``, ``chatgpt``, ``bing``, ``bard``, ``model``) and ``system``;
* WildChat-1M rows (``conversation_hash`` and ``conversation``) and PRISM ``conversations`` rows
  (``conversation_history``), as the hub serves them (:func:`wildchat_record`,
  :func:`prism_record`).

Only the messages are required, and they need at least one user message. Optional fields:
``intent`` (the hidden goal; the trainer conditions on it), ``conversation_id`` (or ``id``),
``user_id`` (or ``hashed_ip``), ``country`` and ``language``; a missing, ``null`` or blank
optional field counts as absent. Any other field is kept in :attr:`Conversation.metadata`.

* **System messages are dropped** (counted and logged): they instruct the assistant, they are not
  the user's intent. The intent comes only from the ``intent`` field, or is written later by
  :mod:`userlm_env.training.intents`.
* **Without a conversation id** the id is derived from the content: ``"sha256:"`` and the first 16
  hex digits of :func:`~userlm_env.training.curation.messages_fingerprint` of the kept messages,
  so it does not change when the file is renamed or reordered; an identical conversation read
  again from the same source gets ``"#2"``, ``"#3"``... appended.
* **Without a user id** the user-level split treats the conversation as its own user (see
  :mod:`userlm_env.training.curation`); the log says how many.
* **Without a language** the language filter cannot judge a conversation: ``unknown_language``
  says whether such conversations are kept (the default) or dropped; the log says how many. No
  language detector is used.

**Sources.** A local file (:func:`read_conversations`): JSONL (one record a line; blank lines are
skipped) or a JSON array of records (a ``.json`` file whose text starts with ``[``); rows of a
``datasets.Dataset`` or any iterable of records (:func:`conversations_from_rows`); a Hugging Face
hub dataset when online (:func:`load_hub_conversations`): ``"wildchat"`` and ``"prism"`` name the
paper's datasets, any other name is passed to ``datasets.load_dataset``. ``datasets`` is imported
lazily.

**Bad records** raise :class:`~userlm_env.errors.DataError` naming where they are
(``conversations.jsonl:17: messages[2].role must be ...``; ``name[17]`` for dataset rows). With
``on_bad_record="skip"`` they are dropped instead, counted in :class:`LoadReport` and logged with
the first few reasons. The default is ``"error"``, except for the WildChat and PRISM presets (whose
hub rows hold a few empty turns), which skip. A JSON array with a syntax error cannot be read past
it and always raises.

Pipeline (:func:`prepare_conversations`): load -> language filter -> near-duplicate removal ->
user-level splits. Near-duplicate removal and the splits live in
:mod:`userlm_env.training.curation`.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from userlm_env.errors import DataError
from userlm_env.training.curation import (
    DedupReport,
    Splits,
    assign_splits,
    first_turn_ngrams,
    messages_fingerprint,
    remove_near_duplicates,
)
from userlm_env.types import Message

__all__ = [
    "BAD_RECORD_POLICIES",
    "HUB_DATASETS",
    "Conversation",
    "DataConfig",
    "DedupReport",
    "LoadReport",
    "PreparedData",
    "Splits",
    "assign_splits",
    "conversation_from_record",
    "conversations_from_rows",
    "filter_language",
    "first_turn_ngrams",
    "load_conversations",
    "load_hub_conversations",
    "messages_fingerprint",
    "prepare_conversations",
    "prism_record",
    "read_conversations",
    "remove_near_duplicates",
    "wildchat_record",
    "with_intent",
    "write_conversations",
]

log = logging.getLogger(__name__)

#: Hub dataset names understood by :func:`load_hub_conversations` besides plain hub ids.
HUB_DATASETS = {"wildchat": "allenai/WildChat-1M", "prism": "HannahRoseKirk/prism-alignment"}
_HUB_CONFIGS = {"prism": "conversations"}
#: Values of ``on_bad_record``.
BAD_RECORD_POLICIES = ("error", "skip")
_UNKNOWN_LANGUAGE = ("keep", "drop")
_FILE_SOURCES = ("jsonl", "file")
_SHOWN_REASONS = 5  # bad records whose reasons the log and LoadReport show

_KNOWN_FIELDS = frozenset(
    {
        "conversation_id",
        "user_id",
        "hashed_ip",
        "country",
        "language",
        "messages",
        "conversations",
        "intent",
    }
)
_OPENAI_ROLES = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "system": "system"}
_SHAREGPT_ROLES.update(
    dict.fromkeys(("assistant", "chatgpt", "bing", "bard", "model"), "assistant")
)


@dataclass(frozen=True)
class Conversation:
    """One human-assistant conversation with the facts the trainer needs.

    Attributes:
        conversation_id: Unique id of the conversation (derived from the content when the source
            gives none; see the module doc).
        user_id: Who wrote the user turns (WildChat: the hashed IP address); ``None`` if unknown.
        country: The user's country, as the source names it; ``None`` if unknown.
        language: The conversation's language as the source names it (``"English"``); ``None``
            if unknown.
        messages: User and assistant messages in order (OpenAI format; no system messages).
        intent: The high-level intent ("You are a user chatting with ... to ..."), if known.
        metadata: Any other fields of the source record.
    """

    conversation_id: str
    user_id: str | None
    country: str | None
    language: str | None
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
        """The JSON record this conversation is read from (inverse of the readers); fields that
        are ``None`` are left out."""
        record = {**self.metadata, "conversation_id": self.conversation_id}
        optional = {"user_id": self.user_id, "country": self.country, "language": self.language}
        record.update({name: value for name, value in optional.items() if value is not None})
        record["messages"] = [dict(m) for m in self.messages]
        if self.intent is not None:
            record["intent"] = self.intent
        return record


@dataclass(frozen=True)
class LoadReport:
    """What reading one source did.

    Attributes:
        source: The file, dataset or hub name read.
        records: Records read (kept and skipped; blank lines are not records).
        loaded: Conversations kept.
        skipped: Bad records skipped (``on_bad_record="skip"``).
        reasons: The first few skipped records' errors, each naming where the record is.
        formats: Records kept per format (``"openai"``, ``"sharegpt"``, ``"wildchat"``,
            ``"prism"``, ``"conversation"`` for :class:`Conversation` objects).
        system_messages: System messages dropped from the kept conversations.
        derived_ids: Kept conversations whose id was derived from their content.
    """

    source: str
    records: int
    loaded: int
    skipped: int
    reasons: tuple[str, ...]
    formats: Mapping[str, int]
    system_messages: int
    derived_ids: int


# --- one record ------------------------------------------------------------------------------


class _Converted(NamedTuple):
    conversation: Conversation
    format: str
    system_messages: int
    derived_id: bool


@dataclass(frozen=True)
class _Unreadable:
    """A line that is not a JSON record (the reader's stand-in, reported as a bad record)."""

    reason: str


def conversation_from_record(record: Any, where: str = "record") -> Conversation:
    """Validate one record in any accepted format (see the module doc) and build its
    :class:`Conversation`.

    Raises:
        DataError: The record is malformed; the message starts with ``where``.
    """
    return _convert(record, where).conversation


def _convert(record: Any, where: str) -> _Converted:
    if isinstance(record, Conversation):
        return _Converted(record, "conversation", 0, False)
    if isinstance(record, _Unreadable):
        raise DataError(f"{where}: {record.reason}")
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _from_fields(record, "openai", where)
    if "conversations" in record:
        return _from_fields(record, "sharegpt", where)
    if "conversation_history" in record:
        return _from_fields(prism_record(record), "prism", where)
    if "conversation" in record and "conversation_hash" in record:
        return _from_fields(wildchat_record(record), "wildchat", where)
    raise DataError(
        f"{where}: no conversation found: expected a 'messages' (OpenAI/TRL) or 'conversations' "
        f"(ShareGPT) field; the record has {sorted(map(str, record))}"
    )


def _from_fields(record: Mapping[str, Any], kind: str, where: str) -> _Converted:
    if kind == "sharegpt":
        messages, system = _checked_messages(
            record["conversations"], where, ("conversations", "from", "value"), _SHAREGPT_ROLES
        )
    else:
        messages, system = _checked_messages(
            record["messages"], where, ("messages", "role", "content"), _OPENAI_ROLES
        )
    id_field = "conversation_id" if record.get("conversation_id") is not None else "id"
    conversation_id = _optional_id(record.get(id_field), id_field, where)
    derived = conversation_id is None
    if conversation_id is None:
        conversation_id = "sha256:" + messages_fingerprint(messages)[:16]
    user_field = "user_id" if record.get("user_id") is not None else "hashed_ip"
    intent = record.get("intent")
    if intent is not None and (not isinstance(intent, str) or not intent.strip()):
        raise DataError(f"{where}: field 'intent' must be a non-empty string or absent")
    consumed = _KNOWN_FIELDS | ({"id"} if id_field == "id" and not derived else set())
    conversation = Conversation(
        conversation_id=conversation_id,
        user_id=_optional_id(record.get(user_field), user_field, where),
        country=_optional_text(record.get("country"), "country", where),
        language=_optional_text(record.get("language"), "language", where),
        messages=messages,
        intent=intent,
        metadata={k: v for k, v in record.items() if k not in consumed},
    )
    return _Converted(conversation, kind, system, derived)


def _optional_text(value: object, name: str, where: str) -> str | None:
    """``value`` as text, ``None`` when absent or blank; a ``DataError`` for another type."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string or absent, got {value!r}")
    return value


def _optional_id(value: object, name: str, where: str) -> str | None:
    """An id given as a string or an integer (as text); ``None`` when absent or blank."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, an integer or absent")
    return value


def _checked_messages(
    items: Any, where: str, names: tuple[str, str, str], roles: Mapping[str, str]
) -> tuple[tuple[Message, ...], int]:
    """The user and assistant messages of ``items`` and how many system messages were dropped.

    ``names`` are the list, role and content keys of the format; ``roles`` maps its role names.
    """
    field_name, role_key, content_key = names
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: field {field_name!r} must be a non-empty list, got {items!r}")
    checked: list[Message] = []
    system = 0
    for index, item in enumerate(items):
        at = f"{field_name}[{index}]"
        if not isinstance(item, Mapping):
            raise DataError(
                f"{where}: {at} must be an object with {role_key!r} and {content_key!r}, "
                f"got {type(item).__name__}"
            )
        name = item.get(role_key)
        role = roles.get(name) if isinstance(name, str) else None
        if role is None:
            allowed = "'human', 'gpt' or 'system'" if role_key == "from" else None
            allowed = allowed or "'user', 'assistant' or 'system'"
            raise DataError(f"{where}: {at}.{role_key} must be {allowed}, got {name!r}")
        content = _text(item.get(content_key), f"{at}.{content_key}", where)
        if role == "system":
            system += 1
        else:
            checked.append(Message(role=role, content=content))  # type: ignore[typeddict-item]
    if not any(m["role"] == "user" for m in checked):
        raise DataError(f"{where}: the conversation has no user message")
    return tuple(checked), system


def _text(content: Any, at: str, where: str) -> str:
    """Message content as a string: a string, or a list of text parts joined with newlines."""
    if isinstance(content, list) and content:
        texts = []
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise DataError(
                    f"{where}: {at}[{index}] must be a text part "
                    f"({{'type': 'text', 'text': ...}}), got {kind or type(part).__name__!r}"
                )
            texts.append(part["text"])
        content = "\n".join(texts)
    if not isinstance(content, str) or not content.strip():
        raise DataError(
            f"{where}: {at} must be a non-empty string (or a list of text parts), got {content!r}"
        )
    return content


# --- collecting records from a source --------------------------------------------------------


def _policy(on_bad_record: str) -> str:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise DataError(
            f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}"
        )
    return on_bad_record


def _collect(
    records: Iterable[tuple[str, Any]], source: str, on_bad_record: str, limit: int | None
) -> tuple[list[Conversation], LoadReport]:
    """Convert ``(where, record)`` pairs, applying the bad-record policy; logs what it did."""
    policy = _policy(on_bad_record)
    kept: list[Conversation] = []
    first_at: dict[str, str] = {}
    formats: Counter[str] = Counter()
    reasons: list[str] = []
    seen_records = skipped = system = derived = 0
    for where, record in records:
        if limit is not None and len(kept) >= limit:
            break
        seen_records += 1
        try:
            converted = _convert(record, where)
            conversation = _unique(converted, first_at, where)
        except DataError as error:
            if policy == "error":
                raise
            skipped += 1
            if len(reasons) < _SHOWN_REASONS:
                reasons.append(str(error))
            continue
        first_at[conversation.conversation_id] = where
        kept.append(conversation)
        formats[converted.format] += 1
        system += converted.system_messages
        derived += converted.derived_id
    report = LoadReport(
        source, seen_records, len(kept), skipped, tuple(reasons), dict(formats), system, derived
    )
    _log_load(report)
    return kept, report


def _unique(converted: _Converted, first_at: Mapping[str, str], where: str) -> Conversation:
    """The conversation, its derived id numbered when the content was seen before."""
    conversation = converted.conversation
    base = conversation.conversation_id
    if base not in first_at:
        return conversation
    if not converted.derived_id:
        raise DataError(f"{where}: duplicate conversation_id {base!r} (first at {first_at[base]})")
    number = 2
    while f"{base}#{number}" in first_at:
        number += 1
    return replace(conversation, conversation_id=f"{base}#{number}")


def _log_load(report: LoadReport) -> None:
    formats = ", ".join(f"{count} {name}" for name, count in sorted(report.formats.items()))
    log.info(
        "%s: %d conversations from %d records (%s)",
        report.source,
        report.loaded,
        report.records,
        formats or "none",
    )
    if report.skipped:
        log.warning(
            "%s: skipped %d bad records (on_bad_record=skip); the first: %s",
            report.source,
            report.skipped,
            "; ".join(report.reasons),
        )
    if report.system_messages:
        log.info(
            "%s: dropped %d system messages (an assistant's instructions, not the user's "
            "intent; give the intent in an 'intent' field)",
            report.source,
            report.system_messages,
        )
    if report.derived_ids:
        log.info(
            "%s: %d conversations have no conversation_id; their ids are derived from their "
            "messages (sha256:<16 hex digits>)",
            report.source,
            report.derived_ids,
        )


# --- local files -----------------------------------------------------------------------------


def read_conversations(
    path: str | os.PathLike[str], *, on_bad_record: str = "error", limit: int | None = None
) -> list[Conversation]:
    """Read a JSONL file (or a JSON array) of conversation records in any accepted format.

    Args:
        path: The file. ``.jsonl``/``.ndjson`` files are JSONL; another file whose text starts
            with ``[`` is a JSON array of records; anything else is read as JSONL.
        on_bad_record: ``"error"`` raises at the first bad record; ``"skip"`` drops bad records,
            counts them and logs the first reasons.
        limit: Stop after this many conversations (``None``: all).

    Raises:
        DataError: The file is missing; or, with ``on_bad_record="error"``, a line is not JSON, a
            record is malformed or two records share a ``conversation_id``; the message names
            the file and line. A JSON array with a syntax error always raises.
    """
    return _read_file(Path(path), on_bad_record, limit)[0]


def _read_file(
    path: Path, on_bad_record: str, limit: int | None
) -> tuple[list[Conversation], LoadReport]:
    if not path.is_file():
        raise DataError(f"conversation file {path} does not exist")
    if path.suffix.lower() not in (".jsonl", ".ndjson") and _starts_with_bracket(path):
        return _collect(_json_array_records(path), str(path), on_bad_record, limit)
    return _collect(_jsonl_records(path), str(path), on_bad_record, limit)


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    return head.startswith(b"[")


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, record)`` for each non-blank line; unreadable lines become
    :class:`_Unreadable` so that the bad-record policy decides."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield where, _Unreadable(f"not UTF-8 text (byte {error.start + 1} of the line)")
                continue
            line = line.removeprefix("\ufeff") if number == 1 else line
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                yield where, _Unreadable(f"invalid JSON ({error.msg} at column {error.colno})")


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _json_array_records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, record)`` for each element of a JSON array, the line being where the
    element starts."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start + 1})") from None
    decoder = json.JSONDecoder()

    def skip(position: int) -> int:
        match = _WHITESPACE.match(text, position)
        return match.end() if match else position

    def fail(message: str, position: int) -> DataError:
        line = text.count("\n", 0, position) + 1
        return DataError(f"{path}:{line}: {message}; a JSON array cannot be read past it")

    position = skip(0) + 1  # past the opening bracket (checked by the caller)
    position, first = skip(position), True
    while position < len(text) and text[position] != "]":
        if not first:
            if text[position] != ",":
                raise fail("invalid JSON (expected ',' or ']' between records)", position)
            position = skip(position + 1)
        start = position
        try:
            record, position = decoder.raw_decode(text, start)
        except json.JSONDecodeError as error:
            raise fail(f"invalid JSON ({error.msg} at column {error.colno})", error.pos) from None
        yield f"{path}:{text.count(chr(10), 0, start) + 1}", record
        position, first = skip(position), False
    if position >= len(text) or text[skip(position + 1) :]:
        raise fail("invalid JSON (the array is not closed, or text follows it)", position)


def write_conversations(conversations: Iterable[Conversation], path: str | os.PathLike[str]) -> int:
    """Write conversations as JSONL (readable by :func:`read_conversations`); returns the count.

    Metadata values that are not JSON (a ``datetime`` from a dataset row) are written as text.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(json.dumps(conversation.to_record(), ensure_ascii=False, default=str))
            handle.write("\n")
            count += 1
    return count


# --- rows of a dataset -----------------------------------------------------------------------


def conversations_from_rows(
    rows: Iterable[Any],
    *,
    name: str = "dataset",
    on_bad_record: str = "error",
    limit: int | None = None,
) -> list[Conversation]:
    """Convert rows in any accepted format: a ``datasets.Dataset`` (one split), a list of
    dicts, or :class:`Conversation` objects (kept as they are).

    Args:
        rows: The rows; errors name them ``name[index]``.
        name: What to call the rows in errors and logs.
        on_bad_record: ``"error"`` or ``"skip"`` (see :func:`read_conversations`).
        limit: Stop after this many conversations (``None``: all).

    Raises:
        DataError: ``rows`` is a mapping (a ``DatasetDict``: pass one split) or a string, or a row
            is malformed and ``on_bad_record`` is ``"error"``.
    """
    return _rows(rows, name, on_bad_record, limit)[0]


def _rows(
    rows: Iterable[Any], name: str, on_bad_record: str, limit: int | None
) -> tuple[list[Conversation], LoadReport]:
    if isinstance(rows, Mapping):
        raise DataError(
            f"{name}: got a mapping of {sorted(map(str, rows))}, not rows; for a DatasetDict pass "
            "one split, e.g. dataset['train']"
        )
    if isinstance(rows, (str, bytes, os.PathLike)):
        raise DataError(f"{name}: got a path or text, not rows; read files with read_conversations")
    records = ((f"{name}[{index}]", row) for index, row in enumerate(rows))
    return _collect(records, name, on_bad_record, limit)


# --- hub datasets ----------------------------------------------------------------------------


def load_hub_conversations(
    name: str,
    *,
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
    on_bad_record: str | None = None,
) -> list[Conversation]:
    """Stream a Hugging Face hub dataset and convert its conversations.

    Args:
        name: ``"wildchat"`` or ``"prism"`` (the paper's datasets, :data:`HUB_DATASETS`), or any
            dataset id ``datasets.load_dataset`` accepts, whose rows are in an accepted format.
        split: The split to stream.
        config: The dataset's configuration (PRISM: ``"conversations"``, set by default).
        limit: Stop after this many conversations (``None``: all).
        on_bad_record: ``"error"`` or ``"skip"``; ``None``: skip for WildChat and PRISM (their
            rows hold a few empty turns), error for any other dataset. Skipped rows are counted
            and logged.

    Raises:
        DataError: ``datasets`` is not installed, or the dataset cannot be loaded (offline, with
            ``HF_HUB_OFFLINE`` set, the message says so), or a row is malformed and the policy
            is ``"error"``.
    """
    return _load_hub(name, split, config, limit, on_bad_record)[0]


def _load_hub(
    name: str, split: str, config: str | None, limit: int | None, on_bad_record: str | None
) -> tuple[list[Conversation], LoadReport]:
    policy = on_bad_record or ("skip" if name in HUB_DATASETS else "error")
    _policy(policy)
    repo = HUB_DATASETS.get(name, name)
    rows = _hub_rows(repo, config if config is not None else _HUB_CONFIGS.get(name), split)
    return _rows(rows, name, policy, limit)


def _hub_rows(repo: str, config: str | None, split: str) -> Iterable[Any]:
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
        if datasets.config.HF_HUB_OFFLINE:
            hint = (
                "HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set, so the hub is not contacted: "
                "unset it on a machine with network access, or pass a local file or a "
                "datasets.Dataset instead"
            )
        else:
            hint = "check the name, configuration and split, or pass a local file instead"
        raise DataError(
            f"cannot load hub dataset {repo!r} (split {split!r}): {type(error).__name__}: "
            f"{error}. {hint}"
        ) from error


def wildchat_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One WildChat-1M row as an OpenAI-format record (the hashed IP address stands for the
    user; the ``model`` field is kept as metadata)."""
    turns = row.get("conversation")
    return {
        "conversation_id": row.get("conversation_hash"),
        "hashed_ip": row.get("hashed_ip"),
        "country": row.get("country"),
        "language": row.get("language"),
        "messages": [_turn(t) for t in turns] if isinstance(turns, list) else turns,
        "model": row.get("model"),
    }


def _turn(turn: Any) -> Any:
    """A WildChat turn as a message (anything else is passed on for validation to report)."""
    if not isinstance(turn, Mapping):
        return turn
    return {"role": turn.get("role"), "content": turn.get("content")}


def prism_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One PRISM ``conversations`` row as an OpenAI-format record.

    PRISM shows the user several model responses per turn; only the chosen one
    (``if_chosen``) continues the conversation, so the others are dropped. PRISM keeps countries
    in its separate survey table, so ``country`` is left out; its conversations are English.
    """
    turns = [
        {"role": "user" if t.get("role") == "user" else "assistant", "content": t.get("content")}
        for t in row.get("conversation_history") or []
        if isinstance(t, Mapping) and (t.get("role") == "user" or t.get("if_chosen"))
    ]
    return {
        "conversation_id": row.get("conversation_id"),
        "user_id": row.get("user_id"),
        "language": "English",
        "messages": turns,
        "conversation_type": row.get("conversation_type"),
    }


# --- language filter -------------------------------------------------------------------------


def filter_language(
    conversations: Iterable[Conversation],
    languages: Sequence[str] = ("English",),
    *,
    unknown: str = "keep",
) -> list[Conversation]:
    """Keep conversations whose language is one of ``languages`` (exact, case-insensitive: list
    codes too if the data uses them, e.g. ``["English", "en"]``).

    Args:
        conversations: The conversations, in order (kept in order).
        languages: The languages kept.
        unknown: What to do with conversations without a language: ``"keep"`` them (the filter
            cannot judge them) or ``"drop"`` them. Their count is logged once.
    """
    if unknown not in _UNKNOWN_LANGUAGE:
        raise DataError(f"unknown_language must be one of {_UNKNOWN_LANGUAGE}, got {unknown!r}")
    wanted = {language.casefold() for language in languages}
    kept: list[Conversation] = []
    dropped: Counter[str] = Counter()
    without = 0
    for conversation in conversations:
        if conversation.language is None:
            without += 1
            if unknown == "keep":
                kept.append(conversation)
        elif conversation.language.casefold() in wanted:
            kept.append(conversation)
        else:
            dropped[conversation.language] += 1
    if without:
        log.warning(
            "language filter: %d conversations have no language; %s (no language detector is "
            "used: give records a 'language' field%s)",
            without,
            "kept unfiltered" if unknown == "keep" else "dropped",
            ", or set unknown_language=drop" if unknown == "keep" else "",
        )
    if dropped:
        shown = ", ".join(f"{name} {count}" for name, count in dropped.most_common(5))
        log.info("language filter: dropped %d conversations (%s)", dropped.total(), shown)
    return kept


# --- the whole pipeline ----------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where conversations come from, how bad records are handled, and how the conversations
    are filtered and split (see the module doc for the accepted formats)."""

    # "jsonl" or "file": read `path` (JSONL or a JSON array); "hub": the hub dataset `hub_name`;
    # "wildchat" or "prism": the paper's hub datasets (online)
    source: str = "jsonl"
    path: str | None = None  # the local file when source is "jsonl"/"file"
    hub_name: str | None = None  # the hub dataset id when source is "hub"
    hub_config: str | None = None  # the hub dataset's configuration, if it has several
    hub_split: str = "train"  # split of the hub dataset to stream
    limit: int | None = None  # keep at most this many conversations (None: all)
    # "error" (stop at the first bad record) or "skip" (drop, count and log them); None: error,
    # but skip for wildchat/prism, whose rows hold a few empty turns
    on_bad_record: str | None = None
    languages: tuple[str, ...] = ("English",)  # languages kept; () keeps every language
    unknown_language: str = "keep"  # conversations without a language: "keep" or "drop"
    dedup_threshold: int | None = 100  # 7-gram document frequency marking a template; None: off
    keep_representative: bool = False  # keep the first conversation of each template
    split_seed: int = 0  # seed of the user-level split hash
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train/validation/test users


@dataclass(frozen=True)
class PreparedData:
    """The outcome of :func:`prepare_conversations`.

    Attributes:
        splits: Train, validation and test conversations (no user in two splits).
        loaded: Conversations read from the source.
        after_language: Conversations left after the language filter.
        dedup: What near-duplicate removal did; ``None`` when it is off.
        load: What reading the source did (skipped records and why, formats, derived ids).
        without_language: Loaded conversations without a language.
        without_user: Conversations split as their own user, having no user id.
    """

    splits: Splits
    loaded: int
    after_language: int
    dedup: DedupReport | None
    load: LoadReport | None = None
    without_language: int = 0
    without_user: int = 0


def load_conversations(
    config: DataConfig, rows: Iterable[Any] | None = None
) -> tuple[list[Conversation], LoadReport]:
    """Read the conversations ``config`` names, or convert ``rows`` (a ``datasets.Dataset``,
    records or :class:`Conversation` objects) when given; ``config.source`` is then unused.

    Raises:
        DataError: An unknown source, a missing path or hub name, or what the readers raise.
    """
    if rows is not None:
        return _rows(rows, "dataset", config.on_bad_record or "error", config.limit)
    if config.source in _FILE_SOURCES:
        if not config.path:
            raise DataError(f"DataConfig.path must name a file when source is {config.source!r}")
        return _read_file(Path(config.path), config.on_bad_record or "error", config.limit)
    if config.source == "hub":
        if not config.hub_name:
            raise DataError("DataConfig.hub_name must name a hub dataset when source is 'hub'")
        name = config.hub_name
    elif config.source in HUB_DATASETS:
        name = config.source
    else:
        known = sorted({*_FILE_SOURCES, "hub", *HUB_DATASETS})
        raise DataError(f"unknown data source {config.source!r}; known: {known}")
    return _load_hub(name, config.hub_split, config.hub_config, config.limit, config.on_bad_record)


def prepare_conversations(config: DataConfig, rows: Iterable[Any] | None = None) -> PreparedData:
    """Load (see :func:`load_conversations`), filter, de-duplicate and split conversations as
    ``config`` says."""
    loaded, load = load_conversations(config, rows)
    if config.languages:
        kept = filter_language(loaded, config.languages, unknown=config.unknown_language)
    else:
        kept = list(loaded)
    after_language, report = len(kept), None
    if config.dedup_threshold is not None:
        kept, report = remove_near_duplicates(
            kept, config.dedup_threshold, keep_representative=config.keep_representative
        )
    splits = assign_splits(kept, seed=config.split_seed, fractions=config.fractions)
    return PreparedData(
        splits,
        len(loaded),
        after_language,
        report,
        load=load,
        without_language=sum(c.language is None for c in loaded),
        without_user=sum(c.user_id is None for c in kept),
    )


def with_intent(conversation: Conversation, intent: str) -> Conversation:
    """A copy of ``conversation`` carrying ``intent``."""
    return replace(conversation, intent=intent)
