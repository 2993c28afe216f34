"""How a sandbox worker is started: choosing the isolation layer and building its command line.

Three layers, best first:

* ``bwrap`` (bubblewrap): new PID, network, IPC, UTS and cgroup namespaces; an empty read-only
  root holding only system folders and the Python installation (no home, no repository, no
  secrets); a private size-capped ``/tmp``; a fresh ``/proc`` and minimal ``/dev``.
* ``unshare`` (util-linux): new PID, network, IPC and UTS namespaces only; the file system is
  the host's (programs still run in a private working folder and, on a root host, under an
  unprivileged uid that cannot write most of it).
* ``none``: no namespaces at all; only rlimits, the uid switch on root hosts, and the process
  tree kill. Only on explicit request.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from userlm_env.errors import SandboxUnavailableError
from userlm_env.tasks.sandbox.config import SandboxConfig

__all__ = ["WorkerLaunch", "build_launch", "resolve_isolation"]

_LOG = logging.getLogger(__name__)
_LIB_DIR = Path(__file__).resolve().parent
_LIB_MOUNT = "/opt/userlm-sandbox"
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); import worker; worker.main(sys.argv[2])"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_WORKER_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
_INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap)"


@dataclass(frozen=True)
class WorkerLaunch:
    """Everything needed to start one worker."""

    isolation: str  # the layer in use: "bwrap", "unshare" or "none"
    argv: tuple[str, ...]  # the full command line
    env: dict[str, str]  # the complete environment the worker starts with
    tmp_root: Path | None  # host folder serving as the programs' /tmp (None under bwrap)


def _warn(message: str) -> None:
    """Warn loudly through both ``warnings`` and ``logging``."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    _LOG.warning(message)


@functools.cache
def _warn_once(message: str) -> None:
    _warn(message)


@functools.cache
def _probe(kind: str) -> bool:
    """Whether ``kind`` ("bwrap" or "unshare") can start an isolated process here."""
    true = shutil.which("true") or "/bin/true"
    commands = {
        "bwrap": ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--", true],
        "unshare": ["unshare", *_unshare_flags(), "--", true],
    }
    if shutil.which(kind) is None:
        return False
    try:
        done = subprocess.run(commands[kind], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def resolve_isolation(requested: str) -> str:
    """The isolation layer to use for ``requested``; warns when it is weaker than bubblewrap.

    Raises:
        SandboxUnavailableError: the requested layer (or, for ``"auto"``, any layer) is missing.
    """
    if requested == "none":
        _warn_once("sandbox isolation='none': model-written code runs WITHOUT namespaces")
        return "none"
    if requested in ("auto", "bwrap") and _probe("bwrap"):
        return "bwrap"
    if requested == "bwrap":
        raise SandboxUnavailableError(f"bubblewrap is not usable here; {_INSTALL_HINT}")
    if _probe("unshare"):
        if requested == "auto":
            _warn_once(
                "bubblewrap not found: the sandbox falls back to `unshare` (no read-only root, "
                f"no private /tmp); {_INSTALL_HINT}"
            )
        return "unshare"
    raise SandboxUnavailableError(
        f"no isolation available (neither bubblewrap nor unshare works); {_INSTALL_HINT}, "
        "or pass isolation='none' to run code unisolated at your own risk"
    )


def _unshare_flags() -> list[str]:
    flags = ["--fork", "--pid", "--mount-proc", "--net", "--ipc", "--uts", "--kill-child"]
    return flags if os.geteuid() == 0 else ["--user", "--map-root-user", *flags]


def _python_paths(python: str) -> list[str]:
    """Folders the interpreter needs: its prefixes (a venv and the base installation)."""
    binary = Path(python).resolve()
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    found.add(str(binary.parent.parent))
    found.add(str(Path(python).absolute().parent.parent))
    kept = [p for p in sorted(found) if not p.startswith(_SYSTEM_DIRS)]
    return [p for p in kept if not any(p != q and p.startswith(q + "/") for q in kept)]


def _hidden_dirs(packages: tuple[str, ...]) -> list[str]:
    """Installed folders of ``packages`` (found without importing them)."""
    found: list[str] = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found.extend(str(Path(p).resolve()) for p in spec.submodule_search_locations)
    return found


def _mkdirs(path: str, made: set[str]) -> list[str]:
    """bwrap arguments creating ``path``'s missing ancestors with mode 0755."""
    args = []
    for parent in reversed(Path(path).parents):
        if str(parent) != "/" and str(parent) not in made:
            made.add(str(parent))
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _system_binds() -> list[str]:
    args = []
    for folder in _SYSTEM_DIRS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    for file in _ETC_FILES:
        args += ["--ro-bind-try", file, file]
    return args


def _bwrap_args(config: SandboxConfig, python: str, env: dict[str, str]) -> list[str]:
    made: set[str] = set()
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net"]
    args += ["--unshare-ipc", "--unshare-uts", "--hostname", "sandbox", "--unshare-cgroup-try"]
    args += ["--clearenv"]
    if os.geteuid() == 0:
        args += ["--cap-drop", "ALL"]
        for cap in _WORKER_CAPS:
            args += ["--cap-add", cap]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += _mkdirs("/etc/x", made) + _system_binds()
    # The private /tmp comes first: an interpreter or venv that lives under the host's /tmp (a
    # CI checkout, say) is then bound on top of it instead of being hidden by it.
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
    args += ["--size", str(config.tmpfs_mb << 20), "--tmpfs", "/tmp"]
    made.add("/tmp")
    for path in _python_paths(python):
        args += [*_mkdirs(path, made), "--ro-bind", path, path]
    for path in _hidden_dirs(config.hidden_packages):
        args += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
    args += [*_mkdirs(_LIB_MOUNT, made), "--ro-bind", str(_LIB_DIR), _LIB_MOUNT]
    args += ["--remount-ro", "/"]
    return [*args, "--chdir", "/tmp", "--"]


def _base_env(tmp: str) -> dict[str, str]:
    """The whole environment of a worker: nothing of the host's leaks in."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env |= {"HOME": tmp, "TMPDIR": tmp}
    threads = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    return env | dict.fromkeys(threads, "1")


def _limits(config: SandboxConfig, privileged: bool) -> dict[str, dict[str, int]]:
    memory = config.memory_mb << 20
    candidate = {
        "RLIMIT_AS": memory,
        "RLIMIT_CPU": config.cpu_s,
        "RLIMIT_FSIZE": config.file_size_mb << 20,
        "RLIMIT_NOFILE": config.max_open_files,
        "RLIMIT_CORE": 0,
    }
    if privileged:  # RLIMIT_NPROC counts per uid: only meaningful under our own uid
        candidate["RLIMIT_NPROC"] = config.max_procs
    checker = {"RLIMIT_AS": memory, "RLIMIT_CORE": 0}  # long-lived: the wall clock bounds its CPU
    return {"candidate_limits": candidate, "checker_limits": checker}


def _world_accessible(path: str) -> bool:
    """Whether any uid may reach and read ``path`` (every ancestor searchable by others)."""
    current = Path(path).resolve()
    folders = [current, *current.parents]
    return all(f.stat().st_mode & stat.S_IXOTH for f in folders) and bool(
        current.stat().st_mode & stat.S_IROTH
    )


def _needs_read_access(isolation: str, python: str) -> bool:
    """Whether programs under their own uid need CAP_DAC_READ_SEARCH to reach the interpreter."""
    if isolation == "bwrap" or all(_world_accessible(p) for p in _python_paths(python)):
        return False
    _warn_once(
        f"sandbox ({isolation}): the Python installation is not readable by other users, so "
        "programs keep the right to read every file of the host; install bubblewrap"
    )
    return True


def _worker_config(config: SandboxConfig, tmp_root: str, keep_read: bool) -> dict[str, object]:
    """The worker's settings: uids (root hosts only), limits, folders, output caps."""
    privileged = os.geteuid() == 0
    uid = 1_000_000 + 2 * secrets.randbelow(500_000_000) if privileged else None
    return {
        "candidate_uid": uid,
        "checker_uid": None if uid is None else uid + 1,
        "keep_read": privileged and keep_read,
        "tmp_root": tmp_root,
        "output_limit": config.output_limit_bytes,
        "max_message_bytes": config.max_message_bytes,
        **_limits(config, privileged),
    }


def build_launch(config: SandboxConfig, isolation: str, tmp_root: Path | None) -> WorkerLaunch:
    """The command line starting one worker under ``isolation``.

    Args:
        config: The sandbox configuration.
        isolation: A layer returned by :func:`resolve_isolation`.
        tmp_root: For ``unshare`` and ``none``: a private host folder for the programs' files
            (mode 1777 on root hosts, so the unprivileged program uid can use it).
    """
    python = config.python or sys.executable
    inner_tmp = "/tmp" if isolation == "bwrap" else str(tmp_root)
    env = _base_env(inner_tmp)
    lib = _LIB_MOUNT if isolation == "bwrap" else str(_LIB_DIR)
    worker_config = _worker_config(config, inner_tmp, _needs_read_access(isolation, python))
    command = [python, "-I", "-c", _BOOT, lib, json.dumps(worker_config)]
    prefix = {
        "bwrap": lambda: _bwrap_args(config, python, env),
        "unshare": lambda: ["unshare", *_unshare_flags(), "--"],
        "none": list,
    }[isolation]()
    host_tmp = None if isolation == "bwrap" else tmp_root
    return WorkerLaunch(isolation, (*prefix, *command), env, host_tmp)
