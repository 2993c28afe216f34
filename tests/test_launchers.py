"""The README's cluster launchers run the 2x2 offline sweep: Ray on a real head, submitit locally.

Ray: ``ray start --head`` in a fixture (free ports, its own temp folder) and Hydra's Ray launcher
connecting to it by address, as on a real cluster, with a token of its own: Ray 2.59+ turns token
auth on in ``ray start`` when ``~/.ray/auth_token`` exists (any local ``ray.init()`` writes it) yet
leaves it off in a driver that connects (ray-project/ray#64755). The head and every process under
it are stopped afterwards, also when the test fails. submitit: its local executor, which runs each
job as its own process the way SLURM would. Both need the ``clusters`` extra
(``install.sh --test``).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from shutil import rmtree

import pytest

from tests.sweeps import assert_two_by_two, run_two_by_two_sweep, stop_process_tree

RAY_STARTED = "Ray runtime started."  # what `ray start` prints once the head node is up
RAY_START_TIMEOUT_S = 120  # a cold head on 2 busy cores takes 10-20 s
RAY_STOP_GRACE_S = 30.0  # a terminated head drains for up to 30 s before it stops its services
OBJECT_STORE_BYTES = 75 * 1024 * 1024  # Ray's minimum; the sweep moves only small results


@dataclass(frozen=True)
class RayHead:
    """A running one-node Ray cluster and what a driver needs to join it."""

    address: str  # the head's GCS, ``127.0.0.1:<port>``
    env: dict[str, str]  # token auth settings, for the head and every driver


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _ray_start_command(temp_dir: Path, ports: list[int]) -> list[str]:
    """``ray start`` for a one-node head that blocks in the foreground until terminated.

    Every port Ray would otherwise take at a fixed default is free instead, so that this head
    cannot meet another one on the machine.
    """
    gcs_port, client_port, dashboard_port, agent_port = ports
    return [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--port={gcs_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        "--include-dashboard=false",
        "--num-cpus=2",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]


def _wait_for_head(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once the head's log says it started; fail if it exits or takes too long."""
    deadline = time.monotonic() + RAY_START_TIMEOUT_S
    while RAY_STARTED not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"ray start did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


@pytest.fixture()
def ray_head(tmp_path: Path) -> Iterator[RayHead]:
    """A one-node Ray cluster for this test only, with token auth and a fresh token."""
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ports = _free_ports(4)
    # Short and outside tmp_path: Ray's Unix socket paths under it must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
    log = tmp_path / "ray_head.log"
    env = {**os.environ, **auth, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _ray_start_command(temp_dir, ports),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # terminal signals reach only this fixture's clean-up
        )
    try:
        _wait_for_head(proc, log)
        yield RayHead(f"127.0.0.1:{ports[0]}", auth)
    finally:
        stop_process_tree(proc, grace_s=RAY_STOP_GRACE_S)
        rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_launcher_runs_the_sweep_on_a_ray_cluster(ray_head: RayHead, tmp_path: Path) -> None:
    launcher = [
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={ray_head.address}",
        # The plugin passes a default object store size, which Ray refuses when connecting to a
        # running cluster (facebookresearch/hydra#2893); null keeps it out of ray.init.
        "+hydra.launcher.ray.init.object_store_memory=null",
    ]
    rows = run_two_by_two_sweep(tmp_path / "sweep", launcher, env=ray_head.env)
    assert_two_by_two(rows, episodes=1)


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_sweep(tmp_path: Path) -> None:
    rows = run_two_by_two_sweep(tmp_path / "sweep", ["hydra/launcher=submitit_local"])
    assert_two_by_two(rows, episodes=1)


def test_readme_slurm_and_ray_commands_compose() -> None:
    """The README's SLURM and Ray-cluster commands need a cluster and an API key; their closest
    offline variants are the sweeps above. Here their exact overrides compose into the launcher
    plugins they name (no job is started)."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "experiments" / "conf"
    common = [
        "experiment=paper_table3",
        "assistant.model=gpt-4o",
        "simulator=userlm_8b",
    ]
    launchers = {
        "hydra/launcher=submitit_slurm": ("SlurmLauncher", []),
        "hydra/launcher=ray": (
            "RayLauncher",
            [
                "hydra.launcher.ray.init.address=auto",
                "+hydra.launcher.ray.init.object_store_memory=null",
            ],
        ),
    }
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for launcher, (target, extra) in launchers.items():
            cfg = compose("score", [launcher, *extra, *common], return_hydra_config=True)
            assert cfg.hydra.launcher._target_.endswith(target)
            assert cfg.assistant.model == "gpt-4o" and cfg.n_per_intent == 10
