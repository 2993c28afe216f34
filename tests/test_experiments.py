"""Every Hydra config composes and instantiates; an offline multirun merges into one table."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.conftest import REPO_ROOT
from tests.sweeps import assert_two_by_two, run_two_by_two_sweep

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
    rows = run_two_by_two_sweep(tmp_path, ["hydra/launcher=joblib"], max_intents_per_task=2)
    assert_two_by_two(rows, episodes=2)
