"""An offline Lost-in-Conversation sweep through ``experiments.simulate -m``: the oracle assistant
on the fully specified instruction, on every shard at once and on one shard per turn. It has
the answer key and enough replies to hear every required shard, so it solves every intent in
every setting: no degradation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments.report import PROTOCOL_TITLE, collect_runs, main, setting_groups
from tests.conftest import REPO_ROOT
from userlm_env.metrics.protocol import protocol_rows

SETTINGS = ("full", "concat", "sharded")
PROTOCOL_COLUMNS = ("performance", "aptitude", "unreliability", "degradation_vs_full")


def test_oracle_keeps_its_full_score_in_every_setting(tmp_path: Path, capsys) -> None:
    command = [
        sys.executable, "-m", "experiments.simulate", "-m", "hydra/launcher=joblib",
        f"simulator={','.join(SETTINGS)}", "intents=tiny", "assistant=oracle",
        "n_per_intent=2", "max_replies=12", f"hydra.sweep.dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = protocol_rows(setting_groups(collect_runs(tmp_path)))
    assert [(r["assistant"], r["setting"]) for r in rows] == [
        ("oracle", "full"), ("oracle", "concat"), ("oracle", "sharded")
    ]  # fmt: skip
    for row in rows:
        assert (row["intents"], row["runs"]) == (4, 8)
        assert row["performance"] == row["aptitude"] == 1.0, row["setting"]
        assert row["unreliability"] == row["degradation_vs_full"] == 0.0
        assert row["degradation_vs_full_pct"] == pytest.approx(0.0)
    assert main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"## {PROTOCOL_TITLE}"
    header = [cell.strip() for cell in lines[2].split("|")]
    assert all(column in header for column in PROTOCOL_COLUMNS)
    assert (tmp_path / "report_figures" / "protocol.png").exists()
