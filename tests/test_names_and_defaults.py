"""One name per thing, presets that do what they say, library defaults equal to the configs.

* Tasks: GSM-Symbolic intents are task ``gsm_symbolic`` (scored by the math scorer like
  ``gsm8k``) in the records, the score table and the report alike; old records that called them
  ``gsm8k`` read under the new name; LiC files keep the name through a round trip.
* Presets: every ``experiment/`` and ``intents/`` option states the intents it selects on an
  ``# Intents:`` line (count and task); composing it and selecting as a run does gives exactly
  those.
* Defaults: ``make_simulator("userlm", model=...)`` starts from the values of the
  ``userlm_embedded`` config for the embedded model and of ``userlm_8b`` for UserLM-8b.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.report import collect_runs, merge_rows
from experiments.simulate import simulate
from simulators import make_simulator
from simulators.userlm import EMBEDDED_SETTINGS, UserLMSimulator
from tests.conftest import GSM8K_TEST, REPO_ROOT
from userlm_env.env import build_simulator
from userlm_env.errors import DataError
from userlm_env.intents import export_lic_json, load_gsm_symbolic, load_humaneval, load_lic_json
from userlm_env.intents.schema import intent_to_record, record_to_intent
from userlm_env.models import EMBEDDED_MODEL
from userlm_env.records import read_records
from userlm_env.rollout import first_per_task
from userlm_env.tasks import SCORERS, TASK_KINDS, make_scorer
from userlm_env.tasks.math import MathScorer

CONF = REPO_ROOT / "experiments" / "conf"
OFFLINE = ["intents=tiny", "simulator=sharded", "assistant=oracle", "max_replies=6"]
INTENTS_LINE = re.compile(r"^# Intents: (.+)$", re.MULTILINE)
COUNT = re.compile(r"^(\d+) (\w+)$")


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


# --------------------------------------------------------------------------- task names


def test_gsm_symbolic_is_its_own_task_scored_by_the_math_scorer() -> None:
    assert set(SCORERS.names()) == set(TASK_KINDS)  # every task has a scorer and a kind
    intent = load_gsm_symbolic(n=1, seed=0)[0]
    assert intent.task == "gsm_symbolic" and TASK_KINDS[intent.task] == "math"
    scorer = make_scorer(intent.task)
    assert isinstance(scorer, MathScorer)
    answer = intent.reference["answer"]
    assert scorer.score(f"So the answer is {answer}.", intent).solved
    assert not scorer.score(f"So the answer is {answer}1.", intent).solved


def test_records_score_table_and_report_name_the_tasks_alike(tmp_path: Path) -> None:
    cfg = _compose("config", OFFLINE)
    rows = simulate(cfg, tmp_path)
    records = read_records(tmp_path / cfg.results_file)
    assert {r["task"] for r in records} == {"gsm_symbolic", "humaneval"}
    assert [row["task"] for row in rows] == ["gsm_symbolic", "humaneval", "all"]
    # the report of the same run: one row per task of the mixed intents option
    (tmp_path / "run_info.json").write_text(json.dumps({"simulator": "sharded", "intents": "tiny"}))
    report = merge_rows(collect_runs(tmp_path))
    assert [row["intents"] for row in report] == ["tiny:gsm_symbolic", "tiny:humaneval"]


def test_old_records_read_under_the_new_task_name(tmp_path: Path) -> None:
    old = [  # written before GSM-Symbolic had its own name; a real GSM8k record keeps its own
        {"key": "gsm_symbolic/0-1#0", "task": "gsm8k", "intent_id": "gsm_symbolic/0-1"},
        {"key": "gsm8k/3#0", "task": "gsm8k", "intent_id": "gsm8k/3"},
        {"key": "HumanEval/2#0", "task": "humaneval", "intent_id": "HumanEval/2"},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    assert [r["task"] for r in read_records(path)] == ["gsm_symbolic", "gsm8k", "humaneval"]


def test_lic_files_keep_the_task_name(tmp_path: Path) -> None:
    intents = load_gsm_symbolic(n=2, seed=1) + load_humaneval(limit=1)
    record = intent_to_record(intents[0])
    assert record["task"] == "math" and record["userlm_env_task"] == "gsm_symbolic"
    assert "userlm_env_task" not in intent_to_record(intents[2])  # the kind's default name
    assert [i.task for i in load_lic_json(export_lic_json(intents, tmp_path / "x.json"))] == [
        "gsm_symbolic",
        "gsm_symbolic",
        "humaneval",
    ]
    with pytest.raises(DataError, match="userlm_env_task 'humaneval' is not a math task"):
        record_to_intent({**record, "userlm_env_task": "humaneval"}, "x.json record 0")


# --------------------------------------------------------------------------- presets


def _declared(path: Path) -> Counter[str]:
    """The intents an option's ``# Intents: 33 gsm8k, 33 humaneval`` line promises."""
    lines = INTENTS_LINE.findall(path.read_text(encoding="utf-8"))
    assert len(lines) == 1, f"{path.name} needs one '# Intents: <count> <task>, ...' line"
    counts: Counter[str] = Counter()
    for part in lines[0].split(","):
        match = COUNT.fullmatch(part.strip())
        assert match, f"{path.name}: {part.strip()!r} is not '<count> <task>'"
        counts[match[2]] += int(match[1])
    return counts


def _selected(cfg: DictConfig) -> Counter[str]:
    """Intents per task a run of ``cfg`` plays (as experiments.episodes selects them)."""
    intents = first_per_task(instantiate(cfg.intents), cfg.max_intents_per_task)
    return Counter(intent.task for intent in intents)


@pytest.mark.parametrize("path", sorted((CONF / "experiment").glob("*.yaml")), ids=lambda p: p.stem)
def test_experiment_presets_select_the_intents_they_describe(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # data paths are relative to the folder a command runs in
    for config_name in ("config", "score"):
        cfg = _compose(config_name, [f"experiment={path.stem}"])
        assert _selected(cfg) == _declared(path), (config_name, path.name)


@pytest.mark.parametrize("path", sorted((CONF / "intents").glob("*.yaml")), ids=lambda p: p.stem)
def test_intents_options_hold_what_they_describe(path: Path) -> None:
    overrides = [f"intents={path.stem}"]
    if path.stem == "gsm8k":  # offline: the official test split instead of `datasets`
        overrides.append(f"intents.data_path={GSM8K_TEST}")
    assert _selected(_compose("config", overrides)) == _declared(path)


def test_paper_table3_names_the_gsm8k_path_to_pass() -> None:
    text = (CONF / "experiment" / "paper_table3.yaml").read_text(encoding="utf-8")
    assert "gsm8k_data_path=<your GSM8k test.jsonl>" in text and "gsm8k_data_path=null" in text
    cfg = _compose("score", ["experiment=paper_table3", f"gsm8k_data_path={GSM8K_TEST}"])
    assert cfg.intents.sources[0].data_path == str(GSM8K_TEST)


# --------------------------------------------------------------------------- simulator defaults


def _settings(cfg: DictConfig) -> dict[str, object]:
    """The simulator settings a config node sets (its target, name and model aside)."""
    node = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(node, dict)
    return {k: v for k, v in node.items() if k not in {"_target_", "name", "model"}}


@pytest.mark.parametrize(
    ("option", "model"), [("userlm_embedded", EMBEDDED_MODEL), ("userlm_8b", "microsoft/UserLM-8b")]
)
def test_library_defaults_equal_the_simulator_config(option: str, model: str) -> None:
    node = _compose("config", [f"simulator={option}"]).simulator
    assert node.model == model
    library = make_simulator("userlm", model=model)  # loads nothing
    assert isinstance(library, UserLMSimulator)
    for field, value in _settings(node).items():
        assert getattr(library.config, field) == value, field
    assert instantiate(node).config == library.config  # every field, not only those listed
    assert build_simulator("userlm", {"model": model}).config == library.config  # gym.make's way


def test_only_the_embedded_model_gets_the_embedded_defaults() -> None:
    embedded = UserLMSimulator(EMBEDDED_MODEL).config
    assert {k: getattr(embedded, k) for k in EMBEDDED_SETTINGS} == dict(EMBEDDED_SETTINGS)
    other = UserLMSimulator("some/checkpoint").config
    assert other.max_new_tokens == 60 != embedded.max_new_tokens  # UserLM-8b's generation config
    assert UserLMSimulator(EMBEDDED_MODEL, max_new_tokens=12).config.max_new_tokens == 12
