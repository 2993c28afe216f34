"""The Lost-in-Conversation user (``lic``): vetting and resampling, rules, prompts, backends.

Canned replies come from the scripted fault server (:mod:`tests.fault_server`), so the real
LiteLLM request and parsing path runs; the end-to-end and in-process tests use the embedded
135M model with the ``rule`` shard policy, the only one such a model can follow.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from simulators import make_simulator
from simulators.lic import LiCConfig, LiCSimulator, closing_turn, is_verbatim, next_shard
from simulators.lic_prompts import NO_PREFERENCE_RULE, choose_prompt, rephrase_prompt
from tests.fault_server import FaultServer, Reply
from tests.server_fixtures import LlamaServer
from userlm_env import END_MARKER, ConversationEnv
from userlm_env.core import SimulatorError
from userlm_env.errors import UnknownNameError
from userlm_env.types import ConversationState, Intent, Score, UserTurn

QUESTION = "Got it. Do you know how many apples Sam starts with?"
OFF_TOPIC = "Sure. By the way, which apple variety do you like best?"
VALID = {"shard_id": 3, "message": "oh and then he picks up seven more at the store"}


def _said(content: str | dict[str, Any]) -> Reply:
    """A chat completion whose message is ``content`` (a dict is sent as its JSON)."""
    text = content if isinstance(content, str) else json.dumps(content)
    message = {"role": "assistant", "content": text}
    body = {
        "id": "lic-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fault-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return Reply(body=json.dumps(body).encode())


def _talking(intent: Intent, revealed: list[int], reply: str = QUESTION, seed: int = 0):
    """A conversation whose user turns revealed ``revealed`` (one shard each), then ``reply``."""
    state = ConversationState(intent=intent, seed=seed)
    for shard_id in revealed:
        text = f"(turn revealing shard {shard_id})"
        state.user_turns.append(UserTurn(text, shard_ids=(shard_id,)))
        state.revealed.append((shard_id,))
        state.messages += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": reply},
        ]
    return state


def _simulator(server: FaultServer, **overrides: Any) -> LiCSimulator:
    settings = {"api_base": server.api_base, "api_key": "k", "concurrency": 1, "max_retries": 0}
    return LiCSimulator("openai/fault-model", **{**settings, **overrides})


def _sent(server: FaultServer, index: int) -> str:
    """The prompt of the ``index``-th request the server received."""
    return server.requests[index].body["messages"][0]["content"]


# -- rules, prompts and config (no model) ------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "copied"),
    [
        ("He buys 7 more apples.", True),
        ("  he BUYS 7 more apples!!", True),
        ("he buys seven more apples", True),  # number words read as digits
        ("He buys 7 more apples, ok.", True),  # one added word: similarity 0.91
        ("ok so he buys 7 more apples", False),  # two added words: 0.83
        ("then he picks up 7 more", False),
    ],
)
def test_is_verbatim(message: str, copied: bool) -> None:
    assert is_verbatim(message, "He buys 7 more apples.") is copied


def test_rule_order_and_closing_turns(apples_intent: Intent) -> None:
    fresh = ConversationState(intent=apples_intent, seed=0)
    assert closing_turn(fresh, "nudge") is None and next_shard(fresh).id == 1
    assert next_shard(_talking(apples_intent, [1, 2])).id == 3
    assert next_shard(_talking(apples_intent, [1, 3, 4, 2])).id == 5  # optional shard last
    done = _talking(apples_intent, [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="already revealed"):
        next_shard(done)
    nudge = closing_turn(done, "final answer please?")
    assert nudge == UserTurn("final answer please?", shard_ids=(), metadata={"nudge": True})
    done.scores.append(Score(attempted=True, solved=False, reward=0.0))
    assert closing_turn(done, "nudge") == UserTurn(END_MARKER, ended=True, shard_ids=())


def test_prompts_list_shards_and_decline_off_topic(apples_intent: Intent) -> None:
    first = choose_prompt(ConversationState(intent=apples_intent, seed=0))[0]["content"]
    later = choose_prompt(_talking(apples_intent, [1, 2], OFF_TOPIC))[0]["content"]
    assert "first message" in first and "Share piece 1" in first
    shared, unshared = later.split("Pieces you have not shared yet:")
    assert "[2] Sam starts with 12 apples." in shared and "[2]" not in unshared
    assert "[3] He buys 7 more apples." in unshared and f"Assistant: {OFF_TOPIC}" in later
    for prompt in (first, later):
        assert NO_PREFERENCE_RULE in prompt and '"shard_id"' in prompt
        assert "no preference" in prompt and "do not know" in prompt
    rephrase = rephrase_prompt(apples_intent.shard(3))[0]["content"]
    assert rephrase.endswith("Note: He buys 7 more apples.") and "own casual words" in rephrase


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ({"shard_policy": "random"}, UnknownNameError),
        ({"backend": "carrier-pigeon"}, UnknownNameError),
        ({"max_copy_similarity": 0.0}, ValueError),
    ],
)
def test_config_errors_are_typed(setting: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(setting))):
        LiCConfig(**setting)
    with pytest.raises(TypeError, match="unknown LiCConfig fields"):
        LiCSimulator("openai/x", shard_polcy="rule")
    built = make_simulator("lic", model="openai/x", api_base="http://127.0.0.1:9/v1")
    assert isinstance(built, LiCSimulator) and built.config.shard_policy == "llm"


# -- canned replies from the fault server (llm policy) -----------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("sure, here is my next message!", "malformed reply: the reply holds no JSON object"),
        ('{"shard_id": 3, "message": "he buys', "malformed reply"),
        ({"shard_id": "three", "message": "he buys more"}, "whole number or null"),
        ({"shard_id": 2, "message": "he had a dozen at first"}, "shard 2 was already revealed"),
        ({"shard_id": 3, "message": "He buys 7 more apples."}, "verbatim copy of shard 3"),
        ({"shard_id": 9, "message": "oh and the apples are red"}, "unknown shard 9"),
        ({"shard_id": 3, "message": "he gets 7 and gives 4 away"}, "4 of unrevealed shard 4"),
        ({"shard_id": 3, "message": "  "}, "empty message"),
    ],
)
def test_invalid_reply_is_resampled(
    fault_server: FaultServer, apples_intent: Intent, bad: str | dict[str, Any], reason: str
) -> None:
    fault_server.push([_said(bad), _said(VALID)])
    [turn] = _simulator(fault_server).respond([_talking(apples_intent, [1, 2])])
    assert turn.text == VALID["message"] and turn.shard_ids == (3,) and not turn.ended
    assert turn.metadata["tries"] == 2 and reason in turn.metadata["rejected"][0]
    assert turn.metadata["raw"] == json.dumps(VALID)
    seeds = [request.body.get("seed") for request in fault_server.requests]
    assert len(seeds) == 2 and seeds[0] != seeds[1]  # every try gets its own seed


def test_off_topic_question_is_declined_without_a_shard(
    fault_server: FaultServer, apples_intent: Intent
) -> None:
    decline = {"shard_id": None, "message": "no preference really, i just need the count"}
    fault_server.push([_said(decline)])
    [turn] = _simulator(fault_server).respond([_talking(apples_intent, [1, 2], OFF_TOPIC)])
    assert turn.text == decline["message"] and turn.shard_ids == ()
    assert turn.metadata["tries"] == 1 and "matcher_disagrees" not in turn.metadata
    assert NO_PREFERENCE_RULE in _sent(fault_server, 0) and OFF_TOPIC in _sent(fault_server, 0)


def test_first_turn_must_reveal_the_goal(fault_server: FaultServer, apples_intent: Intent) -> None:
    goal = {"shard_id": 1, "message": "hey can u figure out how many apples sam ends up with"}
    fault_server.push([_said({"shard_id": 2, "message": "sam has a dozen apples"}), _said(goal)])
    [turn] = _simulator(fault_server).respond([ConversationState(intent=apples_intent, seed=0)])
    assert turn.shard_ids == (1,) and turn.metadata["tries"] == 2
    assert "must reveal shard 1" in turn.metadata["rejected"][0]


def test_matcher_disagreement_is_flagged(fault_server: FaultServer, apples_intent: Intent) -> None:
    fault_server.push([_said({"shard_id": 3, "message": "hmm not sure honestly"})])
    [turn] = _simulator(fault_server).respond([_talking(apples_intent, [1, 2])])
    assert turn.shard_ids == (3,)
    assert turn.metadata["matcher_disagrees"] == {"said": [3], "matched": []}


def test_only_rejected_rows_are_resampled(fault_server: FaultServer, apples_intent: Intent) -> None:
    states = [_talking(apples_intent, [1, 2], seed=s) for s in (0, 1)]
    fault_server.push([_said(VALID), _said("not json"), _said(VALID)])
    turns = _simulator(fault_server).respond(states)
    assert [t.text for t in turns] == [VALID["message"]] * 2
    assert sorted(t.metadata["tries"] for t in turns) == [1, 2]
    assert len(fault_server.requests) == 3


def test_no_valid_reply_raises_naming_intent_tries_and_reason(
    fault_server: FaultServer, apples_intent: Intent
) -> None:
    fault_server.push([_said({"shard_id": 2, "message": "he has 12"})] * 3)
    simulator = _simulator(fault_server, max_tries=3)
    with pytest.raises(SimulatorError, match=r"'toy/apples' in 3 tries.*already revealed"):
        simulator.respond([_talking(apples_intent, [1, 2])])


def test_rule_policy_rephrases_the_chosen_shard(
    fault_server: FaultServer, apples_intent: Intent
) -> None:
    done = _talking(apples_intent, [1, 2, 3, 4, 5])
    states = [_talking(apples_intent, [1]), done]
    fault_server.push([_said("Sam starts with 12 apples."), _said("he starts off with 12, 4 go")])
    fault_server.push([_said('User: "ok so he has 12 to begin with"')])
    turns = _simulator(fault_server, shard_policy="rule").respond(states)
    assert [t.text for t in turns] == ["ok so he has 12 to begin with", LiCConfig().nudge]
    assert turns[0].shard_ids == (2,) and turns[0].metadata["tries"] == 3
    assert [r.split(" of ")[0] for r in turns[0].metadata["rejected"]] == [
        "verbatim copy",
        "the message states 4",
    ]
    assert _sent(fault_server, 0).endswith("Note: Sam starts with 12 apples.")
    assert len(fault_server.requests) == 3  # the finished conversation called no model


# -- the real llama.cpp server and the embedded model ------------------------------------------


@pytest.mark.server
def test_rule_policy_episode_on_the_server(
    llama_server: LlamaServer, apples_intent: Intent
) -> None:
    simulator = LiCSimulator(
        llama_server.model,
        shard_policy="rule",
        api_base=llama_server.api_base,
        api_key=llama_server.api_key,
        timeout_s=120.0,
        max_tokens=40,
        max_tries=10,
        concurrency=1,
    )
    env = ConversationEnv(simulator=simulator, intents=[apples_intent], max_replies=4)
    _, info = env.reset(seed=0)
    coverage = [info["coverage"]]
    for _ in range(2):
        _, _, terminated, truncated, info = env.step("Could you tell me a bit more?")
        assert not (terminated or truncated)
        coverage.append(info["coverage"])
    assert env.state is not None
    turns = env.state.user_turns
    assert [t.shard_ids for t in turns] == [(1,), (2,), (3,)]
    for turn, shard in zip(turns, apples_intent.shards, strict=False):
        assert turn.text.strip() and not is_verbatim(turn.text, shard.text)
    assert coverage == sorted(set(coverage)) and len(coverage) == 3  # strictly growing


@pytest.mark.slow
def test_rule_policy_on_the_embedded_model_in_process(apples_intent: Intent) -> None:
    simulator = LiCSimulator(
        "smollm2-135m-instruct", backend="hf", shard_policy="rule", max_tokens=32
    )
    [turn] = simulator.respond([ConversationState(intent=apples_intent, seed=0)])
    assert turn.shard_ids == (1,) and turn.text.strip() and not turn.ended
    assert not is_verbatim(turn.text, apples_intent.shard(1).text)
    assert 1 <= turn.metadata["tries"] <= simulator.config.max_tries
