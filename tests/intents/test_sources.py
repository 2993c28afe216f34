"""Intent sources: HumanEval, GSM8k (JSONL and datasets), GSM-Symbolic, the registry."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.intents.data import gsm8k_path, gsm8k_rows
from userlm_env.errors import DataError, UnknownNameError
from userlm_env.intents import (
    SOURCES,
    load_gsm8k_datasets,
    load_gsm8k_jsonl,
    load_gsm_symbolic,
    load_humaneval,
    load_intents,
)
from userlm_env.types import Intent

ANSWER = re.compile(r"-?\d+(?:\.\d+)?")


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- HumanEval


def test_humaneval_loads_all_164_problems_with_references() -> None:
    intents = load_humaneval()
    assert len(intents) == 164
    assert [i.intent_id for i in intents[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert {i.task for i in intents} == {"humaneval"}
    for intent in intents:
        reference = intent.reference
        assert set(reference) == {"prompt", "test", "entry_point", "canonical_solution"}
        assert f"`{reference['entry_point']}(" in intent.instruction
        assert reference["prompt"].strip() in intent.instruction
        assert reference["entry_point"] in intent.shards[0].text


def test_humaneval_limit_keeps_the_first_problems() -> None:
    assert [i.intent_id for i in load_humaneval(limit=3)] == [f"HumanEval/{i}" for i in range(3)]
    with pytest.raises(ValueError, match="limit"):
        load_humaneval(limit=-1)


# --------------------------------------------------------------------------- GSM8k JSONL


def test_gsm8k_test_split_loads_every_problem() -> None:
    intents = load_gsm8k_jsonl(gsm8k_path())
    rows = gsm8k_rows()
    assert len(intents) == len(rows) == 1319
    assert intents[0].intent_id == "gsm8k/0" and intents[-1].intent_id == "gsm8k/1318"
    assert intents[0].reference["answer"] == "18"
    for intent, row in zip(intents, rows, strict=True):
        assert intent.task == "gsm8k"
        assert intent.instruction == row["question"]
        assert ANSWER.fullmatch(intent.reference["answer"])
        assert intent.reference["solution"] == row["answer"]


def test_gsm8k_answers_lose_their_commas_and_ids_keep_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "mini.jsonl"
    path.write_text(
        json.dumps({"question": "A house costs $70,000. How much?", "answer": "x\n#### 70,000"})
        + "\n\n"
        + json.dumps({"question": "Ann has 2 cats and 3 dogs. How many pets?", "answer": "#### 5"})
        + "\n",
        encoding="utf-8",
    )
    intents = load_gsm8k_jsonl(path)
    assert [i.intent_id for i in intents] == ["gsm8k/0", "gsm8k/2"]
    assert [i.reference["answer"] for i in intents] == ["70000", "5"]
    assert load_gsm8k_jsonl(path, limit=1) == intents[:1]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"question": "How many?", "answer": "five"}', "####"),
        ('{"question": "How many?", "answer": "#### many"}', "not a number"),
        ('{"question": 3, "answer": "#### 3"}', "'question'"),
        ('{"answer": "#### 3"}', "'question'"),
    ],
)
def test_malformed_gsm8k_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    good = json.dumps({"question": "What is 1 and 2?", "answer": "#### 3"})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad\.jsonl line 2: .*{re.escape(reason)}"):
        load_gsm8k_jsonl(path)


def test_missing_gsm8k_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_gsm8k_jsonl(tmp_path / "absent.jsonl")


def test_gsm8k_via_datasets_names_the_offline_alternatives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the package were not installed
    with pytest.raises(DataError, match=r"data_path=.*gsm_symbolic"):
        load_gsm8k_datasets()


# --------------------------------------------------------------------------- GSM-Symbolic


def test_gsm_symbolic_strips_the_format_instruction_and_keeps_the_answer() -> None:
    intents = load_gsm_symbolic(n=12, seed=3)
    assert [i.intent_id for i in intents] == [f"gsm_symbolic/3-{i}" for i in range(12)]
    for intent in intents:
        assert intent.task == "gsm_symbolic"  # its own name; scored like gsm8k
        assert "final answer" not in intent.instruction
        assert "units" not in " ".join(s.text for s in intent.shards)
        assert ANSWER.fullmatch(intent.reference["answer"])
        assert intent.reference["solution"].rstrip().endswith(intent.reference["answer"])
        assert 3 <= len(intent.shards) <= 10
    assert load_gsm_symbolic(n=12, seed=3) == intents
    assert load_gsm_symbolic(n=12, seed=4) != intents
    assert load_gsm_symbolic(n=0) == []


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_sources() -> None:
    assert SOURCES.names() == ["gsm8k", "gsm_symbolic", "humaneval", "lic"]


def test_load_intents_dispatches_by_name() -> None:
    humaneval = load_intents("humaneval", limit=2)
    gsm8k = load_intents("gsm8k", data_path=gsm8k_path(), limit=2)
    symbolic = load_intents("gsm_symbolic", n=2, seed=0)
    assert [i.intent_id for i in humaneval] == ["HumanEval/0", "HumanEval/1"]
    assert [i.intent_id for i in gsm8k] == ["gsm8k/0", "gsm8k/1"]
    assert [i.intent_id for i in symbolic] == ["gsm_symbolic/0-0", "gsm_symbolic/0-1"]
    assert all(isinstance(i, Intent) for i in humaneval + gsm8k + symbolic)


def test_unknown_source_raises_with_the_known_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown intent source 'nope'.*humaneval"):
        load_intents("nope")
