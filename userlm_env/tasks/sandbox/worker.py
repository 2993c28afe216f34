"""In-sandbox half of the sandbox: the warden process and the children it runs programs in.

Standard library only. The host starts it inside the isolation layer as
``python -I -c "<boot>" <this folder> <config json>``; the host never runs it in-process.

Processes of one worker (one sandbox instance, started once, serving many programs)::

    warden (W)      talks to the host over stdin/stdout; holds the tests and the verdict nonce
    |-- zygote (Z)  forked at start-up, before any job arrives, so it never holds a test;
    |   |           a child subreaper that kills and reaps everything a program leaves
    |   `-- candidate (C), one per program: own session, rlimits, unprivileged uid, fresh
    |               working folder; runs the model's code and answers calls over two pipes
    `-- judge (R), one per program: runs the trusted ``setup`` + ``test`` and
                    ``check(candidate)``, where ``candidate`` is a proxy whose calls travel to
                    C as plain data and whose results come back as plain data
                    (:mod:`wire`); it writes ``nonce + verdict`` to a pipe only W and R hold.

A program passes only when R reports, under the nonce, that ``check`` returned after calling
the candidate. C never holds R's pipe, the nonce or the test text, and when the worker runs as
root C runs under its own uid, so it can neither signal nor trace W, Z or R.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
from typing import Any

if __package__:  # imported as a package module (the host's tests)
    from . import wire
else:  # imported by file inside the sandbox, where ``userlm_env`` is not importable
    import wire  # type: ignore[no-redef]

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_EXIT_SETUP_FAILED = 70
_LIBC = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    _LIBC.prctl(option, value, 0, 0, 0)


def _place_fds(fds: list[int]) -> None:
    """Make ``fds`` the process's fds 3, 4, ..., stdio ``/dev/null``; close everything else."""
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in fds]
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    for index, fd in enumerate(moved):
        os.dup2(fd, 3 + index)
    os.closerange(3 + len(fds), 1 << 20)


def _apply_limits(limits: dict[str, int]) -> None:
    """Set the rlimits named in ``limits`` (soft and hard) for this process and its children."""
    for name, value in limits.items():
        soft = hard = int(value)
        if name == "RLIMIT_CPU":
            hard = soft + 1  # SIGXCPU at the soft limit, SIGKILL one second later
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _drop_privileges(uid: int | None) -> None:
    """Become ``uid`` for good (no groups, no capabilities) when running as root."""
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


# --- candidate (C) --------------------------------------------------------------------------


def _candidate_main(job: dict[str, Any], fds: list[int], cfg: dict[str, Any]) -> None:
    """Set up the untrusted process, then load the program and serve calls; never returns."""
    try:
        os.setsid()
        _place_fds(fds)
        os.dup2(5, 1)
        os.dup2(6, 2)
        os.closerange(5, 7)
        _apply_limits(cfg["candidate_limits"])
        _drop_privileges(cfg["candidate_uid"])
        workdir = os.path.join(cfg["tmp_root"], f"run-{job['run_id']}")
        os.mkdir(workdir, 0o700)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    except BaseException:
        os._exit(_EXIT_SETUP_FAILED)
    _serve(job["source"], job["entry_point"], cfg["max_message_bytes"])
    os._exit(0)


def _describe(error: BaseException) -> dict[str, str]:
    """Name an exception: its class and the builtin exception class it derives from."""
    base = next((k for k in type(error).__mro__ if getattr(builtins, k.__name__, None) is k), None)
    try:
        message = str(error)[:300]
    except BaseException:
        message = ""
    base_name = getattr(base, "__name__", "")
    return {"name": type(error).__name__, "builtin": base_name, "message": message}


def _serve(source: str, entry_point: str, limit: int) -> None:
    """Load ``source`` and answer the judge's calls to ``entry_point`` until it hangs up."""
    namespace: dict[str, Any] = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(source, "<candidate>", "exec"), namespace)
        function = namespace[entry_point]
        if not callable(function):
            raise TypeError(f"{entry_point} is not callable")
    except BaseException as error:
        wire.write_message(4, {"load_error": _describe(error)})
        return
    wire.write_message(4, {"ready": True})
    while (call := wire.read_message(3, limit)) is not None:
        wire.write_message(4, _answer(function, call))


def _answer(function: Any, call: dict[str, Any]) -> dict[str, Any]:
    try:
        result = function(*wire.decode_value(call["args"]), **wire.decode_value(call["kwargs"]))
    except BaseException as error:
        return {"raised": _describe(error)}
    try:
        return {"value": wire.encode_value(result)}
    except (wire.PlainValueError, ValueError, RecursionError) as error:
        return {"bad_value": str(error)[:200]}


# --- judge (R) ------------------------------------------------------------------------------


class CandidateDied(Exception):
    """The candidate process stopped answering (it exited, crashed or closed its pipes)."""


class CandidateReturnedNonPlainData(TypeError):
    """The candidate returned something other than plain data."""


class CandidateProxy:
    """Stands in for the candidate's function inside the judge: each call is a message."""

    def __init__(self, limit: int) -> None:
        self.calls = 0
        self.raised: BaseException | None = None
        self._limit = limit

    def hello(self) -> dict[str, Any]:
        """The candidate's first message: ``ready`` or ``load_error``."""
        return self._receive()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        request = {"args": wire.encode_value(args), "kwargs": wire.encode_value(kwargs)}
        try:
            wire.write_message(3, request)
        except OSError:
            raise CandidateDied("candidate closed its pipe") from None
        return self._result(self._receive())

    def _receive(self) -> dict[str, Any]:
        message = wire.read_message(4, self._limit)
        if type(message) is not dict:
            raise CandidateDied("candidate stopped answering")
        return message

    def _result(self, reply: dict[str, Any]) -> Any:
        if "value" in reply:
            return wire.decode_value(reply["value"])
        if "raised" in reply:
            self.raised = _rebuild(reply["raised"])
            raise self.raised
        raise CandidateReturnedNonPlainData(str(reply.get("bad_value", "malformed reply"))[:200])


def _rebuild(info: Any) -> BaseException:
    """An exception standing for one the candidate raised (a builtin class when possible)."""
    info = info if type(info) is dict else {}
    kind = getattr(builtins, str(info.get("builtin", "")), None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = RuntimeError
    error = kind(f"{info.get('name', '?')}: {info.get('message', '')}"[:300])
    error.candidate_name = str(info.get("name", kind.__name__))[:80]  # type: ignore[attr-defined]
    return error


def _judge(job: dict[str, Any], limit: int) -> dict[str, Any]:
    """Run the tests against the candidate; the verdict is a small JSON-ready dict."""
    proxy = CandidateProxy(limit)
    try:
        hello = proxy.hello()
        if "load_error" in hello:
            return {"ok": False, "reason": "load_error", "error": hello["load_error"]}
        namespace: dict[str, Any] = {"__name__": "__judge__"}
        exec(compile(job["setup"], "<setup>", "exec"), namespace)
        namespace[job["entry_point"]] = proxy
        exec(compile(job["test"], "<test>", "exec"), namespace)
        namespace["check"](proxy)
    except BaseException as error:
        return _failure(error, proxy)
    if proxy.calls == 0:
        return {"ok": False, "reason": "no_calls"}
    return {"ok": True, "calls": proxy.calls}


def _failure(error: BaseException, proxy: CandidateProxy) -> dict[str, Any]:
    if isinstance(error, CandidateDied):
        return {"ok": False, "reason": "died"}
    if isinstance(error, CandidateReturnedNonPlainData):
        return {"ok": False, "reason": "bad_value", "message": str(error)}
    if error is proxy.raised:
        error_info = {"name": error.candidate_name, "builtin": type(error).__name__}
        return {"ok": False, "reason": "raised", "error": error_info}
    return {"ok": False, "reason": "test_failed", "error": _describe(error)}


def _judge_main(job: dict[str, Any], fds: list[int], nonce: str, cfg: dict[str, Any]) -> None:
    """Set up the judge process, run the tests, write ``nonce + verdict``; never returns."""
    try:
        _place_fds(fds)
        _apply_limits(cfg["judge_limits"])
        _drop_privileges(cfg["judge_uid"])
        _prctl(_PR_SET_DUMPABLE, 0)
        verdict = _judge(job, cfg["max_message_bytes"])
        os.write(5, (nonce + json.dumps(verdict)).encode())
    finally:
        os._exit(0)


# --- zygote (Z) -----------------------------------------------------------------------------


def _zygote_main(sock: socket.socket, cfg: dict[str, Any]) -> None:
    """Fork one candidate per job; after each, kill and reap everything it left."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
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
            _candidate_main(job, fds, cfg)
        for fd in fds:
            os.close(fd)
        wire.write_message(sock.fileno(), {"pid": pid})
        finish = wire.read_message(sock.fileno(), 1 << 16)
        if finish is None:
            os._exit(0)
        wire.write_message(sock.fileno(), _finish(pid, float(finish["grace_s"]), cfg))


def _finish(pid: int, grace_s: float, cfg: dict[str, Any]) -> dict[str, Any]:
    """Record how the candidate ended, kill its whole tree, reap it, empty the temp folder.

    ``grace_s``: how long to wait for the candidate to end by itself (when the judge saw it
    stop answering, it is exiting right now; its exit status names the cause).
    """
    done, status = _wait_for(pid, grace_s)
    if not done:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    lingering = _kill_tree(cfg["candidate_uid"])
    _empty(cfg["tmp_root"])
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


def _kill_tree(uid: int | None) -> bool:
    """SIGKILL every descendant (and, as root, every process of ``uid``) until none is left.

    Returns whether something was still alive after the deadline (a bug if it ever happens).
    """
    me, deadline = os.getpid(), time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap()
        victims = _descendants(me) | (_processes_of(uid) if uid is not None else set())
        if not victims:
            return False
        for victim in victims - {me}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.0005)
    return True


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _process_table() -> dict[int, int]:
    """pid -> parent pid for every process this /proc shows."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            table[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return table


def _descendants(root: int) -> set[int]:
    table, found, frontier = _process_table(), set(), {root}
    while frontier:
        frontier = {pid for pid, parent in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _processes_of(uid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                found.add(int(entry))
    return found


def _empty(folder: str) -> None:
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=_force_remove)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _force_remove(function: Any, path: str, _info: Any) -> None:
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        function(path)


# --- warden (W) -----------------------------------------------------------------------------


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


def _pump(streams: dict[int, Any], until_fd: int, deadline: float) -> bool:
    """Drain ``streams`` (fd -> _Output, or bytearray for ``until_fd``) until ``until_fd`` closes.

    Returns False when the deadline passed first.
    """
    open_fds = set(streams)
    while until_fd in open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select(list(open_fds), [], [], remaining)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
            elif fd == until_fd:
                streams[fd] += chunk[: max(0, (1 << 16) - len(streams[fd]))]
            else:
                streams[fd].add(chunk)
    return True


def _run(job: dict[str, Any], zygote: socket.socket, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one program (C via the zygote, R forked here) and classify how it ended."""
    started = time.monotonic()
    deadline = started + float(job["timeout_s"])
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    socket.send_fds(zygote, [b"J"], [req_r, resp_w, out_w, err_w])
    wire.write_message(zygote.fileno(), {k: job[k] for k in ("source", "entry_point", "run_id")})
    for fd in (req_r, resp_w, out_w, err_w):
        os.close(fd)
    wire.read_message(zygote.fileno(), 1 << 16)  # the candidate's pid: it exists now
    nonce = os.urandom(16).hex()
    verdict_r, verdict_w = os.pipe()
    judge = os.fork()
    if judge == 0:
        _judge_main(job, [req_w, resp_r, verdict_w], nonce, cfg)
    for fd in (req_w, resp_r, verdict_w):
        os.close(fd)
    out, err, verdict = _Output(cfg["output_limit"]), _Output(cfg["output_limit"]), bytearray()
    streams: dict[int, Any] = {out_r: out, err_r: err, verdict_r: verdict}
    in_time = _pump(streams, verdict_r, deadline)
    if not in_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(judge, signal.SIGKILL)
    os.waitpid(judge, 0)
    verdict_data = _verdict(bytes(verdict), nonce)
    grace = 0.25 if in_time and (verdict_data or {}).get("reason") == "died" else 0.0
    wire.write_message(zygote.fileno(), {"grace_s": grace})
    ending = wire.read_message(zygote.fileno(), 1 << 16)
    _drain(out_r, err_r, out, err)
    for fd in (out_r, err_r, verdict_r):
        os.close(fd)
    status, detail = _classify(in_time, verdict_data, ending)
    return {
        "status": status,
        "detail": detail,
        "stdout": out.text(),
        "stderr": err.text(),
        "duration_s": time.monotonic() - started,
    }


def _drain(out_r: int, err_r: int, out: _Output, err: _Output) -> None:
    """Read what the (now dead) candidate tree left in its output pipes, briefly."""
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
    for fd, sink in ((out_r, out), (err_r, err)):
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 1 << 16):
                sink.add(chunk)


def _verdict(raw: bytes, nonce: str) -> dict[str, Any] | None:
    """The judge's verdict if it carries this run's nonce, else ``None``."""
    text = raw.decode(errors="replace")
    if not text.startswith(nonce):
        return None
    try:
        verdict = json.loads(text[len(nonce) :])
    except ValueError:
        return None
    return verdict if type(verdict) is dict else None


_SIGNAL_DETAIL = {signal.SIGXCPU: "cpu limit", signal.SIGXFSZ: "file size limit"}


def _ended_itself(ending: dict[str, Any]) -> str:
    if "signal" in ending:
        number = ending["signal"]
        return _SIGNAL_DETAIL.get(number, f"crashed: {signal.Signals(number).name}")
    code = ending.get("code")
    if code == _EXIT_SETUP_FAILED:
        return "sandbox setup failed"
    return f"exited early (code {code})"


def _classify(
    in_time: bool, verdict: dict[str, Any] | None, ending: dict[str, Any]
) -> tuple[str, str]:
    """(status, detail) of a run from the deadline, the judge's verdict and C's ending."""
    if verdict is not None and verdict.get("ok") is True:
        return "passed", "passed"
    if not in_time:
        if ending.get("natural") and ending.get("signal") == signal.SIGXCPU:
            return "timeout", "cpu limit"
        return "timeout", "timeout"
    if verdict is None:
        return "error", "judge gave no verdict"
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
    _prctl(_PR_SET_DUMPABLE, 0)
    host_in, host_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16) for fd in (0, 1))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    parent_sock, zygote_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.fork() == 0:
        parent_sock.close()
        _place_fds([zygote_sock.detach()])
        _zygote_main(socket.socket(fileno=3), cfg)
    zygote_sock.close()
    wire.write_message(host_out, {"ready": True, "pid": os.getpid()})
    run_id = 0
    while (job := wire.read_message(host_in, 1 << 30)) is not None:
        run_id += 1
        try:
            result = _run({**job, "run_id": run_id}, parent_sock, cfg)
        except Exception as error:  # the worker is broken: report, then let the host restart it
            result = {"status": "error", "detail": f"sandbox error: {error!r}"[:200], "fatal": True}
        wire.write_message(host_out, result)
        if result.get("fatal"):
            return
