"""Concurrent episodes with awaitable ``reset`` and ``step``, batched across sessions.

Servers and agent loops play one episode per request handler or coroutine. A
:class:`SessionPool` holds what they share (the intents, one simulator, one core) and a
:class:`~userlm_env.batcher.CoreBatcher`; each :class:`Session` is one env's worth of episodes
(its own seed, intent choice, counters and ``info``), whose core calls join those of the other
sessions in one simulator call and one scoring call::

    pool = SessionPool("userlm_env/GSMSymbolic-v0", simulator="sharded")
    session = pool.open()
    observation, info = await session.reset(seed=0)
    observation, reward, terminated, truncated, info = await session.step("Which numbers?")
    session.close()
    pool.close()

A session behaves exactly like :class:`userlm_env.ConversationEnv` with the same settings:
the same seed (and ``intent_id``) gives the same episode, observations, rewards, ends and
``info``; only the moment the simulator runs differs. Threaded callers use
:meth:`Session.reset_blocking` and :meth:`Session.step_blocking`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from userlm_env.batcher import CoreBatcher
from userlm_env.core import Transition
from userlm_env.env import ConversationEnv, EnvParts, build_env_parts, env_settings
from userlm_env.errors import EpisodeStateError, UserLMEnvError
from userlm_env.protocols import Simulator
from userlm_env.tracker import EpisodeTracker
from userlm_env.types import ConversationState, Intent

__all__ = ["Session", "SessionClosedError", "SessionPool", "StepResult"]

#: What ``step`` returns, as for a Gymnasium env: observation, reward, terminated, truncated, info.
StepResult = tuple[Any, float, bool, bool, dict[str, Any]]
_T = TypeVar("_T")


class SessionPool:
    """Episodes of one env configuration played concurrently, their core calls batched.

    Args:
        env_id: A registered id (``"userlm_env/GSMSymbolic-v0"``...) whose settings (intent
            sources, ``max_replies``) are the defaults; ``None``: only ``env_kwargs``.
        simulator: A registered simulator name or a simulator object, as for the env.
        window_s: The longest a request waits for others to join its simulator call.
        max_batch: The most conversations in one simulator call.
        **env_kwargs: The env's other settings (:func:`userlm_env.env.build_env_parts`).
    """

    def __init__(
        self,
        env_id: str | None = None,
        simulator: str | Simulator = "userlm",
        *,
        window_s: float = 0.02,
        max_batch: int = 64,
        **env_kwargs: Any,
    ) -> None:
        settings = env_settings(env_id, **env_kwargs) if env_id is not None else env_kwargs
        self.env_id = env_id
        self.parts = build_env_parts(simulator, **settings)
        self._open = 0
        self._lock = threading.Lock()
        self.batcher = CoreBatcher(
            self.parts.core, window_s=window_s, max_batch=max_batch, callers=self.open_sessions
        )

    @property
    def intents(self) -> list[Intent]:
        """The intents episodes draw from."""
        return self.parts.intents

    def open_sessions(self) -> int:
        """How many sessions are open (the most requests that can be pending at once)."""
        return self._open

    def open(self) -> Session:
        """A new session (no episode running until its ``reset``)."""
        parts = self.parts
        env = ConversationEnv.from_parts(
            EnvParts(
                parts.intents,
                parts.simulator,
                parts.core,
                EpisodeTracker(parts.tracker.metrics),
                parts.observation_mode,
            )
        )
        with self._lock:
            self._open += 1
        return Session(self, env)

    def _closed_one(self) -> None:
        with self._lock:
            self._open -= 1

    def close(self) -> None:
        """Finish what is queued, stop the batcher and release the scorers."""
        self.batcher.close()
        self.parts.core.close()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Session:
    """One episode at a time of a :class:`SessionPool`, an env whose core calls are batched.

    Observations, rewards, ends and ``info`` are those of :class:`userlm_env.ConversationEnv`
    (see its docstring). One call at a time: a second ``reset`` or ``step`` while one is in
    flight raises :class:`EpisodeStateError`.
    """

    def __init__(self, pool: SessionPool, env: ConversationEnv) -> None:
        self.pool = pool
        self.env = env
        self._busy = False
        self._closed = False

    @property
    def state(self) -> ConversationState | None:
        """The current episode's state (``None`` before the first reset)."""
        return self.env.state

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode (``options={"intent_id": ...}`` picks the intent); returns the
        first observation and ``info``."""
        state, future = self._begin(lambda: self._start(seed, options))
        transition = await self._wait_async(future)
        return self.env.finish_reset(state, transition)

    async def step(self, reply: str) -> StepResult:
        """Score ``reply`` and return the next observation, reward, ends and ``info``."""
        _, future = self._begin(lambda: self._advance(reply))
        return self.env.finish_step(await self._wait_async(future))

    def reset_blocking(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """:meth:`reset` for threaded callers (blocks until the batch ran)."""
        state, future = self._begin(lambda: self._start(seed, options))
        return self.env.finish_reset(state, self._wait(future))

    def step_blocking(self, reply: str) -> StepResult:
        """:meth:`step` for threaded callers (blocks until the batch ran)."""
        _, future = self._begin(lambda: self._advance(reply))
        return self.env.finish_step(self._wait(future))

    def close(self) -> None:
        """Leave the pool (the pool keeps serving its other sessions)."""
        if not self._closed:
            self._closed = True
            self.pool._closed_one()

    # ------------------------------------------------------------------ internals
    def _start(
        self, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[ConversationState, Future[Transition]]:
        state = self.env.prepare_reset(seed=seed, options=options)
        return state, self.pool.batcher.start(state)

    def _advance(self, reply: str) -> tuple[ConversationState, Future[Transition]]:
        state = self.env.prepare_step(reply)
        return state, self.pool.batcher.advance(state, reply)

    def _begin(
        self, submit: Callable[[], tuple[ConversationState, Future[Transition]]]
    ) -> tuple[ConversationState, Future[Transition]]:
        if self._closed:
            raise SessionClosedError("this session is closed; open a new one from the pool")
        if self._busy:
            raise EpisodeStateError("a reset or step of this session is already in flight")
        self._busy = True
        try:
            return submit()
        except BaseException:
            self._busy = False
            raise

    async def _wait_async(self, future: Future[_T]) -> _T:
        try:
            return await asyncio.wrap_future(future)
        finally:
            self._busy = False

    def _wait(self, future: Future[_T]) -> _T:
        try:
            return future.result()
        finally:
            self._busy = False


class SessionClosedError(UserLMEnvError, RuntimeError):
    """``reset`` or ``step`` on a closed session."""
