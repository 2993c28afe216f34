"""The README's Python blocks run as written (each in a fresh namespace, offline).

A block that talks to the OpenEnv server (``http://127.0.0.1:8000``) runs against the README's
own ``python -m userlm_env.serve`` command, started here on a free port.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
SERVER_URL = "http://127.0.0.1:8000"


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_block_runs_as_pasted(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    block = BLOCKS[index]
    namespace: dict[str, object] = {"__name__": "__readme__"}
    if SERVER_URL in block:
        with readme_server() as url:
            exec(
                compile(block.replace(SERVER_URL, url), f"README.md block {index}", "exec"),
                namespace,
            )
    else:
        exec(compile(block, f"README.md block {index}", "exec"), namespace)
    env = namespace.get("env") or namespace.get("envs")
    if index == 0:  # the env loop: the scripted policy solves the intent it was handed
        assert capsys.readouterr().out.startswith("solved 1.0")
    if env is not None and hasattr(env, "close"):
        env.close()


@contextmanager
def readme_server() -> Iterator[str]:
    """The README's serve command on a free port; yields its base URL."""
    line = next(line for line in TEXT.splitlines() if "-m userlm_env.serve " in line)
    argv = shlex.split(line.split("#", 1)[0])
    assert argv[:3] == [".venv/bin/python", "-m", "userlm_env.serve"], line
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    argv[argv.index("--port") + 1] = port
    server = subprocess.Popen(
        [sys.executable, *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"the README's server exited: {server.stdout.read() if server.stdout else ''}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the README's server did not start within 60 s")
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
