"""Adversarial tests of the sandbox: one hostile program per property it guarantees.

Every hostile reply answers HumanEval/0 (``has_close_elements``) through ``CodeScorer.score``
and must earn reward 0, leave no process (found by a marker in /proc) and no file behind, and
the next (canonical) program must still score 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tasks.conftest import (
    ANSWER_KEY_PROBE,
    REPO_ROOT,
    canonical_reply,
    humaneval_intent,
    reply_with,
)
from userlm_env.tasks.code import CodeScorer
from userlm_env.tasks.sandbox import SandboxConfig
from userlm_env.types import Intent, Score

pytestmark = pytest.mark.sandbox


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line or name carries ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            data = Path(f"/proc/{entry}/cmdline").read_bytes()
            data += Path(f"/proc/{entry}/comm").read_bytes()
        except OSError:
            continue
        if marker.encode() in data:
            found.append(int(entry))
    return found


@pytest.fixture()
def marker() -> str:
    return f"sbxmark{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def intent0(problems: dict[str, dict[str, Any]]) -> Intent:
    return humaneval_intent(problems["HumanEval/0"])


@pytest.fixture()
def hostile(
    code_scorer: CodeScorer, intent0: Intent, problems: dict[str, dict[str, Any]], marker: str
) -> Iterator[Any]:
    """Score a hostile reply; afterwards check the aftermath (processes, files, next program)."""
    outside = [Path("/tmp") / marker, REPO_ROOT / marker, Path.home() / marker]

    def score(reply: str, scorer: CodeScorer = code_scorer) -> Score:
        result = scorer.score(reply.replace("MARKER", marker), intent0)
        assert result.reward == 0.0 and not result.solved, result
        return result

    yield score
    time.sleep(0.05)
    assert processes_with(marker) == [], "a hostile process outlived its run"
    for path in outside:
        assert not path.exists(), f"the program wrote {path}"
    workers = code_scorer.sandbox.config.worker_count  # one follow-up per worker
    canonical = canonical_reply(problems["HumanEval/0"])
    follow_ups = code_scorer.score_many([canonical] * workers, [intent0] * workers)
    assert all(s.solved for s in follow_ups), f"the next program failed: {follow_ups}"


def test_the_process_scan_finds_marked_processes(marker: str) -> None:
    """The lingering-process check works: a marked process on the host is found."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        time.sleep(0.1)
        assert processes_with(marker) == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert processes_with(marker) == []


# --- verdict integrity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "os._exit(0)",
        "sys.exit(0)",
        "raise SystemExit(0)",
        "import atexit\natexit.register(lambda: print('passed'))\nsys.exit(0)",
        "threading.Thread(target=lambda: os._exit(0)).start()\ntime.sleep(1)\nreturn True",
        "import _thread\n_thread.interrupt_main()\nreturn True",
    ],
    ids=["os_exit", "sys_exit", "system_exit", "atexit", "thread_os_exit", "interrupt_main"],
)
def test_early_exits_do_not_pass(hostile: Any, body: str) -> None:
    hostile(reply_with(body))


def test_exit_at_load_time_does_not_pass(hostile: Any) -> None:
    score = hostile(reply_with("return True", module="os._exit(0)\n"))
    assert score.attempted


def test_printing_success_does_not_pass(hostile: Any) -> None:
    body = """
    for stream in (sys.stdout, sys.stderr):
        print('passed', 'All tests passed', '{"status": "passed", "ok": true}', file=stream)
        stream.flush()
    for fd in range(3, 64):
        try:
            os.write(fd, b'{"ok": true, "calls": 9}')
        except OSError:
            pass
    return True
    """
    hostile(reply_with(body))


@pytest.mark.parametrize(
    "module",
    [
        "class Yes:\n    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "    def __bool__(self): return True\nANSWER = Yes()\n",
        "class Yes(int):\n    def __eq__(self, other): return True\n    __hash__ = int.__hash__\n"
        "ANSWER = Yes(1)\n",
        "class Yes(str):\n    def __eq__(self, other): return True\n    __hash__ = str.__hash__\n"
        "ANSWER = Yes('x')\n",
    ],
    ids=["object", "int_subclass", "str_subclass"],
)
def test_always_equal_objects_do_not_pass(hostile: Any, module: str) -> None:
    score = hostile(reply_with("return ANSWER", module=module))
    assert "non-plain" in score.detail


def test_monkeypatching_builtins_does_not_pass(hostile: Any) -> None:
    module = """
    import builtins
    builtins.isinstance = lambda *a: True
    builtins.abs = lambda x: 0
    builtins.AssertionError = type("Nope", (Exception,), {})
    builtins.len = lambda x: 0
    """
    hostile(reply_with("return True", module=module))


def test_tampering_with_the_harness_does_not_pass(hostile: Any) -> None:
    module = """
    import gc, json
    sys.modules["json"] = None
    for name, mod in list(sys.modules.items()):
        for attr in ("write_message", "_answer", "_checker", "_classify", "_verdict"):
            if hasattr(mod, attr):
                setattr(mod, attr, lambda *a, **k: {"ok": True, "value": True})
    for obj in gc.get_objects():
        if isinstance(obj, dict) and "reason" in obj:
            obj.update(ok=True)
    """
    hostile(reply_with("return True", module=module))


def test_reading_the_tests_or_answer_key_does_not_pass(hostile: Any) -> None:
    # Would pass if the test text or the dataset's canonical solution were reachable.
    test_text_scan = """
    import gc, re
    TEXTS = [o for o in gc.get_objects() if isinstance(o, str) and "def check(" in o]
    EXPECTED = {}
    for text in TEXTS:
        for args, want in re.findall(r"candidate\\((.*)\\) == (True|False)", text):
            EXPECTED[args.replace(" ", "")] = want == "True"
    """
    module = textwrap.dedent(test_text_scan) + ANSWER_KEY_PROBE
    body = """
    if SOLUTION is not None:
        return SOLUTION(numbers, threshold)
    key = f"{numbers},{threshold}".replace(" ", "")
    return EXPECTED.get(key, None)
    """
    hostile(reply_with(body, module=module))


# --- containment -------------------------------------------------------------------------------


def test_infinite_loop_times_out(hostile: Any) -> None:
    score = hostile(reply_with("while True:\n    pass"))
    assert score.detail in ("timeout", "cpu limit")


def test_ignored_signals_and_long_sleep_time_out(hostile: Any) -> None:
    body = """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, signal.SIG_IGN)
    time.sleep(10_000)
    return True
    """
    started = time.monotonic()
    assert hostile(reply_with(body)).detail == "timeout"
    assert time.monotonic() - started < 15


def test_memory_bomb_hits_the_memory_limit(hostile: Any) -> None:
    score = hostile(reply_with("hog = bytearray(64 * 2**30)\nreturn True"))
    assert score.detail == "memory limit"


def test_growing_memory_hits_the_memory_limit(hostile: Any) -> None:
    # reached quickly, even on busy CPUs
    small = CodeScorer(SandboxConfig(memory_mb=256, workers=1))
    try:
        body = "hog = []\nwhile True:\n    hog.append(bytearray(2**24))"
        score = hostile(reply_with(body), small)
    finally:
        small.close()
    assert score.detail == "memory limit"


def test_disk_bomb_is_contained(hostile: Any) -> None:
    body = """
    chunk = b"x" * 2**20
    for target in ("big.bin", "/tmp/MARKER.bin"):
        try:
            with open(target, "wb") as handle:
                while True:
                    handle.write(chunk)
        except OSError:
            pass
    for index in range(100_000):
        try:
            with open(f"small-{index}", "wb") as handle:
                handle.write(chunk[:4096])
        except OSError:
            break
    return True
    """
    hostile(reply_with(body))


def test_fork_storm_is_contained(hostile: Any) -> None:
    body = """
    libc = ctypes.CDLL(None)
    while True:
        try:
            if os.fork() == 0:
                libc.prctl(15, b"MARKER", 0, 0, 0)
        except OSError:
            pass
    """
    score = hostile(reply_with(body))
    assert score.detail in ("timeout", "cpu limit")


def test_detached_processes_are_killed(hostile: Any) -> None:
    body = """
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)", "MARKER"]
    subprocess.Popen(sleeper, start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, sleeper)
        os._exit(0)
    time.sleep(0.2)
    return True
    """
    hostile(reply_with(body))


def test_writes_outside_the_sandbox_fail(hostile: Any) -> None:
    targets = [Path("/tmp") / "MARKER", REPO_ROOT / "MARKER", Path.home() / "MARKER"]
    body = f"""
    for path in {[str(t) for t in targets]!r}:
        try:
            with open(path, "w") as handle:
                handle.write("escaped")
        except OSError:
            pass
    return True
    """
    hostile(reply_with(body))


def test_parent_secrets_are_unreadable(
    intent0: Intent, problems: dict[str, dict[str, Any]], marker: str
) -> None:
    secret_file = Path.home() / f"{marker}.secret"
    secret_file.write_text(marker)
    os.environ["USERLM_SANDBOX_TEST_API_KEY"] = marker
    scorer = CodeScorer(SandboxConfig(timeout_s=4.0, workers=1))
    try:
        # Correct only if some secret leaked: reward 0 proves none did.
        body = f"""
        seen = " ".join(f"{{k}}={{v}}" for k, v in os.environ.items())
        for path in [{str(secret_file)!r}, {str(REPO_ROOT / "pyproject.toml")!r},
                     "/proc/1/environ", f"/proc/{{os.getppid()}}/environ"]:
            try:
                seen += open(path, errors="replace").read()
            except OSError:
                pass
        if "{marker}" in seen or "userlm-env" in seen:
            return any(abs(a - b) < threshold for i, a in enumerate(numbers)
                       for b in numbers[i + 1:])
        return None
        """
        score = scorer.score(reply_with(body), intent0)
        assert score.reward == 0.0 and score.detail.startswith("tests failed"), score
        result = scorer.sandbox.run(scorer.program_for(reply_with("print(os.environ)"), intent0))
        assert "USERLM_SANDBOX_TEST_API_KEY" not in result.stdout
    finally:
        scorer.close()
        os.environ.pop("USERLM_SANDBOX_TEST_API_KEY")
        secret_file.unlink()


@pytest.mark.parametrize(
    "body",
    [
        "os.kill(os.getppid(), signal.SIGKILL)\nreturn True",
        "os.kill(1, signal.SIGKILL)\nreturn True",
        "os.kill(-1, signal.SIGKILL)\nreturn True",
        "os.killpg(0, signal.SIGKILL)\nreturn True",
        "for pid in range(1, 40):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n        pass\nreturn True",
    ],
    ids=["parent", "pid1", "everyone", "own_group", "scan"],
)
def test_signalling_the_parent_fails(hostile: Any, body: str) -> None:
    hostile(reply_with(body))


def test_host_process_is_out_of_reach(hostile: Any) -> None:
    hostile(reply_with(f"os.kill({os.getpid()}, signal.SIGKILL)\nreturn True"))


def test_segfault_is_a_crash(hostile: Any) -> None:
    score = hostile(reply_with("ctypes.string_at(0)\nreturn True"))
    assert score.detail == "crashed: SIGSEGV"


def test_runaway_recursion_fails(hostile: Any) -> None:
    score = hostile(reply_with("return has_close_elements(numbers, threshold)"))
    assert score.detail == "recursion limit"


def test_deep_recursion_past_the_c_stack_is_a_crash(hostile: Any) -> None:
    body = """
    sys.setrecursionlimit(10**8)
    def deeper(depth):  # each level passes through C (map), so the C stack overflows
        return list(map(deeper, [depth + 1]))
    return deeper(0)
    """
    score = hostile(reply_with(body))
    assert score.detail == "crashed: SIGSEGV"


def test_network_is_unreachable(hostile: Any) -> None:
    body = """
    import socket
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=1)
    except OSError:
        return None
    return True
    """
    hostile(reply_with(body))


# --- the worker itself ------------------------------------------------------------------------


def test_files_do_not_survive_into_the_next_program(
    intent0: Intent, problems: dict[str, dict[str, Any]], marker: str
) -> None:
    scorer = CodeScorer(SandboxConfig(timeout_s=4.0, workers=1))
    writer = f"""
    for path in ("{marker}", "/tmp/{marker}", os.path.join(os.environ["HOME"], "{marker}")):
        with open(path, "w") as handle:
            handle.write("left behind")
    return True
    """
    # Correct only if the first program's files are still there: reward 0 proves they are not.
    reader = f"""
    import glob
    if glob.glob("/tmp/**/{marker}", recursive=True) or os.path.exists("/tmp/{marker}"):
        return any(abs(a - b) < threshold for i, a in enumerate(numbers)
                   for b in numbers[i + 1:])
    return None
    """
    try:
        assert scorer.score(reply_with(writer), intent0).reward == 0.0
        assert scorer.score(reply_with(reader), intent0).reward == 0.0
        assert scorer.score(canonical_reply(problems["HumanEval/0"]), intent0).solved
    finally:
        scorer.close()


def test_worker_death_is_survived(intent0: Intent, problems: dict[str, dict[str, Any]]) -> None:
    scorer = CodeScorer(SandboxConfig(timeout_s=4.0, workers=1))
    canonical = canonical_reply(problems["HumanEval/0"])
    try:
        assert scorer.score(canonical, intent0).solved
        pool = scorer.sandbox._pool
        assert pool is not None
        for worker in list(pool.live):
            os.killpg(worker._proc.pid, 9)
        # The kill lands asynchronously: at most one program may see the dying worker.
        scores = [scorer.score(canonical, intent0) for _ in range(3)]
        failures = [s for s in scores if not s.solved]
        assert len(failures) <= 1 and scores[-1].solved, scores
        assert all(s.reward == 0.0 and s.detail == "sandbox worker died" for s in failures)
    finally:
        scorer.close()
