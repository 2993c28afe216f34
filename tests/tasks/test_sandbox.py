"""Tests of the sandbox's parts: the plain-value codec, configuration, isolation choice, the
verdict classification, the weaker layers, and controls showing the adversarial tests can fail."""

from __future__ import annotations

import ast
import os
import signal
import warnings
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
from userlm_env.errors import SandboxUnavailableError
from userlm_env.tasks.code import CodeScorer
from userlm_env.tasks.sandbox import Program, Sandbox, SandboxConfig, checker, launch, wire, worker

Problems = dict[str, dict[str, Any]]

# --- plain-value codec ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(10**40),
        10**5000,
        2.5,
        float("inf"),
        "héllo\n",
        b"\x00\xff",
        1 + 2j,
        [1, [2, (3, "x")]],
        (1,),
        {1, 2},
        frozenset({(1, 2)}),
        {"a": 1, 2: [3], (4, 5): None},
    ],
    ids=lambda value: type(value).__name__,
)
def test_plain_values_round_trip(value: Any) -> None:
    decoded = wire.decode_value(wire.encode_value(value))
    assert decoded == value and type(decoded) is type(value)


class _Int(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize(
    "value", [_Int(1), object(), (x for x in []), [1, {2: print}], {"k": _Int(3)}]
)
def test_non_plain_values_are_refused(value: Any) -> None:
    with pytest.raises(wire.PlainValueError):
        wire.encode_value(value)


@pytest.mark.parametrize(
    "data",
    [
        {"evil": 1},
        {"tuple": [1], "set": [2]},
        {"set": [[1]]},
        {"dict": [[1]]},
        {"bytes": 5},
        {"complex": [1, "x"]},
        {"int": 12},
        {"tuple": "abc"},
    ],
)
def test_malformed_encodings_are_refused(data: Any) -> None:
    with pytest.raises(wire.PlainValueError):
        wire.decode_value(data)


def test_deep_nesting_is_refused() -> None:
    data: Any = 1
    for _ in range(wire.MAX_DEPTH + 5):
        data = [data]
    with pytest.raises(wire.PlainValueError, match="too deeply"):
        wire.decode_value(data)


def test_messages_round_trip_and_oversized_ones_are_refused() -> None:
    read_fd, write_fd = os.pipe()
    try:
        wire.write_message(write_fd, {"a": [1, 2]})
        assert wire.read_message(read_fd, 100) == {"a": [1, 2]}
        wire.write_message(write_fd, "x" * 500)
        with pytest.raises(wire.PlainValueError, match="exceeds"):
            wire.read_message(read_fd, 100)
    finally:
        os.close(read_fd)
        os.close(write_fd)


# --- configuration ------------------------------------------------------------------------------


def test_config_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="isolation"):
        SandboxConfig(isolation="docker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        SandboxConfig(workers=-1)
    assert SandboxConfig().worker_count == (os.cpu_count() or 1)


def test_program_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="identifier"):
        Program(source="", test="", entry_point="not a name")
    with pytest.raises(TypeError):
        Program(source=b"x", test="", entry_point="f")  # type: ignore[arg-type]


def test_run_many_refuses_non_programs() -> None:
    with pytest.raises(TypeError, match="expected Program"):
        Sandbox().run_many(["print(1)"])  # type: ignore[list-item]


# --- isolation choice ---------------------------------------------------------------------------


@pytest.fixture()
def probes(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Pretend which layers exist; warnings are re-armed."""
    available = {"bwrap": True, "unshare": True}
    monkeypatch.setattr(launch, "_probe", lambda kind: available[kind])
    launch._warn_once.cache_clear()
    yield available
    launch._warn_once.cache_clear()


def test_bwrap_is_preferred(probes: dict[str, bool]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert launch.resolve_isolation("auto") == "bwrap"


def test_fallback_to_unshare_warns_loudly(probes: dict[str, bool]) -> None:
    probes["bwrap"] = False
    with pytest.warns(RuntimeWarning, match="apt-get install bubblewrap"):
        assert launch.resolve_isolation("auto") == "unshare"


def test_nothing_available_raises(probes: dict[str, bool]) -> None:
    probes.update(bwrap=False, unshare=False)
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        launch.resolve_isolation("auto")
    with pytest.raises(SandboxUnavailableError):
        launch.resolve_isolation("bwrap")
    with pytest.raises(SandboxUnavailableError):
        Sandbox().run(Program(source="def f(): 0", test="def check(c): c()", entry_point="f"))


def test_no_isolation_needs_an_explicit_opt_in(probes: dict[str, bool]) -> None:
    probes.update(bwrap=False, unshare=False)
    with pytest.warns(RuntimeWarning, match="WITHOUT namespaces"):
        assert launch.resolve_isolation("none") == "none"


def test_worker_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    built = launch.build_launch(SandboxConfig(), "bwrap", None)
    assert "OPENAI_API_KEY" not in built.env and "sk-secret" not in " ".join(built.argv)
    assert {"--unshare-net", "--unshare-pid", "--die-with-parent", "--clearenv"} <= set(built.argv)
    argv = list(built.argv)
    sources = {argv[i + 1] for i, arg in enumerate(argv) if arg in ("--bind", "--ro-bind")}
    assert str(REPO_ROOT) not in sources and str(Path.home()) not in sources and "/" not in sources
    assert str(REPO_ROOT / ".venv") in sources or not (REPO_ROOT / ".venv").exists()


# --- verdict classification ---------------------------------------------------------------------


def test_literal_calls_are_found_in_source_order() -> None:
    test = (
        "def check(candidate):\n"
        "    assert candidate([1, 2], -3) == 5\n"
        "    for x in range(3):\n"
        "        assert candidate(x, 1)\n"
        "    assert candidate('a', key={1: (2,)}) is None\n"
        "    assert candidate(*[1]) == 0\n"
    )
    calls = checker.literal_calls(ast.parse(test))
    assert calls == [(([1, 2], -3), {}), (("a",), {"key": {1: (2,)}})]


def test_only_a_positive_verdict_under_the_nonce_passes() -> None:
    nonce = "ab" * 16
    assert worker._verdict({"nonce": nonce, "verdict": {"ok": True}}, nonce) == {"ok": True}
    assert worker._verdict({"verdict": {"ok": True}}, nonce) is None
    assert worker._verdict({"nonce": "cd" * 16, "verdict": {"ok": True}}, nonce) is None
    assert worker._verdict({"nonce": nonce, "verdict": "ok"}, nonce) is None
    assert worker._verdict(None, nonce) is None
    natural_exit = {"natural": True, "code": 0}
    assert worker._classify(True, {"ok": True}, natural_exit) == ("passed", "passed")
    assert worker._classify(True, None, natural_exit) == ("error", "checker gave no verdict")
    assert worker._classify(False, None, {"natural": False})[0] == "timeout"


_DIED = {"ok": False, "reason": "died"}
_KILLED = {"natural": False}


@pytest.mark.parametrize(
    ("verdict", "ending", "detail"),
    [
        (_DIED, {"natural": True, "code": 0}, "exited early (code 0)"),
        (_DIED, {"natural": True, "signal": signal.SIGSEGV}, "crashed: SIGSEGV"),
        (_DIED, {"natural": True, "signal": signal.SIGXCPU}, "cpu limit"),
        (_DIED, _KILLED, "candidate stopped answering"),
        (
            {"ok": False, "reason": "raised", "error": {"name": "X", "builtin": "MemoryError"}},
            _KILLED,
            "memory limit",
        ),
        (
            {"ok": False, "reason": "test_failed", "error": {"name": "AssertionError"}},
            _KILLED,
            "tests failed: AssertionError",
        ),
        ({"ok": False, "reason": "no_calls"}, _KILLED, "tests never called the candidate"),
    ],
)
def test_failure_details(verdict: dict[str, Any], ending: dict[str, Any], detail: str) -> None:
    assert worker._classify(True, verdict, ending) == ("failed", detail)


@pytest.mark.sandbox
def test_limits_do_not_depend_on_the_hosts_size(problems: Problems) -> None:
    """A host with a huge address space still runs programs under a small memory limit."""
    import mmap

    reserved = mmap.mmap(-1, 8 << 30)  # 8 GiB of address space, never touched
    scorer = CodeScorer(SandboxConfig(memory_mb=384, workers=1))
    try:
        problem = problems["HumanEval/2"]
        assert scorer.score(canonical_reply(problem), humaneval_intent(problem)).solved
    finally:
        scorer.close()
        reserved.close()


# --- weaker layers and controls -----------------------------------------------------------------


@pytest.mark.sandbox
@pytest.mark.filterwarnings("ignore:sandbox:RuntimeWarning")
def test_unshare_layer_runs_and_contains(problems: Problems) -> None:
    problem = problems["HumanEval/0"]
    intent = humaneval_intent(problem)
    scorer = CodeScorer(SandboxConfig(isolation="unshare", workers=1, timeout_s=4.0))
    try:
        assert scorer.score(canonical_reply(problem), intent).solved
        crash = scorer.score(reply_with("ctypes.string_at(0)"), intent)
        assert crash.detail == "crashed: SIGSEGV"
        program = scorer.program_for(reply_with("print(os.getuid(), os.getpid())"), intent)
        uid, pid = map(int, scorer.sandbox.run(program).stdout.split()[:2])
        assert pid < 10  # a fresh PID namespace
        assert (uid != 0) == (os.geteuid() == 0)  # root hosts: programs get their own uid
    finally:
        scorer.close()


@pytest.mark.sandbox
def test_control_visible_answer_key_would_be_exploited(problems: Problems) -> None:
    """Without hiding the dataset the answer-key hack works: that test can fail."""
    reply = reply_with("return SOLUTION(numbers, threshold)", module=ANSWER_KEY_PROBE)
    intent = humaneval_intent(problems["HumanEval/0"])
    exposed = CodeScorer(SandboxConfig(hidden_packages=(), workers=1))
    hidden = CodeScorer(SandboxConfig(workers=1))
    try:
        assert exposed.score(reply, intent).solved
        assert not hidden.score(reply, intent).solved
    finally:
        exposed.close()
        hidden.close()


@pytest.mark.sandbox
@pytest.mark.filterwarnings("ignore:sandbox \\(none\\):RuntimeWarning")
def test_control_without_namespaces_files_leak(problems: Problems, tmp_path: Path) -> None:
    """With isolation="none" (explicit, loud) the repository is readable: bwrap is what hides it."""
    body = f"""
    try:
        seen = open({str(REPO_ROOT / "pyproject.toml")!r}).read()
    except OSError:
        return None
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
    """
    intent = humaneval_intent(problems["HumanEval/0"])
    launch._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="WITHOUT namespaces"):
        unisolated = CodeScorer(SandboxConfig(isolation="none", workers=1))
        _ = unisolated.sandbox.isolation
    isolated = CodeScorer(SandboxConfig(workers=1))
    try:
        assert unisolated.score(reply_with(body), intent).solved
        assert not isolated.score(reply_with(body), intent).solved
    finally:
        unisolated.close()
        isolated.close()
