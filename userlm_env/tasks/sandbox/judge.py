"""The judge process: runs the trusted tests against a proxy of the candidate's function.

Standard library only (it runs inside the sandbox). Each call of the proxy sends the
arguments to the candidate process as plain data and rebuilds the result from plain data
(:mod:`wire`), so nothing the candidate defines ever runs here. The verdict goes, behind the
run's nonce, to fd 5, a pipe only the judge and the warden hold.
"""

from __future__ import annotations

import builtins
import json
import os
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
    "judge_main",
    "run_tests",
]


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


def run_tests(job: dict[str, Any], limit: int) -> dict[str, Any]:
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
    return {"ok": False, "reason": "test_failed", "error": wire.describe_error(error)}


def judge_main(job: dict[str, Any], fds: list[int], nonce: str, cfg: dict[str, Any]) -> None:
    """Set up the judge process, run the tests, write ``nonce + verdict``; never returns."""
    try:
        isolate.place_fds(fds)
        isolate.apply_limits(cfg["judge_limits"])
        isolate.drop_privileges(cfg["judge_uid"], cfg["keep_read"])
        isolate.prctl(isolate.PR_SET_DUMPABLE, 0)
        verdict = run_tests(job, cfg["max_message_bytes"])
        os.write(5, (nonce + json.dumps(verdict)).encode())
    finally:
        os._exit(0)
