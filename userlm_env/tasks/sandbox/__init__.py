"""The sandbox: the only way model-written code runs in userlm-env.

Install bubblewrap for full isolation: ``apt-get install bubblewrap`` (Debian/Ubuntu; ``dnf
install bubblewrap`` on Fedora). Without it the sandbox falls back to ``unshare`` and warns;
running with no isolation at all needs ``SandboxConfig(isolation="none")``; otherwise
:class:`~userlm_env.errors.SandboxUnavailableError` is raised.

Usage::

    with Sandbox(SandboxConfig(timeout_s=5)) as sandbox:
        results = sandbox.run_many([Program(source=code, test=test, entry_point="f")])

How a program runs (one warm worker per CPU, each started once under bubblewrap)
    The model's code runs in a *candidate* process forked per program from a clean zygote; the
    trusted tests run in a separate, unprivileged *checker* process that calls the candidate's
    function through a proxy. Arguments and results cross as plain data (``None``, ``bool``,
    ``int``, ``float``, ``complex``, ``str``, ``bytes``, and lists/tuples/dicts/sets of them),
    rebuilt by the checker from JSON. Calls whose arguments are literals in the test are sent in
    one batch up front (one round trip), the rest one by one. The checker returns its verdict
    with a per-run random nonce on a socket only it and the worker hold. A program passes only
    when that verdict says ``check`` ran, called the candidate and returned.

What it protects against
    * Forged verdicts: early exits (``os._exit(0)``, ``sys.exit``, ``SystemExit``, ``atexit``,
      exits from threads), printing "passed", objects whose ``__eq__`` always agrees (only
      plain data reaches the tests), monkeypatching builtins, ``sys.modules`` or the reporting
      code (the tests run in another process), reading the tests (never in the candidate's
      memory) or the dataset's answer key (``hidden_packages`` are hidden).
    * Escapes and damage: no network; read-only root with only system folders and the Python
      installation visible (no home, no repository, no host ``/tmp``); a private size-capped
      ``/tmp``; a scrubbed environment (no API keys); on a root host the program runs under its
      own unprivileged uid, so it cannot signal, trace or read the worker, the checker or the host
      (the host is outside its PID namespace anyway).
    * Resource abuse: rlimits on CPU time, address space, file size, processes (root hosts),
      open files; a wall-clock timeout that SIGKILLs the whole tree (signal handlers cannot
      delay it); output floods are drained concurrently and capped; detached processes
      (``setsid``, double forks) are found through a child subreaper and killed after every
      program; crashes (segfaults, aborts, stack overflows) end as failures.

What it does NOT protect against
    * Kernel exploits and bubblewrap/namespace escapes: it is not a VM. Run truly hostile
      workloads in a VM or gVisor.
    * Side channels and timing: programs share CPUs, caches and the kernel with the host.
    * Reading world-readable files under ``/usr`` and the Python installation.
    * A program creating its own user namespaces (allowed by most kernels; they gain nothing
      outside the sandbox's namespaces).
    * Weak tests: the checker only guarantees what the tests check. Arguments reach the
      candidate as copies, so a test cannot observe in-place mutation; a test that accepts any
      exception accepts the candidate's. The candidate sees the literal arguments of all test
      calls at once (never the expected results), and a function that keeps state between
      calls sees them in that batch order.
    * Weaker layers: under ``unshare`` the file system is the host's (writable where the
      program's uid may write, e.g. ``/tmp``; readable in full when the Python installation is
      not world-readable, since programs then keep CAP_DAC_READ_SEARCH to load it); under
      ``none`` there are no namespaces either; on non-root hosts there is no uid separation,
      so a program can signal every process of the user (under ``none``: the whole session),
      kill its worker (which then restarts), and process counts are not limited.
"""

from __future__ import annotations

from userlm_env.tasks.sandbox.config import Isolation, Program, RunResult, RunStatus, SandboxConfig
from userlm_env.tasks.sandbox.pool import Sandbox

__all__ = ["Isolation", "Program", "RunResult", "RunStatus", "Sandbox", "SandboxConfig"]
