"""Tests of :mod:`userlm_env.retry`: Retry-After parsing, retryable errors, backoff, the loop."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from userlm_env.retry import (
    Backoff,
    GaveUpError,
    TransientError,
    call_with_retries,
    is_retryable,
    parse_delay_s,
    retry_after_s,
)


@dataclass
class _Response:
    headers: dict[str, str] = field(default_factory=dict)


class _HTTPError(Exception):
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.response = _Response(headers or {})


def test_retry_after_in_seconds_and_milliseconds() -> None:
    assert retry_after_s(_HTTPError(429, {"Retry-After": "3"})) == 3.0
    assert retry_after_s(_HTTPError(429, {"retry-after": "1.5"})) == 1.5
    assert retry_after_s(_HTTPError(429, {"retry-after-ms": "250"})) == pytest.approx(0.25)
    both = {"Retry-After": "9", "Retry-After-Ms": "100"}  # the precise one wins
    assert retry_after_s(_HTTPError(429, both)) == pytest.approx(0.1)


def test_retry_after_as_an_http_date() -> None:
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert retry_after_s(_HTTPError(503, {"Retry-After": future})) == pytest.approx(120, abs=3)
    past = email.utils.formatdate(time.time() - 600, usegmt=True)
    assert retry_after_s(_HTTPError(503, {"Retry-After": past})) == 0.0
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    now = email.utils.parsedate_to_datetime(date).timestamp() - 42
    assert parse_delay_s(date, now=now) == pytest.approx(42)


@pytest.mark.parametrize("value", ["soon", "", "nan", "inf", "-", "Wed, 99 Foo"])
def test_garbage_retry_after_is_ignored(value: str) -> None:
    assert retry_after_s(_HTTPError(429, {"Retry-After": value})) is None


def test_no_headers_means_no_retry_after() -> None:
    assert retry_after_s(_HTTPError(429)) is None
    assert retry_after_s(ValueError("no response at all")) is None
    negative = _HTTPError(429, {"Retry-After": "-5"})
    assert retry_after_s(negative) == 0.0


def test_litellm_style_headers_are_read() -> None:
    error = Exception("rate limited")
    error.litellm_response_headers = {"Retry-After": "2"}  # type: ignore[attr-defined]
    assert retry_after_s(error) == 2.0


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (_HTTPError(429), True),
        (_HTTPError(408), True),
        (_HTTPError(409), True),
        (_HTTPError(425), True),
        (_HTTPError(500), True),
        (_HTTPError(503), True),
        (_HTTPError(400), False),
        (_HTTPError(401), False),
        (_HTTPError(404), False),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (TransientError("garbled reply"), True),
        (ValueError("a bug"), False),
    ],
)
def test_which_errors_are_retryable(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_seeded_backoff_is_reproducible_and_bounded() -> None:
    first, second = Backoff(0.5, 4.0, seed=7), Backoff(0.5, 4.0, seed=7)
    delays = [first.delay_s(n) for n in range(12)]
    assert delays == [second.delay_s(n) for n in range(12)]
    for n, delay in enumerate(delays):
        assert 0.0 <= delay <= min(4.0, 0.5 * 2**n)
    assert max(delays[4:]) <= 4.0  # the cap holds once the exponential passes it
    assert Backoff(1.0, 30.0).ceiling_s(10_000) == 30.0  # huge retry counts do not overflow


def test_backoff_never_below_retry_after_up_to_the_cap() -> None:
    backoff = Backoff(0.01, 5.0, seed=1)
    assert all(2.0 <= backoff.delay_s(0, retry_after=2.0) <= 5.0 for _ in range(50))
    assert backoff.delay_s(0, retry_after=60.0) == 5.0
    assert Backoff(0.0, 5.0).delay_s(3) == 0.0
    with pytest.raises(ValueError, match="backoff"):
        Backoff(-1.0, 5.0)


def _flaky(
    errors: list[BaseException], result: str = "done"
) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return calls, call


def test_retries_until_success_and_reports_each_retry() -> None:
    calls, call = _flaky([_HTTPError(500), TimeoutError()])
    retried: list[BaseException] = []
    result = asyncio.run(
        call_with_retries(call, max_retries=3, backoff=Backoff(0, 0), on_retry=retried.append)
    )
    assert result == "done" and len(calls) == 3 and len(retried) == 2


def test_gives_up_with_the_exact_attempt_count() -> None:
    calls, call = _flaky([_HTTPError(503)] * 5)
    with pytest.raises(GaveUpError) as caught:
        asyncio.run(call_with_retries(call, max_retries=2, backoff=Backoff(0, 0)))
    assert caught.value.attempts == 3 and len(calls) == 3
    assert isinstance(caught.value.last_error, _HTTPError)
    assert caught.value.__cause__ is caught.value.last_error


def test_non_retryable_error_stops_at_once() -> None:
    calls, call = _flaky([_HTTPError(400)])
    with pytest.raises(GaveUpError) as caught:
        asyncio.run(call_with_retries(call, max_retries=5, backoff=Backoff(0, 0)))
    assert caught.value.attempts == 1 and len(calls) == 1


def test_retry_after_sets_the_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    _, call = _flaky([_HTTPError(429, {"Retry-After": "1.5"})])
    asyncio.run(call_with_retries(call, max_retries=1, backoff=Backoff(0.001, 10.0, seed=0)))
    assert slept == [1.5]
