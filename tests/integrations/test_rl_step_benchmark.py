"""Smoke test of benchmarks/rl_step.py: one tiny GRPO step per user, the JSON it reports."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT

BENCHMARK = REPO_ROOT / "benchmarks" / "rl_step.py"
VARIANTS = ("sharded", "userlm")
PER_VARIANT = (
    "env_share",
    "step_s",
    "env_s_per_step",
    "simulator_s_per_step",
    "scorer_s_per_step",
    "rollout_s_per_step",
    "user_turns_per_step",
    "tries_per_user_turn",
)
ROUNDING = 2e-6  # the figures are rounded to 6 decimals


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rl_step_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_run_reports_env_share_of_both_users() -> None:
    # One counted step of 2 conversations (1 intent x a group of 2), one reply each: the env's
    # only user turns are the 2 first turns, and the reply ends every episode (max_replies 1).
    command = [
        sys.executable,
        str(BENCHMARK),
        "--steps=1",
        "--warmup-steps=0",
        "--max-new-tokens=4",
        "--max-replies=1",
        "--prompts-per-step=1",
        "--num-intents=2",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ), timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    result = json.loads(lines[-1])
    expected = {f"{key}_{name}" for key in PER_VARIANT for name in VARIANTS}
    assert expected <= set(result)
    assert result["step_ratio_userlm_vs_sharded"] > 0
    assert result["steps"] == 1 and result["conversations_per_step"] == 2
    for name in VARIANTS:
        figures = {key: result[f"{key}_{name}"] for key in PER_VARIANT}
        assert figures["user_turns_per_step"] == 2
        assert figures["tries_per_user_turn"] >= 1
        assert 0 < figures["env_share"] <= 1
        # The clocks nest: simulator and scorer calls happen inside the rollout, inside a step.
        env = figures["simulator_s_per_step"] + figures["scorer_s_per_step"]
        assert figures["env_s_per_step"] == pytest.approx(env, abs=ROUNDING)
        assert figures["env_s_per_step"] <= figures["rollout_s_per_step"] + ROUNDING
        assert figures["rollout_s_per_step"] <= figures["step_s"] + ROUNDING
        share = figures["env_s_per_step"] / figures["step_s"]
        assert figures["env_share"] == pytest.approx(share, abs=0.01)
    # The rule-based user reports no guardrail tries: one "generation" per turn.
    assert result["tries_per_user_turn_sharded"] == 1
    # Every step's output line names its user and step.
    assert any(line.startswith(" userlm step 1") for line in lines)


def test_arguments_are_checked() -> None:
    module = _load()
    work = module.parse_args(["--steps=3", "--max-replies=4"])
    assert (work.steps, work.max_replies, work.warmup_steps) == (3, 4, 1)
    for bad in (["--steps=0"], ["--num-generations=1"], ["--warmup-steps=-1"]):
        with pytest.raises(SystemExit):
            module.parse_args(bad)
