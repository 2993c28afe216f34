"""Plumbing shared by the LLM judges of the metrics: JSON replies and validation retries.

Every judge (shard matching, added demands, intent adherence) sends chat messages through an
:class:`userlm_env.llm.LLMClient` (or anything with ``config.model`` and ``chat_many``), reads
one JSON object from each reply (:func:`parse_json_object`), validates it with a judge-specific
function and, when the reply is invalid, asks again with the validation error appended
(:func:`ask_json`, on the generate-vet-retry loop of :mod:`userlm_env.resample`; ``max_tries``
replies at most). A reply that stays invalid raises :class:`~userlm_env.errors.DataError`; a
failed call raises the client's :class:`~userlm_env.errors.LLMCallError`. Nothing is silently
dropped. The judges cache their verdicts in a :class:`userlm_env.json_cache.JsonCache`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from userlm_env.errors import DataError
from userlm_env.llm import ChatClient
from userlm_env.resample import Outcome, Verdict, resample
from userlm_env.types import Message

__all__ = [
    "MAX_FEEDBACK_ERROR_BYTES",
    "ChatClient",
    "ask_json",
    "feedback_message",
    "parse_json_object",
]

T = TypeVar("T")

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a reply: bare, fenced in a code block, or after a short preamble.

    Args:
        text: The model's reply.

    Returns:
        The decoded object.

    Raises:
        DataError: The reply holds no JSON object, invalid JSON, or JSON that is not an object.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise DataError("the reply holds no JSON object")
    try:
        value = json.loads(body[start : end + 1])
    except json.JSONDecodeError as error:
        raise DataError(f"the reply is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise DataError("the reply's JSON is not an object")
    return value


@dataclass
class _Asked:
    """One item being judged: its index and the conversation so far (feedback appended)."""

    index: int
    conversation: list[Message]


@dataclass(frozen=True)
class _Valid(Generic[T]):
    """A validated value, boxed so that a falsy or ``None`` verdict still counts as accepted."""

    value: T


def ask_json(
    client: ChatClient,
    prompts: Sequence[list[Message]],
    validate: Callable[[int, dict[str, Any]], T],
    *,
    max_tries: int = 2,
    seed: int | None = 0,
) -> list[T]:
    """Ask every prompt, validate each reply with ``validate(index, obj)``; retry the invalid.

    ``validate`` raises :class:`DataError` on a bad reply; its message goes back to the model
    (the reply and a feedback message are appended to that item's conversation).

    Args:
        client: The judge's client.
        prompts: One conversation per item.
        validate: ``(item index, reply object) -> value``; raises :class:`DataError`.
        max_tries: Replies asked per item at most (>= 1).
        seed: Sampling seed sent with every request.

    Returns:
        One validated value per prompt, in order.

    Raises:
        DataError: Some item got no valid reply in ``max_tries`` (names the model, how many
            items failed and the first one's last error).
        ValueError: ``max_tries`` is below 1.
    """
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    rows = [_Asked(index, list(prompt)) for index, prompt in enumerate(prompts)]

    def generate(pending: list[_Asked], _: int) -> Sequence[Any]:
        conversations = [row.conversation for row in pending]
        return client.chat_many(conversations, seeds=[seed] * len(pending))

    def vet(row: _Asked, reply: Any) -> Verdict[_Valid[T]]:
        return _vet(row, reply.text, validate)

    outcomes = resample(rows, generate, vet, tries=max_tries)
    return _values(outcomes, client.config.model, max_tries)


def _vet(
    row: _Asked, text: str, validate: Callable[[int, dict[str, Any]], T]
) -> Verdict[_Valid[T]]:
    """Accept a valid reply; else append it and the feedback to the row's conversation."""
    try:
        return Verdict.accept(_Valid(validate(row.index, parse_json_object(text))))
    except DataError as error:
        row.conversation += [Message(role="assistant", content=text), feedback_message(str(error))]
        return Verdict.reject(str(error))


#: UTF-8 bytes of a validation error quoted back to the model (the rest is cut), so that a
#: retry's prompt stays bounded: a byte-level tokenizer makes at most one token of each byte
#: (:func:`userlm_env.estimate.estimate_judging`).
MAX_FEEDBACK_ERROR_BYTES = 300


def feedback_message(error: str) -> Message:
    """The message that asks the model again after an invalid reply, quoting ``error``
    (cut to :data:`MAX_FEEDBACK_ERROR_BYTES` bytes)."""
    quoted = error.encode()[:MAX_FEEDBACK_ERROR_BYTES].decode(errors="ignore")
    return Message(
        role="user",
        content=f"That reply is invalid: {quoted}. Answer again with the JSON object only.",
    )


def _values(outcomes: Sequence[Outcome[_Valid[T]]], model: str, max_tries: int) -> list[T]:
    """The accepted values, in order; :class:`DataError` when some item has none."""
    boxes = [outcome.value for outcome in outcomes]
    failed = [index for index, box in enumerate(boxes) if box is None]
    if failed:
        first = failed[0]
        raise DataError(
            f"the judge {model!r} gave no valid reply for {len(failed)} item(s) after "
            f"{max_tries} tries; item {first}: {outcomes[first].last_reason}"
        )
    return [box.value for box in boxes if box is not None]
