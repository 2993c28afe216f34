"""The rule-based simulator and the scripted assistants."""

from __future__ import annotations

from assistants import make_assistant
from simulators import make_simulator
from simulators.sharded import ShardedSimulator
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
    assert state.turn == 5


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
    oracle = make_assistant("oracle")
    state = ConversationState(intent=apples_intent, seed=0)
    state.revealed.append((1, 2))
    assert oracle.respond([state])[0].rstrip().endswith("?")
    state.revealed.append((3, 4))
    assert "15" in oracle.respond([state])[0]


def test_wrong_assistant_gives_a_different_number(apples_intent: Intent) -> None:
    reply = make_assistant("wrong").respond([ConversationState(intent=apples_intent, seed=0)])[0]
    assert "16" in reply and "15" not in reply
