"""In-sandbox half of the sandbox: the warden process, its zygote, and how runs are classified.

The children live in :mod:`candidate` and :mod:`checker`; clean-up in :mod:`reaper`. Standard
library only. The host starts it inside the isolation layer as
``python -I -c "<boot>" <this folder> <config json>``; the host never runs it in-process.

Processes of one worker (one sandbox instance, started once, serving many programs)::

    warden (W)      talks to the host over stdin/stdout; holds the tests and the run's nonce
    |-- zygote (Z)  forked at start-up, before any job arrives, so it never holds a test;
    |   |           a child subreaper that kills and reaps everything a program leaves
    |   `-- candidate (C), one per program: own session, rlimits, unprivileged uid, fresh
    |               working folder; runs the model's code and answers calls over two pipes
    `-- checker (R)   long-lived, unprivileged: runs the trusted ``setup`` + ``test`` and
                    ``check(candidate)``, where ``candidate`` is a proxy whose calls travel to
                    C as plain data and whose results come back as plain data (:mod:`wire`);
                    it answers W with ``{nonce, verdict}`` on a socket only W and R hold.

A program passes only when R reports, under the nonce, that ``check`` returned after calling
the candidate. C never holds R's socket, the nonce or the test text, and when the worker runs
as root C runs under its own uid, so it can neither signal nor trace W, Z or R. At the
deadline W kills R (a fresh one serves the next program) and Z kills C's whole tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

if __package__:  # imported as a package module (the host's tests)
    from . import candidate, checker, isolate, reaper, wire
else:  # imported by file inside the sandbox, where ``userlm_env`` is not importable
    import candidate  # type: ignore[no-redef]
    import checker  # type: ignore[no-redef]
    import isolate  # type: ignore[no-redef]
    import reaper  # type: ignore[no-redef]
    import wire  # type: ignore[no-redef]

# --- zygote (Z) -----------------------------------------------------------------------------


def _zygote_main(sock: socket.socket, cfg: dict[str, Any]) -> None:
    """Fork one candidate per job; after each, kill and reap everything it left."""
    isolate.prctl(isolate.PR_SET_PDEATHSIG, signal.SIGKILL)
    isolate.prctl(isolate.PR_SET_CHILD_SUBREAPER, 1)
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(sock, 1, 4)
        except OSError:
            os._exit(0)
        if len(fds) != 4:
            os._exit(0)
        job = wire.read_message(sock.fileno(), 1 << 30)
        pid = os.fork()
        if pid == 0:
            sock.close()
            candidate.candidate_main(job, fds, cfg)
        for fd in fds:
            os.close(fd)
        finish = wire.read_message(sock.fileno(), 1 << 16)
        if finish is None:
            os._exit(0)
        wire.write_message(sock.fileno(), _finish(pid, float(finish["grace_s"]), cfg))


def _finish(pid: int, grace_s: float, cfg: dict[str, Any]) -> dict[str, Any]:
    """Record how the candidate ended, kill its whole tree, reap it, empty the temp folder.

    ``grace_s``: how long to wait for the candidate to end by itself (when the checker saw it
    stop answering, it is exiting right now; its exit status names the cause).
    """
    done, status = _wait_for(pid, grace_s)
    if not done:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    lingering = reaper.kill_tree(cfg["candidate_uid"])
    reaper.empty_folder(cfg["tmp_root"])
    report: dict[str, Any] = {"natural": done, "lingering": lingering}
    if os.WIFSIGNALED(status):
        report["signal"] = os.WTERMSIG(status)
    else:
        report["code"] = os.WEXITSTATUS(status)
    return report


def _wait_for(pid: int, grace_s: float) -> tuple[bool, int]:
    """Poll for ``pid``'s exit for up to ``grace_s``: (exited, wait status)."""
    deadline = time.monotonic() + grace_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() >= deadline:
            return bool(done), status
        time.sleep(0.001)


# --- warden (W) -----------------------------------------------------------------------------

_CHECKER_JOBS = 256  # programs one checker process serves before it is replaced (bounds leaks)


class _Output:
    """Keeps the first ``limit`` bytes of a stream and counts (then drops) the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.kept, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        room = max(0, self.limit - len(self.kept))
        self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        tail = f"\n[... {self.dropped} more bytes dropped]" if self.dropped else ""
        return self.kept.decode(errors="replace") + tail


class _Checker:
    """The warden's handle on the persistent checker process (R).

    Forked on first use, replaced after a timeout, a crash, or ``_CHECKER_JOBS`` programs.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg, self.pid, self.jobs = cfg, 0, 0
        self.sock: socket.socket | None = None

    def submit(self, fds: list[int], message: dict[str, Any]) -> int:
        """Hand one test job to the checker (starting it if needed); returns its socket's fd."""
        if self.sock is None or self.jobs >= _CHECKER_JOBS:
            self.stop()
            self._start()
        assert self.sock is not None
        self.jobs += 1
        socket.send_fds(self.sock, [b"J"], fds)
        wire.write_message(self.sock.fileno(), message)
        return self.sock.fileno()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ours.close()
            checker.checker_main(theirs.detach(), self.cfg)
        theirs.close()
        self.pid, self.sock, self.jobs = pid, ours, 0

    def stop(self) -> None:
        """Kill and reap the checker (a later job starts a fresh one)."""
        if self.sock is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.sock.close()
        self.sock = None


def _pump(outputs: dict[int, _Output], wait_fd: int, deadline: float) -> bool:
    """Drain ``outputs`` until ``wait_fd`` is readable; False when the deadline passed first."""
    open_fds = set(outputs)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([*open_fds, wait_fd], [], [], remaining)
        for fd in ready:
            if fd == wait_fd:
                return True
            chunk = os.read(fd, 1 << 16)
            if chunk:
                outputs[fd].add(chunk)
            else:
                open_fds.discard(fd)


def _run(
    job: dict[str, Any], zygote: socket.socket, checker_process: _Checker, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Run one program (C via the zygote, the tests in the checker) and classify how it ended."""
    started = time.monotonic()
    deadline = started + float(job["timeout_s"])
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    socket.send_fds(zygote, [b"J"], [req_r, resp_w, out_w, err_w])
    wire.write_message(zygote.fileno(), {k: job[k] for k in ("source", "entry_point", "run_id")})
    nonce = os.urandom(16).hex()
    test_job = {k: job[k] for k in ("setup", "test", "entry_point")} | {"nonce": nonce}
    checker_fd = checker_process.submit([req_w, resp_r], test_job)
    for fd in (req_r, resp_w, out_w, err_w, req_w, resp_r):
        os.close(fd)
    out, err = _Output(cfg["output_limit"]), _Output(cfg["output_limit"])
    in_time = _pump({out_r: out, err_r: err}, checker_fd, deadline)
    verdict = _verdict(_receive(checker_fd, deadline + 1), nonce) if in_time else None
    if verdict is None:
        checker_process.stop()  # timed out, died or confused: the next job gets a fresh checker
    grace = 0.25 if (verdict or {}).get("reason") == "died" else 0.0
    wire.write_message(zygote.fileno(), {"grace_s": grace})
    ending = wire.read_message(zygote.fileno(), 1 << 16)
    _drain(out_r, err_r, out, err)
    for fd in (out_r, err_r):
        os.close(fd)
    status, detail = _classify(in_time, verdict, ending)
    return {
        "status": status,
        "detail": detail,
        "stdout": out.text(),
        "stderr": err.text(),
        "duration_s": time.monotonic() - started,
        "restart": bool(ending.get("lingering")),  # something survived the kills: start afresh
    }


def _receive(fd: int, deadline: float) -> Any:
    """One message from the checker, or ``None`` if it died, stalled or sent garbage."""
    try:
        return wire.read_message(fd, 1 << 20, deadline)
    except (OSError, TimeoutError, wire.PlainValueError):
        return None


def _drain(out_r: int, err_r: int, out: _Output, err: _Output) -> None:
    """Read what the (now dead) candidate tree left in its output pipes, briefly."""
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
    for fd, sink in ((out_r, out), (err_r, err)):
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 1 << 16):
                sink.add(chunk)


def _verdict(message: Any, nonce: str) -> dict[str, Any] | None:
    """The checker's verdict if ``message`` carries this run's nonce, else ``None``."""
    if type(message) is not dict or message.get("nonce") != nonce:
        return None
    verdict = message.get("verdict")
    return verdict if type(verdict) is dict else None


_SIGNAL_DETAIL = {signal.SIGXCPU: "cpu limit", signal.SIGXFSZ: "file size limit"}


def _ended_itself(ending: dict[str, Any]) -> str:
    if "signal" in ending:
        number = ending["signal"]
        return _SIGNAL_DETAIL.get(number, f"crashed: {signal.Signals(number).name}")
    code = ending.get("code")
    if code == candidate.EXIT_SETUP_FAILED:
        return "sandbox setup failed"
    return f"exited early (code {code})"


def _classify(
    in_time: bool, verdict: dict[str, Any] | None, ending: dict[str, Any]
) -> tuple[str, str]:
    """(status, detail) of a run from the deadline, the checker's verdict and C's ending."""
    if verdict is not None and verdict.get("ok") is True:
        return "passed", "passed"
    if not in_time:
        if ending.get("natural") and ending.get("signal") == signal.SIGXCPU:
            return "timeout", "cpu limit"
        return "timeout", "timeout"
    if verdict is None:
        return "error", "checker gave no verdict"
    if verdict.get("reason") == "died" and ending.get("natural"):
        return "failed", _ended_itself(ending)
    return "failed", _reason(verdict)


_BUILTIN_DETAIL = {"MemoryError": "memory limit", "RecursionError": "recursion limit"}


def _reason(verdict: dict[str, Any]) -> str:
    reason, error = verdict.get("reason"), verdict.get("error") or {}
    builtin_name = error.get("builtin", "")
    if reason in ("load_error", "raised", "test_failed") and builtin_name in _BUILTIN_DETAIL:
        return _BUILTIN_DETAIL[builtin_name]
    if reason == "load_error":
        return f"load failed: {error.get('name')}: {error.get('message', '')}"[:200]
    if reason == "raised":
        return f"tests failed: candidate raised {error.get('name')}"
    if reason == "test_failed":
        return f"tests failed: {error.get('name')}"
    if reason == "bad_value":
        return f"tests failed: non-plain return value ({verdict.get('message', '')})"[:200]
    if reason == "no_calls":
        return "tests never called the candidate"
    return "candidate stopped answering"


def main(config_json: str) -> None:
    """Start the zygote, announce readiness, then run jobs read from stdin until it closes."""
    cfg = json.loads(config_json)
    sys.dont_write_bytecode = True
    isolate.prctl(isolate.PR_SET_DUMPABLE, 0)
    host_in, host_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16) for fd in (0, 1))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    parent_sock, zygote_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.fork() == 0:
        parent_sock.close()
        isolate.place_fds([zygote_sock.detach()])
        _zygote_main(socket.socket(fileno=3), cfg)
    zygote_sock.close()
    checker_process = _Checker(cfg)
    wire.write_message(host_out, {"ready": True, "pid": os.getpid()})
    run_id = 0
    while (job := wire.read_message(host_in, 1 << 30)) is not None:
        run_id += 1
        try:
            result = _run({**job, "run_id": run_id}, parent_sock, checker_process, cfg)
        except Exception as error:  # the worker is broken: report, then let the host restart it
            result = {"status": "error", "detail": f"sandbox error: {error!r}"[:200], "fatal": True}
        wire.write_message(host_out, result)
        if result.get("fatal") or result.get("restart"):
            return
