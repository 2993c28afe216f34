"""Tests of :mod:`userlm_env.llm` against the real llama.cpp server and the fault server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fault_server import (
    FaultServer,
    bad_request,
    hang,
    malformed,
    rate_limited,
    server_error,
)
from tests.server_fixtures import LlamaServer
from userlm_env.errors import LLMCallError
from userlm_env.llm import PLACEHOLDER_API_KEY, LLMClient, LLMConfig
from userlm_env.types import Message

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 2.0, "timeout_s": 5.0}


def _ask(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def _fault_client(server: FaultServer, **overrides: object) -> LLMClient:
    settings = {**FAST, "model": "openai/fault-model", "api_base": server.api_base}
    config = LLMConfig(**{**settings, "api_key": "test-key", **overrides})  # type: ignore[arg-type]
    return LLMClient(config)


def _llama_client(server: LlamaServer, **overrides: object) -> LLMClient:
    settings = {"model": server.model, "api_base": server.api_base, "api_key": server.api_key}
    defaults = {"temperature": 0.0, "max_tokens": 12, "timeout_s": 60.0, "concurrency": 4}
    return LLMClient(LLMConfig(**{**settings, **defaults, **overrides}))  # type: ignore[arg-type]


# -- the real llama.cpp server ----------------------------------------------------------------


@pytest.mark.server
def test_chat_many_on_llama_keeps_order(llama_server: LlamaServer) -> None:
    client = _llama_client(llama_server, max_tokens=6)
    # greedy, and no two questions share a first token: whichever order the server takes them
    # in, each evaluates the same suffix after the cached chat header, so results cannot drift
    questions = ["Name a fruit.", "Say hello.", "What is 2 + 2?", "Pick a color."]
    results = client.chat_many([_ask(q) for q in questions], seeds=[1, 2, 3, 4])
    one_by_one = [
        client.chat_many([_ask(q)], seeds=[s])[0]
        for q, s in zip(questions, [1, 2, 3, 4], strict=True)
    ]
    assert len(results) == 4
    assert all(r.text.strip() and not r.cached for r in results)
    assert [r.text for r in results] == [r.text for r in one_by_one]
    assert all(r.usage["completion_tokens"] > 0 for r in results)


@pytest.mark.server
def test_complete_many_on_llama(llama_server: LlamaServer) -> None:
    client = _llama_client(llama_server)
    results = client.complete_many(["The capital of France is", "1, 2, 3,"])
    assert [bool(r.text.strip()) for r in results] == [True, True]
    assert all(r.finish_reason in {"stop", "length"} for r in results)
    assert all(r.usage["completion_tokens"] > 0 for r in results)


@pytest.mark.server
def test_seed_makes_llama_reproducible(llama_server: LlamaServer) -> None:
    greedy = _llama_client(llama_server)
    sampled = _llama_client(llama_server, temperature=1.0)
    texts = []
    for client in (greedy, greedy, sampled, sampled):
        llama_server.forget_prompt_cache()  # else the second run replays a cached prompt
        texts.append(client.chat_many([_ask("Tell me a story.")], seeds=[7])[0].text)
    assert texts[0] == texts[1] and texts[2] == texts[3]
    assert all(text.strip() for text in texts)


@pytest.mark.server
def test_local_server_needs_no_key(
    llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = LLMConfig(llama_server.model, llama_server.api_base, max_tokens=4, max_retries=0)
    (result,) = LLMClient(config).chat_many([_ask("Hi")])
    assert result.text.strip() and result.usage["completion_tokens"] > 0


@pytest.mark.server
def test_unpriced_local_model_has_no_cost(llama_server: LlamaServer) -> None:
    client = _llama_client(llama_server, max_tokens=4)
    (result,) = client.chat_many([_ask("Hi")])
    assert result.cost is None
    assert client.stats.cost_unknown_calls == 1
    assert client.stats.cost_known == 0.0


# -- faults -----------------------------------------------------------------------------------


def test_rate_limit_is_retried_after_retry_after(fault_server: FaultServer) -> None:
    fault_server.push([rate_limited(retry_after="1")])
    client = _fault_client(fault_server)
    start = time.monotonic()
    (result,) = client.chat_many([_ask("hi")])
    assert time.monotonic() - start >= 0.95  # waited as told, not the 10 ms backoff
    assert result.text.endswith("to: hi")
    assert len(fault_server.requests) == 2
    assert client.stats.retries == 1


def test_server_errors_are_retried(fault_server: FaultServer) -> None:
    fault_server.push([server_error(), server_error()])
    client = _fault_client(fault_server)
    (result,) = client.complete_many(["abc"])
    assert result.text.endswith("to: abc")
    assert len(fault_server.requests) == 3
    assert client.stats.retries == 2


def test_hanging_response_times_out_and_is_retried(fault_server: FaultServer) -> None:
    fault_server.push([hang(10.0)])
    client = _fault_client(fault_server, timeout_s=0.5)
    start = time.monotonic()
    (result,) = client.chat_many([_ask("hi")])
    assert time.monotonic() - start < 4.0
    assert result.text
    assert len(fault_server.requests) == 2
    assert client.stats.retries == 1


def test_malformed_json_is_retried(fault_server: FaultServer) -> None:
    fault_server.push([malformed()])
    client = _fault_client(fault_server)
    (result,) = client.chat_many([_ask("hi")])
    assert result.text.endswith("to: hi")
    assert client.stats.retries == 1


def test_bad_request_fails_at_once(fault_server: FaultServer) -> None:
    fault_server.push([bad_request()])
    client = _fault_client(fault_server)
    with pytest.raises(LLMCallError, match="1 attempt") as caught:
        client.chat_many([_ask("hi")])
    assert caught.value.attempts == 1  # type: ignore[attr-defined]
    assert caught.value.last_error.status_code == 400  # type: ignore[attr-defined]
    assert len(fault_server.requests) == 1
    assert client.stats.retries == 0
    assert client.stats.failures == 1


def test_persistent_server_error_gives_up(fault_server: FaultServer) -> None:
    fault_server.push([server_error()] * 10)
    client = _fault_client(fault_server, max_retries=2)
    with pytest.raises(LLMCallError) as caught:
        client.chat_many([_ask("hi")])
    assert caught.value.attempts == 3  # type: ignore[attr-defined]
    assert len(fault_server.requests) == 3


def test_connection_refused_is_retried_then_fails() -> None:
    from tests.server_fixtures import _free_port

    api_base = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    config = LLMConfig("openai/x", api_base, "k", max_retries=1, backoff_base_s=0.01)
    client = LLMClient(config)
    with pytest.raises(LLMCallError) as caught:
        client.chat_many([_ask("hi")])
    assert caught.value.attempts == 2  # type: ignore[attr-defined]


def test_keyless_api_base_gets_the_placeholder_else_the_environment_key(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _fault_client(fault_server, api_key=None).chat_many([_ask("a")])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    _fault_client(fault_server, api_key=None).chat_many([_ask("b")])
    sent = [request.headers["authorization"] for request in fault_server.requests]
    assert sent == [f"Bearer {PLACEHOLDER_API_KEY}", "Bearer sk-from-env"]


def test_key_seed_and_params_reach_the_server(fault_server: FaultServer) -> None:
    extra = {"stop": ["END"], "presence_penalty": 0.5}
    client = _fault_client(fault_server, api_key="sk-secret", temperature=0.3, extra=extra)
    client.chat_many([_ask("a")], seeds=[11], max_tokens=7)
    client.complete_many(["b"], seeds=[12])
    chat, text = fault_server.requests
    assert (chat.path, text.path) == ("/v1/chat/completions", "/v1/completions")
    for request, seed in ((chat, 11), (text, 12)):
        assert request.headers["authorization"] == "Bearer sk-secret"
        assert request.body["seed"] == seed
        assert request.body["stop"] == ["END"]
        assert request.body["presence_penalty"] == 0.5
        assert request.body["temperature"] == 0.3
    assert chat.body["max_tokens"] == 7
    assert chat.body["messages"] == [{"role": "user", "content": "a"}]
    assert text.body["prompt"] == "b"


def test_logprobs_reach_raw_and_survive_cache(fault_server: FaultServer, tmp_path: Path) -> None:
    client = _fault_client(fault_server, cache_dir=str(tmp_path))
    (chat,) = client.chat_many([_ask("hi")], logprobs=True)
    (text,) = client.complete_many(["abc"], logprobs=1)
    (cached,) = client.complete_many(["abc"], logprobs=1)
    assert chat.raw is not None and chat.raw["logprobs"]["content"][0]["logprob"] == -0.5
    assert text.raw is not None and text.raw["logprobs"]["tokens"] == ["reply"]
    assert cached.cached and cached.raw == text.raw
    assert fault_server.requests[0].body["logprobs"] is True


def test_cache_hit_makes_no_request(fault_server: FaultServer, tmp_path: Path) -> None:
    client = _fault_client(fault_server, cache_dir=str(tmp_path))
    (first,) = client.chat_many([_ask("hi")], seeds=[1])
    (again,) = _fault_client(fault_server, cache_dir=str(tmp_path)).chat_many(
        [_ask("hi")], seeds=[1]
    )
    assert len(fault_server.requests) == 1
    assert (first.cached, again.cached) == (False, True)
    assert (again.text, again.usage) == (first.text, first.usage)
    client.chat_many([_ask("hi")], seeds=[2])  # another seed is another key
    assert len(fault_server.requests) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_failures_are_not_cached(fault_server: FaultServer, tmp_path: Path) -> None:
    fault_server.push([bad_request()])
    client = _fault_client(fault_server, cache_dir=str(tmp_path))
    with pytest.raises(LLMCallError):
        client.chat_many([_ask("hi")])
    (result,) = client.chat_many([_ask("hi")])
    assert not result.cached
    assert len(fault_server.requests) == 2


def test_concurrency_limit_is_honoured(fault_server: FaultServer) -> None:
    fault_server.default_delay_s = 0.2
    client = _fault_client(fault_server, concurrency=2)
    results = client.chat_many([_ask(f"q{i}") for i in range(6)])
    assert fault_server.max_in_flight == 2
    assert len({r.client_port for r in fault_server.requests}) <= 2  # a pool of 2 connections
    assert [r.text.split("to: ")[1] for r in results] == [f"q{i}" for i in range(6)]


def test_many_works_inside_a_running_loop(fault_server: FaultServer) -> None:
    client = _fault_client(fault_server)

    async def caller() -> list[str]:
        return [r.text for r in client.complete_many(["x", "y"])]

    texts = asyncio.run(caller())
    assert [t[-1] for t in texts] == ["x", "y"]


def test_async_api_on_the_callers_loop(fault_server: FaultServer) -> None:
    client = _fault_client(fault_server)

    async def caller() -> str:
        try:
            return (await client.achat(_ask("z"), seed=3)).text
        finally:
            await client.aclose()

    assert asyncio.run(caller()).endswith("to: z")
    assert fault_server.requests[0].body["seed"] == 3


def test_priced_model_gets_a_float_cost(fault_server: FaultServer) -> None:
    import litellm

    client = _fault_client(fault_server, model="openai/gpt-4o-mini")
    (result,) = client.chat_many([_ask("hi")])
    price = litellm.model_cost["gpt-4o-mini"]
    usage = result.usage
    expected = (
        usage["prompt_tokens"] * price["input_cost_per_token"]
        + usage["completion_tokens"] * price["output_cost_per_token"]
    )
    assert isinstance(result.cost, float)
    assert result.cost == pytest.approx(expected)
    assert client.stats.cost_known == pytest.approx(expected)


# -- configuration and import ----------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(fault_server: FaultServer) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        LLMConfig(model="openai/x", concurrency=0)
    client = _fault_client(fault_server)
    with pytest.raises(ValueError, match="seeds"):
        client.chat_many([_ask("a"), _ask("b")], seeds=[1])
    with pytest.raises(TypeError, match="prompt"):
        asyncio.run(client.acomplete(["not", "a", "string"]))  # type: ignore[arg-type]


def test_import_stays_light() -> None:
    code = "import sys, userlm_env.llm; print('litellm' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
