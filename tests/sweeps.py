"""A 2x2 offline sweep of ``experiments.simulate`` under any Hydra launcher, and process clean-up.

The sweep crosses two rule-based simulators with two tasks and answers with the oracle assistant,
so it needs no model and no network. The joblib test (tests/test_experiments.py) and the cluster
launcher tests (tests/test_launchers.py) run it and check the merged report the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

from experiments.report import collect_runs, merge_rows
from tests.conftest import REPO_ROOT

__all__ = [
    "TWO_BY_TWO_CELLS",
    "assert_two_by_two",
    "run_two_by_two_sweep",
    "stop_process_tree",
    "sweep_command",
]

# (simulator, intents) of each merged report row, in report order.
TWO_BY_TWO_CELLS = [
    ("sharded", "gsm_symbolic"),
    ("sharded", "humaneval"),
    ("sharded_required_last", "gsm_symbolic"),
    ("sharded_required_last", "humaneval"),
]
SWEEP_TIMEOUT_S = 300  # the whole multirun, the launcher's start-up included
GRACE_S = 10.0  # how long a terminated process tree may take to exit before it is killed


def sweep_command(
    sweep_dir: Path, launcher_overrides: Sequence[str], max_intents_per_task: int
) -> list[str]:
    """The ``experiments.simulate`` multirun command line of the 2x2 sweep into ``sweep_dir``."""
    return [
        sys.executable,
        "-m",
        "experiments.simulate",
        "-m",
        *launcher_overrides,
        "simulator=sharded,sharded_required_last",
        "intents=gsm_symbolic,humaneval",
        "assistant=oracle",
        f"max_intents_per_task={max_intents_per_task}",
        "n_per_intent=1",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def run_two_by_two_sweep(
    sweep_dir: Path,
    launcher_overrides: Sequence[str],
    *,
    max_intents_per_task: int = 1,
    env: Mapping[str, str] | None = None,
    timeout_s: float = SWEEP_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Run the 2x2 sweep and return its merged report rows.

    Args:
        sweep_dir: The Hydra sweep folder (``hydra.sweep.dir``).
        launcher_overrides: Overrides choosing and configuring the launcher.
        max_intents_per_task: Intents kept per task, so episodes per row.
        env: Environment variables to set for the sweep, on top of this process's.
        timeout_s: Wall-clock limit; past it the sweep's whole process tree is stopped.

    Returns:
        ``merge_rows(collect_runs(sweep_dir))``.
    """
    command = sweep_command(sweep_dir, launcher_overrides, max_intents_per_task)
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # terminal signals reach only this test's clean-up
    )
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process_tree(proc, grace_s=1.0)
        pytest.fail(f"sweep ran past {timeout_s}s:\n{proc.communicate()[1][-3000:]}")
    except BaseException:
        stop_process_tree(proc, grace_s=1.0)
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return merge_rows(collect_runs(sweep_dir))


def assert_two_by_two(rows: list[dict[str, Any]], episodes: int) -> None:
    """Check one row per simulator x task, each with ``episodes`` episodes and no failure."""
    assert [(r["simulator"], r["intents"]) for r in rows] == TWO_BY_TWO_CELLS
    assert all(r["episodes"] == episodes and r["failed"] == 0 for r in rows), rows


def stop_process_tree(proc: subprocess.Popen[Any], grace_s: float = GRACE_S) -> None:
    """Stop a child process this test started, and every process below it.

    Only the child gets SIGTERM (a ``ray start --block`` head then drains and stops its own
    services); whatever of its tree is still alive after ``grace_s`` is killed. The tree is listed
    before the child is signalled, so that none of it is lost once the child is gone; psutil
    refuses to signal an id that a new process has reused since.

    Args:
        proc: A child started with ``subprocess.Popen``; nothing is done once it is reaped,
            since its id may then belong to someone else.
        grace_s: Seconds the child, then its descendants, may take to exit.
    """
    if proc.returncode is not None:
        return
    descendants: list[psutil.Process] = []
    with suppress(psutil.NoSuchProcess):
        descendants = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(descendants, timeout=grace_s)
    for process in alive:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)
