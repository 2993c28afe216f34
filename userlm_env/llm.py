"""The single LiteLLM wrapper that every LLM call in userlm-env goes through.

:class:`LLMClient` adds what raw LiteLLM calls lack for batch experiments:

* **bounded concurrency**: an ``asyncio.Semaphore`` of ``concurrency`` slots per event loop;
  for providers LiteLLM serves through the OpenAI SDK (``openai/...``) also an ``AsyncOpenAI``
  client with an httpx pool of that many connections, passed as LiteLLM's ``client=`` hook
  (other providers keep LiteLLM's pool, still bounded by the semaphore);
* **timeouts**: ``timeout_s`` goes with every request and is also enforced as a deadline;
* **retries** (:mod:`userlm_env.retry`): exponential backoff with full jitter on 429
  (honouring ``Retry-After``), 408/409/425, 5xx, timeouts, connection errors and malformed
  responses, never on other 4xx and never on authentication errors (a missing or refused key,
  even when LiteLLM reports it as a 500), nor at all for a hosted model whose key variable is
  not set. LiteLLM's own retries are off so counts are exact; giving up raises
  :class:`~userlm_env.errors.LLMCallError` with ``attempts`` and ``last_error``, whose message
  names the endpoint (``api_base``) and, for an authentication error, how to give a key;
* **one log line per retry storm** (:mod:`userlm_env.retry_log`): the first retry after a
  quiet spell logs a WARNING on the ``userlm_env.llm`` logger; the retries that follow it
  closely are only counted (``stats.retries``, ``retry_log.summary()``);
* **cost** from the config's price (``input_usd_per_mtok``/``output_usd_per_mtok`` and the
  reported usage) or LiteLLM's local price map (``None`` when the model is unpriced);
* an optional **disk cache** (:class:`~userlm_env.json_cache.JsonCache`) keyed by everything
  that shapes the answer.

LiteLLM is imported lazily (it takes seconds), so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from userlm_env.errors import LLMCallError
from userlm_env.json_cache import JsonCache, cache_key
from userlm_env.llm_response import (
    CallKind,
    parse_response,
    response_cost,
    result_from_record,
    result_record,
)
from userlm_env.llm_transport import (
    PLACEHOLDER_API_KEY,
    LoopResources,
    key_hint,
    load_litellm,
    missing_api_keys,
    resolve_api_key,
    sized_openai_client,
)
from userlm_env.llm_types import ChatClient, LLMConfig, LLMResult, LLMStats
from userlm_env.pricing import Price, configured_price
from userlm_env.retry import Backoff, GaveUpError, call_with_retries, is_auth_error, is_retryable
from userlm_env.retry_log import RetryStormLog
from userlm_env.types import Message

# Must be set before LiteLLM is first imported, or it fetches its price map from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = ["PLACEHOLDER_API_KEY", "ChatClient", "LLMClient", "LLMConfig", "LLMResult", "LLMStats"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Request:
    """One logical call: what to send, minus connection settings."""

    kind: CallKind
    payload: Any  # the message list (chat) or the prompt (text)
    params: dict[str, Any]
    seed: int | None


class LLMClient:
    """Calls one model through LiteLLM with bounded concurrency, retries, cost and caching.

    The async methods may be awaited from any event loop; each loop gets its own semaphore
    and HTTP client (call :meth:`aclose` when done with a loop of your own). ``chat_many`` and
    ``complete_many`` are synchronous and clean up after themselves; they work whether or not
    the calling thread already runs an event loop (if it does, they run in a helper thread).
    The concurrency limit holds per event loop.

    Args:
        config: The model and how to call it.
        retry_log: Counts retries and logs one line per retry storm (default: a
            :class:`~userlm_env.retry_log.RetryStormLog` of this model and endpoint logging to
            the ``userlm_env.llm`` logger); kept as :attr:`retry_log`.
    """

    def __init__(self, config: LLMConfig, *, retry_log: RetryStormLog | None = None) -> None:
        self.config = config
        self.retry_log = retry_log or RetryStormLog(config.model, config.api_base, logger=_log)
        self._stats = LLMStats()
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        self._backoff = Backoff(config.backoff_base_s, config.backoff_max_s)
        self._cache = JsonCache(config.cache_dir)

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
        return self._many(self.achat, conversations, seeds, return_exceptions, params)

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
        return self._many(self.acomplete, prompts, seeds, return_exceptions, params)

    async def aclose(self) -> None:
        """Close the HTTP client bound to the running event loop, if any."""
        with self._lock:
            resources = self._loops.pop(asyncio.get_running_loop(), None)
        if resources is not None:
            await resources.aclose()

    def _many(
        self,
        send: Callable[..., Awaitable[LLMResult]],
        inputs: Sequence[Any],
        seeds: Sequence[int | None] | None,
        return_exceptions: bool,
        params: Mapping[str, Any],
    ) -> list[Any]:
        """``send`` every input concurrently on a fresh event loop (in a helper thread if the
        calling thread already runs one); results keep their order."""
        seeds = _check_seeds(seeds, len(inputs))
        calls = [
            functools.partial(send, item, seed=seed, **params)
            for item, seed in zip(inputs, seeds, strict=True)
        ]
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._gather(calls, return_exceptions))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="userlm-llm") as pool:
            return pool.submit(lambda: asyncio.run(self._gather(calls, return_exceptions))).result()

    async def _gather(
        self, calls: Sequence[Callable[[], Awaitable[LLMResult]]], return_exceptions: bool
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
        """Serve ``request`` from the cache, else from the server (then cache the result)."""
        self._bump(calls=1)
        key = self._cache_key(request)
        cached = self._cache.get(key, result_from_record) if key else None
        if cached is not None:
            self._bump(cache_hits=1)
            return cached
        result = await self._with_retries(request)
        self._record_cost(result.cost)
        if key:
            self._cache.put(key, result_record(result))
        return result

    async def _with_retries(self, request: _Request) -> LLMResult:
        resources = self._resources()

        async def attempt() -> LLMResult:
            async with resources.semaphore:  # held per attempt, not while backing off
                return await self._attempt(request, resources)

        try:
            return await call_with_retries(
                attempt,
                max_retries=self.config.max_retries,
                backoff=self._backoff,
                on_retry=self._on_retry,
                retryable=self._retryable,
            )
        except GaveUpError as gave_up:
            self._bump(failures=1)
            raise self._call_error(gave_up) from gave_up.last_error

    async def _attempt(self, request: _Request, resources: LoopResources) -> LLMResult:
        litellm = load_litellm()
        kwargs = self._litellm_kwargs(request, resources)
        send = litellm.acompletion if request.kind == "chat" else litellm.atext_completion
        deadline = self.config.timeout_s * 1.25 + 1.0  # litellm's timeout should fire first
        async with asyncio.timeout(deadline):
            response = await send(**kwargs)
        price = self._configured_price
        cost = response_cost(litellm, response, request.kind) if price is None else None
        result = parse_response(response, request.kind, cost)
        return result if price is None else replace(result, cost=price.cost(result.usage))

    def _litellm_kwargs(self, request: _Request, resources: LoopResources) -> dict[str, Any]:
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

    def _resources(self) -> LoopResources:
        loop = asyncio.get_running_loop()
        with self._lock:
            resources = self._loops.get(loop)
        if resources is None:  # no await below: nothing else on this loop can interleave
            cfg = self.config
            size, timeout_s = cfg.concurrency, cfg.timeout_s
            client = sized_openai_client(
                cfg.model, cfg.api_base, self._api_key, size=size, timeout_s=timeout_s
            )
            resources = LoopResources(asyncio.Semaphore(size), client)
            with self._lock:
                self._loops[loop] = resources
        return resources

    @functools.cached_property
    def _configured_price(self) -> Price | None:
        """The price given in the config, which replaces LiteLLM's (``None``: not given)."""
        return configured_price(self.config.input_usd_per_mtok, self.config.output_usd_per_mtok)

    def llm_clients(self) -> list[LLMClient]:
        """This client (so a client counts as a component that spends: :mod:`userlm_env.spend`)."""
        return [self]

    @functools.cached_property
    def _api_key(self) -> str | None:
        """The key sent with every call (see :func:`~userlm_env.llm_transport.resolve_api_key`)."""
        cfg = self.config
        return resolve_api_key(cfg.model, cfg.api_base, cfg.api_key)

    @functools.cached_property
    def _missing_keys(self) -> list[str]:
        """The key variables a hosted provider needs and the environment lacks (offline)."""
        cfg = self.config
        return missing_api_keys(cfg.model, cfg.api_base, self._api_key)

    def _retryable(self, error: BaseException) -> bool:
        """Transient errors only (:func:`~userlm_env.retry.is_retryable`), and none at all
        when the provider's key variable is missing: that failure does not heal with time."""
        return not self._missing_keys and is_retryable(error)

    def _call_error(self, gave_up: GaveUpError) -> LLMCallError:
        """An :class:`LLMCallError` carrying ``last_error`` and ``attempts``; its message names
        the model, the endpoint and, for a credential problem, how to give a key."""
        cfg, error, attempts = self.config, gave_up.last_error, gave_up.attempts
        where = f"{cfg.model!r} at {cfg.api_base}" if cfg.api_base else repr(cfg.model)
        head = f"LLM call to {where} failed after {attempts} attempt(s)"
        if self._missing_keys or is_auth_error(error):
            setting = "the api_key setting (e.g. assistant.api_key=...)"
            hint = key_hint(cfg.model, cfg.api_base, self._api_key, setting=setting)
            head += f"; authentication failed and is not retried ({hint})"
        return LLMCallError(
            f"{head}: {type(error).__name__}: {error}", attempts=attempts, last_error=error
        )

    def _on_retry(self, error: Exception) -> None:
        self._bump(retries=1)
        self.retry_log.record(error)

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
        """The cache key of everything that shapes the answer (``None``: no cache)."""
        if not self._cache.enabled:
            return None
        cfg = self.config
        return cache_key(
            cfg.model, cfg.api_base, request.kind, request.payload, request.params, request.seed
        )


def _check_seeds(seeds: Sequence[int | None] | None, n: int) -> list[int | None]:
    if seeds is None:
        return [None] * n
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} inputs; pass one seed per input")
    return list(seeds)
