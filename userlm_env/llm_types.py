"""The value types of the LLM client: its configuration, results, statistics and protocol.

* :class:`LLMConfig`: how to reach one model and how to call it.
* :class:`LLMResult`: the outcome of one successful call.
* :class:`LLMStats`: running totals of one client.
* :class:`ChatClient`: what judges and sharders need from a client (structural type).

All are re-exported by :mod:`userlm_env.llm`; import them from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from userlm_env.pricing import configured_price
from userlm_env.types import Message

__all__ = ["ChatClient", "LLMConfig", "LLMResult", "LLMStats"]


class _ModelConfig(Protocol):
    @property
    def model(self) -> str: ...


class _Result(Protocol):
    @property
    def text(self) -> str: ...


class ChatClient(Protocol):
    """What judges and sharders need from an LLM client.

    :class:`~userlm_env.llm.LLMClient` fits, and so does a scripted stand-in in tests.
    """

    @property
    def config(self) -> _ModelConfig: ...  # read-only: any object with a ``model`` string

    def chat_many(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        seeds: Sequence[int | None] | None = None,
        **params: Any,
    ) -> Sequence[_Result]: ...


@dataclass
class LLMConfig:
    """How to reach one model and how to call it."""

    model: str  # any LiteLLM model string, e.g. "openai/gpt-4o-mini" or "openai/local"
    api_base: str | None = None  # endpoint URL, e.g. "http://127.0.0.1:8000/v1"
    api_key: str | None = None  # endpoint key (None: see llm_transport.resolve_api_key)
    temperature: float | None = None  # sampling temperature (None: the server's default)
    max_tokens: int | None = None  # cap on generated tokens (None: the server's default)
    timeout_s: float = 60.0  # per request (LiteLLM's own default is 6,000 s with no retries)
    max_retries: int = 4  # retries after the first attempt on retryable errors
    backoff_base_s: float = 1.0  # first backoff ceiling; doubles per retry (full jitter)
    backoff_max_s: float = 30.0  # cap on one backoff sleep, Retry-After included
    concurrency: int = 8  # max requests in flight (and the HTTP connection pool size)
    cache_dir: str | None = None  # optional on-disk cache of successful results
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to litellm (stop...)
    input_usd_per_mtok: float | None = None  # price per million prompt tokens (None: LiteLLM's)
    output_usd_per_mtok: float | None = None  # price per million generated tokens (None: LiteLLM's)

    def __post_init__(self) -> None:
        configured_price(self.input_usd_per_mtok, self.output_usd_per_mtok)  # raises if half given
        checks = {
            "model must be a non-empty string": isinstance(self.model, str) and self.model,
            "timeout_s must be > 0": self.timeout_s > 0,
            "max_retries must be >= 0": self.max_retries >= 0,
            "backoff_base_s must be >= 0": self.backoff_base_s >= 0,
            "backoff_max_s must be >= 0": self.backoff_max_s >= 0,
            "concurrency must be >= 1": self.concurrency >= 1,
        }
        failed = [message for message, passed in checks.items() if not passed]
        if failed:
            raise ValueError(f"invalid LLMConfig: {'; '.join(failed)}")


@dataclass
class LLMStats:
    """Running totals of one :class:`LLMClient` (read a snapshot via ``client.stats``)."""

    calls: int = 0  # achat/acomplete calls, cache hits included
    retries: int = 0  # attempts beyond the first, over all calls
    failures: int = 0  # calls that ended in LLMCallError
    cost_known: float = 0.0  # USD over the calls LiteLLM could price
    cost_unknown_calls: int = 0  # calls answered by the server whose cost is unknown
    cache_hits: int = 0  # calls served from the disk cache


@dataclass(frozen=True)
class LLMResult:
    """The outcome of one successful call.

    Attributes:
        text: The generated text.
        cost: USD spent on this call per LiteLLM's price map; ``None`` when the model is
            unpriced (self-hosted); ``0.0`` for a cache hit (nothing was spent).
        cached: Served from the on-disk cache without a request.
        usage: ``prompt_tokens`` and ``completion_tokens`` when the server reported them.
        finish_reason: Why generation stopped (``"stop"``, ``"length"``...), when known.
        raw: Extra response facts: ``id``, ``model`` and ``logprobs`` when requested.
    """

    text: str
    cost: float | None
    cached: bool
    usage: dict[str, int]
    finish_reason: str | None
    raw: Mapping[str, Any] | None = None
