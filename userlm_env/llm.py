"""The single LiteLLM wrapper that every LLM call in userlm-env goes through.

:class:`LLMClient` adds what raw LiteLLM calls lack for batch experiments:

* **bounded concurrency**: an ``asyncio.Semaphore`` of ``concurrency`` slots per event loop;
  for providers LiteLLM serves through the OpenAI SDK (``openai/...``) also an ``AsyncOpenAI``
  client with an httpx pool of that many connections, passed as LiteLLM's ``client=`` hook
  (other providers keep LiteLLM's pool, still bounded by the semaphore);
* **timeouts**: ``timeout_s`` goes with every request and is also enforced as a deadline;
* **retries** with exponential backoff and full jitter on 429 (honouring ``Retry-After``),
  408/409/425, 5xx, timeouts, connection errors and malformed responses, never on other 4xx.
  LiteLLM's own retries are off so counts are exact; giving up raises
  :class:`~userlm_env.errors.LLMCallError` with ``attempts`` and ``last_error`` attributes;
* **cost** from LiteLLM's local price map (``None`` when the model is unpriced);
* an optional **on-disk cache** keyed by everything that shapes the answer.

LiteLLM is imported lazily (it takes seconds), so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol, TypeVar

from userlm_env.errors import DataError, LLMCallError
from userlm_env.types import Message

# Must be set before LiteLLM is first imported, or it fetches its price map from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = [
    "PLACEHOLDER_API_KEY",
    "ChatClient",
    "LLMClient",
    "LLMConfig",
    "LLMResult",
    "LLMStats",
    "parse_json_object",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
CallKind = Literal["chat", "text"]

#: HTTP statuses worth retrying besides 5xx: request timeout, conflict, too early, rate limit.
_RETRY_STATUSES = frozenset({408, 409, 425, 429})
#: Providers that LiteLLM serves through the OpenAI SDK, which accept our sized client.
_OPENAI_SDK_PROVIDERS = frozenset({"openai", "text-completion-openai"})
#: Key sent to an OpenAI-compatible ``api_base`` when none is configured or in the environment:
#: local servers (vLLM, llama.cpp) ignore keys, but the OpenAI SDK sends no request without one.
PLACEHOLDER_API_KEY = "EMPTY"


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a reply: bare, fenced in a code block, or after a short preamble."""
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


class _ModelConfig(Protocol):
    model: str


class _Result(Protocol):
    text: str


class ChatClient(Protocol):
    """What judges and sharders need from an LLM client; :class:`LLMClient` fits, and so does a
    scripted stand-in in tests."""

    config: _ModelConfig

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
    api_key: str | None = None  # endpoint key (None: the environment's, else see _api_key)
    temperature: float | None = None  # sampling temperature (None: the server's default)
    max_tokens: int | None = None  # cap on generated tokens (None: the server's default)
    timeout_s: float = 60.0  # per request (LiteLLM's own default is 6,000 s with no retries)
    max_retries: int = 4  # retries after the first attempt on retryable errors
    backoff_base_s: float = 1.0  # first backoff ceiling; doubles per retry (full jitter)
    backoff_max_s: float = 30.0  # cap on one backoff sleep, Retry-After included
    concurrency: int = 8  # max requests in flight (and the HTTP connection pool size)
    cache_dir: str | None = None  # optional on-disk cache of successful results
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to litellm (stop...)

    def __post_init__(self) -> None:
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


@dataclass
class LLMStats:
    """Running totals of one :class:`LLMClient` (read a snapshot via ``client.stats``)."""

    calls: int = 0  # achat/acomplete calls, cache hits included
    retries: int = 0  # attempts beyond the first, over all calls
    failures: int = 0  # calls that ended in LLMCallError
    cost_known: float = 0.0  # USD over the calls LiteLLM could price
    cost_unknown_calls: int = 0  # calls answered by the server whose cost is unknown
    cache_hits: int = 0  # calls served from the disk cache


class _MalformedResponseError(Exception):
    """The server answered, but not with a usable completion (retryable)."""


@dataclass(frozen=True)
class _Request:
    """One logical call: what to send, minus connection settings."""

    kind: CallKind
    payload: Any  # the message list (chat) or the prompt (text)
    params: dict[str, Any]
    seed: int | None


@dataclass
class _LoopResources:
    """Objects bound to one event loop: the in-flight limit and the sized HTTP client."""

    semaphore: asyncio.Semaphore
    http_client: Any | None  # openai.AsyncOpenAI or None

    async def aclose(self) -> None:
        if self.http_client is not None:
            await self.http_client.close()


@functools.cache
def _litellm() -> ModuleType:
    """Import LiteLLM once, quietly (its import costs seconds)."""
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banners on every exception
    return litellm


class LLMClient:
    """Calls one model through LiteLLM with bounded concurrency, retries, cost and caching.

    The async methods may be awaited from any event loop; each loop gets its own semaphore
    and HTTP client (call :meth:`aclose` when done with a loop of your own). ``chat_many`` and
    ``complete_many`` are synchronous and clean up after themselves; they work whether or not
    the calling thread already runs an event loop (if it does, they run in a helper thread).
    The concurrency limit holds per event loop.
    """

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._stats = LLMStats()
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        self._rng = random.Random()

    @property
    def stats(self) -> LLMStats:
        """A snapshot of the running totals."""
        with self._lock:
            return replace(self._stats)

    async def achat(
        self, messages: Sequence[Message], *, seed: int | None = None, **params: Any
    ) -> LLMResult:
        """One chat completion; ``params`` override the config's sampling settings."""
        payload = [dict(message) for message in messages]
        return await self._call(_Request("chat", payload, self._params(params), seed))

    async def acomplete(self, prompt: str, *, seed: int | None = None, **params: Any) -> LLMResult:
        """One text completion of a raw prompt (``litellm.atext_completion``)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        return await self._call(_Request("text", prompt, self._params(params), seed))

    def chat_many(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        seeds: Sequence[int | None] | None = None,
        return_exceptions: bool = False,
        **params: Any,
    ) -> list[Any]:
        """Chat completions of many conversations, concurrently; results keep their order.

        With ``return_exceptions=True`` a failed call yields its :class:`LLMCallError` in its
        place instead of failing the batch (the other calls still complete).
        """
        seeds = _check_seeds(seeds, len(conversations))
        calls = [
            functools.partial(self.achat, c, seed=s, **params)
            for c, s in zip(conversations, seeds, strict=True)
        ]
        return self._run_sync(calls, return_exceptions)

    def complete_many(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int | None] | None = None,
        return_exceptions: bool = False,
        **params: Any,
    ) -> list[Any]:
        """Text completions of many prompts, concurrently; results keep their order.

        ``return_exceptions`` works as in :meth:`chat_many`.
        """
        seeds = _check_seeds(seeds, len(prompts))
        calls = [
            functools.partial(self.acomplete, p, seed=s, **params)
            for p, s in zip(prompts, seeds, strict=True)
        ]
        return self._run_sync(calls, return_exceptions)

    async def aclose(self) -> None:
        """Close the HTTP client bound to the running event loop, if any."""
        with self._lock:
            resources = self._loops.pop(asyncio.get_running_loop(), None)
        if resources is not None:
            await resources.aclose()

    def _run_sync(
        self, calls: Sequence[Callable[[], Awaitable[_T]]], return_exceptions: bool = False
    ) -> list[Any]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._gather(calls, return_exceptions))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="userlm-llm") as pool:
            return pool.submit(lambda: asyncio.run(self._gather(calls, return_exceptions))).result()

    async def _gather(
        self, calls: Sequence[Callable[[], Awaitable[_T]]], return_exceptions: bool
    ) -> list[Any]:
        try:
            results = await asyncio.gather(
                *(call() for call in calls), return_exceptions=return_exceptions
            )
        finally:
            await self.aclose()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # never swallow KeyboardInterrupt / cancellation
        return list(results)

    def _params(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        base = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        merged = {k: v for k, v in base.items() if v is not None}
        return {**merged, **self.config.extra, **overrides}

    async def _call(self, request: _Request) -> LLMResult:
        self._bump(calls=1)
        key = self._cache_key(request)
        cached = self._cache_load(key)
        if cached is not None:
            self._bump(cache_hits=1)
            return cached
        result = await self._with_retries(request)
        self._record_cost(result.cost)
        self._cache_store(key, result)
        return result

    async def _with_retries(self, request: _Request) -> LLMResult:
        resources = self._resources()
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            try:
                async with resources.semaphore:
                    return await self._attempt(request, resources)
            except Exception as error:
                if not _is_retryable(error) or attempt + 1 == attempts:
                    self._bump(failures=1)
                    raise _call_error(self.config.model, error, attempt + 1) from error
                self._bump(retries=1)
                await asyncio.sleep(self._backoff_s(attempt, _retry_after_s(error)))
        raise AssertionError("unreachable: the loop returns or raises")

    async def _attempt(self, request: _Request, resources: _LoopResources) -> LLMResult:
        litellm = _litellm()
        kwargs = self._litellm_kwargs(request, resources)
        send = litellm.acompletion if request.kind == "chat" else litellm.atext_completion
        deadline = self.config.timeout_s * 1.25 + 1.0  # litellm's timeout should fire first
        async with asyncio.timeout(deadline):
            response = await send(**kwargs)
        return _parse(response, request.kind, _cost(litellm, response, request.kind))

    def _litellm_kwargs(self, request: _Request, resources: _LoopResources) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = {**request.params, "model": cfg.model, "timeout": cfg.timeout_s}
        kwargs |= {"num_retries": 0, "max_retries": 0}  # we retry, litellm must not
        kwargs |= {"api_base": cfg.api_base, "api_key": self._api_key}
        kwargs["messages" if request.kind == "chat" else "prompt"] = request.payload
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if resources.http_client is not None:
            kwargs["client"] = resources.http_client
        return kwargs

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt)
        delay = self._rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.backoff_max_s))
        return delay

    def _resources(self) -> _LoopResources:
        loop = asyncio.get_running_loop()
        with self._lock:
            resources = self._loops.get(loop)
        if resources is None:  # no await below: nothing else on this loop can interleave
            semaphore = asyncio.Semaphore(self.config.concurrency)
            resources = _LoopResources(semaphore, self._sized_openai_client())
            with self._lock:
                self._loops[loop] = resources
        return resources

    def _sized_openai_client(self) -> Any | None:
        """An ``AsyncOpenAI`` whose connection pool holds ``concurrency`` connections.

        Returned only for providers LiteLLM serves through the OpenAI SDK and when a key is
        known; otherwise ``None`` and LiteLLM builds its own client.
        """
        provider, api_base = self._provider()
        api_key = self._api_key or os.environ.get("OPENAI_API_KEY")
        if provider not in _OPENAI_SDK_PROVIDERS or not api_key:
            return None
        import httpx
        import openai

        size = self.config.concurrency
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        http = httpx.AsyncClient(limits=limits, timeout=self.config.timeout_s)
        timeout = self.config.timeout_s
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=api_base, timeout=timeout, max_retries=0, http_client=http
        )

    @functools.cached_property
    def _api_key(self) -> str | None:
        """The key sent with every call.

        The configured key; else ``None`` (LiteLLM reads the provider's environment variable),
        except for an OpenAI-compatible ``api_base`` with no ``OPENAI_API_KEY`` set, which gets
        :data:`PLACEHOLDER_API_KEY`: without it every call to a keyless local server would fail
        with "Missing credentials".
        """
        if self.config.api_key:
            return self.config.api_key
        provider, _ = self._provider()
        keyless_local = self.config.api_base and provider in _OPENAI_SDK_PROVIDERS
        if keyless_local and not os.environ.get("OPENAI_API_KEY"):
            return PLACEHOLDER_API_KEY
        return None

    def _provider(self) -> tuple[str | None, str | None]:
        try:
            _, provider, _, api_base = _litellm().get_llm_provider(
                model=self.config.model, api_base=self.config.api_base
            )
        except Exception:  # unknown model string: the call itself will report it
            return None, self.config.api_base
        return provider, api_base or self.config.api_base

    def _bump(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    def _record_cost(self, cost: float | None) -> None:
        with self._lock:
            if cost is None:
                self._stats.cost_unknown_calls += 1
            else:
                self._stats.cost_known += cost

    def _cache_key(self, request: _Request) -> str | None:
        if self.config.cache_dir is None:
            return None
        cfg = self.config  # everything that shapes the answer, in a fixed order:
        identity = [cfg.model, cfg.api_base, request.kind, request.payload, request.params]
        identity.append(request.seed)
        blob = json.dumps(identity, sort_keys=True, default=repr, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return Path(str(self.config.cache_dir)) / key[:2] / f"{key}.json"

    def _cache_load(self, key: str | None) -> LLMResult | None:
        if key is None:
            return None
        path = self._cache_path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return LLMResult(**{**data, "cached": True, "cost": 0.0})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as error:  # corrupt entry: refetch, overwrite
            _log.warning("ignoring unreadable LLM cache entry %s: %s", path, error)
            return None

    def _cache_store(self, key: str | None, result: LLMResult) -> None:
        if key is None:
            return
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in asdict(result).items() if k != "cached"}
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as sink:
                json.dump(record, sink, ensure_ascii=False)
            os.replace(tmp, path)  # atomic: readers see the old entry or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# -- helpers (module level: no state) -------------------------------------------------------


def _check_seeds(seeds: Sequence[int | None] | None, n: int) -> list[int | None]:
    if seeds is None:
        return [None] * n
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} inputs; pass one seed per input")
    return list(seeds)


def _is_retryable(error: BaseException) -> bool:
    """Transient failures: timeouts, connection trouble, rate limits, 5xx, garbage replies."""
    if isinstance(error, TimeoutError | ConnectionError | _MalformedResponseError):
        return True
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status in _RETRY_STATUSES or status >= 500
    return False


def _retry_after_s(error: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``), if any."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or getattr(error, "litellm_response_headers", None)
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    if "retry-after-ms" in lowered:
        return _seconds(lowered["retry-after-ms"], scale=1e-3)
    if "retry-after" in lowered:
        return _seconds(lowered["retry-after"], scale=1.0)
    return None


def _seconds(value: str, *, scale: float) -> float | None:
    """Parse a delay in (milli)seconds or an HTTP date; ``None`` when unparseable."""
    try:
        number = float(value) * scale
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        number = when.timestamp() - time.time()
    return max(0.0, number) if math.isfinite(number) else None


def _call_error(model: str, error: BaseException, attempts: int) -> LLMCallError:
    """An :class:`LLMCallError` carrying ``last_error`` and ``attempts``."""
    kind = type(error).__name__
    return LLMCallError(
        f"LLM call to {model!r} failed after {attempts} attempt(s): {kind}: {error}",
        attempts=attempts,
        last_error=error,
    )


def _cost(litellm: ModuleType, response: Any, kind: CallKind) -> float | None:
    """USD cost of one response per LiteLLM's local price map; ``None`` if it cannot price it."""
    call_type = "atext_completion" if kind == "text" else "acompletion"
    try:
        cost = litellm.completion_cost(completion_response=response, call_type=call_type)
    except Exception:  # unpriced models raise; an unknown cost is a valid answer here
        return None
    return float(cost) if isinstance(cost, int | float) and math.isfinite(cost) else None


def _parse(response: Any, kind: CallKind, cost: float | None) -> LLMResult:
    """Turn a LiteLLM response into an :class:`LLMResult`, rejecting malformed ones."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise _MalformedResponseError(f"response has no choices: {response!r:.200}")
    choice = choices[0]
    text = choice.message.content if kind == "chat" else getattr(choice, "text", None)
    if not isinstance(text, str):
        raise _MalformedResponseError(f"response choice has no text: {choice!r:.200}")
    raw = {"id": getattr(response, "id", None), "model": getattr(response, "model", None)}
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is not None:
        raw["logprobs"] = _plain(logprobs)
    finish = getattr(choice, "finish_reason", None)
    return LLMResult(text, cost, False, _usage(response), finish, raw)


def _usage(response: Any) -> dict[str, int]:
    usage = getattr(response, "usage", None)
    found = {name: getattr(usage, name, None) for name in ("prompt_tokens", "completion_tokens")}
    return {name: value for name, value in found.items() if isinstance(value, int)}


def _plain(value: Any) -> Any:
    """Pydantic objects to plain JSON-able data (for ``raw`` and the cache)."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return dict(value) if isinstance(value, Mapping) else value
