"""The async session API: concurrent episodes equal to single envs, batched into shared calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import pytest

import userlm_env  # noqa: F401  (registers the ids)
from simulators.sharded import ShardedSimulator
from userlm_env.batcher import BatcherClosedError
from userlm_env.errors import EpisodeStateError, ReplyTooLongError, UnknownNameError
from userlm_env.sessions import SessionClosedError, SessionPool
from userlm_env.types import ConversationState, UserTurn

ENV_ID = "userlm_env/GSMSymbolic-v0"
SOURCES = ({"name": "gsm_symbolic", "n": 6, "seed": 3},)
REPLIES = ("Could you say more?", "What else should I know?", "Anything else?", "Go on.")


class _CountingSimulator(ShardedSimulator):
    """The rule-based user, recording the size of each call; it can be told to fail once."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []
        self.fail_next = False

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated simulator outage")
        self.batch_sizes.append(len(states))
        return super().respond(states)


def _pool(simulator: Any = "sharded", **settings: Any) -> SessionPool:
    return SessionPool(ENV_ID, simulator, sources=SOURCES, max_replies=4, **settings)


def _play_env(seed: int, intent_id: str | None) -> list[tuple[Any, ...]]:
    env = gym.make(ENV_ID, simulator="sharded", sources=SOURCES, max_replies=4)
    options = {"intent_id": intent_id} if intent_id else None
    observation, info = env.reset(seed=seed, options=options)
    played: list[tuple[Any, ...]] = [(observation, info["intent_id"])]
    for reply in REPLIES:
        observation, reward, terminated, truncated, info = env.step(reply)
        played.append((observation, reward, terminated, truncated, info["termination_reason"]))
        if terminated or truncated:
            break
    env.close()
    return played


async def _play_session(pool: SessionPool, seed: int, intent_id: str | None) -> list[Any]:
    session = pool.open()
    options = {"intent_id": intent_id} if intent_id else None
    observation, info = await session.reset(seed=seed, options=options)
    played: list[tuple[Any, ...]] = [(observation, info["intent_id"])]
    for reply in REPLIES:
        observation, reward, terminated, truncated, info = await session.step(reply)
        played.append((observation, reward, terminated, truncated, info["termination_reason"]))
        if terminated or truncated:
            break
    session.close()
    return played


def test_concurrent_sessions_play_the_episodes_of_single_envs_with_one_call_per_round() -> None:
    simulator = _CountingSimulator()
    plan = [(0, None), (1, None), (7, "gsm_symbolic/3-2"), (7, None)]
    with _pool(simulator) as pool:

        async def play_all() -> list[list[Any]]:
            return await asyncio.gather(*(_play_session(pool, s, i) for s, i in plan))

        played = asyncio.run(play_all())
        assert played == [_play_env(seed, intent_id) for seed, intent_id in plan]
        assert played[2][0][1] == "gsm_symbolic/3-2"
        # Every round of the four episodes was one simulator call for all of them.
        assert simulator.batch_sizes[0] == 4
        assert pool.batcher.stats.largest_batch == 4
        assert pool.batcher.stats.start_calls == 1


def test_a_bad_reply_fails_only_its_own_session() -> None:
    with _pool(max_reply_chars=50) as pool:
        good, bad = pool.open(), pool.open()

        async def scenario() -> tuple[Any, ...]:
            await asyncio.gather(good.reset(seed=0), bad.reset(seed=1))
            results = await asyncio.gather(
                good.step("What do you need?"), bad.step("x" * 51), return_exceptions=True
            )
            wrong_type = await asyncio.gather(bad.step(42), return_exceptions=True)  # type: ignore[arg-type]
            retried = await bad.step("Fine, tell me more.")
            return (*results, *wrong_type, retried)

        stepped, too_long, wrong_type, retried = asyncio.run(scenario())
        assert isinstance(too_long, ReplyTooLongError)
        assert isinstance(wrong_type, TypeError)
        assert isinstance(stepped, tuple)
        assert stepped[4]["replies"] == 1
        assert retried[4]["replies"] == 1  # the rejected replies changed nothing


def test_step_before_reset_after_the_end_and_twice_at_once_are_state_errors() -> None:
    with _pool() as pool:
        session = pool.open()
        with pytest.raises(EpisodeStateError, match="before reset"):
            session.step_blocking("hello")
        session.reset_blocking(seed=0)

        async def twice() -> list[Any]:
            return await asyncio.gather(
                session.step("First."), session.step("Second."), return_exceptions=True
            )

        first, second = asyncio.run(twice())
        assert isinstance(first, tuple)
        assert isinstance(second, EpisodeStateError)
        done = False
        while not done:
            _, _, terminated, truncated, _ = session.step_blocking("More, please.")
            done = terminated or truncated
        with pytest.raises(EpisodeStateError, match="already ended"):
            session.step_blocking("Still there?")


def test_a_simulator_failure_reaches_each_caller_and_the_step_can_be_retried() -> None:
    simulator = _CountingSimulator()
    with _pool(simulator) as pool:
        sessions = [pool.open(), pool.open()]
        for seed, session in enumerate(sessions):
            session.reset_blocking(seed=seed)
        simulator.fail_next = True

        async def step_all() -> list[Any]:
            return await asyncio.gather(
                *(s.step("Tell me more.") for s in sessions), return_exceptions=True
            )

        failed = asyncio.run(step_all())
        assert all(isinstance(f, RuntimeError) and "outage" in str(f) for f in failed)
        retried = asyncio.run(step_all())
        assert [r[4]["replies"] for r in retried] == [1, 1]


def test_threads_use_the_blocking_api_and_are_batched_too() -> None:
    simulator = _CountingSimulator()
    with _pool(simulator, window_s=5.0) as pool:
        sessions = [pool.open() for _ in range(3)]
        barrier = threading.Barrier(3)
        infos: list[dict[str, Any]] = [{} for _ in sessions]

        def run(index: int) -> None:
            barrier.wait()
            _, infos[index] = sessions[index].reset_blocking(seed=index)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # The long window did not delay them: the batch left once all 3 open sessions asked.
        assert simulator.batch_sizes == [3]
        assert [info["user_turns"] for info in infos] == [1, 1, 1]


def test_max_batch_one_serves_each_request_alone() -> None:
    simulator = _CountingSimulator()
    with _pool(simulator, max_batch=1) as pool:

        async def play_all() -> list[list[Any]]:
            return await asyncio.gather(*(_play_session(pool, s, None) for s in range(3)))

        asyncio.run(play_all())
        assert set(simulator.batch_sizes) == {1}


def test_unknown_intent_closed_session_and_closed_pool_raise_typed_errors() -> None:
    pool = _pool()
    session = pool.open()
    with pytest.raises(UnknownNameError, match="no-such-intent"):
        session.reset_blocking(options={"intent_id": "no-such-intent"})
    observation, _ = session.reset_blocking(seed=0)  # still usable
    assert observation
    session.close()
    with pytest.raises(SessionClosedError):
        session.reset_blocking(seed=0)
    other = pool.open()
    pool.close()
    with pytest.raises(BatcherClosedError):
        other.reset_blocking(seed=0)


def test_pool_refuses_an_unknown_env_id() -> None:
    with pytest.raises(UnknownNameError, match="userlm_env/Nope-v0"):
        SessionPool("userlm_env/Nope-v0", "sharded")
