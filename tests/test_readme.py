"""The README's Python blocks run as written (each in a fresh namespace, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_block_runs_as_pasted(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    env = namespace.get("env") or namespace.get("envs")
    if index == 0:  # the env loop: the scripted policy solves the intent it was handed
        assert capsys.readouterr().out.startswith("solved 1.0")
    if env is not None:
        env.close()  # type: ignore[attr-defined]
