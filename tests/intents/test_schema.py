"""Lost-in-Conversation JSON: reading variants, validation, lossless round trips, no decoding."""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from tests.intents.data import gsm8k_path
from userlm_env.errors import DataError
from userlm_env.intents import (
    export_lic_json,
    intent_to_record,
    load_gsm8k_jsonl,
    load_gsm_symbolic,
    load_humaneval,
    load_lic_json,
    record_to_intent,
)
from userlm_env.types import Intent, Shard

CODE_PROMPT = 'def inc(x: int) -> int:\n    """Return x plus one."""\n'


def math_record(**changes: Any) -> dict[str, Any]:
    record = {
        "task_id": "sharded-GSM8K/7",
        "task": "math",
        "question": "Ann has 2 cats and 3 dogs. How many pets does she have?",
        "answer": "She has 2 + 3 = 5 pets.\n#### 5",
        "shards": [
            {"shard_id": 1, "shard": "How many pets does Ann have?"},
            {"shard_id": 2, "shard": "Ann has 2 cats."},
            {"shard_id": 3, "shard": "She has 3 dogs."},
        ],
    }
    return {**record, **changes}


def code_record(**changes: Any) -> dict[str, Any]:
    record = {
        "task_id": "sharded-HumanEval/99",
        "task": "code",
        "prompt": CODE_PROMPT,
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
        "entry_point": "inc",
        "shards": [
            {"shard_id": 1, "shard_text": "Write `inc`.", "is_required": True},
            {"shard_id": 2, "shard_text": "It adds one.", "is_required": True},
            {"shard_id": 3, "shard_text": "inc(1) == 2", "is_required": False},
        ],
    }
    return {**record, **changes}


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


def test_math_record_maps_to_a_gsm8k_intent() -> None:
    intent = record_to_intent(math_record(), "test")
    assert intent.task == "gsm8k"
    assert intent.intent_id == "GSM8K/7"
    assert intent.instruction.startswith("Ann has 2 cats")
    assert intent.reference == {"answer": "5", "solution": "She has 2 + 3 = 5 pets.\n#### 5"}
    assert intent.shards[1] == Shard(2, "Ann has 2 cats.", required=True)


def test_code_record_accepts_shard_text_and_is_required_and_builds_an_instruction() -> None:
    intent = record_to_intent(code_record(), "test")
    assert intent.task == "humaneval"
    assert intent.intent_id == "HumanEval/99"
    assert intent.shards[2] == Shard(3, "inc(1) == 2", required=False)
    assert "`inc(x: int) -> int`" in intent.instruction
    assert intent.reference["entry_point"] == "inc"


@pytest.mark.parametrize("key", ["fully_specified_prompt", "instruction", "question", "prompt"])
def test_instruction_keys_are_recognised(key: str) -> None:
    record = math_record(question=None) if key != "question" else math_record()
    record[key] = "How many pets does Ann, with 2 cats and 3 dogs, have?"
    assert record_to_intent(record, "test").instruction == record[key]


def test_numeric_math_answer_is_accepted() -> None:
    intent = record_to_intent(math_record(answer=1600), "test")
    assert intent.reference == {"answer": "1600"}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"shards": []}, "non-empty list"),
        ({"shards": "one"}, "non-empty list"),
        ({"shards": [{"shard_id": 1, "shard": "a"}, {"shard_id": 1, "shard": "b"}]}, "duplicate"),
        ({"shards": [{"shard_id": 1, "shard": "  "}]}, "empty shard text"),
        ({"shards": [{"shard_id": 1, "shard": {"text": "a"}}]}, "not a string"),
        ({"shards": [{"shard_id": True, "shard": "a"}]}, "positive integer"),
        ({"shards": [{"shard_id": "1", "shard": "a"}]}, "positive integer"),
        ({"shards": [{"shard_id": 1, "shard": "a", "required": "yes"}]}, "true or false"),
        ({"task": "database"}, "unsupported task"),
        ({"task_id": 7}, "'task_id'"),
        ({"answer": ["5"]}, "'answer'"),
        ({"answer": "#### five"}, "not a number"),
    ],
)
def test_malformed_records_raise_with_the_reason(changes: dict, reason: str) -> None:
    with pytest.raises(DataError, match=reason):
        record_to_intent(math_record(**changes), "file.json record 0")


def test_code_fields_must_be_strings() -> None:
    with pytest.raises(DataError, match="'test' is a dict"):
        record_to_intent(code_record(test={"cases": [1]}), "record 0")
    with pytest.raises(DataError, match="'entry_point' is missing"):
        record_to_intent(code_record(entry_point=None), "record 0")


class Trap:
    """Unpickling an instance writes ``marker``: proof that a blob was decoded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path, str]]:
        return (Path.write_text, (self.marker, "unpickled"))


def trap_blob(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(Trap(marker))).decode("ascii")


def test_encoded_blobs_stay_opaque_strings_and_are_never_unpickled(tmp_path: Path) -> None:
    sanity = tmp_path / "sanity"
    pickle.loads(base64.b64decode(trap_blob(sanity)))  # the trap fires when decoded ...
    assert sanity.exists()
    marker = tmp_path / "marker"
    blob = trap_blob(marker)
    path = write_json(tmp_path / "lic.json", [code_record(test=blob, canonical_solution=blob)])
    (intent,) = load_lic_json(path)
    assert intent.reference["test"] == blob
    assert intent.reference["canonical_solution"] == blob
    assert not marker.exists()  # ... and loading never decoded it


# --------------------------------------------------------------------------- files


def test_lic_file_skips_other_tasks_unless_asked_not_to(tmp_path: Path) -> None:
    other = {"task_id": "sharded-spider/1", "task": "database", "shards": []}
    path = write_json(tmp_path / "lic.json", [other, math_record(), code_record()])
    assert [i.task for i in load_lic_json(path)] == ["gsm8k", "humaneval"]
    with pytest.raises(DataError, match="record 0: unsupported task 'database'"):
        load_lic_json(path, skip_other_tasks=False)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{oops", "invalid JSON"),
        (json.dumps({"records": []}), "expected a JSON list"),
        (json.dumps([{"task": "summary"}]), "no math or code records"),
        (json.dumps([math_record(), math_record()]), "duplicate task_id 'GSM8K/7'"),
        (json.dumps([math_record(), "text"]), "record 1: expected a JSON object"),
    ],
)
def test_malformed_lic_files_raise(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "lic.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=reason):
        load_lic_json(path)


def test_missing_lic_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_lic_json(tmp_path / "absent.json")


# --------------------------------------------------------------------------- round trips


def test_humaneval_round_trip_is_lossless(tmp_path: Path) -> None:
    intents = load_humaneval()
    assert load_lic_json(export_lic_json(intents, tmp_path / "he.json")) == intents


def test_gsm8k_and_symbolic_round_trip_is_lossless(tmp_path: Path) -> None:
    intents = load_gsm8k_jsonl(gsm8k_path()) + load_gsm_symbolic(n=5, seed=1)
    assert load_lic_json(export_lic_json(intents, tmp_path / "math.json")) == intents


def test_extra_reference_fields_survive_the_round_trip(tmp_path: Path) -> None:
    intent = Intent(
        task="gsm8k",
        intent_id="x/1",
        instruction="What is 2 and 2?",
        shards=(Shard(1, "What is 2 and 2?"), Shard(2, "Use integers.", required=False)),
        reference={"answer": "4", "source": {"name": "hand", "year": 2025}},
    )
    record = intent_to_record(intent)
    assert record["task"] == "math" and record["task_id"] == "sharded-x/1"
    assert record["reference_extra"] == {"source": {"name": "hand", "year": 2025}}
    assert load_lic_json(export_lic_json([intent], tmp_path / "x.json")) == [intent]


def test_exporting_an_unknown_task_or_unserialisable_reference_raises(tmp_path: Path) -> None:
    odd = Intent(task="chess", intent_id="c/1", instruction="Mate in 2.", shards=(Shard(1, "a"),))
    with pytest.raises(DataError, match="cannot be exported"):
        intent_to_record(odd)
    unserialisable = Intent(
        task="gsm8k",
        intent_id="g/1",
        instruction="What?",
        shards=(Shard(1, "What?"),),
        reference={"answer": "1", "tags": {1, 2}},
    )
    with pytest.raises(DataError, match="serialise"):
        export_lic_json([unserialisable], tmp_path / "out.json")
