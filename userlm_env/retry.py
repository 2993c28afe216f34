"""Retries with backoff for calls to remote services (the LLM client's requests).

* :func:`is_retryable` says which errors are transient: timeouts, connection errors,
  :class:`TransientError` (e.g. a malformed reply), HTTP 408/409/425/429 and 5xx; never other
  4xx, nor errors without a status, nor authentication errors (:func:`is_auth_error`), whatever
  status they carry.
* :func:`is_auth_error` recognises a refused or missing credential: HTTP 401/403, an
  ``AuthenticationError`` / ``PermissionDeniedError``, or the OpenAI SDK's own credential error
  (which LiteLLM re-raises as an HTTP 500 "server error"), anywhere in the error's chain.
* :func:`retry_after_s` reads the delay a server asked for (``retry-after-ms``, or
  ``Retry-After`` in seconds or as an HTTP date).
* :class:`Backoff` computes sleeps: exponential with full jitter, capped, and never shorter
  than the server's ``Retry-After`` (up to the cap). Each instance has its own RNG.
* :func:`call_with_retries` runs one async call with retries and, when it gives up, raises
  :class:`GaveUpError` carrying the last error and the exact number of attempts.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = [
    "AUTH_STATUSES",
    "RETRY_STATUSES",
    "Backoff",
    "GaveUpError",
    "TransientError",
    "call_with_retries",
    "is_auth_error",
    "is_retryable",
    "parse_delay_s",
    "retry_after_s",
]

_T = TypeVar("_T")

#: HTTP statuses worth retrying besides 5xx: request timeout, conflict, too early, rate limit.
RETRY_STATUSES = frozenset({408, 409, 425, 429})
#: HTTP statuses of a refused credential: unauthorized, forbidden. Never retried.
AUTH_STATUSES = frozenset({401, 403})
#: Class names of the authentication errors of the OpenAI SDK, LiteLLM and other provider SDKs.
_AUTH_ERROR_NAMES = frozenset({"AuthenticationError", "PermissionDeniedError"})


class TransientError(Exception):
    """A failure known to be transient (retryable), e.g. a server reply that is malformed."""


class GaveUpError(Exception):
    """A call failed for good: not retryable, or out of retries.

    Attributes:
        last_error: The error of the last attempt.
        attempts: How many attempts were made (the first one included).
    """

    def __init__(self, last_error: Exception, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last_error!r}")
        self.last_error = last_error
        self.attempts = attempts


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is transient: worth another attempt.

    Args:
        error: What the attempt raised.

    Returns:
        ``True`` for timeouts, connection errors, :class:`TransientError` and errors whose
        ``status_code`` is in :data:`RETRY_STATUSES` or is 5xx; ``False`` otherwise, and
        always ``False`` for an authentication error (:func:`is_auth_error`): a missing or
        refused key does not heal with time.
    """
    if is_auth_error(error):
        return False
    if isinstance(error, TimeoutError | ConnectionError | TransientError):
        return True
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return status in RETRY_STATUSES or status >= 500
    return False


def is_auth_error(error: BaseException) -> bool:
    """Whether ``error`` says the credentials are missing or were refused.

    Walks the chain of ``error`` (its ``__cause__`` and ``__context__`` links) for an HTTP
    status in :data:`AUTH_STATUSES`, an error class named ``AuthenticationError`` or
    ``PermissionDeniedError``, or an instance of the OpenAI SDK's base ``OpenAIError`` itself
    (the SDK raises that exact class, never a subclass, for client-side configuration problems
    such as "Missing credentials"; LiteLLM wraps it in an HTTP 500 error).
    """
    openai = sys.modules.get("openai")  # not imported: no OpenAI SDK error can be in the chain
    sdk_config_error = getattr(openai, "OpenAIError", None)
    for link in _chain(error):
        status = getattr(link, "status_code", None)
        if isinstance(status, int) and status in AUTH_STATUSES:
            return True
        if type(link).__name__ in _AUTH_ERROR_NAMES:
            return True
        if sdk_config_error is not None and type(link) is sdk_config_error:
            return True
    return False


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, each once."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def retry_after_s(error: BaseException) -> float | None:
    """Seconds the server asked to wait before the next attempt, if it said.

    Reads the headers of ``error.response`` (or LiteLLM's ``litellm_response_headers``):
    ``retry-after-ms`` first, then ``Retry-After`` (seconds or an HTTP date).

    Args:
        error: What the attempt raised.

    Returns:
        The delay in seconds (``>= 0``), or ``None`` when absent or unparseable.
    """
    headers = _headers(error)
    if "retry-after-ms" in headers:
        return parse_delay_s(headers["retry-after-ms"], scale=1e-3)
    if "retry-after" in headers:
        return parse_delay_s(headers["retry-after"], scale=1.0)
    return None


def parse_delay_s(value: str, *, scale: float = 1.0, now: float | None = None) -> float | None:
    """A delay header value in seconds.

    Args:
        value: A number of units, or an HTTP date.
        scale: Seconds per unit (``1e-3`` for milliseconds).
        now: The current Unix time for dates (default: the clock).

    Returns:
        The delay (``>= 0``; a past date gives 0), or ``None`` when ``value`` is neither a
        finite number nor a date.
    """
    try:
        seconds = float(value) * scale
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _headers(error: BaseException) -> dict[str, str]:
    """The response headers attached to ``error``, with lower-cased names."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or getattr(error, "litellm_response_headers", None)
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else dict(headers).items()
    return {str(name).lower(): str(value) for name, value in items}


class Backoff:
    """Sleep lengths between attempts: exponential with full jitter, capped.

    Retry ``n`` (0-based) sleeps a uniform draw from ``[0, min(max_s, base_s * 2**n)]``, or the
    server's ``Retry-After`` when longer, but never more than ``max_s``.

    Args:
        base_s: The first retry's ceiling in seconds (``>= 0``).
        max_s: The cap on one sleep, ``Retry-After`` included (``>= 0``).
        seed: Seed of this backoff's own RNG (``None``: seeded from the OS).
    """

    def __init__(self, base_s: float, max_s: float, *, seed: int | None = None) -> None:
        if base_s < 0 or max_s < 0:
            raise ValueError(f"backoff needs base_s >= 0 and max_s >= 0, got {base_s}, {max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self._rng = random.Random(seed)

    def ceiling_s(self, retry: int) -> float:
        """The largest jittered sleep of retry ``retry`` (0-based)."""
        return min(self.max_s, self.base_s * 2.0 ** min(retry, 1023))  # 2.0**1024 overflows

    def delay_s(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry ``retry`` (0-based).

        Args:
            retry: How many retries came before this one.
            retry_after: The server's requested delay, if any.
        """
        delay = self._rng.uniform(0.0, self.ceiling_s(retry))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_s))
        return delay


async def call_with_retries(
    call: Callable[[], Awaitable[_T]],
    *,
    max_retries: int,
    backoff: Backoff,
    on_retry: Callable[[Exception], Any] | None = None,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> _T:
    """Await ``call()`` until it succeeds, retrying retryable errors after a backoff sleep.

    Args:
        call: Makes one attempt (a fresh awaitable per call).
        max_retries: Attempts allowed after the first one (``>= 0``).
        backoff: Sleep lengths between attempts.
        on_retry: Told each error that is about to be retried.
        retryable: Says which errors are worth another attempt (default :func:`is_retryable`).

    Returns:
        What the first successful attempt returned.

    Raises:
        GaveUpError: An attempt failed with a non-retryable error, or the last allowed attempt
            failed; it carries that error and the number of attempts made.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    attempts = 0
    while True:
        attempts += 1
        try:
            return await call()
        except Exception as error:
            if attempts > max_retries or not retryable(error):
                raise GaveUpError(error, attempts) from error
            if on_retry is not None:
                on_retry(error)
            await asyncio.sleep(backoff.delay_s(attempts - 1, retry_after_s(error)))
