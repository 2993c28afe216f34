"""The labelled answer-check replies (``fixtures/answer_replies.jsonl``), ready to score.

Rows written for this project carry their own question and reference answer. Rows whose replies
a model produced for a GSM8k test problem name it by its line in the GSM8k file instead
(``gsm8k_line``, 0-based), and the question and answer are read from that file here, at run
time, so the repo holds no copy of the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "tasks" / "fixtures" / "answer_replies.jsonl"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def load_answer_replies(path: Path = FIXTURE, gsm8k: Path = GSM8K) -> list[dict[str, Any]]:
    """Every labelled row with its ``question`` and ``answer`` filled in."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    problems = gsm8k.read_text(encoding="utf-8").splitlines() if gsm8k.exists() else []
    return [_with_problem(row, problems) for row in rows]


def _with_problem(row: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    if "gsm8k_line" not in row:
        return row
    if not problems:
        raise FileNotFoundError(f"{GSM8K} is needed for the GSM8k rows of {FIXTURE.name}")
    problem = json.loads(problems[row["gsm8k_line"]])
    answer = problem["answer"].split("####")[-1].strip()
    return {**row, "question": problem["question"], "answer": answer}
