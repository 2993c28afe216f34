"""The terminal simulator, driven by scripted standard input."""

from __future__ import annotations

import io

import pytest

from simulators import make_simulator
from simulators.human import HELP, HumanSimulator
from userlm_env.env import ConversationEnv
from userlm_env.types import END_MARKER, ConversationState, Intent


def _scripted(text: str) -> tuple[HumanSimulator, io.StringIO]:
    out = io.StringIO()
    return HumanSimulator(stdin=io.StringIO(text), stdout=out), out


def test_first_turn_shows_intent_and_returns_the_typed_line(apples_intent: Intent) -> None:
    simulator, out = _scripted("  how many apples are left?  \n")
    state = ConversationState(intent=apples_intent, seed=0)
    [turn] = simulator.respond([state])
    assert (turn.text, turn.ended) == ("how many apples are left?", False)
    assert turn.metadata["source"] == "human"
    assert apples_intent.instruction in out.getvalue() and "toy/apples" in out.getvalue()
    assert "assistant>" not in out.getvalue()


def test_later_turn_shows_last_reply_but_not_the_intent(apples_intent: Intent) -> None:
    simulator, out = _scripted("he buys 7 more\n")
    state = ConversationState(intent=apples_intent, seed=0)
    state.messages += [
        {"role": "user", "content": "apples question"},
        {"role": "assistant", "content": "How many does he start with?"},
    ]
    assert simulator.respond([state])[0].text == "he buys 7 more"
    assert "assistant> How many does he start with?" in out.getvalue()
    assert apples_intent.instruction not in out.getvalue()


@pytest.mark.parametrize(
    ("script", "how"),
    [("\n", "empty line"), ("", "eof"), ("/end\n", "/end"), ("  /QUIT \n", "/QUIT")],
)
def test_empty_line_eof_and_commands_end(apples_intent: Intent, script: str, how: str) -> None:
    simulator, _ = _scripted(script)
    [turn] = simulator.respond([ConversationState(intent=apples_intent, seed=0)])
    assert (turn.text, turn.ended, turn.metadata["ended_by"]) == (END_MARKER, True, how)


def test_help_prints_help_and_asks_again(apples_intent: Intent) -> None:
    simulator, out = _scripted("/help\nsam has 12\n")
    [turn] = simulator.respond([ConversationState(intent=apples_intent, seed=0)])
    assert turn.text == "sam has 12"
    assert HELP in out.getvalue() and out.getvalue().count("you> ") == 2


def test_batch_is_asked_in_order(apples_intent: Intent) -> None:
    simulator, out = _scripted("first\n/end\nthird\n")
    states = [ConversationState(intent=apples_intent, seed=s) for s in range(3)]
    turns = simulator.respond(states)
    assert [(t.text, t.ended) for t in turns] == [
        ("first", False),
        (END_MARKER, True),
        ("third", False),
    ]
    assert "conversation 3/3: toy/apples" in out.getvalue()


def test_env_steps_until_the_person_ends(apples_intent: Intent) -> None:
    script = "need help with apples\nhe starts with 12 and buys 7\n/end\n"
    out = io.StringIO()
    simulator = make_simulator("human", stdin=io.StringIO(script), stdout=out)
    env = ConversationEnv(simulator=simulator, intents=[apples_intent])
    observation, _ = env.reset(seed=0)
    assert observation == "need help with apples"
    observation, reward, terminated, truncated, _ = env.step("Sure, how many apples at first?")
    assert (observation, reward, terminated, truncated) == (
        "he starts with 12 and buys 7",
        0.0,
        False,
        False,
    )
    observation, _, terminated, truncated, info = env.step("So 19 apples?")
    assert terminated and not truncated and observation == END_MARKER
    assert info["termination_reason"] == "user_ended"
    assert "assistant> So 19 apples?" in out.getvalue()
    assert out.getvalue().count(apples_intent.instruction) == 1
