"""The checker process: runs the trusted tests against a proxy of the candidate's function.

Standard library only (it runs inside the sandbox). One checker per worker serves program
after program (forked once by the warden, unprivileged, memory-limited; replaced after a
timeout). Each call of the proxy sends the arguments to the candidate process as plain data
and rebuilds the result from plain data (:mod:`wire`), so nothing the candidate defines ever
runs here. Verdicts go back, with the run's nonce, on a socket only the checker and the warden
hold.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import signal
import socket
from typing import Any

if __package__:  # imported as a package module (the host's tests)
    from . import isolate, wire
else:  # imported by file inside the sandbox, where ``userlm_env`` is not importable
    import isolate  # type: ignore[no-redef]
    import wire  # type: ignore[no-redef]

__all__ = [
    "CandidateDied",
    "CandidateProxy",
    "CandidateReturnedNonPlainData",
    "checker_main",
    "literal_calls",
    "run_tests",
]


#: One call: positional arguments and keyword arguments.
Call = tuple[tuple[Any, ...], dict[str, Any]]


class CandidateDied(Exception):
    """The candidate process stopped answering (it exited, crashed or closed its pipes)."""


class CandidateReturnedNonPlainData(TypeError):
    """The candidate returned something other than plain data."""


class CandidateProxy:
    """Stands in for the candidate's function inside the checker: each call is a message.

    :meth:`prefetch` asks for many calls' results in one message; later calls with exactly
    the same arguments are answered from those results, in order, without a round trip.
    """

    def __init__(self, request_fd: int, response_fd: int, limit: int) -> None:
        self.calls = 0
        self.raised: BaseException | None = None
        self.raised_name = ""
        self._fds = (request_fd, response_fd)
        self._limit = limit
        self._ready: dict[str, list[Any]] = {}

    def hello(self) -> dict[str, Any]:
        """The candidate's first message: ``ready`` or ``load_error``."""
        return self._receive()

    def prefetch(self, calls: list[Call]) -> None:
        """Have the candidate compute ``calls`` (args, kwargs) now, in one round trip."""
        requests = [_request(args, kwargs) for args, kwargs in calls]
        if not requests:
            return
        self._send({"batch": requests})
        reply = self._receive()
        answers = reply.get("batch")
        if type(answers) is not list or len(answers) != len(requests):
            self._result(reply)  # a single error reply (e.g. out of memory) raises here
            raise CandidateReturnedNonPlainData("malformed batch reply")
        for request, answer in zip(requests, answers, strict=True):
            self._ready.setdefault(json.dumps(request), []).append(answer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        request = _request(args, kwargs)
        waiting = self._ready.get(json.dumps(request))
        if waiting:
            return self._result(waiting.pop(0))
        self._send(request)
        return self._result(self._receive())

    def _send(self, message: dict[str, Any]) -> None:
        try:
            wire.write_message(self._fds[0], message)
        except OSError:
            raise CandidateDied("candidate closed its pipe") from None

    def _receive(self) -> dict[str, Any]:
        message = wire.read_message(self._fds[1], self._limit)
        if type(message) is not dict:
            raise CandidateDied("candidate stopped answering")
        return message

    def _result(self, reply: Any) -> Any:
        if type(reply) is dict and "value" in reply:
            return wire.decode_value(reply["value"])
        if type(reply) is dict and "raised" in reply:
            error, self.raised_name = _rebuild(reply["raised"])
            self.raised = error
            raise error
        detail = reply.get("bad_value", "malformed reply") if type(reply) is dict else "malformed"
        raise CandidateReturnedNonPlainData(str(detail)[:200])


def _request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"args": wire.encode_value(args), "kwargs": wire.encode_value(kwargs)}


def literal_calls(
    tree: ast.Module, limit: int = 1000
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The calls ``check`` (in the parsed test ``tree``) makes to its argument with literal
    arguments, in source order.

    In source order: ``assert candidate([1, 2], 3) == True`` gives ``(([1, 2], 3), {})``.
    Calls whose arguments are computed (loops, variables) are left to run live.
    """
    check = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None
    )
    if check is None or not check.args.args:
        return []
    name, found = check.args.args[0].arg, []
    for node in ast.walk(check):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
            try:
                args = tuple(ast.literal_eval(a) for a in node.args)
                kwargs = {str(k.arg): ast.literal_eval(k.value) for k in node.keywords if k.arg}
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            if len(kwargs) == len(node.keywords):
                found.append(((node.lineno, node.col_offset), args, kwargs))
    return [(args, kwargs) for _, args, kwargs in sorted(found, key=lambda f: f[0])][:limit]


def _rebuild(info: Any) -> tuple[BaseException, str]:
    """An exception standing for one the candidate raised (a builtin class when possible), and
    the candidate's own name for its class."""
    info = info if type(info) is dict else {}
    kind = getattr(builtins, str(info.get("builtin", "")), None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = RuntimeError
    message = f"{info.get('name', '?')}: {info.get('message', '')}"[:300]
    try:
        error = kind(message)
    except TypeError:  # a builtin class wanting other arguments (UnicodeDecodeError...)
        error = RuntimeError(message)
    return error, str(info.get("name", kind.__name__))[:80]


def run_tests(job: dict[str, Any], request_fd: int, response_fd: int, limit: int) -> dict[str, Any]:
    """Run the tests against the candidate; the verdict is a small JSON-ready dict."""
    proxy = CandidateProxy(request_fd, response_fd, limit)
    try:
        hello = proxy.hello()
        if "load_error" in hello:
            return {"ok": False, "reason": "load_error", "error": hello["load_error"]}
        namespace: dict[str, Any] = {"__name__": "__checker__"}
        exec(compile(job["setup"], "<setup>", "exec"), namespace)
        namespace[job["entry_point"]] = proxy
        test = ast.parse(job["test"], "<test>")
        exec(compile(test, "<test>", "exec"), namespace)
        proxy.prefetch(literal_calls(test))
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
        error_info = {"name": proxy.raised_name, "builtin": type(error).__name__}
        return {"ok": False, "reason": "raised", "error": error_info}
    return {"ok": False, "reason": "test_failed", "error": wire.describe_error(error)}


def checker_main(sock_fd: int, cfg: dict[str, Any]) -> None:
    """The checker process: run the warden's test jobs until it hangs up; never returns.

    Each job arrives as two fds (calls to the candidate, its answers) and a message (setup,
    test, entry point, nonce); the verdict goes back, with the nonce, on the same socket.
    """
    try:
        isolate.place_fds([sock_fd])
        isolate.apply_limits(cfg["checker_limits"])
        isolate.drop_privileges(cfg["checker_uid"], cfg["keep_read"])
        isolate.prctl(isolate.PR_SET_DUMPABLE, 0)
        isolate.prctl(isolate.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change
        sock = socket.socket(fileno=3)
        while len(fds := socket.recv_fds(sock, 1, 2)[1]) == 2:
            job = wire.read_message(3, 1 << 30)
            verdict = run_tests(job, fds[0], fds[1], cfg["max_message_bytes"])
            for fd in fds:
                os.close(fd)
            wire.write_message(3, {"nonce": job["nonce"], "verdict": verdict})
    finally:
        os._exit(0)
