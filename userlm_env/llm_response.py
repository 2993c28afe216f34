"""LiteLLM responses to :class:`~userlm_env.llm_types.LLMResult` values, and to cache records.

:func:`parse_response` reads the text, usage, finish reason and extra facts (id, model,
logprobs) of a LiteLLM chat or text completion and raises :class:`MalformedResponseError` (a
retryable :class:`~userlm_env.retry.TransientError`) when the server answered without a usable
completion. :func:`response_cost` prices a response with LiteLLM's local price map.
:func:`result_record` and :func:`result_from_record` convert results to and from the JSON
records of the LLM client's disk cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from types import ModuleType
from typing import Any, Literal

from userlm_env.llm_types import LLMResult
from userlm_env.retry import TransientError

__all__ = [
    "CallKind",
    "MalformedResponseError",
    "parse_response",
    "response_cost",
    "result_from_record",
    "result_record",
]

CallKind = Literal["chat", "text"]


class MalformedResponseError(TransientError):
    """The server answered, but not with a usable completion (retryable)."""


def parse_response(response: Any, kind: CallKind, cost: float | None) -> LLMResult:
    """The :class:`LLMResult` of one LiteLLM response.

    Args:
        response: What ``litellm.acompletion`` (chat) or ``atext_completion`` (text) returned.
        kind: Which of the two it came from.
        cost: The response's cost (see :func:`response_cost`).

    Raises:
        MalformedResponseError: The response has no choices, or its first choice no text.
    """
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedResponseError(f"response has no choices: {response!r:.200}")
    choice = choices[0]
    text = choice.message.content if kind == "chat" else getattr(choice, "text", None)
    if not isinstance(text, str):
        raise MalformedResponseError(f"response choice has no text: {choice!r:.200}")
    raw: dict[str, Any] = {"id": getattr(response, "id", None)}
    raw["model"] = getattr(response, "model", None)
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is not None:
        raw["logprobs"] = _plain(logprobs)
    finish = getattr(choice, "finish_reason", None)
    return LLMResult(text, cost, False, _usage(response), finish, raw)


def response_cost(litellm: ModuleType, response: Any, kind: CallKind) -> float | None:
    """USD cost of one response per LiteLLM's local price map; ``None`` if it cannot price it."""
    call_type = "atext_completion" if kind == "text" else "acompletion"
    try:
        cost = litellm.completion_cost(completion_response=response, call_type=call_type)
    except Exception:  # unpriced models raise; an unknown cost is a valid answer here
        return None
    return float(cost) if isinstance(cost, int | float) and math.isfinite(cost) else None


def result_record(result: LLMResult) -> dict[str, Any]:
    """The JSON record a result is cached as (everything but ``cached``)."""
    return {name: value for name, value in asdict(result).items() if name != "cached"}


def result_from_record(record: Any) -> LLMResult:
    """A cache hit's result: the record's fields, ``cached=True`` and ``cost=0.0``.

    Raises:
        TypeError: ``record`` is not a mapping of :class:`LLMResult`'s fields.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"a cached result must be a JSON object, got {type(record).__name__}")
    return LLMResult(**{**record, "cached": True, "cost": 0.0})


def _usage(response: Any) -> dict[str, int]:
    usage = getattr(response, "usage", None)
    found = {name: getattr(usage, name, None) for name in ("prompt_tokens", "completion_tokens")}
    return {name: value for name, value in found.items() if isinstance(value, int)}


def _plain(value: Any) -> Any:
    """Pydantic objects to plain JSON-able data (for ``raw`` and the cache)."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return dict(value) if isinstance(value, Mapping) else value
