"""The prompted-assistant user simulator: prompts, post-processing, the llama.cpp server, HF.

Server tests that need a particular output (an end spelled loosely, an empty reply) force it
with llama.cpp's ``grammar`` request field (``extra_body``), so the real request and parsing
path runs; a 135M model cannot be prompted into such outputs reliably.
"""

from __future__ import annotations

from typing import Any

import pytest

from simulators import make_simulator
from simulators.prompted import PromptedConfig, PromptedSimulator, clean_output, role_play_prompt
from tests.server_fixtures import LlamaServer
from userlm_env.core import SimulatorError
from userlm_env.errors import ModelUnavailableError, UnknownNameError
from userlm_env.types import END_MARKER, ConversationState, Intent

REPLY = "Sure! How many apples does Sam start with?"


def _talking(intent: Intent, seed: int) -> ConversationState:
    state = ConversationState(intent=intent, seed=seed)
    state.messages += [
        {"role": "user", "content": "need help w an apples problem"},
        {"role": "assistant", "content": REPLY},
    ]
    return state


def _server_sim(server: LlamaServer, **overrides: Any) -> PromptedSimulator:
    settings = {"api_base": server.api_base, "api_key": server.api_key, "timeout_s": 120.0}
    return PromptedSimulator(server.model, **{"max_tokens": 40, **settings, **overrides})


def _grammar(text: str) -> dict[str, str]:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return {"grammar": f'root ::= "{escaped}"'}


# -- post-processing and prompts (no model) ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (END_MARKER, (END_MARKER, True)),
        (f"  thanks, that's all!\n{END_MARKER}", (END_MARKER, True)),
        ("endconversation", (END_MARKER, True)),
        ("<end_conversation>", (END_MARKER, True)),
        ("|END CONVERSATION|", (END_MARKER, True)),
        ('**User:** "hey can u help me"', ("hey can u help me", False)),
        ("Next message: ok what about 7 more", ("ok what about 7 more", False)),
        ("“so whats the total”", ("so whats the total", False)),
        ("fine, go on\nAssistant: Great, here is the answer", ("fine, go on", False)),
        ('  ""  ', ("", False)),
        ("we could end conversation here", ("we could end conversation here", False)),
        ('he said "hi" then "bye"', ('he said "hi" then "bye"', False)),
    ],
)
def test_clean_output(raw: str, expected: tuple[str, bool]) -> None:
    assert clean_output(raw) == expected


def test_prompts_carry_intent_history_and_end_rule(apples_intent: Intent) -> None:
    fresh = ConversationState(intent=apples_intent, seed=0)
    first = role_play_prompt(fresh)
    later = role_play_prompt(_talking(apples_intent, 0))
    silent = role_play_prompt(_talking(apples_intent, 0), allow_end=False)
    for prompt in (first, later, silent):
        assert apples_intent.instruction in prompt
    assert END_MARKER not in first and "first message" in first
    assert "You: need help w an apples problem" in later and f"AI system: {REPLY}" in later
    assert END_MARKER in later and END_MARKER not in silent and REPLY in silent
    simulator = PromptedSimulator("openai/x", api_base="http://127.0.0.1:9/v1")
    assert simulator.conversation(fresh) == [{"role": "user", "content": first}]


def test_config_errors_are_typed() -> None:
    with pytest.raises(UnknownNameError, match="backend"):
        PromptedConfig(backend="carrier-pigeon")
    with pytest.raises(ValueError, match="max_tries"):
        PromptedConfig(max_tries=0)
    with pytest.raises(ValueError, match="temperature"):
        PromptedConfig(temperature=-1.0)
    with pytest.raises(TypeError, match="unknown PromptedConfig fields"):
        PromptedSimulator("openai/x", temprature=0.5)
    built = make_simulator("prompted", model="openai/x", api_base="http://127.0.0.1:9/v1")
    assert isinstance(built, PromptedSimulator) and built.config.temperature == 1.0


class _ScriptedBackend:
    """Answers each try from a script: ``outputs[attempt]`` for every row of the call."""

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs
        self.calls = 0

    def generate(self, conversations: list[Any], seeds: list[int]) -> list[str]:
        self.calls += 1
        return [self.outputs[self.calls - 1]] * len(conversations)


def test_an_end_before_the_first_turn_is_resampled(apples_intent: Intent) -> None:
    simulator = PromptedSimulator("openai/x", api_base="http://127.0.0.1:9/v1", max_tries=2)
    simulator.backend = _ScriptedBackend([END_MARKER, "hey can u help w apples"])
    fresh = ConversationState(intent=apples_intent, seed=0)
    turn = simulator.respond([fresh])[0]
    assert (turn.text, turn.ended, turn.metadata["tries"]) == ("hey can u help w apples", False, 2)
    simulator.backend = _ScriptedBackend([END_MARKER])  # with a history, the end stands
    assert simulator.respond([_talking(apples_intent, 1)])[0].ended
    simulator.backend = _ScriptedBackend([END_MARKER, "endconversation"])
    with pytest.raises(SimulatorError, match="no usable user turn"):
        simulator.respond([fresh])


# -- the real llama.cpp server -----------------------------------------------------------------


@pytest.mark.server
def test_server_batch_gives_nonempty_turns_that_seeds_reproduce(
    llama_server: LlamaServer, apples_intent: Intent
) -> None:
    # one request at a time from an empty prompt cache: llama.cpp's results otherwise depend on
    # the request served before (see LlamaServer.forget_prompt_cache)
    simulator = _server_sim(llama_server, concurrency=1)
    states = [ConversationState(intent=apples_intent, seed=s) for s in (0, 1)]
    states.append(_talking(apples_intent, 2))
    llama_server.forget_prompt_cache()
    turns = simulator.respond(states)
    llama_server.forget_prompt_cache()
    again = simulator.respond(states)
    assert len(turns) == 3
    for turn in turns:
        assert turn.ended or (turn.text.strip() and END_MARKER not in turn.text)
        assert turn.metadata["tries"] >= 1 and isinstance(turn.metadata["raw"], str)
    assert [t.text for t in again] == [t.text for t in turns]  # seeds come from the states
    assert turns[0].metadata["raw"] != turns[1].metadata["raw"]  # same prompt, other seed


@pytest.mark.server
def test_server_loose_end_and_labels(llama_server: LlamaServer, apples_intent: Intent) -> None:
    state = _talking(apples_intent, 3)
    ended = _server_sim(llama_server, extra_body=_grammar("endconversation")).respond([state])
    labelled = _server_sim(llama_server, extra_body=_grammar('User: "ok and then?"'))
    assert [(t.text, t.ended) for t in ended] == [(END_MARKER, True)]
    assert [t.text for t in labelled.respond([state])] == ["ok and then?"]


@pytest.mark.server
def test_server_empty_or_forbidden_end_is_resampled_then_raises(
    llama_server: LlamaServer, apples_intent: Intent
) -> None:
    state = _talking(apples_intent, 4)
    empty = _server_sim(llama_server, extra_body=_grammar('""'), max_tries=2)
    with pytest.raises(SimulatorError, match="2 tries"):
        empty.respond([state])
    assert empty.backend.client.stats.calls == 2
    no_end = _server_sim(llama_server, extra_body=_grammar(END_MARKER), allow_end=False)
    with pytest.raises(SimulatorError, match="no usable user turn"):
        no_end.respond([state])


# -- the embedded model in-process ---------------------------------------------------------------


@pytest.mark.slow
def test_hf_backend_on_embedded_model(apples_intent: Intent) -> None:
    # batch_size=1 runs two generate calls: chunking and per-row seeds are both exercised
    simulator = PromptedSimulator(
        "smollm2-135m-instruct", backend="hf", max_tokens=12, batch_size=1
    )
    states = [ConversationState(intent=apples_intent, seed=0), _talking(apples_intent, 1)]
    turns = simulator.respond(states)
    assert len(turns) == 2
    assert all(t.ended or t.text.strip() for t in turns)
    assert [t.text for t in simulator.respond(states[::-1])] == [t.text for t in turns[::-1]]


def test_hf_backend_builds_offline_and_loads_at_first_use(
    monkeypatch: pytest.MonkeyPatch, apples_intent: Intent
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    simulator = PromptedSimulator("microsoft/UserLM-8b", backend="hf")  # loads nothing
    with pytest.raises(ModelUnavailableError, match="smollm2-135m-instruct"):
        simulator.respond([ConversationState(intent=apples_intent, seed=0)])
