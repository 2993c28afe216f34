"""Acceptance: the oracle solves every intent via ``env.step``; wrong replies never earn reward."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistants.scripted import OracleAssistant, ScriptedAssistant, WrongAssistant
from userlm_env import ConversationEnv
from userlm_env.intents import load_gsm8k_jsonl, load_humaneval


def _play(env: ConversationEnv, intent_id: str, assistant: ScriptedAssistant) -> tuple[float, dict]:
    """One episode; the assistant acts on the observation (the conversation so far)."""
    assistant.learn(env.intents)
    chat, info = env.reset(seed=0, options={"intent_id": intent_id})
    total, done = 0.0, False
    while not done:
        reply = assistant.respond([chat], intent_ids=[info["intent_id"]])[0].text
        chat, reward, terminated, truncated, info = env.step(reply)
        total += reward
        done = terminated or truncated
    return total, info


def _play_all(env: ConversationEnv, assistant: ScriptedAssistant) -> list[tuple[str, float, dict]]:
    """``(intent id, total reward, last info)`` of one episode on every intent of ``env``."""
    return [(i.intent_id, *_play(env, i.intent_id, assistant)) for i in env.intents]


@pytest.fixture(scope="module")
def humaneval_env() -> ConversationEnv:
    env = ConversationEnv(
        simulator="sharded",
        intents=load_humaneval(),
        max_replies=16,
        observation_mode="conversation",
    )
    yield env
    env.close()


@pytest.mark.slow
@pytest.mark.sandbox
def test_oracle_solves_all_164_humaneval_intents(humaneval_env: ConversationEnv) -> None:
    played = _play_all(humaneval_env, OracleAssistant())
    failures = [
        (intent_id, info.get("score_detail"))
        for intent_id, total, info in played
        if total != 1.0 or info["termination_reason"] != "solved"
    ]
    assert len(played) == 164 and failures == []


@pytest.mark.slow
@pytest.mark.sandbox
def test_wrong_code_never_earns_reward(humaneval_env: ConversationEnv) -> None:
    played = _play_all(humaneval_env, WrongAssistant())
    assert [intent_id for intent_id, total, _ in played if total != 0.0] == []
    assert {info["termination_reason"] for *_, info in played} <= {"user_ended", "max_replies"}


@pytest.mark.slow
def test_oracle_solves_first_300_gsm8k_and_wrong_numbers_never_do(gsm8k_path: Path) -> None:
    intents = load_gsm8k_jsonl(gsm8k_path, limit=300)
    env = ConversationEnv(
        simulator="sharded", intents=intents, max_replies=16, observation_mode="conversation"
    )
    solved = [_play(env, i.intent_id, OracleAssistant())[0] for i in intents]
    wrong = [_play(env, i.intent_id, WrongAssistant())[0] for i in intents]
    assert len(intents) == 300 and solved == [1.0] * 300 and wrong == [0.0] * 300
