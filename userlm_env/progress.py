"""Progress of long commands: items done of the total, failures, spend so far and an ETA.

:class:`Progress` shows one of two things, on a stream (``sys.stderr`` unless told):

* On a terminal (the stream's ``isatty()`` is true) a live :mod:`tqdm` bar, with the failures
  and the spend as its postfix. Messages go through :meth:`Progress.note`, above the bar.
* Anywhere else (CI, a log file, a SLURM job) plain lines and no carriage returns: one when it
  starts, one at least every ``plain_every_items`` items or ``plain_every_s`` seconds
  (whichever comes first; checked when items finish, there is no timer thread) and a final one
  at :meth:`Progress.close`. :func:`progress_line` writes them, for example::

      [score] 40/1640 episodes (2.4%) · failed 1 · spent $0.0123 · 1m02s elapsed · ETA 41m10s
      [score] 1640/1640 episodes (100.0%) · failed 3 · spent $0.5021 · 42m13s elapsed · finished

The ETA comes from the rate of the items done in this run: items already done before it
(``done_before``: cached or resumed work) count toward the done/total figure, not the rate.
The spend is whatever the ``spend`` callable reports (a :class:`userlm_env.spend.Spend`, shown
with ``str``: ``$0.0123``, ``$0.0123 + unknown`` or ``unknown``); the field is left out when no
callable is given. :func:`client_spend` builds that callable for an LLM client.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    from userlm_env.spend import Spend

__all__ = ["Progress", "ProgressSettings", "client_spend", "format_duration", "progress_line"]

_SEPARATOR = " · "


@dataclass(frozen=True)
class ProgressSettings:
    """How progress is shown (what a config can set).

    Attributes:
        plain_every_items: Plain mode: a line at least every this many items.
        plain_every_s: Plain mode: ... or when this many seconds passed since the last line.
        live: ``True``: a live bar; ``False``: plain lines; ``None``: a live bar exactly when
            the stream is a terminal.
    """

    plain_every_items: int = 10
    plain_every_s: float = 30.0
    live: bool | None = None

    def __post_init__(self) -> None:
        if self.plain_every_items < 1:
            raise ValueError(f"plain_every_items must be >= 1, got {self.plain_every_items}")
        if not self.plain_every_s > 0:
            raise ValueError(f"plain_every_s must be > 0, got {self.plain_every_s}")


def format_duration(seconds: float) -> str:
    """``5s``, ``1m02s``, ``2h03m`` (rounded down to whole seconds)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_line(
    *,
    label: str,
    unit: str,
    done: int,
    total: int,
    failed: int,
    elapsed_s: float,
    done_in_run: int,
    spent: str | None = None,
    final: bool = False,
) -> str:
    """One plain progress line (pure: everything it shows is an argument).

    Args:
        label: The command, shown as ``[label]``.
        unit: The item, singular (``"episode"``); an ``s`` is added unless the total is 1.
        done: Items done, those done before this run included.
        total: Items in all.
        failed: Items done that failed.
        elapsed_s: Seconds since this run started.
        done_in_run: Items done in this run (the ETA's rate is ``done_in_run / elapsed_s``).
        spent: The spend so far as text (``"$0.0123"``, ``"unknown"``); ``None``: no field.
        final: The closing line: ``finished`` (all done) or ``stopped`` instead of the ETA.
    """
    units = unit if total == 1 else f"{unit}s"
    percent = 100.0 * done / total if total else 100.0
    fields = [f"[{label}] {done}/{total} {units} ({percent:.1f}%)", f"failed {failed}"]
    if spent is not None:
        fields.append(f"spent {spent}")
    fields.append(f"{format_duration(elapsed_s)} elapsed")
    if final:
        fields.append("finished" if done >= total else "stopped")
    elif done_in_run > 0 and elapsed_s > 0:
        remaining_s = (total - done) * elapsed_s / done_in_run
        fields.append(f"ETA {format_duration(remaining_s)}")
    else:
        fields.append("ETA ?")
    return _SEPARATOR.join(fields)


def client_spend(client: Any) -> Callable[[], Spend | None] | None:
    """The spend callable of an LLM client: its ``stats`` as a :class:`~userlm_env.spend.Spend`.

    ``None`` (no spend field) for a client without ``stats`` (a scripted stand-in in tests).
    """
    if not hasattr(client, "stats"):
        return None

    def spend() -> Spend:
        from userlm_env.spend import Spend

        stats = client.stats
        return Spend(stats.cost_known, stats.cost_unknown_calls)

    return spend


class Progress:
    """Progress of ``total`` items of a long command (see the module doc for what it shows).

    Args:
        total: Items in all (>= 0).
        label: The command's name, shown as ``[label]``.
        unit: What an item is, singular.
        stream: Where progress goes; ``None``: ``sys.stderr`` at construction time.
        done_before: Items already done when the run starts (cached or resumed); they count
            toward the done figure but not toward the rate behind the ETA.
        spend: Reports the spend so far (``None`` from it: unknown); ``None``: no spend field.
        settings: Line frequency of plain mode, and live or plain (default: live on a TTY).
        clock: Seconds on a monotonic clock (injectable for tests).

    Use it as a context manager, or call :meth:`close` when done. It is thread-safe.
    """

    def __init__(
        self,
        total: int,
        *,
        label: str,
        unit: str = "episode",
        stream: TextIO | None = None,
        done_before: int = 0,
        spend: Callable[[], Spend | None] | None = None,
        settings: ProgressSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        if not 0 <= done_before <= total:
            raise ValueError(f"done_before must be in 0..{total}, got {done_before}")
        self._total, self._done, self._failed = total, done_before, 0
        self._done_before = done_before
        self._label, self._unit = label, unit
        self._stream: TextIO = stream if stream is not None else sys.stderr
        self._spend = spend
        self._settings = settings or ProgressSettings()
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._start = self._last_line_at = clock()
        self._since_line = 0
        live = self._settings.live
        self._bar: tqdm[Any] | None = None
        if live or (live is None and self._stream.isatty()):
            self._bar = tqdm(
                total=total,
                initial=done_before,
                desc=f"[{label}]",
                unit=unit,
                file=self._stream,
                dynamic_ncols=True,
                leave=True,
            )
            self._bar.set_postfix_str(self._postfix())
        else:
            self._write(self._line(final=False))

    @property
    def done(self) -> int:
        """Items done, those done before this run included."""
        return self._done

    @property
    def failed(self) -> int:
        """Items done that failed."""
        return self._failed

    @property
    def total(self) -> int:
        """Items in all."""
        return self._total

    def advance(self, n: int = 1, *, failed: int = 0) -> None:
        """Count ``n`` more items finished, ``failed`` of them failed.

        Raises:
            ValueError: ``n`` < 0, ``failed`` not in ``0..n``, or the total would be exceeded.
            RuntimeError: the progress is closed.
        """
        if n < 0 or not 0 <= failed <= n:
            raise ValueError(f"advance needs n >= 0 and 0 <= failed <= n, got {n=}, {failed=}")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"[{self._label}] progress is closed")
            if self._done + n > self._total:
                raise ValueError(
                    f"[{self._label}] {self._done} + {n} items done exceeds the total "
                    f"of {self._total}"
                )
            self._done += n
            self._failed += failed
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
                self._bar.update(n)
                return
            self._since_line += n
            now = self._clock()
            due_items = self._since_line >= self._settings.plain_every_items
            if due_items or now - self._last_line_at >= self._settings.plain_every_s:
                self._write(self._line(final=False, now=now))

    def note(self, message: str) -> None:
        """Show ``[label] message`` on a line of its own without breaking the bar."""
        text = f"[{self._label}] {message}"
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self._stream)
            else:
                self._stream.write(text + "\n")
                self._stream.flush()

    def close(self) -> None:
        """Write the final line (plain) or close the bar (live); later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
                self._bar.close()
            else:
                self._write(self._line(final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---- helpers (called with the lock held, or from __init__)

    def _spent(self) -> str | None:
        if self._spend is None:
            return None
        spend = self._spend()
        return "unknown" if spend is None else str(spend)

    def _postfix(self) -> str:
        spent = self._spent()
        fields = [f"failed {self._failed}"] + ([] if spent is None else [f"spent {spent}"])
        return _SEPARATOR.join(fields)

    def _line(self, *, final: bool, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        self._last_line_at, self._since_line = now, 0
        return progress_line(
            label=self._label,
            unit=self._unit,
            done=self._done,
            total=self._total,
            failed=self._failed,
            elapsed_s=now - self._start,
            done_in_run=self._done - self._done_before,
            spent=self._spent(),
            final=final,
        )

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()
