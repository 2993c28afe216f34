"""The Lost-in-Conversation settings of the rule-based user: FULL, CONCAT, RECAP and SNOWBALL."""

from __future__ import annotations

from typing import Any

import pytest

from assistants.scripted import OracleAssistant, ScriptedAssistant, WrongAssistant
from simulators import make_simulator
from simulators.sharded import ShardedSimulator, stated
from userlm_env import END_MARKER, ConversationEnv
from userlm_env.errors import UnknownNameError
from userlm_env.metrics.episode import EpisodeView, episode_metrics
from userlm_env.types import ConversationState, Intent, Score, Shard

APPLES_CONCAT = (
    "How many apples does Sam have left?\n"
    "Sam starts with 12 apples.\n"
    "He buys 7 more apples.\n"
    "He gives 4 apples away.\n"
    "Answer with a whole number."
)


def _run(
    intent: Intent, simulator: str, assistant: ScriptedAssistant, **kwargs: Any
) -> tuple[float, dict[str, Any], ConversationState]:
    """One episode through the env: total reward, the last info, the final state."""
    env = ConversationEnv(
        simulator=simulator, simulator_kwargs=kwargs, intents=[intent], max_replies=20
    )
    _, info = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        reply = assistant.respond([info["messages"]], intent_ids=[info["intent_id"]])[0].text
        _, reward, terminated, truncated, info = env.step(reply)
        total, done = total + reward, terminated or truncated
    return total, info, env.state


def _speak(simulator: ShardedSimulator, state: ConversationState) -> None:
    """Let the user say its next turn into ``state``, then have the assistant not answer."""
    turn = simulator.respond([state])[0]
    state.user_turns.append(turn)
    state.revealed.append(turn.shard_ids or ())
    state.messages += [
        {"role": "user", "content": turn.text},
        {"role": "assistant", "content": "?"},
    ]
    state.scores.append(Score(attempted=False, solved=False, reward=0.0))


def test_full_first_turn_is_the_instruction_revealing_every_shard(apples_intent: Intent) -> None:
    turn = make_simulator("full").respond([ConversationState(intent=apples_intent, seed=0)])[0]
    assert turn.text == apples_intent.instruction
    assert turn.text == "Sam has 12 apples and buys 7 more, then gives 4 away. How many are left?"
    assert turn.shard_ids == (1, 2, 3, 4, 5) and not turn.ended


def test_concat_first_turn_is_every_shard_one_per_line(apples_intent: Intent) -> None:
    turn = make_simulator("concat").respond([ConversationState(intent=apples_intent, seed=0)])[0]
    assert turn.text == APPLES_CONCAT
    assert turn.shard_ids == (1, 2, 3, 4, 5) and not turn.ended


def test_multi_line_shards_are_stated_a_blank_line_apart() -> None:
    shards = [Shard(1, "Write `f`."), Shard(2, "For example:\n>>> f(1)\n2", required=False)]
    assert stated(shards) == "Write `f`.\n\nFor example:\n>>> f(1)\n2"


def test_full_and_concat_nudge_then_end_after_an_attempt(apples_intent: Intent) -> None:
    for name in ("full", "concat"):
        simulator = make_simulator(name)
        state = ConversationState(intent=apples_intent, seed=0)
        _speak(simulator, state)
        nudge = simulator.respond([state])[0]
        assert nudge.shard_ids == () and nudge.metadata == {"nudge": True}
        state.scores.append(Score(attempted=True, solved=False, reward=0.0))
        assert simulator.respond([state])[0].ended


def test_snowball_restates_the_earlier_shards_then_adds_the_new_one(apples_intent: Intent) -> None:
    simulator = make_simulator("sharded", strategy="snowball")
    state = ConversationState(intent=apples_intent, seed=0)
    for _ in range(5):
        _speak(simulator, state)
    texts = [turn.text for turn in state.user_turns]
    assert texts[0] == "How many apples does Sam have left?"
    assert texts[1] == "How many apples does Sam have left?\nSam starts with 12 apples."
    assert texts[4] == APPLES_CONCAT
    assert [turn.shard_ids for turn in state.user_turns] == [
        (1,),
        (1, 2),
        (1, 2, 3),
        (1, 2, 3, 4),
        (1, 2, 3, 4, 5),
    ]
    assert state.user_turns[2].metadata == {"shard": 3, "restated": (1, 2)}


def test_recap_restates_every_shard_once_after_the_last_one(apples_intent: Intent) -> None:
    simulator = make_simulator("sharded", strategy="recap")
    state = ConversationState(intent=apples_intent, seed=0)
    for _ in range(6):
        _speak(simulator, state)
    assert [turn.shard_ids for turn in state.user_turns] == [
        (1,),
        (2,),
        (3,),
        (4,),
        (5,),
        (1, 2, 3, 4, 5),
    ]
    recap = state.user_turns[-1]
    assert recap.text == APPLES_CONCAT and recap.metadata == {"recap": True}
    assert simulator.respond([state])[0].metadata == {"nudge": True}  # no second recap
    state.scores.append(Score(attempted=True, solved=False, reward=0.0))
    assert simulator.respond([state])[0].ended


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(UnknownNameError, match="strategy 'echo'; known: plain, recap, snowball"):
        ShardedSimulator(strategy="echo")
    with pytest.raises(UnknownNameError, match="opening 'half'"):
        ShardedSimulator(opening="half")
    with pytest.raises(ValueError, match="reveals them all at once"):
        make_simulator("full", strategy="snowball")
    with pytest.raises(TypeError, match="opening"):
        make_simulator("concat", opening="shard")


@pytest.mark.parametrize(
    ("simulator", "kwargs"),
    [
        ("full", {}),
        ("concat", {}),
        ("sharded", {"strategy": "plain"}),
        ("sharded", {"strategy": "recap"}),
        ("sharded", {"strategy": "snowball"}),
    ],
)
def test_oracle_solves_every_setting(
    apples_intent: Intent, simulator: str, kwargs: dict[str, Any]
) -> None:
    total, info, _ = _run(apples_intent, simulator, OracleAssistant([apples_intent]), **kwargs)
    assert total == 1.0 and info["termination_reason"] == "solved"


def test_full_user_ends_after_a_wrong_attempt_never_repeating(apples_intent: Intent) -> None:
    total, info, state = _run(apples_intent, "full", WrongAssistant([apples_intent]))
    assert total == 0.0 and info["termination_reason"] == "user_ended"
    assert state.revealed == [(1, 2, 3, 4, 5)] and info["replies"] == 1
    assert info["episode_metrics"]["repeat_required"] is False


@pytest.mark.parametrize(
    ("strategy", "repeats", "turns"),
    [("plain", False, 5), ("recap", True, 6), ("snowball", True, 5)],
)
def test_strategies_cover_everything_and_repeat_as_the_paper_counts(
    apples_intent: Intent, strategy: str, repeats: bool, turns: int
) -> None:
    _, info, state = _run(
        apples_intent, "sharded", WrongAssistant([apples_intent]), strategy=strategy
    )
    metrics = episode_metrics(EpisodeView.from_state(state))
    assert info["coverage"] == 1.0 and metrics["intent_coverage"] == 1.0
    assert metrics["repeat_required"] is repeats and metrics["user_turns"] == turns
    assert metrics["add_demands"] is False and info["termination_reason"] == "user_ended"
    assert info["episode_metrics"] == metrics


def test_end_marker_is_never_a_spoken_turn(apples_intent: Intent) -> None:
    _, info, _ = _run(apples_intent, "concat", WrongAssistant([apples_intent]))
    assert all(m["content"] != END_MARKER for m in info["messages"])
