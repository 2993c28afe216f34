"""Shared fixtures: offline settings, small hand-made intents, paths to shared data."""

from __future__ import annotations

import os

# Torch threads sleep instead of spinning when idle: with a llama.cpp server and sandbox
# workers beside it, spinning OpenMP threads made forward passes 2-20x slower on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pathlib import Path

import pytest

from tests import server_fixtures
from userlm_env.types import Intent, Shard

# The real llama.cpp server and the scripted fault server, for every test module.
llama_server = server_fixtures.llama_server
fault_server = server_fixtures.fault_server

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_TEST = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    """The official GSM8k test split, read in place from ../shared (never copied)."""
    if not GSM8K_TEST.exists():
        pytest.fail(f"GSM8k test split not found at {GSM8K_TEST}")
    return GSM8K_TEST


@pytest.fixture()
def apples_intent() -> Intent:
    """A small hand-written math intent with three required shards and one optional."""
    return Intent(
        task="gsm8k",
        intent_id="toy/apples",
        instruction="Sam has 12 apples and buys 7 more, then gives 4 away. How many are left?",
        shards=(
            Shard(1, "How many apples does Sam have left?"),
            Shard(2, "Sam starts with 12 apples."),
            Shard(3, "He buys 7 more apples."),
            Shard(4, "He gives 4 apples away."),
            Shard(5, "Answer with a whole number.", required=False),
        ),
        reference={"answer": "15"},
    )
