"""experiments/score.py end to end: a real llama.cpp server, real HTTP faults, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.fault_server import hang, malformed, rate_limited, running_fault_server, server_error

pytestmark = pytest.mark.slow


def _score_command(api_base: str, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.score",
        "assistant.model=openai/local",
        f"assistant.api_base={api_base}",
        "assistant.api_key=sk-test",
        "assistant.max_tokens=48",
        "simulator=sharded",
        "intents=tiny",
        "n_per_intent=1",
        "max_replies=3",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}


def _run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.server
def test_scores_a_litellm_model_string_against_the_real_server(
    llama_server, tmp_path: Path
) -> None:
    result = _run(_score_command(llama_server.api_base, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path)
    tasks = sorted(r["task"] for r in records)
    assert tasks == ["gsm_symbolic", "gsm_symbolic", "humaneval", "humaneval"]
    assert all(r["error"] is None and r["user_turns"] >= 1 for r in records)
    assert all(m["content"] for r in records for m in r["messages"])
    assert "assistant_score" in result.stdout and "ci95_low" in result.stdout
    assert (tmp_path / "report.md").read_text().count("\n") >= 4


def test_transient_faults_are_retried_and_the_run_finishes(tmp_path: Path) -> None:
    with running_fault_server() as server:
        server.push([rate_limited("0"), server_error(), malformed(), hang(5.0), server_error()])
        result = _run(
            _score_command(
                server.api_base, tmp_path, "assistant.timeout_s=1", "assistant.backoff_base_s=0.01"
            )
        )
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records) == 4 and all(r["error"] is None for r in records)


def test_failures_are_recorded_then_resume_completes_them(tmp_path: Path) -> None:
    with running_fault_server() as server:
        server.push([server_error()] * 400)
        failing = _run(
            _score_command(
                server.api_base,
                tmp_path,
                "assistant.max_retries=1",
                "assistant.backoff_base_s=0.01",
            )
        )
        assert failing.returncode == 3, failing.stderr[-3000:]
        first = _records(tmp_path)
        assert first and all(r["error"] and "LLMCallError" in r["error"] for r in first)
        assert "failed" in failing.stderr
        assert "most common error (4 of 4): LLMCallError" in failing.stderr
        server.reset()
        resumed = _run(_score_command(server.api_base, tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = _records(tmp_path)
    assert records[: len(first)] == first  # nothing written before was lost or rewritten
    finished = {r["key"] for r in records if r["error"] is None}
    assert len(finished) == 4


def test_killed_mid_run_resumes_without_losing_episodes(tmp_path: Path) -> None:
    with running_fault_server(default_delay_s=0.4) as server:
        command = _score_command(server.api_base, tmp_path, "batch_size=1", "n_per_intent=2")
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), start_new_session=True)
        deadline = time.monotonic() + 120
        while len(_records(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        before = _records(tmp_path)
        assert 2 <= len(before) < 8, "the run should be killed part-way"
        server.default_delay_s = 0.0
        resumed = _run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = _records(tmp_path)
    assert records[: len(before)] == before
    assert len({r["key"] for r in records}) == 8 and len(records) == 8
