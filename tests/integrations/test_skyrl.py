"""SkyRL-gym adapter, driven the way SkyRL's trainer drives its envs.

skyrl-train (which holds the generator) needs Python 3.12 and GPUs, so these tests replay the
call sequence of its ``SkyRLGymGenerator.agent_loop`` instead: for each dataset row,
``skyrl_gym.make(row["env_class"], env_config=..., extras=<the row's other columns> +
{"max_turns": generator.max_turns})``, then ``env.init(prompt)``, ``env.step(reply)`` until
``done``, ``env.get_metrics()`` and ``env.close()``; every trajectory is an asyncio task, and
``init``/``step``/``close`` run in a thread pool when ``max_env_workers > 0`` (inline when 0).
A scripted policy stands in for the LLM; the simulator is the rule-based ``sharded`` user.
"""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import gymnasium as gym
import pytest
import skyrl_gym

import userlm_env
from userlm_env.errors import EpisodeStateError, ReplyTooLongError, UnknownNameError
from userlm_env.integrations import skyrl as adapter
from userlm_env.integrations.skyrl import (
    SkyRLSettingsError,
    UserLMTextEnv,
    close_skyrl_pools,
    main,
    register_skyrl_envs,
    skyrl_rows,
)

from .episodes_helpers import ENV_ID, MAX_REPLIES, STYLES, Episode, gym_episode, policy


@pytest.fixture(autouse=True)
def _registered() -> Any:
    register_skyrl_envs(simulator="sharded", max_replies=MAX_REPLIES)
    yield
    close_skyrl_pools()


@pytest.fixture(scope="module")
def answers() -> dict[str, str]:
    env = gym.make(ENV_ID, simulator="sharded")
    return {i.intent_id: i.reference["answer"] for i in env.unwrapped.intents}


@dataclass
class Trajectory:
    chat: list[dict[str, Any]]
    episode: Episode
    metrics: dict[str, float]
    metadata: list[dict[str, Any]]


async def skyrl_trajectory(
    row: dict[str, Any], style: str, answer: str, executor: ThreadPoolExecutor | None
) -> Trajectory:
    """One trajectory, with the env calls SkyRL's generator makes, in its order."""
    loop = asyncio.get_running_loop()

    async def call(func: Any, *args: Any) -> Any:  # SkyRL's _run_in_executor_if_available
        if executor is None:
            return func(*args)
        return await loop.run_in_executor(executor, func, *args)

    extras = {k: v for k, v in row.items() if k not in ("prompt", "env_class")}
    extras["max_turns"] = 1  # SkyRL's default generator.max_turns: the env keeps its own budget
    env = skyrl_gym.make(row["env_class"], env_config={}, extras=extras)
    chat, metadata = await call(env.init, copy.deepcopy(row["prompt"]))
    episode = Episode([chat[-1]["content"]], [], [], None, 0.0)
    metas = [metadata]
    done, k = False, 0
    while not done:
        reply = policy(style, k, answer)
        k += 1
        output = await call(env.step, reply)
        done = output["done"]
        chat = [*chat, {"role": "assistant", "content": reply}, *output["observations"]]
        episode.rewards.append(output["reward"])
        episode.dones.append(done)
        episode.user_turns.extend(m["content"] for m in output["observations"])
        metas.append(output["metadata"])
    metrics = env.get_metrics()
    await call(env.close)
    episode.termination_reason = metas[-1]["termination_reason"]
    episode.coverage = metas[-1]["coverage"]
    return Trajectory(chat, episode, metrics, metas)


async def generate(
    rows: list[dict[str, Any]], answers: dict[str, str], max_env_workers: int
) -> list[Trajectory]:
    """SkyRL's ``generate``: every trajectory as a concurrent task."""
    executor = ThreadPoolExecutor(max_env_workers) if max_env_workers > 0 else None
    try:
        return await asyncio.gather(
            *(
                skyrl_trajectory(
                    row, STYLES[i % 3], answers[row["extra_info"]["intent_id"]], executor
                )
                for i, row in enumerate(rows)
            )
        )
    finally:
        if executor is not None:
            executor.shutdown()


@pytest.mark.parametrize("max_env_workers", [3, 0])
def test_generator_episodes_equal_the_gym_env(
    max_env_workers: int, answers: dict[str, str]
) -> None:
    rows = skyrl_rows(ENV_ID, rows=3, seed=7, system_prompt="Be brief.")
    trajectories = asyncio.run(generate(rows, answers, max_env_workers))

    for i, (row, trajectory) in enumerate(zip(rows, trajectories, strict=True)):
        intent_id, seed = row["extra_info"]["intent_id"], row["extra_info"]["seed"]
        expected = gym_episode(intent_id, seed, STYLES[i], answers[intent_id])
        assert trajectory.episode == expected
        assert trajectory.chat[0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in trajectory.chat[1:]] == ["user", "assistant"] * len(
            expected.rewards
        )
        assert {m["intent_id"] for m in trajectory.metadata} == {intent_id}
        assert trajectory.metadata[0]["termination_reason"] is None
        metrics = trajectory.metrics
        assert metrics["return"] == sum(expected.rewards)
        assert metrics["replies"] == len(expected.rewards)
        assert metrics["coverage"] == expected.coverage
        assert metrics[f"termination/{expected.termination_reason}"] == 1.0
        assert metrics["ended"] == 1.0
        assert "episode/intent_coverage" in metrics

    reasons = [t.episode.termination_reason for t in trajectories]
    assert reasons == ["solved", "max_replies", "max_replies"]
    assert [t.episode.rewards[-1] for t in trajectories] == [1.0, 0.0, 0.0]
    assert len(trajectories[1].episode.rewards) == MAX_REPLIES  # the env's budget, not max_turns
    summary = UserLMTextEnv.aggregate_metrics([t.metrics for t in trajectories])
    assert summary["termination/solved"] == pytest.approx(1 / 3)


def test_concurrent_trajectories_share_one_pool_and_batch(answers: dict[str, str]) -> None:
    rows = skyrl_rows(ENV_ID, rows=3, seed=0)
    asyncio.run(generate(rows, answers, max_env_workers=3))

    (pool,) = adapter._POOLS.values()
    steps = 0
    for i, row in enumerate(rows):
        intent_id, seed = row["extra_info"]["intent_id"], row["extra_info"]["seed"]
        steps += len(gym_episode(intent_id, seed, STYLES[i], answers[intent_id]).rewards)
    assert pool.batcher.stats.requests == len(rows) + steps  # every reset and step went through it
    assert pool.batcher.stats.largest_batch >= 2  # threads stepping together shared a call
    assert pool.open_sessions() == 0  # close() left the pool


def test_registration_is_idempotent_and_carries_settings() -> None:
    assert register_skyrl_envs(simulator="sharded", max_replies=2) == tuple(userlm_env.ENV_IDS)
    spec = skyrl_gym.spec(ENV_ID)
    assert spec.kwargs["max_replies"] == 2 and spec.kwargs["env_id"] == ENV_ID
    env = skyrl_gym.make(ENV_ID, env_config={}, extras={})
    assert isinstance(env, UserLMTextEnv) and env.max_turns == 2
    # The trainer's per-env config section overrides the registered settings.
    override = skyrl_gym.make(ENV_ID, env_config={"max_replies": 3}, extras={})
    assert override.max_turns == 3
    with pytest.raises(SkyRLSettingsError):
        register_skyrl_envs(simulator="sharded", matcher=object())


def test_row_choice_and_misuse_raise_typed_errors() -> None:
    env = skyrl_gym.make(ENV_ID, env_config={}, extras={"extra_info": {"intent_id": "nope"}})
    with pytest.raises(EpisodeStateError):
        env.step("hello")
    with pytest.raises(SkyRLSettingsError, match="only system messages"):
        env.init([{"role": "user", "content": "I am not the simulator"}])
    with pytest.raises(UnknownNameError):
        env.init([])
    seeded = skyrl_gym.make(ENV_ID, env_config={}, extras={"extra_info": {"seed": "7"}})
    with pytest.raises(SkyRLSettingsError, match="integer"):
        seeded.init([])
    # Without a row choice the intent is drawn; a too-long reply fails only that step.
    free = skyrl_gym.make(ENV_ID, env_config={}, extras={})
    chat, metadata = free.init([])
    assert chat[0]["role"] == "user" and metadata["intent_id"].startswith("gsm_symbolic/")
    with pytest.raises(ReplyTooLongError):
        free.step("x" * 40_000)
    assert free.step("Please go on.")["done"] is False
    free.close()
    free.close()


def test_rows_round_trip_through_parquet(tmp_path: Path) -> None:
    rows = skyrl_rows(ENV_ID, rows=105, seed=3)
    assert rows[0]["extra_info"] == {"index": 0, "intent_id": "gsm_symbolic/0-0", "seed": 3}
    assert rows[100]["extra_info"]["intent_id"] == "gsm_symbolic/0-0"  # 100 intents, cycled
    assert len(skyrl_rows(ENV_ID)) == 100
    path = tmp_path / "train.parquet"
    main(["--env-id", ENV_ID, "--rows", "105", "--seed", "3", "--output", str(path)])
    loaded = datasets.load_dataset("parquet", data_files=str(path))["train"]
    assert loaded.to_list() == rows  # what SkyRL's PromptDataset reads back
    with pytest.raises(ValueError, match="rows"):
        skyrl_rows(ENV_ID, rows=0)
