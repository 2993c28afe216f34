"""Every Hydra config composes and instantiates; an offline multirun merges into one table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from experiments.report import collect_runs, merge_rows
from tests.conftest import REPO_ROOT

CONF = REPO_ROOT / "experiments" / "conf"
GROUPS = ("intents", "simulator", "assistant")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.mark.parametrize("config_name", ["config", "score"])
@pytest.mark.parametrize("experiment", [None, *_options("experiment")])
def test_top_level_configs_compose(config_name: str, experiment: str | None) -> None:
    overrides = [f"experiment={experiment}"] if experiment else []
    cfg = _compose(config_name, overrides)
    assert cfg.n_per_intent >= 1 and cfg.max_replies >= 1


@pytest.mark.parametrize("option", _options("intents"))
def test_task_configs_instantiate(option: str) -> None:
    cfg = _compose("config", [f"intents={option}"])
    if option == "gsm8k":  # offline: the official file instead of `datasets`
        cfg.intents.data_path = str(REPO_ROOT.parent / "shared/data/gsm8k/test.jsonl")
    intents = instantiate(cfg.intents)
    assert intents and len({i.intent_id for i in intents}) == len(intents)


@pytest.mark.slow
@pytest.mark.parametrize("option", _options("simulator"))
def test_simulator_configs_instantiate(option: str) -> None:
    simulator = instantiate(_compose("config", [f"simulator={option}"]).simulator)
    assert callable(simulator.respond)


@pytest.mark.slow
@pytest.mark.parametrize("option", _options("assistant"))
def test_assistant_configs_instantiate(option: str) -> None:
    overrides = [f"assistant={option}"]
    if option == "litellm":
        overrides.append("assistant.model=openai/any-model")
    assistant = instantiate(_compose("score", overrides).assistant)
    assert callable(assistant.respond)


def test_two_by_two_offline_multirun_merges_into_four_rows(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "experiments.simulate",
        "-m",
        "hydra/launcher=joblib",
        "simulator=sharded,sharded_required_last",
        "intents=gsm_symbolic,humaneval",
        "assistant=oracle",
        "max_intents_per_task=2",
        "n_per_intent=1",
        f"hydra.sweep.dir={tmp_path}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = merge_rows(collect_runs(tmp_path))
    assert [(r["simulator"], r["intents"]) for r in rows] == [
        ("sharded", "gsm_symbolic"),
        ("sharded", "humaneval"),
        ("sharded_required_last", "gsm_symbolic"),
        ("sharded_required_last", "humaneval"),
    ]
    assert all(r["episodes"] == 2 and r["failed"] == 0 for r in rows)
