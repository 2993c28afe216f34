"""ConversationEnv: the Gymnasium API, episode ends, info, seeding and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import userlm_env
from assistants.scripted import OracleAssistant, ScriptedAssistant, WrongAssistant
from userlm_env import END_MARKER, ConversationEnv
from userlm_env.errors import EpisodeStateError, ReplyTooLongError, UnknownNameError
from userlm_env.observation import OBSERVATION_MODES
from userlm_env.types import ConversationState, Intent, UserTurn


def _env(intents: list[Intent], **kwargs: object) -> ConversationEnv:
    return ConversationEnv(simulator="sharded", intents=intents, **kwargs)


def _reply(assistant: ScriptedAssistant, info: dict[str, Any]) -> str:
    """What a scripted assistant says to the conversation of ``info``."""
    return assistant.respond([info["messages"]], intent_ids=[info["intent_id"]])[0].text


@pytest.mark.parametrize("mode", OBSERVATION_MODES)
@pytest.mark.parametrize("env_id", sorted(userlm_env.ENV_IDS))
def test_check_env_passes_on_every_registered_id(env_id: str, mode: str, gsm8k_path: Path) -> None:
    kwargs: dict[str, object] = {"simulator": "sharded", "observation_mode": mode}
    if env_id == "userlm_env/GSM8k-v0":
        kwargs["data_path"] = str(gsm8k_path)
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_conversation_mode_observes_every_message_and_never_the_intent(
    apples_intent: Intent,
) -> None:
    env = _env([apples_intent], observation_mode="conversation")
    obs, _info = env.reset(seed=0)
    assert obs == ({"role": "user", "content": apples_intent.shards[0].text},)
    assert env.observation_space.contains(obs)
    obs, *_ = env.step("What else?")
    assert [m["role"] for m in obs] == ["user", "assistant", "user"]
    assert obs[1]["content"] == "What else?" and env.observation_space.contains(obs)
    shown = repr(obs)
    assert apples_intent.instruction not in shown and "15" not in shown


def test_unknown_observation_mode_is_a_clear_error(apples_intent: Intent) -> None:
    with pytest.raises(ValueError, match="observation_mode must be one of"):
        _env([apples_intent], observation_mode="pixels")


def test_conversation_mode_works_in_async_vector_env() -> None:
    def make() -> gym.Env:
        return gym.make(
            "userlm_env/HumanEval-v0", simulator="sharded", observation_mode="conversation"
        )

    envs = gym.vector.AsyncVectorEnv([make, make], shared_memory=False)
    try:
        observations, _infos = envs.reset(seed=3)
        assert len(observations) == 2 and all(o[0]["role"] == "user" for o in observations)
        observations, *_ = envs.step(["Tell me more.", "Tell me more."])
        assert all([m["role"] for m in o] == ["user", "assistant", "user"] for o in observations)
    finally:
        envs.close()


def test_oracle_solves_through_step(apples_intent: Intent) -> None:
    env = _env([apples_intent])
    oracle = OracleAssistant(env.intents)
    obs, info = env.reset(seed=0)
    assert obs == apples_intent.shards[0].text
    assert info["revealed_shards"] == [1] and info["coverage"] == pytest.approx(1 / 5)
    assert info["messages"] == [{"role": "user", "content": obs}]
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(_reply(oracle, info))
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            break
    assert (terminated, truncated, total) == (True, False, 1.0)
    assert info["termination_reason"] == "solved" and info["solved"] and info["attempted"]
    assert obs == END_MARKER
    assert steps == 4  # asked 3 times while shards 2-4 were missing, then answered


def test_wrong_answer_never_rewarded_and_user_ends(apples_intent: Intent) -> None:
    env = _env([apples_intent], max_replies=20)
    wrong = WrongAssistant(env.intents)
    _, info = env.reset(seed=0)
    rewards, done = [], False
    while not done:
        _, reward, terminated, truncated, info = env.step(_reply(wrong, info))
        rewards.append(reward)
        done = terminated or truncated
    assert set(rewards) == {0.0}
    assert info["termination_reason"] == "user_ended" and info["user_ended"]
    assert info["coverage"] == 1.0 and info["user_turns"] == 5  # 5 shards; the end is no turn
    assert info["pace"]["user_turn"] == 5 and info["replies"] == 5


def test_truncates_at_max_replies(apples_intent: Intent) -> None:
    env = _env([apples_intent], max_replies=2)
    env.reset(seed=0)
    assert env.step("hm?")[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step("hm?")
    assert (terminated, truncated, info["termination_reason"]) == (False, True, "max_replies")


def test_bad_input_raises_typed_errors_and_keeps_env_usable(apples_intent: Intent) -> None:
    env = _env([apples_intent], max_reply_chars=100)
    with pytest.raises(EpisodeStateError, match="reset"):
        env.step("hello")
    env.reset(seed=0)
    for bad in (None, 42, b"bytes", ["a"]):
        with pytest.raises(TypeError):
            env.step(bad)  # type: ignore[arg-type]
    with pytest.raises(ReplyTooLongError):
        env.step("x" * 101)
    assert env.state is not None and len(env.state.messages) == 1  # nothing recorded
    obs, reward, terminated, _, info = env.step("")  # empty: valid, attempts nothing
    assert (reward, terminated, info["attempted"]) == (0.0, False, False)
    assert obs == apples_intent.shards[1].text
    env.step("The answer is 15.")
    with pytest.raises(EpisodeStateError, match="ended"):
        env.step("again")
    assert env.reset(seed=1)[0] == apples_intent.shards[0].text


def test_reset_picks_intent_by_id_and_rejects_unknown(apples_intent: Intent) -> None:
    other = Intent("gsm8k", "toy/other", "x", apples_intent.shards, {"answer": "1"})
    env = _env([apples_intent, other])
    assert env.reset(options={"intent_id": "toy/other"})[1]["intent_id"] == "toy/other"
    with pytest.raises(UnknownNameError, match="toy/missing"):
        env.reset(options={"intent_id": "toy/missing"})
    assert env.unwrapped.intents == [apples_intent, other]


def test_same_seed_same_intent_and_conversation() -> None:
    def run(seed: int) -> list[dict[str, str]]:
        env = gym.make("userlm_env/HumanEval-v0", simulator="sharded")
        env.reset(seed=seed)
        for _ in range(3):
            *_, info = env.step("Which edge cases matter?")
        return info["messages"]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_unicode_turns_and_replies_are_members_of_the_spaces(apples_intent: Intent) -> None:
    env = _env([apples_intent])
    assert env.action_space.contains("héllo, 25%? ✓") and env.observation_space.contains("ü")
    assert not env.action_space.contains(3)
    env.reset(seed=0)
    env.step("Très bien — et ensuite ? 🙂")


class _FlakySimulator:
    """Fails on demand: a fault a real simulator cannot produce at will."""

    def __init__(self) -> None:
        self.fail = False

    def respond(self, states: list[ConversationState]) -> list[UserTurn]:
        if self.fail:
            raise ConnectionError("simulator backend down")
        return [UserTurn(f"turn {len(s.user_turns) + 1} please", shard_ids=()) for s in states]


def test_failed_simulator_call_rolls_the_step_back(apples_intent: Intent) -> None:
    simulator = _FlakySimulator()
    env = ConversationEnv(simulator=simulator, intents=[apples_intent])
    env.reset(seed=0)
    simulator.fail = True
    with pytest.raises(ConnectionError):
        env.step("first reply")
    assert env.state is not None and len(env.state.messages) == 1 and not env.state.scores
    simulator.fail = False
    obs, *_, info = env.step("first reply")
    assert obs == "turn 2 please" and len(info["messages"]) == 3


def test_render_ansi_shows_the_transcript(apples_intent: Intent) -> None:
    env = _env([apples_intent], render_mode="ansi")
    env.reset(seed=0)
    env.step("What else?")
    text = env.render()
    assert (
        text is not None and "[user] How many apples" in text and "[assistant] What else?" in text
    )
