"""Preflight before spending, and failures reported as failures.

* ``experiments.score`` / ``experiments.simulate`` stop with exit status 2 and one ``error:``
  line before any episode when a hosted model has no key, an ``api_base`` does not answer, or
  ``assistant.model`` is left unset; a simulator that fails mid-run makes ``simulate`` exit 3
  with the most common error, which names the endpoint.
* Authentication errors are never retried: a 401 is one request, and a hosted model without
  its key (which LiteLLM reports as an HTTP 500) is one attempt; both messages say how to give
  a key.
* :func:`userlm_env.preflight.preflight` itself: a 401 on ``GET /models`` names the key
  setting, local models resolve offline without loading, the real llama.cpp server passes.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from assistants.litellm import LiteLLMAssistant
from simulators.userlm import UserLMSimulator
from simulators.userlm_server import UserLMServerSimulator
from tests.fault_server import Reply, running_fault_server, server_error
from tests.test_score import _records, _run
from userlm_env.errors import LLMCallError, ModelUnavailableError
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.models import check_available as check_local_model
from userlm_env.preflight import PreflightError, preflight
from userlm_env.retry import is_auth_error, is_retryable

HELLO = [{"role": "user", "content": "hello"}]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unauthorized() -> Reply:
    body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    return Reply(status=401, body=json.dumps(body).encode())


@dataclass
class _Refusing:
    """A loopback server that answers every GET with HTTP 401."""

    api_base: str
    asked: list[str] = field(default_factory=list)  # the paths it was asked for


@contextmanager
def _refusing_server() -> Iterator[_Refusing]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = _Refusing(f"http://127.0.0.1:{httpd.server_address[1]}/v1")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.asked.append(self.path)
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd.RequestHandlerClass = Handler
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _command(module: str, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        module,
        "intents=tiny",
        "n_per_intent=1",
        "max_replies=2",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


# --- entry points: preflight stops the run before any episode (subprocesses) -------------------


@pytest.mark.slow
def test_score_without_a_key_stops_before_any_call(tmp_path: Path, monkeypatch) -> None:
    """A hosted model name and no key: exit 2, one line naming the variable, no call made.

    Without the preflight the run starts its episodes and records each one as failed (after
    retrying, before this fix); so no results file means no episode ran and no call was made.
    The OpenAI base URL points at the fault server, which counts any request that does go out.
    """
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with running_fault_server() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.api_base)
        monkeypatch.setenv("OPENAI_API_BASE", server.api_base)
        overrides = ["assistant.model=gpt-4o-mini", "simulator=sharded"]
        result = _run(_command("experiments.score", tmp_path, *overrides))
        requests = list(server.requests)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the assistant model 'gpt-4o-mini' needs OPENAI_API_KEY, which is not set "
        "(export it, or pass assistant.api_key=...)"
    )
    assert "Traceback" not in result.stderr
    assert requests == []
    assert _records(tmp_path) == [] and not (tmp_path / "spend.json").exists()


@pytest.mark.slow
def test_score_against_a_closed_port_names_the_url_and_the_setting(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    overrides = ["assistant.model=openai/local", f"assistant.api_base={url}", "simulator=sharded"]
    result = _run(_command("experiments.score", tmp_path, *overrides))
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot reach the assistant endpoint {url} (")
    assert line.endswith(f"fix assistant.api_base={url}")
    assert "Traceback" not in result.stderr
    assert _records(tmp_path) == []


@pytest.mark.slow
def test_score_without_assistant_model_prints_one_line(tmp_path: Path) -> None:
    result = _run(_command("experiments.score", tmp_path, "simulator=sharded"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == (
        "error: assistant.model is required, e.g. assistant.model=openai/gpt-4o-mini"
    )


@pytest.mark.slow
def test_simulate_with_a_simulator_failing_mid_run_exits_3_with_the_error(tmp_path: Path) -> None:
    """The endpoint answers the preflight (so the run starts) and then fails every completion:
    the failure happens during the episodes, and ``simulate`` must not report success."""
    with running_fault_server() as server:
        server.push([server_error()] * 200)
        overrides = [
            "simulator=prompted_gpt4o_mini",
            "simulator.model=openai/user",
            f"+simulator.api_base={server.api_base}",
            "+simulator.api_key=sk-test",
            "+simulator.max_retries=0",
            "assistant=oracle",
        ]
        result = _run(_command("experiments.simulate", tmp_path, *overrides))
        asked = len(server.requests)
    assert result.returncode == 3, result.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records) == 4 and all(r["error"] for r in records)
    assert asked >= 4  # the episodes did run and call the simulator
    call = f"LLM call to 'openai/user' at {server.api_base} failed after 1 attempt"
    assert f"most common error (4 of 4): LLMCallError: {call}" in result.stderr


# --- authentication errors are never retried (in-process) --------------------------------------


def test_a_401_is_one_request_and_the_error_names_the_key_setting() -> None:
    with running_fault_server() as server:
        server.push([_unauthorized()] * 10)
        config = LLMConfig(
            model="openai/local", api_base=server.api_base, api_key="sk-wrong", max_retries=4
        )
        client = LLMClient(config)
        with pytest.raises(LLMCallError) as caught:
            client.chat_many([HELLO])
        assert len(server.requests) == 1
    assert caught.value.attempts == 1 and client.stats.retries == 0
    message = str(caught.value)
    assert server.api_base in message
    assert "authentication failed and is not retried" in message
    assert "api_key" in message and "OPENAI_API_KEY" in message


def test_a_hosted_model_without_its_key_is_not_retried(monkeypatch) -> None:
    """LiteLLM reports the missing key as an HTTP 500, which used to be retried 5 times."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = LLMClient(LLMConfig(model="gpt-4o-mini", max_retries=4, backoff_base_s=0.0))
    with pytest.raises(LLMCallError) as caught:
        client.chat_many([HELLO])
    assert caught.value.attempts == 1 and client.stats.retries == 0
    assert getattr(caught.value.last_error, "status_code", None) == 500
    assert is_auth_error(caught.value.last_error)
    assert not is_retryable(caught.value.last_error)
    assert "set OPENAI_API_KEY, or give the key as the api_key setting" in str(caught.value)


def test_transient_errors_are_still_retried() -> None:
    with running_fault_server() as server:
        server.push([server_error(), server_error()])
        config = LLMConfig(
            model="openai/local", api_base=server.api_base, api_key="sk-test", backoff_base_s=0.0
        )
        client = LLMClient(config)
        assert client.chat_many([HELLO])[0].text
        assert len(server.requests) == 3 and client.stats.retries == 2


# --- preflight itself (in-process) ---------------------------------------------------------------


def test_an_endpoint_refusing_the_key_fails_preflight_with_one_request() -> None:
    with _refusing_server() as server:
        base = server.api_base
        assistant = LiteLLMAssistant("openai/local", api_base=base, api_key="sk-wrong")
        with pytest.raises(PreflightError) as caught:
            preflight({"assistant": assistant})
        assert server.asked == ["/v1/models"]
    assert str(caught.value) == (
        f"the assistant endpoint {base} refused the key (HTTP 401 on GET {base}/models): "
        "check the key given as assistant.api_key=... or in OPENAI_API_KEY"
    )


def test_an_endpoint_without_a_models_route_passes() -> None:
    """The fault server answers GET with 501: the server is there, so the run may start."""
    with running_fault_server() as server:
        simulator = UserLMServerSimulator(
            "openai/user", tokenizer="smollm2-135m-instruct", api_base=server.api_base
        )
        passed = preflight({"simulator": simulator})
        assert server.requests == []  # no completion was requested
    assert f"simulator endpoint {server.api_base} answered (HTTP 501)" in passed
    assert "simulator tokenizer 'smollm2-135m-instruct' is available offline" in passed


def test_local_models_resolve_offline_without_loading(tmp_path: Path) -> None:
    check_local_model("smollm2-135m-instruct")
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache"):
        check_local_model("microsoft/UserLM-8b")
    with pytest.raises(ModelUnavailableError, match="no model at the path"):
        check_local_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="holds no model"):
        check_local_model(str(tmp_path / "empty"))
    simulator = UserLMSimulator("microsoft/UserLM-8b")
    with pytest.raises(PreflightError) as caught:
        preflight({"simulator": simulator})
    assert str(caught.value).startswith(
        "the simulator model (simulator.model=microsoft/UserLM-8b) is not available: "
        "'microsoft/UserLM-8b' is not in the local Hugging Face cache"
    )


@pytest.mark.slow
@pytest.mark.server
def test_preflight_passes_on_the_real_llama_server(llama_server) -> None:
    assistant = LiteLLMAssistant(
        llama_server.model, api_base=llama_server.api_base, api_key=llama_server.api_key
    )
    simulator = UserLMServerSimulator(
        llama_server.model, tokenizer="smollm2-135m-instruct", api_base=llama_server.api_base
    )
    passed = preflight({"assistant": assistant, "simulator": simulator}, timeout_s=5.0)
    assert f"assistant endpoint {llama_server.api_base} answered (HTTP 200)" in passed
    # the simulator's key differs, so its endpoint is asked on its own
    assert f"simulator endpoint {llama_server.api_base} answered (HTTP 200)" in passed
