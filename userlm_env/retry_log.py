"""One log line per retry storm, instead of one per retry.

A rate-limited or overloaded server makes many concurrent calls retry at once, for minutes;
a line per retry buries everything else. :class:`RetryStormLog` groups retries into *storms*:
a retry less than ``quiet_s`` after the previous one belongs to the same storm and is only
counted. The first retry of a storm logs one WARNING line naming the model, the endpoint and
the error, plus a summary of the previous storm when there was one. :meth:`RetryStormLog.summary`
gives the totals at any time (the last storm's included, which no line has summarised yet).

Giving up is not this log's business: callers report the errors they receive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryStormLog", "RetryStormSummary", "describe_error"]

_MESSAGE_CHARS = 160  # the error message is cut to this length in the storm line


@dataclass(frozen=True)
class RetryStormSummary:
    """Retry totals of one :class:`RetryStormLog`.

    Attributes:
        retries: Retries recorded, over all storms.
        storms: Storms seen (each logged one line).
        last_storm_retries: Retries of the latest storm (0 when there was none).
        last_storm_s: Seconds between the first and the last retry of the latest storm.
    """

    retries: int = 0
    storms: int = 0
    last_storm_retries: int = 0
    last_storm_s: float = 0.0

    def __str__(self) -> str:
        if not self.retries:
            return "no retries"
        last = _storm_text(self.last_storm_retries, self.last_storm_s)
        return f"{_plural(self.retries, 'retry')} in {_plural(self.storms, 'storm')}; last: {last}"


@dataclass
class _Storm:
    started: float
    last: float
    retries: int = 1


class RetryStormLog:
    """Counts the retries of one LLM client and logs one WARNING line per storm.

    Thread-safe: retries may be recorded from several event loops at once.

    Args:
        model: The model string the retried calls go to (named in the line).
        api_base: Their endpoint, if one is configured (named in the line).
        quiet_s: A retry this many seconds or more after the previous one starts a new storm.
        clock: Seconds on a monotonic clock (injectable for tests).
        logger: Where the lines go (default: the ``userlm_env.llm`` logger).
    """

    def __init__(
        self,
        model: str,
        api_base: str | None = None,
        *,
        quiet_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        if quiet_s < 0:
            raise ValueError(f"quiet_s must be >= 0, got {quiet_s}")
        self.model = model
        self.api_base = api_base
        self.quiet_s = quiet_s
        self._clock = clock
        self._logger = logger or logging.getLogger("userlm_env.llm")
        self._lock = threading.Lock()
        self._storm: _Storm | None = None
        self._storms = 0
        self._retries = 0

    def record(self, error: BaseException) -> None:
        """Count one retry caused by ``error``; log a line when it starts a new storm."""
        now = self._clock()
        with self._lock:
            self._retries += 1
            storm = self._storm
            if storm is not None and now - storm.last < self.quiet_s:
                storm.retries += 1
                storm.last = now
                return
            self._storm = _Storm(started=now, last=now)
            self._storms += 1
        self._logger.warning(self._line(error, storm))

    def summary(self) -> RetryStormSummary:
        """The totals so far."""
        with self._lock:
            storm = self._storm
            if storm is None:
                return RetryStormSummary()
            span = storm.last - storm.started
            return RetryStormSummary(self._retries, self._storms, storm.retries, span)

    def _line(self, error: BaseException, previous: _Storm | None) -> str:
        where = f" at {self.api_base}" if self.api_base else ""
        line = (
            f"retrying LLM calls to {self.model}{where} after {describe_error(error)}; "
            f"further retries less than {self.quiet_s:g} s apart are counted, not logged"
        )
        if previous is not None:
            span = previous.last - previous.started
            line += f" (previous storm: {_storm_text(previous.retries, span)})"
        return line


def describe_error(error: BaseException) -> str:
    """``Type (HTTP status): message``, the message on one line and cut short.

    LiteLLM repeats the type name in front of its messages (``litellm.RateLimitError:
    RateLimitError: ...``); those prefixes are dropped.
    """
    name = type(error).__name__
    text = " ".join(str(error).split())
    for prefix in (f"litellm.{name}: ", f"{name}: "):
        text = text.removeprefix(prefix)
    if len(text) > _MESSAGE_CHARS:
        text = text[: _MESSAGE_CHARS - 3] + "..."
    status = getattr(error, "status_code", None)
    head = f"{name} (HTTP {status})" if isinstance(status, int) else name
    return f"{head}: {text}" if text else head


def _storm_text(retries: int, span_s: float) -> str:
    return f"{_plural(retries, 'retry')} over {span_s:.1f} s"


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"
