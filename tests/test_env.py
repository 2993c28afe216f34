"""ConversationEnv: the Gymnasium API, episode ends, info, seeding and bad input."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import userlm_env
from assistants.scripted import OracleAssistant, WrongAssistant
from userlm_env import END_MARKER, ConversationEnv
from userlm_env.errors import EpisodeStateError, ReplyTooLongError, UnknownNameError
from userlm_env.types import ConversationState, Intent, UserTurn


def _env(intents: list[Intent], **kwargs: object) -> ConversationEnv:
    return ConversationEnv(simulator="sharded", intents=intents, **kwargs)


def _oracle_reply(env: ConversationEnv) -> str:
    assert env.state is not None
    return OracleAssistant().respond([env.state])[0]


@pytest.mark.parametrize("env_id", sorted(userlm_env.ENV_IDS))
def test_check_env_passes_on_every_registered_id(env_id: str, gsm8k_path: Path) -> None:
    kwargs: dict[str, object] = {"simulator": "sharded"}
    if env_id == "userlm_env/GSM8k-v0":
        kwargs["data_path"] = str(gsm8k_path)
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_oracle_solves_through_step(apples_intent: Intent) -> None:
    env = _env([apples_intent])
    obs, info = env.reset(seed=0)
    assert obs == apples_intent.shards[0].text
    assert info["revealed_shards"] == [1] and info["coverage"] == pytest.approx(1 / 5)
    assert info["messages"] == [{"role": "user", "content": obs}]
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(_oracle_reply(env))
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            break
    assert (terminated, truncated, total) == (True, False, 1.0)
    assert info["termination_reason"] == "solved" and info["solved"] and info["attempted"]
    assert obs == END_MARKER
    assert steps == 4  # asked 3 times while shards 2-4 were missing, then answered


def test_wrong_answer_never_rewarded_and_user_ends(apples_intent: Intent) -> None:
    env = _env([apples_intent], max_turns=20)
    env.reset(seed=0)
    rewards, done = [], False
    while not done:
        reply = WrongAssistant().respond([env.state])[0]
        _, reward, terminated, truncated, info = env.step(reply)
        rewards.append(reward)
        done = terminated or truncated
    assert set(rewards) == {0.0}
    assert info["termination_reason"] == "user_ended" and info["user_ended"]
    assert info["coverage"] == 1.0 and info["turn"] == 6  # 5 shards, then the end marker


def test_truncates_at_max_turns(apples_intent: Intent) -> None:
    env = _env([apples_intent], max_turns=2)
    env.reset(seed=0)
    assert env.step("hm?")[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step("hm?")
    assert (terminated, truncated, info["termination_reason"]) == (False, True, "max_turns")


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
        return [UserTurn(f"turn {s.turn + 1} please", shard_ids=()) for s in states]


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
