"""Clean-up after a program, run by the zygote: kill every process it left, empty its files.

Standard library only (it runs inside the sandbox). The zygote is a child subreaper, so every
process a program starts - daemonized, double-forked or in a new session - stays its
descendant; on a root host programs also run under their own uid, swept as a second net.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from typing import Any

__all__ = ["empty_folder", "kill_tree"]


def kill_tree(uid: int | None) -> bool:
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
    table, frontier = _process_table(), {root}
    found: set[int] = set()
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


def _mount_points() -> list[str]:
    """Mount points of this process (``/proc/self/mounts``, octal escapes decoded)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            fields = [line.split()[1] for line in handle if line.strip()]
    except OSError:
        return []
    return [f.encode().decode("unicode_escape") for f in fields]


def empty_folder(folder: str) -> None:
    """Remove everything in ``folder`` except entries holding a mount point (the read-only
    interpreter binds that sit under /tmp when the host's Python lives there; their skeleton
    folders are root-owned and not writable by programs)."""
    mounts = _mount_points()
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if any(m == path or m.startswith(path + "/") for m in mounts):
            continue
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
