"""Every entry point reports failure as failure, explains itself with ``--help``, and names sweep
folders so a person can read them.

Bad inputs (a missing or empty run folder, malformed data, a missing model, a mistyped
setting) end ``report``, ``train``, ``perplexity`` and ``userlm-env-intents`` with a non-zero
exit status and one ``error: ...`` line instead of a traceback; under ``accelerate launch`` the
first failing rank's message reaches the end of the launcher's output.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from assistants import make_assistant
from assistants.scripted import OracleAssistant
from experiments.report import EXIT_NO_EPISODES, EXIT_UNREADABLE
from experiments.report import main as report_main
from experiments.sweep_names import MAX_NAME_CHARS, sweep_name, swept_keys
from experiments.train import SettingError, check_settings
from simulators.sharded import ShardedSimulator
from tests.conftest import REPO_ROOT
from tests.fault_server import FaultServer, bad_request, running_fault_server
from tests.test_report import toy_intents
from userlm_env.core import ConversationCore
from userlm_env.intents.__main__ import main as intents_main
from userlm_env.records import JsonlWriter, read_records
from userlm_env.rollout import make_jobs, run_episodes

VENV_BIN = Path(sys.executable).parent
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "synthetic_conversations.jsonl"
CONF = REPO_ROOT / "experiments" / "conf"


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``args`` from the repository root (offline settings come from tests/conftest.py)."""
    return subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def _module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", name, *args]


def _assert_one_error_line(stderr: str, *fragments: str) -> str:
    """The last stderr line is ``error: ...`` holding every fragment, and no traceback shows."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert errors, stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[-1], errors[-1]
    return errors[-1]


def _bad_conversations(tmp_path: Path) -> Path:
    """A JSONL file whose first record has a user message without content."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user"}]}\nnot json\n', encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ report


def _run_folder(root: Path, name: str, assistant: object, intents: list) -> Path:
    """A run folder as ``experiments.simulate`` writes it: results and run info."""
    folder = root / name
    folder.mkdir(parents=True)
    core = ConversationCore(ShardedSimulator(), max_replies=3)
    jobs = make_jobs(intents, n_per_intent=1)
    run_episodes(jobs, core, assistant, on_done=JsonlWriter(folder / "results.jsonl"))
    info = {"simulator": name, "intents": "toy", "assistant": "oracle"}
    (folder / "run_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def _failed_run(root: Path, server: FaultServer) -> Path:
    """A run whose every episode failed: the assistant's server answers 400 to every call."""
    intents = toy_intents()
    server.push([bad_request()] * 8)
    assistant = make_assistant(
        "litellm", model="openai/refused", api_base=server.api_base, api_key="sk-test",
        max_retries=0,
    )  # fmt: skip
    folder = _run_folder(root, "full", assistant, intents)
    assert all(r.get("error") for r in read_records(folder / "results.jsonl"))
    return folder


@pytest.mark.parametrize(
    ("folder", "fragment"), [("absent", "is not a folder"), ("empty", "no results.jsonl below")]
)
def test_report_without_runs_is_a_usage_error(
    tmp_path: Path, capsys, folder: str, fragment: str
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as usage:  # as argparse's usage errors
        report_main([str(tmp_path / folder)])
    assert usage.value.code == EXIT_UNREADABLE
    _assert_one_error_line(capsys.readouterr().err, fragment)


def test_report_of_runs_without_finished_episodes_exits_1(
    tmp_path: Path, capsys, fault_server: FaultServer
) -> None:
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "results.jsonl").write_text("", encoding="utf-8")  # the run died before an episode
    assert report_main([str(empty)]) == EXIT_NO_EPISODES
    _assert_one_error_line(capsys.readouterr().err, "no episode records")

    failed = _failed_run(tmp_path / "sweep", fault_server)
    assert report_main([str(failed)]) == EXIT_NO_EPISODES
    line = _assert_one_error_line(capsys.readouterr().err, "2 of 2 failed", "most common error")
    assert "openai/refused" in line  # the cause itself, not just a count
    assert not (failed / "report.md").exists()


def test_report_with_some_failed_runs_writes_and_counts_them(
    tmp_path: Path, capsys, fault_server: FaultServer
) -> None:
    root = tmp_path / "sweep"
    _failed_run(root, fault_server)
    _run_folder(root, "sharded", OracleAssistant(toy_intents()), toy_intents())
    assert report_main([str(root)]) == 0
    captured = capsys.readouterr()
    assert "2 of 4 episodes failed" in captured.err and "openai/refused" in captured.err
    assert (root / "report_figures" / "protocol.png").exists()  # drawn from the finished setting
    assert (root / "report.html").exists()


# ------------------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    ("overrides", "status", "fragments"),
    [
        (["data.path=BAD"], 1, ["bad.jsonl:1:", "messages[0].content"]),
        (["train.max_steps=abc"], 2, ["train.max_steps", "'abc'"]),
        (["train.init=pretrained", "train.model=no-such-org/no-such-model"], 1,
         ["no-such-org/no-such-model", "Alternatives"]),
    ],
)  # fmt: skip
def test_train_fails_with_one_error_line(
    tmp_path: Path, overrides: list[str], status: int, fragments: list[str]
) -> None:
    given = [o.replace("BAD", str(_bad_conversations(tmp_path))) for o in overrides]
    result = _run(_module("experiments.train", *given, f"hydra.run.dir={tmp_path / 'run'}"))
    assert result.returncode == status, result.stderr[-3000:]
    _assert_one_error_line(result.stderr, *fragments)
    assert not (tmp_path / "run" / "model").exists()


def _compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.slow
def test_accelerate_launch_surfaces_the_first_ranks_data_error(tmp_path: Path) -> None:
    """Two ranks under torch elastic (``--multi_gpu`` runs on CPUs too): the data error is the
    launcher's root cause, in the last lines of its output, and each rank says so itself."""
    bad = _bad_conversations(tmp_path)
    command = [
        str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0", "-m", "experiments.train",
        f"data.path={bad}", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert result.returncode != 0
    message = "bad.jsonl:1: messages[0].content must be a non-empty string"
    tail = "\n".join(result.stderr.splitlines()[-20:])
    assert message in tail, result.stderr[-4000:]
    assert "DataError" in tail  # the root cause names the error type
    assert any(
        line.startswith("error (rank ") and message in line for line in result.stderr.splitlines()
    ), result.stderr[-4000:]


# -------------------------------------------------------------------------------- perplexity


def test_perplexity_checks_the_conversations_before_loading_the_model(tmp_path: Path) -> None:
    missing = _run(
        _module("experiments.perplexity", f"conversations={tmp_path / 'absent.jsonl'}",
                "model=no-such-org/no-such-model", f"hydra.run.dir={tmp_path / 'a'}")
    )  # fmt: skip
    assert missing.returncode == 1
    _assert_one_error_line(missing.stderr, "absent.jsonl", "does not exist")

    no_intent = tmp_path / "no_intent.jsonl"
    records = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    no_intent.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "intent"}) + "\n" for r in records)
    )
    result = _run(
        _module("experiments.perplexity", f"conversations={no_intent}",
                "model=no-such-org/no-such-model", f"hydra.run.dir={tmp_path / 'b'}")
    )  # fmt: skip
    assert result.returncode == 1
    _assert_one_error_line(result.stderr, f"none of the {len(records)} conversations")


def test_perplexity_reports_a_missing_model_in_one_line(tmp_path: Path) -> None:
    result = _run(
        _module("experiments.perplexity", "model=no-such-org/no-such-model",
                f"conversations={FIXTURE}", f"hydra.run.dir={tmp_path}")
    )  # fmt: skip
    assert result.returncode == 1
    _assert_one_error_line(result.stderr, "no-such-org/no-such-model")
    assert not (tmp_path / "perplexity.json").exists()


# ------------------------------------------------------------------------------- intents CLI


def test_intents_cli_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": null, "answer": "#### 3"}\n', encoding="utf-8")
    out = tmp_path / "out.json"
    assert intents_main(["export", "--source", "gsm8k", "--data-path", str(bad), "--out", str(out)])
    _assert_one_error_line(capsys.readouterr().err, "bad.jsonl")
    blocked = tmp_path / "file"
    blocked.write_text("", encoding="utf-8")  # a file where the output's folder should be
    args = ["export", "--source", "humaneval", "--limit", "1", "--out", str(blocked / "x.json")]
    assert intents_main(args) == 1
    _assert_one_error_line(capsys.readouterr().err, "cannot write", "x.json")
    with pytest.raises(SystemExit) as usage:
        intents_main(["export", "--source", "humaneval"])
    assert usage.value.code == 2


def test_intents_cli_help_shows_each_example_on_its_own_line() -> None:
    result = _run([str(VENV_BIN / "userlm-env-intents"), "--help"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    examples = [line.strip() for line in lines if line.strip().startswith("userlm-env-intents ")]
    assert len(examples) >= 4 and all(line.count("userlm-env-intents") == 1 for line in examples)
    assert "export --source humaneval --out humaneval.json --limit 20" in result.stdout
    assert "exit status" in result.stdout
    export = _run(_module("userlm_env.intents", "export", "--help"))
    assert export.returncode == 0
    assert "python -m userlm_env.intents export --source gsm_symbolic --n 100" in export.stdout


# -------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("experiments.score", ["score an assistant", "simulator=OPTION", "assistant=OPTION",
                               "intents=OPTION", "experiment=OPTION", "n_per_intent",
                               "max_replies", "max_intents_per_task", "batch_size",
                               "max_cost_usd", "dry_run", "verbose", "hydra.run.dir",
                               "Examples", "assistant.model=openai/gpt-4o-mini", "Exit status"]),
        ("experiments.simulate", ["simulate conversations", "simulator=OPTION", "intents=OPTION",
                                  "n_per_intent", "max_intents_per_task", "hydra.run.dir",
                                  "Examples", "experiments.report", "Exit status"]),
        ("experiments.train", ["train a User LM", "train=OPTION", "data.path", "train.max_steps",
                               "Examples", "accelerate launch", "Exit status"]),
        ("experiments.perplexity", ["with and without the intent", "conversations",
                                    "batch_size", "Examples", "Exit status"]),
    ],
)  # fmt: skip
def test_help_says_what_the_script_does(module: str, expected: list[str]) -> None:
    result = _run(_module(module, "--help"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"python -m {module}: ")
    for text in expected:
        assert text in result.stdout, text
    assert "is powered by Hydra" not in result.stdout  # Hydra's generic header is replaced


def test_help_shows_the_overridden_choices() -> None:
    result = _run(_module("experiments.score", "--help", "simulator=full", "n_per_intent=3"))
    assert "the simulated user (now full)" in result.stdout
    assert "episodes per intent (now 3)" in result.stdout


# ------------------------------------------------------------------------------ sweep names


def test_sweep_names_are_flat_and_name_what_varies() -> None:
    overrides = [
        "assistant.model=openai/gpt-4o",
        r"assistant.api_base=http\://127.0.0.1\:8080/v1",
        "assistant.api_key=sk-secret",
        "intents=humaneval",
    ]
    swept = {"assistant.model", "assistant.api_base"}
    assert sweep_name(overrides, swept) == (
        "assistant.model=openai_gpt-4o,assistant.api_base=127.0.0.1_8080_v1"
    )
    everything = sweep_name(overrides, swept=())
    assert "/" not in everything and "sk-secret" not in everything
    assert "assistant.api_key=hidden-" in everything and everything.endswith(",intents=humaneval")
    assert sweep_name(["+tag=a/b", "~seed", "x=[1,2]"], ()) == "tag=a_b,~seed,x=1+2"
    assert sweep_name([], ()) == "default"
    long = sweep_name([f"k{i}=" + "v" * 40 for i in range(10)], ())
    assert len(long) == MAX_NAME_CHARS and long != sweep_name(["k0=" + "v" * 40] * 10, ())


def test_swept_keys_come_from_sweep_overrides_and_sweeper_params() -> None:
    config = OmegaConf.create(
        {
            "hydra": {
                "overrides": {"task": ["simulator=sharded,full", "n_per_intent=1", "+s=range(2)"]},
                "sweeper": {"params": {"intents": "tiny,humaneval"}},
            }
        }
    )
    assert swept_keys(config) == {"simulator", "s", "intents"}


def test_a_sweep_over_model_strings_writes_flat_folders_the_report_reads(
    tmp_path: Path,
) -> None:
    """A joblib sweep over two model strings (with '/') against a URL (with '/' and ':')."""
    sweep = tmp_path / "sweep"
    with running_fault_server() as server:
        result = _run(
            _module(
                "experiments.score", "-m", "hydra/launcher=joblib",
                "assistant.model=openai/gpt-4o-mini,openai/gpt-4o",
                f"assistant.api_base={server.api_base}", "assistant.api_key=sk-test",
                "assistant.max_retries=0", "simulator=sharded", "intents=tiny",
                "max_intents_per_task=1", "n_per_intent=1", "max_replies=1",
                f"hydra.sweep.dir={sweep}",
            )
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert folders == ["assistant.model=openai_gpt-4o", "assistant.model=openai_gpt-4o-mini"]
    assert all((sweep / name / "results.jsonl").exists() for name in folders)
    report = _run(_module("experiments.report", str(sweep)))
    assert report.returncode == 0, report.stderr[-2000:]
    with (sweep / "report_protocol.csv").open(encoding="utf-8") as handle:
        assistants = sorted(row["assistant"] for row in csv.DictReader(handle))
    assert len(assistants) == 2  # one row per swept model, told apart by run_info.json
    assert assistants[0].endswith("openai/gpt-4o") and assistants[1].endswith("gpt-4o-mini")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "train").glob("*.yaml")))
def test_every_train_preset_passes_the_settings_check(preset: str) -> None:
    check_settings(_compose_train([f"train={preset}"]))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("+train.nope=1", "train.nope: Key 'nope' not in 'TrainConfig'"),
        ("train.learning_rate=fast", "train.learning_rate: Value 'fast'"),
        ("train.sample_mode=mixed", "train: sample_mode must be one of"),
        ("+data.nope=1", "data.nope: Key 'nope' not in 'DataConfig'"),
    ],
)
def test_the_settings_check_names_the_bad_setting(override: str, fragment: str) -> None:
    with pytest.raises(SettingError, match=re.escape(fragment)):
        check_settings(_compose_train([override]))
