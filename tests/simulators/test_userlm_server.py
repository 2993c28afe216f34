"""The server-backed User LM simulator against the real llama.cpp server (embedded SmolLM2).

SmolLM2-135M is no UserLM: it often opens with "I" and rambles, so guardrails reject many of
its completions. That is what the guardrail test wants; the other tests switch the text checks
off where they would only cost requests. Forcing an end uses llama.cpp's ``grammar`` field (sent
through ``extra_body``): prompting the model into emitting the marker is unreliable.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from simulators import make_simulator
from simulators.guardrails import earlier_texts, end_ban_token_ids
from simulators.sampling import UserLMConfig, row_seed
from simulators.userlm_server import UserLMServerConfig, UserLMServerSimulator, parse_completion
from tests.conftest import REPO_ROOT
from tests.fault_server import FaultServer, ok
from tests.server_fixtures import LlamaServer
from userlm_env.chat_format import render_user_prompt
from userlm_env.errors import LLMCallError, ModelUnavailableError
from userlm_env.llm import LLMResult
from userlm_env.models import EMBEDDED_MODEL, load_tokenizer
from userlm_env.types import END_MARKER, ConversationState, Intent

ONLY_END = {"grammar": f'root ::= "{END_MARKER}"'}
END_OR_TEXT = {"grammar": f'root ::= "{END_MARKER}" | "sure thing, go on then"'}
NO_CHECKS = {"min_words": None, "max_words": None, "ban_first_words": (), "reject_repeats": False}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(EMBEDDED_MODEL)


def _simulator(server: LlamaServer, tokenizer: Any, **overrides: Any) -> UserLMServerSimulator:
    connection = {"api_base": server.api_base, "api_key": server.api_key, "timeout_s": 120.0}
    return UserLMServerSimulator(server.model, tokenizer, **{**connection, **overrides})


def _states(intent: Intent, seeds: range) -> list[ConversationState]:
    return [ConversationState(intent=intent, seed=seed) for seed in seeds]


def _in_conversation(intent: Intent, seed: int) -> ConversationState:
    state = ConversationState(intent=intent, seed=seed)
    state.messages += [
        {"role": "user", "content": "got an apples question"},
        {"role": "assistant", "content": "Sure! What would you like to know about the apples?"},
    ]
    return state


def _result(text: str, finish: str = "stop") -> LLMResult:
    return LLMResult(text=text, cost=None, cached=False, usage={}, finish_reason=finish)


# -- the real server ---------------------------------------------------------------------------


@pytest.mark.server
def test_guardrails_hold_on_real_turns(
    llama_server: LlamaServer, tokenizer: Any, apples_intent: Intent
) -> None:
    simulator = _simulator(llama_server, tokenizer, max_tries=4)
    talking = [_in_conversation(apples_intent, seed) for seed in (2, 3)]
    states = [*_states(apples_intent, range(2)), *talking]
    turns = simulator.respond(states)
    checks = UserLMConfig().checks
    assert len(turns) == 4
    for state, turn in zip(states, turns, strict=True):
        verdict = checks.reason(turn.text, earlier_texts(state))
        assert not turn.ended and turn.text.strip()
        assert verdict == turn.metadata.get("guardrail_failed")  # accepted turns pass: None
        assert 1 <= turn.metadata["tries"] <= 4
        if verdict is not None:  # every try spent, unless a try repeated a rejected text
            assert turn.metadata["tries"] == 4 or turn.metadata.get("stopped_early")
    # only rejected rows were asked again: one request per try of each row
    assert simulator.client.stats.calls == sum(t.metadata["tries"] for t in turns)


@pytest.mark.server
def test_seeds_reproduce_turns_sent_one_at_a_time(
    llama_server: LlamaServer, tokenizer: Any, apples_intent: Intent
) -> None:
    # one request at a time from an empty prompt cache: llama.cpp's results otherwise depend on
    # the request served before (see LlamaServer.forget_prompt_cache)
    simulator = _simulator(llama_server, tokenizer, max_tries=1, concurrency=1, **NO_CHECKS)
    states = _states(apples_intent, range(4))
    llama_server.forget_prompt_cache()
    turns = simulator.respond(states)
    llama_server.forget_prompt_cache()
    again = simulator.respond(states)
    assert [t.text for t in again] == [t.text for t in turns]
    assert len({t.text for t in turns}) > 1  # different seeds, different samples
    assert all(t.metadata["tries"] == 1 for t in turns)


def test_batch_of_eight_keeps_order_when_answers_come_back_reversed(
    fault_server: FaultServer, tokenizer: Any, apples_intent: Intent
) -> None:
    # llama.cpp serves one request at a time, in arrival order; only a scripted server can
    # answer the first request last. Its answers echo the prompt, which names the problem.
    fault_server.push([ok(delay_s=0.1 * (8 - i)) for i in range(8)])  # first in, last out
    simulator = UserLMServerSimulator(
        "openai/fault-model",
        tokenizer,
        **{"api_base": fault_server.api_base, "max_tries": 1, "concurrency": 8, **NO_CHECKS},
    )
    states = [
        ConversationState(
            intent=dataclasses.replace(apples_intent, instruction=f"Problem {i} is here."),
            seed=i,
        )
        for i in range(8)
    ]
    turns = simulator.respond(states)
    assert fault_server.max_in_flight >= 2  # they overlapped, so answers could cross
    assert [f"Problem {i} is here." in t.text for i, t in enumerate(turns)] == [True] * 8
    sent = sorted(request.body["seed"] for request in fault_server.requests)
    assert sent == sorted(row_seed(state, 0) for state in states)  # each row its own seed


@pytest.mark.server
def test_grammar_forced_marker_ends_the_conversation(
    llama_server: LlamaServer, tokenizer: Any, apples_intent: Intent
) -> None:
    simulator = _simulator(llama_server, tokenizer, max_tries=1, extra_body=ONLY_END)
    turns = simulator.respond([_in_conversation(apples_intent, 5)])
    assert [(t.text, t.ended) for t in turns] == [(END_MARKER, True)]


@pytest.mark.server
def test_allow_end_false_bans_the_marker_server_side(
    llama_server: LlamaServer, tokenizer: Any, apples_intent: Intent
) -> None:
    push = {"max_tries": 1, "extra_body": END_OR_TEXT, "logit_bias": {"<": 100.0}}
    pushed = _simulator(llama_server, tokenizer, **push)
    banned = _simulator(llama_server, tokenizer, **push, allow_end=False)
    # issue 11: conversations with a history (an empty one may never end, see below)
    states = [_in_conversation(apples_intent, seed) for seed in range(2)]
    assert all(t.ended for t in pushed.respond(states))
    assert [t.text for t in banned.respond(states)] == ["sure thing, go on then"] * 2


@pytest.mark.server
def test_an_empty_conversation_never_ends_even_when_pushed(
    llama_server: LlamaServer, tokenizer: Any, apples_intent: Intent
) -> None:
    push = {"max_tries": 1, "extra_body": END_OR_TEXT, "logit_bias": {"<": 100.0}}
    simulator = _simulator(llama_server, tokenizer, **push)  # allow_end stays True
    states = [*_states(apples_intent, range(2)), _in_conversation(apples_intent, 2)]
    turns = simulator.respond(states)
    assert [t.text for t in turns[:2]] == ["sure thing, go on then"] * 2  # first turns speak
    assert turns[2].ended  # the pushed bias still ends a conversation with a history


@pytest.mark.server
def test_forbidden_end_in_returned_text_is_resampled_then_fails(
    llama_server: LlamaServer, tokenizer: Any, apples_intent: Intent
) -> None:
    simulator = _simulator(
        llama_server,
        tokenizer,
        allow_end=False,
        suppress_end_with_logit_bias=False,  # the marker reaches us; the text check must catch it
        extra_body=ONLY_END,
        max_tries=2,
    )
    with pytest.raises(LLMCallError, match="2 tries"):
        simulator.respond(_states(apples_intent, range(1)))
    assert simulator.client.stats.calls == 2


# -- parsing, settings and requests (no server) ------------------------------------------------


def test_parse_completion_handles_marker_cut_and_truncation() -> None:
    config, earlier = UserLMConfig(), ["earlier turn here"]
    ended = parse_completion(_result(f"  {END_MARKER} trailing"), earlier, config)
    assert (ended.ended, ended.text, ended.reason) == (True, END_MARKER, None)
    cut = parse_completion(_result(f"ok that works now {END_MARKER}"), earlier, config)
    assert (cut.ended, cut.text, cut.end_marker_cut) == (False, "ok that works now", True)
    long = parse_completion(_result("so " * 30, finish="length"), earlier, config)
    assert long.truncated and long.reason == "too_long"
    forbidden = UserLMConfig(allow_end=False)
    assert parse_completion(_result(END_MARKER), earlier, forbidden).reason == "end_forbidden"
    assert parse_completion(_result("Earlier  TURN here"), earlier, config).reason == "repeat"
    assert parse_completion(_result("I want apples now"), earlier, config).reason == (
        "banned_first_word"
    )


def test_request_carries_prompt_stop_and_end_ban(tokenizer: Any, apples_intent: Intent) -> None:
    simulator = UserLMServerSimulator("openai/x", tokenizer, allow_end=False, api_base=None)
    state = _in_conversation(apples_intent, 0)
    params = simulator.request_params()
    assert simulator.prompt(state) == render_user_prompt(
        tokenizer, apples_intent.system_prompt, state.messages
    )
    assert params["stop"] == ["<|im_end|>"]
    assert params["temperature"] == 0.6 and params["top_p"] == 0.9 and params["max_tokens"] == 60
    banned = end_ban_token_ids(tokenizer, END_MARKER)
    assert params["logit_bias"] == {str(t): -100.0 for t in banned}
    assert [tokenizer.decode([t]) for t in banned] == ["<", " <"]  # alone and after a space
    assert "logit_bias" not in UserLMServerSimulator("openai/x", tokenizer).request_params()


def test_first_turn_requests_ban_the_end_marker_over_any_bias(tokenizer: Any) -> None:
    simulator = UserLMServerSimulator(
        "openai/x", tokenizer, logit_bias={"<": 100.0, "hello": 5.0}, api_base=None
    )
    banned = {str(t): -100.0 for t in end_ban_token_ids(tokenizer, END_MARKER)}
    first = simulator.request_params(first_turn=True)["logit_bias"]
    later = simulator.request_params()["logit_bias"]
    assert banned.items() <= first.items()  # the ban wins over the +100 on "<"
    assert later[str(tokenizer.encode("<", add_special_tokens=False)[0])] == 100.0
    hello = {str(t) for t in tokenizer.encode("hello", add_special_tokens=False)}
    assert all(first[t] == later[t] == 5.0 for t in hello)
    off = UserLMServerSimulator("openai/x", tokenizer, suppress_end_with_logit_bias=False)
    assert "logit_bias" not in off.request_params(first_turn=True)


def test_first_and_later_turns_are_sent_as_two_groups_in_order(
    tokenizer: Any, apples_intent: Intent, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = UserLMServerSimulator(
        "openai/x", tokenizer, api_base=None, max_tries=1, **NO_CHECKS
    )
    sent: list[tuple[list[int], bool]] = []

    def complete_many(prompts: list[str], *, seeds: list[int], **params: Any) -> list[LLMResult]:
        sent.append((seeds, "logit_bias" in params))
        return [_result(f"turn with seed {seed}") for seed in seeds]

    monkeypatch.setattr(simulator.client, "complete_many", complete_many)
    states = [_in_conversation(apples_intent, 0), *_states(apples_intent, range(1, 3))]
    states.append(_in_conversation(apples_intent, 3))
    turns = simulator.respond(states)
    seeds = [row_seed(state, 0) for state in states]
    assert [t.text for t in turns] == [f"turn with seed {seed}" for seed in seeds]
    assert sent == [([seeds[1], seeds[2]], True), ([seeds[0], seeds[3]], False)]


def test_config_rejects_in_process_only_and_unknown_fields(tokenizer: Any) -> None:
    for in_process_only in ("device", "dtype", "batch_size"):
        with pytest.raises(TypeError, match=in_process_only):
            UserLMServerConfig(**{in_process_only: "cpu"})
    with pytest.raises(ValueError, match="min_words"):
        UserLMServerConfig(min_words=9, max_words=3)
    with pytest.raises(TypeError, match="unknown UserLMServerConfig fields"):
        UserLMServerSimulator("openai/x", tokenizer, temprature=0.3)
    greedy = UserLMServerSimulator("openai/x", tokenizer, do_sample=False)
    assert greedy.request_params()["temperature"] == 0.0
    assert "top_p" not in greedy.request_params() and greedy.config.tries == 1


def test_registry_builds_it_and_missing_tokenizer_is_typed(tokenizer: Any) -> None:
    built = make_simulator("userlm_server", model="openai/x", tokenizer=tokenizer)
    assert isinstance(built, UserLMServerSimulator)
    with pytest.raises(ModelUnavailableError, match="tokenizer"):
        load_tokenizer("/nonexistent/userlm-checkpoint")


def test_builds_offline_without_the_tokenizer_and_fails_clearly_at_first_use(
    monkeypatch: pytest.MonkeyPatch, apples_intent: Intent
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    simulator = make_simulator("userlm_server", tokenizer="microsoft/UserLM-8b", api_base=None)
    assert simulator.tokenizer_name == "microsoft/UserLM-8b"
    with pytest.raises(ModelUnavailableError, match="tokenizer") as caught:
        simulator.respond(_states(apples_intent, range(1)))
    assert EMBEDDED_MODEL in str(caught.value) and "local checkpoint" in str(caught.value)
    assert simulator.client.stats.calls == 0  # nothing was sent


def test_importing_the_server_simulator_does_not_import_torch() -> None:
    code = "import sys, simulators.userlm_server; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert done.stdout.strip() == "False"
