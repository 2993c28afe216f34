"""The rule-based simulator and the scripted assistants."""

from __future__ import annotations

import pytest

from assistants import make_assistant
from simulators import make_simulator
from simulators.sharded import ShardedSimulator
from userlm_env.errors import UnknownNameError
from userlm_env.types import ConversationState, Intent, Score, UserTurn


def _reveal(state: ConversationState, turn: UserTurn) -> None:
    state.user_turns.append(turn)
    state.revealed.append(turn.shard_ids or ())
    if not turn.ended:
        state.messages.append({"role": "user", "content": turn.text})


def test_sharded_reveals_goal_then_required_then_optional(apples_intent: Intent) -> None:
    simulator = ShardedSimulator()
    state = ConversationState(intent=apples_intent, seed=0)
    order = []
    for _ in range(5):
        turn = simulator.respond([state])[0]
        order.append(turn.shard_ids)
        _reveal(state, turn)
        state.scores.append(Score(False, False, 0.0))
        state.messages.append({"role": "assistant", "content": "ok?"})
    assert order == [(1,), (2,), (3,), (4,), (5,)]
    assert len(state.user_turns) == 5


def test_sharded_nudges_until_an_attempt_then_ends(apples_intent: Intent) -> None:
    simulator = make_simulator("sharded")
    state = ConversationState(intent=apples_intent, seed=0)
    for _ in range(5):
        _reveal(state, simulator.respond([state])[0])
    state.scores.append(Score(attempted=False, solved=False, reward=0.0))
    nudge = simulator.respond([state])[0]
    assert not nudge.ended and nudge.shard_ids == () and nudge.text.strip()
    state.scores.append(Score(attempted=True, solved=False, reward=0.0))
    assert simulator.respond([state])[0].ended


def test_sharded_is_stateless_across_a_batch(apples_intent: Intent) -> None:
    simulator = ShardedSimulator()
    fresh = ConversationState(intent=apples_intent, seed=1)
    advanced = ConversationState(intent=apples_intent, seed=2)
    _reveal(advanced, simulator.respond([advanced])[0])
    turns = simulator.respond([fresh, advanced, fresh])
    assert [t.shard_ids for t in turns] == [(1,), (2,), (1,)]


def test_oracle_asks_before_required_shards_then_answers(apples_intent: Intent) -> None:
    oracle = make_assistant("oracle", intents=[apples_intent])
    ids = [apples_intent.intent_id]
    chat = [
        {"role": "user", "content": f"{apples_intent.shard(1).text} {apples_intent.shard(2).text}"}
    ]
    assert oracle.respond([chat], intent_ids=ids)[0].text.rstrip().endswith("?")
    chat += [{"role": "assistant", "content": "And?"}]
    chat += [
        {"role": "user", "content": f"{apples_intent.shard(3).text} {apples_intent.shard(4).text}"}
    ]
    reply = oracle.respond([chat], intent_ids=ids)[0]
    assert "15" in reply.text and reply.cost == 0.0 and reply.error is None


def test_scripted_assistants_need_their_answer_key(apples_intent: Intent) -> None:
    chat = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="intent id"):
        make_assistant("oracle", intents=[apples_intent]).respond([chat])
    with pytest.raises(UnknownNameError, match="answer key"):
        make_assistant("oracle").respond([chat], intent_ids=[apples_intent.intent_id])


def test_wrong_assistant_gives_a_different_number(apples_intent: Intent) -> None:
    wrong = make_assistant("wrong", intents=[apples_intent])
    chat = [{"role": "user", "content": "hi"}]
    reply = wrong.respond([chat], intent_ids=[apples_intent.intent_id])[0].text
    assert "16" in reply and "15" not in reply
