"""``CoreBatcher``: one batched core call for the requests of many concurrent callers.

The vector env steps N conversations in lock-step, so each step is one simulator call and one
scoring call per task. Servers and agent loops (OpenEnv sessions, verifiers, verl) instead call
the env one episode at a time, concurrently. The batcher gives them the vector env's batching
without its lock-step: each request (start a state, or advance it by a reply) is queued; a worker
thread takes the first one, gathers those that arrive within ``window_s`` (at most
``max_batch``, and no longer once every caller that could send one has), and makes one
:meth:`ConversationCore.start` and one :meth:`ConversationCore.advance` call for them.

Callers get a :class:`concurrent.futures.Future` per request, so the batcher serves threads
(``future.result()``) and any asyncio loop (``await asyncio.wrap_future(future)``) alike, and
only the worker thread ever touches the core, the simulator and the scorers.

Failures stay with their request: a reply that fails validation fails only its own future; a
simulator or scorer failure fails the requests of that one batch call (the core rolls their
states back, so each may be retried), and the worker goes on serving.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from userlm_env.core import ConversationCore, Transition
from userlm_env.errors import EpisodeStateError, UserLMEnvError
from userlm_env.types import ConversationState

__all__ = ["BatchStats", "BatcherClosedError", "CoreBatcher"]


class BatcherClosedError(UserLMEnvError, RuntimeError):
    """A request was made to, or left pending in, a closed batcher."""


@dataclass
class BatchStats:
    """What the batcher did: core calls made and the requests they served."""

    start_calls: int = 0
    advance_calls: int = 0
    requests: int = 0
    largest_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Request:
    state: ConversationState
    reply: str | None  # None: start the state
    future: Future[Transition]


_STOP = object()


class CoreBatcher:
    """Gathers start and advance requests from concurrent callers into batched core calls.

    Args:
        core: The core all requests go through; only the batcher's worker thread calls it.
        window_s: The longest a request waits for others to join its batch.
        max_batch: The most requests in one batch.
        callers: How many requests could be pending at most (e.g. the number of open
            sessions); a batch is sent as soon as it holds that many. ``None``: always wait
            out the window (or fill ``max_batch``).
    """

    def __init__(
        self,
        core: ConversationCore,
        *,
        window_s: float = 0.02,
        max_batch: int = 64,
        callers: Callable[[], int] | None = None,
    ) -> None:
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.core = core
        self.window_s = window_s
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._callers = callers
        self._queue: queue.Queue[_Request | object] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._serve, name="userlm-env-batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ requests
    def start(self, state: ConversationState) -> Future[Transition]:
        """Queue the start of a fresh ``state``; its future holds the start's transition."""
        return self._submit(_Request(state, None, Future()))

    def advance(self, state: ConversationState, reply: str) -> Future[Transition]:
        """Queue ``reply`` to ``state``'s latest user turn; its future holds the transition.

        Raises (at once, nothing queued): ``TypeError`` or :class:`ReplyTooLongError` for a bad
        reply, :class:`EpisodeStateError` for a state that is not running.
        """
        self.core.validate(state, reply)
        return self._submit(_Request(state, reply, Future()))

    def close(self) -> None:
        """Serve what is queued, then stop the worker; later requests raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join()

    # ------------------------------------------------------------------ worker
    def _submit(self, request: _Request) -> Future[Transition]:
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the batcher is closed")
            self._queue.put(request)
        return request.future

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stopping = self._gather(first)
            self._run([r for r in batch if r.reply is None], starting=True)
            self._run([r for r in batch if r.reply is not None], starting=False)
        self._fail_queued()

    def _gather(self, first: _Request | object) -> tuple[list[_Request], bool]:
        """``first`` and the requests that join it within the window; whether to stop after."""
        assert isinstance(first, _Request)
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self._limit():
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(remaining, 1e-6))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Request)
            batch.append(item)
        return batch, False

    def _limit(self) -> int:
        callers = self._callers() if self._callers is not None else self.max_batch
        return max(1, min(self.max_batch, callers))

    def _run(self, requests: Sequence[_Request], *, starting: bool) -> None:
        requests = self._unique_running(requests)
        if not requests:
            return
        states = [r.state for r in requests]
        try:
            if starting:
                transitions = self.core.start(states)
            else:
                transitions = self.core.advance(states, [r.reply or "" for r in requests])
        except BaseException as error:
            for request in requests:
                request.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        self._count(len(requests), starting=starting)
        for request, transition in zip(requests, transitions, strict=True):
            request.future.set_result(transition)

    def _unique_running(self, requests: Sequence[_Request]) -> list[_Request]:
        """The requests that can run together; the others fail on their own."""
        kept: list[_Request] = []
        seen: set[int] = set()
        for request in requests:
            if not request.future.set_running_or_notify_cancel():
                continue  # cancelled by its caller
            if id(request.state) in seen:
                request.future.set_exception(
                    EpisodeStateError("two requests for one conversation in flight at once")
                )
                continue
            if request.reply is not None:
                try:
                    self.core.validate(request.state, request.reply)
                except Exception as error:  # the state changed since it was queued
                    request.future.set_exception(error)
                    continue
            seen.add(id(request.state))
            kept.append(request)
        return kept

    def _count(self, size: int, *, starting: bool) -> None:
        stats = self.stats
        if starting:
            stats.start_calls += 1
        else:
            stats.advance_calls += 1
        stats.requests += size
        stats.largest_batch = max(stats.largest_batch, size)
        stats.batch_sizes.append(size)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherClosedError("the batcher closed"))
