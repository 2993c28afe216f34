"""The spending cap of ``experiments.score`` end to end, against the scripted fault server.

The fault server stands in for a hosted model because it reports token usage on every reply
(a local llama.cpp server is unpriced); the model name ``openai/gpt-4o-mini`` makes LiteLLM's
local price map price those tokens, so the run's recorded spend grows call by call.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.fault_server import running_fault_server
from tests.test_score import _env, _records, _run
from userlm_env.pricing import litellm_price

pytestmark = pytest.mark.slow

EPISODES = 12  # intents=tiny (4 intents) x n_per_intent=3
REPLIES = 3  # the fault server never solves: every episode takes max_replies replies
IN_FLIGHT = 2  # batch_size


def _command(api_base: str, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.score",
        "assistant.model=openai/gpt-4o-mini",
        f"assistant.api_base={api_base}",
        "assistant.api_key=sk-test",
        "assistant.max_retries=0",
        "simulator=sharded",
        "intents=tiny",
        "n_per_intent=3",
        f"max_replies={REPLIES}",
        f"batch_size={IN_FLIGHT}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def _ledger(run_dir: Path) -> dict:
    return json.loads((run_dir / "spend.json").read_text())


def test_the_cap_stops_new_episodes_keeps_records_and_a_higher_cap_resumes(
    tmp_path: Path,
) -> None:
    price = litellm_price("openai/gpt-4o-mini")
    assert price is not None
    per_call = price.of_tokens(10, 5)  # the fault server's usage on every reply
    cap = 4 * REPLIES * per_call  # about four episodes' worth
    with running_fault_server() as server:
        capped = _run(_command(server.api_base, tmp_path, f"max_cost_usd={cap}"))
        assert capped.returncode == 4, capped.stderr[-3000:]
        assert "spending cap" in capped.stderr and "higher max_cost_usd" in capped.stderr
        first = _records(tmp_path)
        assert 0 < len(first) < EPISODES
        assert all(r["error"] is None and r["replies"] == REPLIES for r in first)
        spent = _ledger(tmp_path)["known_usd"]
        assert spent >= cap
        # Nothing starts past the cap: at most the episodes in flight when it was reached.
        assert spent <= cap + IN_FLIGHT * REPLIES * per_call + 1e-12
        assert spent == pytest.approx(len(server.requests) * per_call)
        assert "assistant_score" in capped.stdout  # the finished episodes are reported
        first_lines = (tmp_path / "results.jsonl").read_text()

        again = _run(_command(server.api_base, tmp_path, f"max_cost_usd={cap}"))
        assert again.returncode == 4
        assert len(_records(tmp_path)) == len(first)  # the same cap starts nothing

        resumed = _run(_command(server.api_base, tmp_path, "max_cost_usd=1.0"))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        records = _records(tmp_path)
        assert (tmp_path / "results.jsonl").read_text().startswith(first_lines)
        assert len(records) == EPISODES == len({r["key"] for r in records})
        assert _ledger(tmp_path)["known_usd"] == pytest.approx(EPISODES * REPLIES * per_call)


def test_a_cap_on_an_unpriced_model_is_refused_before_any_call(tmp_path: Path) -> None:
    with running_fault_server() as server:
        command = _command(server.api_base, tmp_path, "max_cost_usd=1")
        command[3] = "assistant.model=openai/my-local-model"
        refused = _run(command)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "openai/my-local-model" in refused.stderr
        assert "assistant.input_usd_per_mtok" in refused.stderr
        assert server.requests == []
        assert not (tmp_path / "results.jsonl").exists()

        priced = _run(
            [*command, "assistant.input_usd_per_mtok=0", "assistant.output_usd_per_mtok=0"]
        )
        assert priced.returncode == 0, priced.stderr[-3000:]
        assert len(_records(tmp_path)) == EPISODES
        assert _ledger(tmp_path) == {"known_usd": 0.0, "unknown_calls": 0}


def test_progress_lines_count_episodes_without_a_terminal(tmp_path: Path) -> None:
    with running_fault_server() as server:
        result = _run(_command(server.api_base, tmp_path, "progress.plain_every_items=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("[score]")]
    assert "\r" not in result.stderr
    counts = [line.split()[1] for line in lines]
    assert counts[:4] == ["0/12", "4/12", "8/12", "12/12"]
    assert lines[-1].endswith("finished") and counts[-1] == "12/12"
    assert all("failed 0" in line and "spent $" in line for line in lines)


def test_litellm_per_call_lines_are_quiet_unless_verbose(tmp_path: Path) -> None:
    with running_fault_server() as server:
        quiet = _run(_command(server.api_base, tmp_path / "quiet", "n_per_intent=1"))
        loud = _run(_command(server.api_base, tmp_path / "loud", "n_per_intent=1", "verbose=true"))
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:]
    assert "LiteLLM completion()" not in quiet.stdout + quiet.stderr
    assert "LiteLLM completion()" in loud.stdout + loud.stderr


def test_dry_run_prints_bounds_and_calls_nothing(tmp_path: Path) -> None:
    with running_fault_server() as server:
        result = _run(_command(server.api_base, tmp_path, "dry_run=true", "max_cost_usd=1"))
        assert server.requests == []
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(EPISODES) in result.stdout and "assistant" in result.stdout
    assert "max_cost_usd=1" in result.stdout
    assert not (tmp_path / "results.jsonl").exists()


def _readme_command(marker: str) -> list[str]:
    """The README's command whose text contains ``marker``, continuation lines joined."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(line for line in text.splitlines() if marker in line and "experiments." in line)
    return shlex.split(line.split("#", 1)[0])


def test_the_readme_dry_run_runs_as_written_offline(tmp_path: Path) -> None:
    argv = _readme_command("dry_run=true")
    assert argv[:3] == [".venv/bin/python", "-m", "experiments.score"]
    env_without_key = {k: v for k, v in _env().items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, *argv[1:], f"hydra.run.dir={tmp_path}"],
        cwd=REPO_ROOT,
        env=env_without_key,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1640" in result.stdout  # 164 HumanEval intents x 10
    assert "gpt-4o-mini" in result.stdout


def test_the_readme_cap_command_is_the_one_tested_here() -> None:
    argv = _readme_command("max_cost_usd=")
    overrides = dict(a.split("=", 1) for a in argv[3:] if "=" in a)
    assert overrides["assistant.model"] == "openai/gpt-4o-mini"
    assert overrides["simulator"] == "sharded" and "max_cost_usd" in overrides
