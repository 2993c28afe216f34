"""The host half of the sandbox: a pool of long-lived sandboxed workers behind a batched API.

Each worker is one isolated process tree (see :mod:`userlm_env.tasks.sandbox.worker`) started
once and reused for many programs; the host only exchanges framed JSON with it. Workers start
lazily on first use, in parallel, from long-lived pool threads (``--die-with-parent`` ties a
worker's life to the thread that started it), and stop at :meth:`Sandbox.close` or at
interpreter exit. A worker that dies or stops answering is killed (its whole process group and
PID namespace) and replaced for the next program.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from userlm_env.errors import SandboxUnavailableError
from userlm_env.tasks.sandbox import wire
from userlm_env.tasks.sandbox.config import Program, RunResult, SandboxConfig
from userlm_env.tasks.sandbox.launch import WorkerLaunch, build_launch, resolve_isolation

__all__ = ["Sandbox"]

_HOST_SLACK_S = 15.0  # beyond the program timeout, how long the host waits for a worker's reply


class _Worker:
    """One running sandboxed worker and the pipes to it."""

    def __init__(self, launch: WorkerLaunch, start_timeout_s: float) -> None:
        self._launch = launch
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in kill()
        self._proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=launch.env,
            start_new_session=True,
            close_fds=True,
            bufsize=0,
        )
        try:
            ready = self._receive(time.monotonic() + start_timeout_s)
        except (OSError, TimeoutError, wire.PlainValueError):
            ready = None
        if not (isinstance(ready, dict) and ready.get("ready")):
            self.kill()
            raise SandboxUnavailableError(f"sandbox worker failed to start: {self.stderr_tail()}")

    def _receive(self, deadline: float) -> Any:
        assert self._proc.stdout is not None
        return wire.read_message(self._proc.stdout.fileno(), 1 << 30, deadline)

    def run(self, job: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        """Send one job and wait for its result; ``None`` when the worker broke."""
        assert self._proc.stdin is not None
        try:
            wire.write_message(self._proc.stdin.fileno(), job)
            reply = self._receive(deadline)
        except (OSError, TimeoutError, wire.PlainValueError):
            return None
        return reply if isinstance(reply, dict) and "status" in reply else None

    def alive(self) -> bool:
        """Whether the worker's outermost process is still running."""
        return self._proc.poll() is None

    def stderr_tail(self) -> str:
        """The end of what the worker wrote to its standard error (for error messages)."""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read()[-2000:].decode(errors="replace").strip() or "(no output)"
        return "(unreadable)"

    def kill(self) -> None:
        """Kill the worker's process group (its namespace goes with it) and remove its files."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()
        if self._launch.tmp_root is not None:
            shutil.rmtree(self._launch.tmp_root, ignore_errors=True)


class _Pool:
    """The mutable state of a sandbox: threads, worker slots and every live worker."""

    def __init__(self, size: int) -> None:
        self.owner_pid = os.getpid()  # a forked copy of the host must not touch these workers
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="sandbox")
        # LIFO: the most recently used (warm) worker serves next; started workers come first
        self.slots: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        self.live: set[_Worker] = set()
        self.lock = threading.Lock()
        for _ in range(size):
            self.slots.put(None)

    def shutdown(self) -> None:
        """Wait for running programs, then kill every worker (only in the owning process)."""
        if os.getpid() != self.owner_pid:
            return
        self.executor.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            workers, self.live = list(self.live), set()
        for worker in workers:
            worker.kill()


def _error(detail: str) -> RunResult:
    return RunResult(passed=False, status="error", detail=detail)


class Sandbox:
    """Runs untrusted programs against trusted tests in isolated, reusable workers.

    Cheap to construct; workers start on first use. Safe to call from several threads.

    Args:
        config: Limits and isolation; defaults to :class:`SandboxConfig()`.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._lock = threading.Lock()
        self._isolation: str | None = None
        self._pool: _Pool | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def isolation(self) -> str:
        """The isolation layer in use (resolved, and warned about, on first access).

        Raises:
            SandboxUnavailableError: no usable isolation and ``isolation="none"`` not chosen.
        """
        if self._isolation is None:
            self._isolation = resolve_isolation(self.config.isolation)
        return self._isolation

    def run(self, program: Program) -> RunResult:
        """Run one program; see :meth:`run_many`."""
        return self.run_many([program])[0]

    def run_many(self, programs: Sequence[Program]) -> list[RunResult]:
        """Run ``programs`` in parallel on the workers; results in the same order.

        Raises:
            TypeError: an item is not a :class:`Program`.
            SandboxUnavailableError: no isolation is available, or workers cannot start.
        """
        for program in programs:
            if not isinstance(program, Program):
                raise TypeError(f"expected Program, got {type(program).__name__}")
        if not programs:
            return []
        pool = self._ensure_pool()
        futures = [pool.executor.submit(self._run_one, pool, p) for p in programs]
        return [future.result() for future in futures]

    def close(self) -> None:
        """Stop every worker. The sandbox starts new ones if it is used again."""
        with self._lock:
            finalizer, self._finalizer, self._pool = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ensure_pool(self) -> _Pool:
        with self._lock:
            if self._pool is not None and self._pool.owner_pid != os.getpid():
                self._pool = None  # we are a forked copy: start workers of our own
            if self._pool is None:
                _ = self.isolation  # fail fast, in the caller's thread
                self._pool = _Pool(self.config.worker_count)
                self._finalizer = weakref.finalize(self, self._pool.shutdown)
            return self._pool

    def _start_worker(self, pool: _Pool) -> _Worker:
        tmp_root = None
        if self.isolation != "bwrap":
            tmp_root = Path(tempfile.mkdtemp(prefix="userlm-sandbox-"))
            if os.geteuid() == 0:
                tmp_root.chmod(0o1777)  # the program's unprivileged uid creates its folder here
        launch = build_launch(self.config, self.isolation, tmp_root)
        worker = _Worker(launch, self.config.start_timeout_s)
        with pool.lock:
            pool.live.add(worker)
        return worker

    def _retire(self, pool: _Pool, worker: _Worker) -> None:
        with pool.lock:
            pool.live.discard(worker)
        worker.kill()

    def _run_one(self, pool: _Pool, program: Program) -> RunResult:
        """Run one program on an idle worker (started if needed); replace it if it broke."""
        worker = pool.slots.get()
        try:
            if worker is not None and not worker.alive():
                self._retire(pool, worker)
                worker = None
            if worker is None:
                worker = self._start_worker(pool)
            deadline = time.monotonic() + self.config.timeout_s + _HOST_SLACK_S
            reply = worker.run(self._job(program), deadline)
            if reply is None or reply.get("fatal") or reply.get("restart"):
                self._retire(pool, worker)  # dead, broken, or could not clean up after itself
                worker = None
            if reply is None or reply.get("fatal"):
                return _error("sandbox worker died" if reply is None else str(reply.get("detail")))
            return _to_result(reply)
        finally:
            pool.slots.put(worker)

    def _job(self, program: Program) -> dict[str, Any]:
        return {
            "source": program.source,
            "test": program.test,
            "setup": program.setup,
            "entry_point": program.entry_point,
            "timeout_s": self.config.timeout_s,
        }


def _to_result(reply: dict[str, Any]) -> RunResult:
    status = reply["status"]
    return RunResult(
        passed=status == "passed",
        status=status,
        detail=str(reply.get("detail", "")),
        stdout=str(reply.get("stdout", "")),
        stderr=str(reply.get("stderr", "")),
        duration_s=float(reply.get("duration_s", 0.0)),
    )
