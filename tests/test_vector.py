"""The batched vector env: one simulator call per step, same-step autoreset, per-env seeds."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import userlm_env  # noqa: F401  (registers the ids)
from assistants.scripted import OracleAssistant
from simulators.sharded import ShardedSimulator
from userlm_env.errors import EpisodeStateError, UnknownNameError
from userlm_env.types import ConversationState, Intent, UserTurn
from userlm_env.vector import ConversationVectorEnv


class _CountingSimulator(ShardedSimulator):
    """The rule-based simulator, counting its (batched) calls."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        self.batch_sizes.append(len(states))
        return super().respond(states)


def test_make_vec_builds_it_with_declared_autoreset_mode() -> None:
    envs = gym.make_vec(
        "userlm_env/HumanEval-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        simulator="sharded",
    )
    assert isinstance(envs.unwrapped, ConversationVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    observations, infos = envs.reset(seed=0)
    assert len(observations) == 3 and all(isinstance(o, str) and o for o in observations)
    assert infos["intent_id"].shape == (3,)
    envs.close()


def test_one_simulator_call_per_step_for_all_envs(apples_intent: Intent) -> None:
    simulator = _CountingSimulator()
    envs = ConversationVectorEnv(4, simulator=simulator, intents=[apples_intent])
    envs.reset(seed=0)
    envs.step(["what else?"] * 4)
    assert simulator.batch_sizes == [4, 4]


def test_same_step_autoreset_keeps_every_reply(apples_intent: Intent) -> None:
    envs = ConversationVectorEnv(2, simulator="sharded", intents=[apples_intent])
    envs.reset(seed=0)
    oracle = OracleAssistant(envs.intents)
    observations, infos = envs.reset(seed=0)
    chats = [[{"role": "user", "content": o}] for o in observations]
    solved = 0
    for _ in range(4):
        replies = [r.text for r in oracle.respond(chats, intent_ids=list(infos["intent_id"]))]
        observations, rewards, terminated, truncated, infos = envs.step(replies)
        for chat, reply, obs in zip(chats, replies, observations, strict=True):
            chat += [{"role": "assistant", "content": reply}, {"role": "user", "content": obs}]
        solved += int(rewards.sum())
    assert solved == 2 and terminated.all() and not truncated.any()
    assert list(infos["final_obs"]) == ["<|endconversation|>"] * 2
    assert infos["final_info"]["termination_reason"].tolist() == ["solved", "solved"]
    assert observations == (apples_intent.shards[0].text,) * 2  # new episodes began
    assert all(s is not None and len(s.user_turns) == 1 for s in envs.states)


def test_disabled_autoreset_refuses_to_step_an_ended_episode(apples_intent: Intent) -> None:
    envs = ConversationVectorEnv(
        2,
        simulator="sharded",
        intents=[apples_intent],
        max_replies=1,
        autoreset_mode=AutoresetMode.DISABLED,
    )
    envs.reset(seed=0)
    _, _, _, truncated, _ = envs.step(["?", "?"])
    assert truncated.all()
    with pytest.raises(EpisodeStateError):
        envs.step(["?", "?"])
    envs.reset(options={"reset_mask": np.array([True, True])})
    envs.step(["?", "?"])


def test_disabled_autoreset_steps_only_the_running_conversations(apples_intent: Intent) -> None:
    simulator = _CountingSimulator()
    envs = ConversationVectorEnv(
        3, simulator=simulator, intents=[apples_intent], autoreset_mode=AutoresetMode.DISABLED
    )
    envs.reset(seed=0)
    _, rewards, terminated, _, _ = envs.step(["15", "?", "?"])  # the first one solves it
    assert terminated.tolist() == [True, False, False] and rewards[0] == 1.0
    _, rewards, terminated, _, infos = envs.step([None, "?", "15"])
    assert rewards.tolist() == [0.0, 0.0, 1.0]
    assert terminated.tolist() == [True, False, True]  # the first end is repeated
    assert infos["_replies"].tolist() == [False, True, True]  # no info for the idle one
    assert simulator.batch_sizes[-1] == 1  # only the conversation still running was asked
    with pytest.raises(EpisodeStateError, match="needs a reply"):
        envs.step([None, None, None])
    with pytest.raises(EpisodeStateError, match="already ended"):
        envs.step(["?", "?", None])


def test_intent_ids_pick_each_conversations_intent() -> None:
    envs = ConversationVectorEnv(3, simulator="sharded", sources=("humaneval",))
    _, infos = envs.reset(seed=0, options={"intent_ids": ["HumanEval/5", None, "HumanEval/5"]})
    assert infos["intent_id"][0] == infos["intent_id"][2] == "HumanEval/5"
    with pytest.raises(UnknownNameError, match="HumanEval/999"):
        envs.reset(options={"intent_ids": ["HumanEval/999", None, None]})
    with pytest.raises(ValueError, match="3 intent ids"):
        envs.reset(options={"intent_ids": ["HumanEval/5"]})


def test_next_step_mode_is_refused(apples_intent: Intent) -> None:
    with pytest.raises(ValueError, match="drop a reply"):
        ConversationVectorEnv(
            1, simulator="sharded", intents=[apples_intent], autoreset_mode="NextStep"
        )


def test_settings_reach_the_core_and_unknown_ones_are_refused(apples_intent: Intent) -> None:
    envs = ConversationVectorEnv(
        2, simulator="sharded", intents=[apples_intent], max_replies=3, max_reply_chars=50
    )
    assert (envs.core.max_replies, envs.core.max_reply_chars) == (3, 50)
    assert envs.single_action_space.max_length == 50
    with pytest.raises(TypeError, match="max_turn"):
        ConversationVectorEnv(2, simulator="sharded", intents=[apples_intent], max_turn=3)
    with pytest.raises(ValueError, match="at least one intent"):
        ConversationVectorEnv(2, simulator="sharded", intents=[])


def test_per_env_seeds_reproduce_intents() -> None:
    def intents(seed: int) -> list[str]:
        envs = ConversationVectorEnv(4, simulator="sharded", sources=("humaneval",))
        _, infos = envs.reset(seed=seed)
        return list(infos["intent_id"])

    assert intents(3) == intents(3)
    assert intents(3) != intents(4)


def test_wrong_number_of_actions_is_rejected(apples_intent: Intent) -> None:
    envs = ConversationVectorEnv(2, simulator="sharded", intents=[apples_intent])
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="expected 2"):
        envs.step(["only one"])
