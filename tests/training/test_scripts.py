"""Tests of the entry scripts' configs and outputs: experiments/perplexity.py,
experiments/rl_example.py (structured configs) and benchmarks/train_throughput.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from experiments.perplexity import PerplexityJob, format_table, score
from experiments.rl_example import RLConfig
from userlm_env.training.data import read_conversations, write_conversations

from .conftest import FIXTURE

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.mark.parametrize(
    ("name", "schema", "overrides"),
    [
        ("perplexity_job", PerplexityJob, ["batch_size=2", "include_end=true"]),
        ("rl_example", RLConfig, ["num_envs=2", "learning_rate=1e-5"]),
    ],
)
def test_structured_configs_compose(name: str, schema: type, overrides: list[str]) -> None:
    with initialize(version_base="1.3", config_path=None):
        cfg = compose(config_name=name, overrides=overrides)
    job = OmegaConf.to_object(cfg)
    assert isinstance(job, schema)
    with (
        initialize(version_base="1.3", config_path=None),
        pytest.raises(ConfigCompositionException),
    ):
        compose(config_name=name, overrides=["nope=1"])


def test_perplexity_table_layout() -> None:
    column = {"perplexity": 2.0, "per_turn": {"1": 3.0, "end": 1.5}}
    table = format_table({"without_intent": column, "with_intent": {**column, "perplexity": 1.25}})
    lines = table.splitlines()
    assert lines[0].split() == ["turn", "no", "intent", "intent"]
    assert lines[1].split() == ["all", "2.00", "1.25"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "end"]


@pytest.mark.slow
def test_perplexity_script_scores_both_columns(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    write_conversations(read_conversations(FIXTURE)[:2], path)
    results = score(PerplexityJob(conversations=str(path)))
    assert set(results) == {"with_intent", "without_intent"}
    assert list(results["with_intent"]["per_turn"]) == ["1", "2", "3"]
    assert all(r["perplexity"] > 1.0 and r["tokens"] > 0 for r in results.values())
    json.dumps(results)  # plain data


@pytest.mark.slow
def test_throughput_benchmark_reports_json() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.peak_flops(None) == ("cpu", None)
    report = module.measure("smoke_cpu", 2, [], None)
    assert report["steps"] == 2 and report["tokens_per_second"] > 0 and report["mfu"] is None
    assert report["parameters"] > 3_000_000
