"""Hostile replies through ``env.step``: written independently of the sandbox's own suite.

Each probe is either a hack that must earn no reward, or a *conditional* solution that is correct
only when something it must not be able to do (read a secret, see the repo, reach the network)
works inside the sandbox, so a reward would reveal the hole.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from userlm_env import ConversationEnv
from userlm_env.intents import load_humaneval
from userlm_env.types import Intent

pytestmark = pytest.mark.sandbox

SIG = (
    "from typing import List\n\n"
    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
)
SECRET = "hunter2-userlm-probe"


def _conditional(condition: str) -> str:
    return SIG + f"    if not ({condition}):\n        return 'nope'\n" + "{GOOD}"


PROBES = {
    "secret_in_env": _conditional(f"__import__('os').environ.get('USERLM_PROBE') == '{SECRET}'"),
    "parent_environ": _conditional(
        f"b'{SECRET}' in open('/proc/%d/environ' % __import__('os').getppid(), 'rb').read()"
    ),
    "repo_visible": _conditional("__import__('os').path.exists('{REPO}/pyproject.toml')"),
    "loopback_reachable": _conditional(
        "__import__('socket').create_connection(('127.0.0.1', {PORT}), 1) is not None"
    ),
    "ndarray_eq_true": "import numpy as np\n"
    + SIG
    + (
        "    class B(np.ndarray):\n        def __eq__(s, o): return True\n"
        "        def __bool__(s): return True\n    return np.zeros(1).view(B)\n"
    ),
    "int_subclass_eq": SIG
    + (
        "    class T(int):\n        def __eq__(s, o): return True\n"
        "        __hash__ = int.__hash__\n    return T(0)\n"
    ),
    "exit_in_finalizer": SIG
    + (
        "    class D:\n        def __del__(s): __import__('os')._exit(0)\n"
        "    D()\n    return False\n"
    ),
    "timer_thread_exit": "import threading, os\nthreading.Timer(0.0, lambda: os._exit(0)).start()\n"
    + SIG
    + "    import time; time.sleep(5); return False\n",
    "patched_builtins": "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\n"
    "builtins.isinstance = lambda *a: True\n" + SIG + "    return None\n",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    + SIG
    + "    return 0\n",
    "kill_everything": "import os\ntry:\n    os.kill(-1, 9)\nexcept Exception:\n    pass\n"
    + SIG
    + "    return False\n",
    "prints_success": SIG
    + "    print('All tests passed'); print('{\"passed\": true}'); return False\n",
    "detached_sleeper": "import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n"
    "    time.sleep(300)\n" + SIG + "    return False\n",
    "write_host_file": "open('{HOST_FILE}', 'w').write('x')\n" + SIG + "    return False\n",
}


@pytest.fixture(scope="module")
def env_and_intent() -> tuple[ConversationEnv, Intent]:
    intents = [i for i in load_humaneval() if i.intent_id == "HumanEval/0"]
    env = ConversationEnv(simulator="sharded", intents=intents, max_replies=4)
    yield env, intents[0]
    env.close()


def _step(env: ConversationEnv, code: str) -> tuple[float, str]:
    env.reset(seed=0)
    _, reward, _, _, info = env.step(f"```python\n{code}\n```")
    return reward, info["score_detail"]


@pytest.mark.parametrize("name", sorted(PROBES))
def test_hostile_reply_earns_nothing_and_env_keeps_working(
    name: str, env_and_intent: tuple[ConversationEnv, Intent], tmp_path: Path, monkeypatch
) -> None:
    env, intent = env_and_intent
    monkeypatch.setenv("USERLM_PROBE", SECRET)
    host_file = tmp_path / "escaped.txt"
    code = (
        PROBES[name]
        .replace("{GOOD}", intent.reference["canonical_solution"])
        .replace("{REPO}", str(Path(__file__).resolve().parents[1]))
        .replace("{PORT}", "1")
        .replace("{HOST_FILE}", str(host_file))
    )
    reward, detail = _step(env, code)
    assert reward == 0.0, f"{name} earned reward ({detail})"
    assert not host_file.exists()
    good = intent.reference["prompt"] + intent.reference["canonical_solution"]
    assert _step(env, good)[0] == 1.0
    assert os.getpid() > 0  # we are still alive


def test_conditional_probe_control_earns_reward(
    env_and_intent: tuple[ConversationEnv, Intent],
) -> None:
    """The conditional probes can detect a hole: with a true condition they pass."""
    env, intent = env_and_intent
    code = _conditional("True").replace("{GOOD}", intent.reference["canonical_solution"])
    assert _step(env, code)[0] == 1.0
