"""Process set-up inside the sandbox: fds, rlimits, privileges (standard library only)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource

__all__ = [
    "PR_SET_CHILD_SUBREAPER",
    "PR_SET_DUMPABLE",
    "PR_SET_PDEATHSIG",
    "apply_limits",
    "drop_privileges",
    "place_fds",
    "prctl",
]

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
_PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_CAP_DAC_READ_SEARCH = 2
_CAPABILITY_VERSION_3 = 0x20080522
_LIBC = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    """Call prctl(2) with one argument."""
    _LIBC.prctl(option, value, 0, 0, 0)


def place_fds(fds: list[int]) -> None:
    """Make ``fds`` the process's fds 3, 4, ..., stdio ``/dev/null``; close everything else."""
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in fds]
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    for index, fd in enumerate(moved):
        os.dup2(fd, 3 + index)
    os.closerange(3 + len(fds), 1 << 20)


def apply_limits(limits: dict[str, int]) -> None:
    """Set the rlimits named in ``limits`` (soft and hard) for this process and its children."""
    for name, value in limits.items():
        soft = hard = int(value)
        if name == "RLIMIT_CPU":
            hard = soft + 1  # SIGXCPU at the soft limit, SIGKILL one second later
        resource.setrlimit(getattr(resource, name), (soft, hard))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def _set_capabilities(mask: int) -> None:
    """Set the effective and permitted capabilities to ``mask``; nothing inheritable."""
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask
    if _LIBC.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def drop_privileges(uid: int | None, keep_read: bool) -> None:
    """Become ``uid`` for good (no groups, no capabilities) when running as root.

    ``keep_read``: keep the right to read every file, for layers that cannot make the Python
    installation readable to ``uid`` (``unshare``/``none`` with it under ``/root``).
    Either way no later ``exec`` can gain privileges (setuid bits, file capabilities).
    """
    prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if uid is None:
        return
    if keep_read:
        prctl(_PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _set_capabilities(1 << _CAP_DAC_READ_SEARCH if keep_read else 0)
