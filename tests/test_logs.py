"""Quiet logs: one line per retry storm, LiteLLM's per-call lines off unless verbose, each
LiteLLM record printed once (:mod:`userlm_env.logs`, :mod:`userlm_env.retry_log`)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_server import FaultServer, rate_limited, server_error
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.llm_transport import load_litellm
from userlm_env.logs import CHATTY_LOGGERS, quiet_libraries
from userlm_env.retry_log import RetryStormLog, RetryStormSummary
from userlm_env.types import Message

PER_CALL_LINE = "LiteLLM completion()"
STORM_LINE = "retrying LLM calls to"


class _Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ask(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def _config(server: FaultServer, **overrides: object) -> LLMConfig:
    settings = {"backoff_base_s": 0.01, "backoff_max_s": 1.0, "timeout_s": 5.0, **overrides}
    return LLMConfig("openai/fault-model", server.api_base, "test-key", **settings)  # type: ignore[arg-type]


def _storm_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "userlm_env.llm"]


@pytest.fixture()
def restored_logging() -> Iterator[None]:
    """Put back the chatty loggers' levels and handlers and LiteLLM's flags after the test
    (LiteLLM imported first, so the test settles an already imported LiteLLM)."""
    litellm: Any = load_litellm()
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    saved = [(lg.level, list(lg.handlers), lg.propagate) for lg in loggers]
    flags = (litellm.suppress_debug_info, litellm.set_verbose, litellm._logging.set_verbose)
    yield
    for lg, (level, handlers, propagate) in zip(loggers, saved, strict=True):
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate
    litellm.suppress_debug_info, litellm.set_verbose, litellm._logging.set_verbose = flags


def test_a_retry_storm_logs_one_line_and_counts_every_retry(
    fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Retry-After 0.2 s holds every retry back until all three first attempts have failed
    fault_server.push([rate_limited(retry_after="0.2")] * 5)
    config = _config(fault_server, max_retries=6)
    clock = _Clock()
    client = LLMClient(config, retry_log=RetryStormLog(config.model, config.api_base, clock=clock))
    with caplog.at_level(logging.WARNING):
        results = client.chat_many([_ask(f"q{i}") for i in range(3)])
    assert [r.text.split("to: ")[1] for r in results] == ["q0", "q1", "q2"]
    failed_calls = {str(r.body["messages"]) for r in fault_server.requests[:5]}
    assert len(failed_calls) == 3  # the storm spans all three concurrent calls
    assert client.stats.retries == 5
    (line,) = _storm_lines(caplog)
    assert line.levelno == logging.WARNING
    text = line.getMessage()
    assert "openai/fault-model" in text and fault_server.api_base in text
    assert "RateLimitError (HTTP 429): " in text and "rate limit reached" in text
    assert "counted, not logged" in text and "previous storm" not in text

    clock.now += 31.0  # a quiet spell longer than quiet_s (30 s): the next retry starts a storm
    fault_server.push([server_error(), server_error()])
    with caplog.at_level(logging.WARNING):
        client.chat_many([_ask("again")])
    first, second = _storm_lines(caplog)
    assert first is line
    assert "InternalServerError (HTTP 500): " in second.getMessage()
    assert "(previous storm: 5 retries over 0.0 s)" in second.getMessage()
    assert client.stats.retries == 7
    assert client.retry_log.summary() == RetryStormSummary(7, 2, 2, 0.0)
    assert str(client.retry_log.summary()) == "7 retries in 2 storms; last: 2 retries over 0.0 s"


def test_storms_are_told_apart_by_the_gap_between_retries() -> None:
    clock = _Clock()
    log = RetryStormLog("openai/m", quiet_s=10.0, clock=clock, logger=logging.getLogger("t"))
    assert str(log.summary()) == "no retries"
    for step in (0.0, 9.0, 9.0, 9.0):  # each within 10 s of the previous: one storm of 27 s
        clock.now += step
        log.record(TimeoutError("slow"))
    clock.now += 10.0
    log.record(TimeoutError("slow"))
    assert log.summary() == RetryStormSummary(5, 2, 1, 0.0)


def test_b_quiet_libraries_silences_litellm_but_not_warnings(
    fault_server: FaultServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    restored_logging: None,
) -> None:
    caplog.set_level(logging.INFO)  # the root logger prints INFO, as under Hydra
    quiet_libraries()
    fault_server.push([server_error()])  # a mapped error: LiteLLM's banner path, quietened
    (result,) = LLMClient(_config(fault_server)).chat_many([_ask("hi")])
    assert result.text.endswith("to: hi")
    logging.getLogger("LiteLLM").warning("a warning of LiteLLM's")
    chatty = [r for r in caplog.records if r.name.split(".")[0] in CHATTY_LOGGERS]
    assert [(r.levelno, r.getMessage()) for r in chatty] == [
        (logging.WARNING, "a warning of LiteLLM's")
    ]
    assert capfd.readouterr().out == ""

    caplog.clear()
    quiet_libraries(verbose=True)
    LLMClient(_config(fault_server)).chat_many([_ask("again")])
    per_call = [r for r in caplog.records if PER_CALL_LINE in r.getMessage()]
    assert [(r.name, r.levelno) for r in per_call] == [("LiteLLM", logging.INFO)]


_SCRIPT = """
import logging, sys
# as Hydra's default job logging does: the root logger prints INFO on stdout
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format=FORMAT)
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.logs import quiet_libraries

quiet_libraries()  # before LiteLLM's lazy import, as an entry point would call it
config = LLMConfig("openai/fault-model", sys.argv[1], "test-key", backoff_base_s=0.01)
print(LLMClient(config).chat_many([[{"role": "user", "content": "hi"}]])[0].text)
print("--- verbose ---", flush=True)
quiet_libraries(verbose=True)
print(LLMClient(config).chat_many([[{"role": "user", "content": "hi"}]])[0].text)
"""


@pytest.mark.slow
def test_c_a_root_logger_at_info_shows_no_per_call_line_then_each_once(
    fault_server: FaultServer,
) -> None:
    fault_server.push([server_error()])
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, fault_server.api_base],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    quiet, verbose = done.stdout.split("--- verbose ---")
    assert PER_CALL_LINE not in quiet
    assert quiet.count(STORM_LINE) == 1  # the retry's warning still shows
    assert "Give Feedback" not in quiet
    assert verbose.count(PER_CALL_LINE) == 1  # one call, printed once (not also by LiteLLM)
