"""The candidate process: runs the model's code and answers the checker's calls.

Standard library only (it runs inside the sandbox). Forked by the zygote once per program: a
new session, rlimits, an unprivileged uid on root hosts, and a fresh working folder; its
stdout/stderr go to pipes the warden drains; fds 3 and 4 carry calls in and results out.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import Any

if __package__:  # imported as a package module (the host's tests)
    from . import isolate, wire
else:  # imported by file inside the sandbox, where ``userlm_env`` is not importable
    import isolate  # type: ignore[no-redef]
    import wire  # type: ignore[no-redef]

__all__ = ["EXIT_SETUP_FAILED", "candidate_main"]

#: Exit status of a candidate whose set-up (before any model code ran) failed.
EXIT_SETUP_FAILED = 70
#: The reply sent when there is no memory left to build one.
_OUT_OF_MEMORY = wire.frame_message(
    {"raised": {"name": "MemoryError", "builtin": "MemoryError", "message": ""}}
)


def candidate_main(job: dict[str, Any], fds: list[int], cfg: dict[str, Any]) -> None:
    """Set up the untrusted process, then load the program and serve calls; never returns."""
    try:
        os.setsid()
        isolate.place_fds(fds)
        os.dup2(5, 1)
        os.dup2(6, 2)
        os.closerange(5, 7)
        isolate.apply_limits(cfg["candidate_limits"])
        isolate.drop_privileges(cfg["candidate_uid"], cfg["keep_read"])
        workdir = os.path.join(cfg["tmp_root"], f"run-{job['run_id']}")
        os.mkdir(workdir, 0o700)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    except BaseException:
        os._exit(EXIT_SETUP_FAILED)
    _serve(job["source"], job["entry_point"], cfg["max_message_bytes"])
    os._exit(0)


def _serve(source: str, entry_point: str, limit: int) -> None:
    """Load ``source`` and answer the checker's calls to ``entry_point`` until it hangs up."""
    namespace: dict[str, Any] = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(source, "<candidate>", "exec"), namespace)
        if entry_point not in namespace:
            raise NameError(f"{entry_point} is not defined at the top level")
        function = namespace[entry_point]
        if not callable(function):
            raise TypeError(f"{entry_point} is not callable")
    except BaseException as error:
        _send({"load_error": _forget(error)})
        return
    _send({"ready": True})
    while (call := wire.read_message(3, limit)) is not None:
        if "batch" in call:
            _send({"batch": [_answer(function, one) for one in call["batch"]]})
        else:
            _send(_answer(function, call))


def _forget(error: BaseException) -> dict[str, str]:
    """Describe ``error`` after dropping its traceback (and the memory its frames hold)."""
    error.__traceback__ = None
    return wire.describe_error(error)


def _send(message: dict[str, Any]) -> None:
    """Send one reply; when memory is exhausted, send a prepared MemoryError reply instead."""
    try:
        wire.write_message(4, message)
    except MemoryError:
        os.write(4, _OUT_OF_MEMORY)


def _answer(function: Any, call: dict[str, Any]) -> dict[str, Any]:
    try:
        result = function(*wire.decode_value(call["args"]), **wire.decode_value(call["kwargs"]))
    except BaseException as error:
        return {"raised": _forget(error)}
    try:
        return {"value": wire.encode_value(result)}
    except (wire.PlainValueError, ValueError, RecursionError) as error:
        return {"bad_value": str(error)[:200]}
    except MemoryError as error:
        return {"raised": _forget(error)}
