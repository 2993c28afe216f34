"""``python -m userlm_env.intents``: export sharded intents as Lost-in-Conversation JSON."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.intents.data import gsm8k_path
from userlm_env.intents import load_humaneval, load_lic_json
from userlm_env.intents.__main__ import main

REPO_ROOT = Path(__file__).parents[2]


def test_export_humaneval_writes_loadable_lic_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "he.json"
    assert main(["export", "--source", "humaneval", "--limit", "3", "--out", str(out)]) == 0
    assert load_lic_json(out) == load_humaneval(limit=3)
    assert "wrote 3 intents" in capsys.readouterr().out


def test_export_gsm8k_and_gsm_symbolic(tmp_path: Path) -> None:
    gsm8k = tmp_path / "gsm8k.json"
    args = ["export", "--source", "gsm8k", "--data-path", str(gsm8k_path()), "--limit", "4"]
    assert main([*args, "--out", str(gsm8k)]) == 0
    assert [i.intent_id for i in load_lic_json(gsm8k)] == [f"gsm8k/{i}" for i in range(4)]
    symbolic = tmp_path / "symbolic.json"
    args = ["export", "--source", "gsm_symbolic", "--n", "3", "--seed", "5"]
    assert main([*args, "--out", str(symbolic)]) == 0
    expected = [f"gsm_symbolic/5-{i}" for i in range(3)]
    assert [i.intent_id for i in load_lic_json(symbolic)] == expected


@pytest.mark.parametrize(
    "options", [["--source", "humaneval", "--n", "3"], ["--source", "humaneval", "--limit", "-1"]]
)
def test_bad_options_are_usage_errors(tmp_path: Path, options: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *options, "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "x.json").exists()


def test_unknown_source_and_data_errors_exit_with_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--source", "nope", "--out", str(tmp_path / "x.json")]) == 1
    assert "unknown intent source 'nope'" in capsys.readouterr().err
    missing = str(tmp_path / "absent.jsonl")
    args = ["export", "--source", "gsm8k", "--data-path", missing, "--out", str(tmp_path / "y")]
    assert main(args) == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_module_runs_as_a_script() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "userlm_env.intents", "sources"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gsm8k", "gsm_symbolic", "humaneval", "lic"]
