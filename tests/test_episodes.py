"""experiments.episodes: a re-run into the same folder runs only missing and failed episodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from experiments.episodes import run_missing_episodes
from experiments.score import common_error
from experiments.simulate import simulate
from tests.conftest import REPO_ROOT
from userlm_env.records import read_records

CONF = REPO_ROOT / "experiments" / "conf"
OFFLINE = ["intents=tiny", "simulator=sharded", "assistant=oracle", "max_replies=6"]


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*OFFLINE, *overrides])


def test_rerun_retries_failed_episodes_and_skips_finished_ones(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    first = run_missing_episodes(_config(), results)
    records = read_records(results)
    assert (first.intents, first.ran, first.already_finished) == (4, 4, 0)
    assert all(r["error"] is None and r["solved"] for r in records)
    failed = {**records[1], "error": "LLMCallError: the provider was down", "solved": False}
    with results.open("a", encoding="utf-8") as sink:
        sink.write(json.dumps(failed) + "\n")

    second = run_missing_episodes(_config(), results)
    assert (second.ran, second.already_finished) == (1, 3)
    rerun = read_records(results)[-1]
    assert rerun["key"] == records[1]["key"] and rerun["error"] is None and rerun["solved"]

    # nothing left to run: the simulator is not even built (this config would fail to build)
    broken = _config("+simulator.no_such_setting=1")
    assert run_missing_episodes(broken, results).ran == 0


def test_simulate_table_counts_each_episode_once_after_a_retry(tmp_path: Path) -> None:
    cfg = _config()
    simulate(cfg, tmp_path)
    records = read_records(tmp_path / cfg.results_file)
    failed = {**records[0], "error": "LLMCallError: timed out", "solved": False}
    with (tmp_path / cfg.results_file).open("a", encoding="utf-8") as sink:
        sink.write(json.dumps(failed) + "\n")
    rows = simulate(cfg, tmp_path)
    assert (rows[-1]["task"], rows[-1]["episodes"], rows[-1]["failed"]) == ("all", 4, 0)
    table = (tmp_path / "summary.md").read_text()  # the retry replaced the failure
    all_row = next(line for line in table.splitlines() if line.startswith("| all"))
    assert [cell.strip() for cell in all_row.strip("|").split("|")][1:3] == ["4", "0"]


def test_common_error_counts_only_episodes_that_failed_last() -> None:
    records = [
        {"key": "a", "error": "LLMCallError: 401 bad key"},
        {"key": "b", "error": "LLMCallError: 401 bad key"},
        {"key": "c", "error": "LLMCallError: timed out"},
        {"key": "d", "error": "LLMCallError: timed out"},
        {"key": "a", "error": None},  # a's retry succeeded
    ]
    assert common_error(records) == "most common error (2 of 3): LLMCallError: timed out"
    assert common_error([{"key": "a", "error": "x" * 500}], limit=10).endswith("x" * 10 + "...")
    assert common_error([{"key": "a", "error": None}]) == "no failed episode"


def test_a_failing_sweep_job_does_not_stop_the_jobs_after_it(tmp_path: Path) -> None:
    """gsm8k without a data file cannot start (exit 2 on its own); in a sweep it must not end
    the process before the next job runs, and the sweep must still end non-zero."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "experiments.simulate", "-m", "intents=gsm8k,tiny"]
    command += ["simulator=sharded", "assistant=oracle", f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "sweep job 0" in result.stderr and "ended with status 2" in result.stderr
    (later,) = [p for p in tmp_path.iterdir() if p.is_dir() and "tiny" in p.name]
    records = read_records(later / "results.jsonl")
    assert len(records) == 4 and all(r["error"] is None for r in records)
