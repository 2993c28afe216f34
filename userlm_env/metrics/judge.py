"""Plumbing shared by the LLM judges of the metrics: JSON replies, validation retries, disk cache.

Every judge (shard matching, added demands, intent adherence) sends chat messages through an
:class:`userlm_env.llm.LLMClient` (or anything with ``config.model`` and ``chat_many``), reads
one JSON object from each reply, validates it with a judge-specific function and, when the reply
is invalid, asks again with the validation error appended (``max_tries`` replies at most). A
reply that stays invalid raises :class:`~userlm_env.errors.DataError`; a failed call raises the
client's :class:`~userlm_env.errors.LLMCallError`. Nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from userlm_env.errors import DataError
from userlm_env.llm import ChatClient, parse_json_object
from userlm_env.types import Message

__all__ = ["ChatClient", "JsonDiskCache", "ask_json", "cache_key", "parse_json_object"]

T = TypeVar("T")


def cache_key(*parts: Any) -> str:
    """SHA-256 of the JSON encoding of ``parts`` (the identity of one judged item)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


class JsonDiskCache:
    """JSON values in ``<folder>/<key[:2]>/<key>.json``, written atomically.

    Args:
        folder: Where entries live; ``None`` disables the cache (every lookup misses).
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def get(self, key: str) -> Any | None:
        """The stored value, or ``None`` on a miss (an unreadable entry counts as a miss)."""
        if self.folder is None:
            return None
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` (readers see the old entry or the whole new one)."""
        if self.folder is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as sink:
                json.dump(value, sink, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.json"


def ask_json(
    client: ChatClient,
    prompts: Sequence[list[Message]],
    validate: Callable[[int, dict[str, Any]], T],
    *,
    max_tries: int = 2,
    seed: int | None = 0,
) -> list[T]:
    """Ask every prompt, validate each reply with ``validate(index, obj)``; retry the invalid.

    ``validate`` raises :class:`DataError` on a bad reply; its message goes back to the model.
    """
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    conversations = [list(p) for p in prompts]
    results: dict[int, T] = {}
    errors: dict[int, str] = {}
    pending = list(range(len(conversations)))
    for _ in range(max_tries):
        if not pending:
            break
        replies = client.chat_many([conversations[i] for i in pending], seeds=[seed] * len(pending))
        pending = _settle(pending, replies, conversations, validate, results, errors)
    if pending:
        first = pending[0]
        raise DataError(
            f"the judge {client.config.model!r} gave no valid reply for {len(pending)} item(s) "
            f"after {max_tries} tries; item {first}: {errors[first]}"
        )
    return [results[i] for i in range(len(conversations))]


def _settle(
    pending: list[int],
    replies: Sequence[Any],
    conversations: list[list[Message]],
    validate: Callable[[int, dict[str, Any]], T],
    results: dict[int, T],
    errors: dict[int, str],
) -> list[int]:
    """Record the valid replies; append feedback to the others and return their indices."""
    still = []
    for index, reply in zip(pending, replies, strict=True):
        try:
            results[index] = validate(index, parse_json_object(reply.text))
        except DataError as error:
            errors[index] = str(error)
            conversations[index] += [
                Message(role="assistant", content=reply.text),
                Message(
                    role="user",
                    content=f"That reply is invalid: {error}. Answer again "
                    "with the JSON object only.",
                ),
            ]
            still.append(index)
    return still
