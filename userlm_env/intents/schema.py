"""JSON (de)serialisation between intents and Lost-in-Conversation records.

A Lost-in-Conversation ("LiC") record is a JSON object::

    {"task_id": "sharded-HumanEval/0", "task": "code",
     "fully_specified_prompt": "...",
     "shards": [{"shard_id": 1, "shard": "...", "required": true}, ...],
     "prompt": "...", "test": "...", "entry_point": "...", "canonical_solution": "..."}

Math records (``"task": "math"``) carry ``question`` and ``answer`` instead of the code keys.
A LiC ``task`` is a kind (``math``, ``code``); the userlm-env task it becomes is ``gsm8k`` or
``humaneval``, or the record's ``userlm_env_task`` when that names another task of the same
kind (``"userlm_env_task": "gsm_symbolic"``, which writing adds for such intents).
On reading, shard texts may sit under ``shard`` or ``shard_text``, required flags under
``required`` or ``is_required`` (default: required), and the instruction under
``fully_specified_prompt``, ``instruction``, ``question`` or ``prompt``. Writing uses the first
spelling of each, adds ``solution`` for math answers with a worked solution and
``reference_extra`` for any other reference field, so that ``record_to_intent(intent_to_record(i))
== i`` for every intent of a supported task.

Data files are only ever parsed as JSON: no field is decoded, unpickled or evaluated. A field
that is not the plain string (or number, for answers) it should be is rejected with
:class:`~userlm_env.errors.DataError`; strings are kept as they are, so an encoded blob stays an
opaque string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, overload

from userlm_env.errors import DataError
from userlm_env.intents.sharding import code_instruction
from userlm_env.tasks import TASK_KINDS
from userlm_env.types import Intent, Shard

__all__ = [
    "LIC_TASKS",
    "final_answer",
    "intent_to_record",
    "normalize_number",
    "record_to_intent",
]

#: LiC task names (kinds) -> the userlm-env task a record of that kind becomes by default (our
#: own task names are accepted on reading too; a record's ``userlm_env_task`` names another).
LIC_TASKS: Mapping[str, str] = {"math": "gsm8k", "code": "humaneval"}
_TASK_KEY = "userlm_env_task"
_ID_PREFIX = "sharded-"
_EXTRA_KEY = "reference_extra"
_MATH_KEYS = ("answer", "solution")
_CODE_KEYS = ("prompt", "test", "entry_point", "canonical_solution")
_REQUIRED_CODE_KEYS = ("prompt", "test", "entry_point")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


# --------------------------------------------------------------------------- answers


def normalize_number(text: str, where: str) -> str:
    """``"$1,600."`` -> ``"1600"``: strip currency, thousands commas, a trailing period.

    Raises:
        DataError: what remains is not a plain decimal number.
    """
    cleaned = text.strip().replace(",", "").lstrip("$€£").rstrip(".").strip()
    if not _NUMBER.fullmatch(cleaned):
        raise DataError(f"{where}: answer {text!r} is not a number")
    return cleaned


def final_answer(solution: str, where: str) -> str:
    """The normalised number after the last ``####`` of a GSM8k-style solution.

    Raises:
        DataError: no ``####`` marker, or no number after it.
    """
    if "####" not in solution:
        raise DataError(f"{where}: answer has no '#### <number>' line")
    return normalize_number(solution.rsplit("####", 1)[1], where)


# --------------------------------------------------------------------------- reading


def record_to_intent(record: Any, where: str) -> Intent:
    """Build an intent from one LiC record; ``where`` names it in errors ("file.json record 3").

    Raises:
        DataError: the record is malformed (the message says which field and why).
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    task = _task(record, where)
    read_reference = _math_reference if TASK_KINDS[task] == "math" else _code_reference
    reference = read_reference(record, where)
    return Intent(
        task=task,
        intent_id=_task_id(record, where),
        instruction=_instruction(record, task, reference, where),
        shards=_shards(record.get("shards"), where),
        reference={**_extra(record, where), **reference},
    )


@overload
def _text(
    record: Mapping[str, Any], key: str, where: str, *, required: Literal[True] = True
) -> str: ...


@overload
def _text(record: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None: ...


def _text(record: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    """A string field; ``None`` when absent and optional."""
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise DataError(f"{where}: field {key!r} is {kind}")
    return value


def _task(record: Mapping[str, Any], where: str) -> str:
    """The userlm-env task of ``record``: its LiC kind's default, or its ``userlm_env_task``."""
    name = _text(record, "task", where)
    if name in TASK_KINDS:
        return name
    if name not in LIC_TASKS:
        known = ", ".join(sorted({*LIC_TASKS, *TASK_KINDS}))
        raise DataError(f"{where}: unsupported task {name!r} (supported: {known})")
    ours = _text(record, _TASK_KEY, where, required=False)
    if ours is None:
        return LIC_TASKS[name]
    if TASK_KINDS.get(ours) != name:
        same_kind = ", ".join(sorted(t for t, kind in TASK_KINDS.items() if kind == name))
        raise DataError(f"{where}: {_TASK_KEY} {ours!r} is not a {name} task ({same_kind})")
    return ours


def _task_id(record: Mapping[str, Any], where: str) -> str:
    task_id = _text(record, "task_id", where).strip()
    task_id = task_id.removeprefix(_ID_PREFIX)
    if not task_id:
        raise DataError(f"{where}: empty task_id")
    return task_id


def _shards(raw: Any, where: str) -> tuple[Shard, ...]:
    """Validate the ``shards`` list: 1+ objects, unique integer ids, non-empty texts."""
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: 'shards' must be a non-empty list")
    shards = tuple(_shard(item, f"{where} shard {i}") for i, item in enumerate(raw))
    ids = [s.id for s in shards]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"{where}: duplicate shard ids {duplicates}")
    return shards


def _shard(item: Any, where: str) -> Shard:
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    shard_id = item.get("shard_id")
    if not isinstance(shard_id, int) or isinstance(shard_id, bool) or shard_id < 1:
        raise DataError(f"{where}: 'shard_id' must be a positive integer, got {shard_id!r}")
    key = "shard" if "shard" in item else "shard_text"
    text = _text(item, key, where)
    if not text.strip():
        raise DataError(f"{where}: empty shard text")
    return Shard(id=shard_id, text=text, required=_required_flag(item, where))


def _required_flag(item: Mapping[str, Any], where: str) -> bool:
    key = "required" if "required" in item else "is_required"
    value = item.get(key, True)
    if not isinstance(value, bool):
        raise DataError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _math_reference(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``answer`` (a number, or a worked solution ending in ``#### N``) and ``solution``."""
    answer = record.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise DataError(f"{where}: math field 'answer' must be a string or number, got {answer!r}")
    if "####" in answer:
        return {"answer": final_answer(answer, where), "solution": answer}
    reference = {"answer": normalize_number(answer, where)}
    solution = _text(record, "solution", where, required=False)
    return reference if solution is None else {**reference, "solution": solution}


def _code_reference(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``prompt``, ``test``, ``entry_point`` (required) and ``canonical_solution``, as strings."""
    reference = {}
    for key in _CODE_KEYS:
        value = _text(record, key, where, required=key in _REQUIRED_CODE_KEYS)
        if value is not None:
            reference[key] = value
    return reference


def _instruction(
    record: Mapping[str, Any], task: str, reference: Mapping[str, Any], where: str
) -> str:
    """The fully specified instruction; code records without one get it built from the prompt."""
    keys = ["fully_specified_prompt", "instruction", "question"]
    if TASK_KINDS[task] == "math":
        keys.append("prompt")
    for key in keys:
        value = _text(record, key, where, required=False)
        if value is not None and value.strip():
            return value
    if TASK_KINDS[task] == "code":
        return code_instruction(reference["prompt"], reference["entry_point"])
    raise DataError(f"{where}: no instruction (looked for {', '.join(keys)})")


def _extra(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    extra = record.get(_EXTRA_KEY, {})
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise DataError(f"{where}: {_EXTRA_KEY!r} must be a JSON object")
    return dict(extra)


# --------------------------------------------------------------------------- writing


def _shard_record(shard: Shard) -> dict[str, Any]:
    return {"shard_id": shard.id, "shard": shard.text, "required": shard.required}


def intent_to_record(intent: Intent) -> dict[str, Any]:
    """The LiC record of ``intent`` (the inverse of :func:`record_to_intent`).

    A task other than its kind's default (``gsm_symbolic``) is kept as ``userlm_env_task``.

    Raises:
        DataError: the intent's task has no LiC kind (only those of
            :data:`userlm_env.tasks.TASK_KINDS` have one).
    """
    kind = TASK_KINDS.get(intent.task)
    if kind is None:
        raise DataError(f"intent {intent.intent_id!r}: task {intent.task!r} cannot be exported")
    reference = dict(intent.reference)
    known = _MATH_KEYS if kind == "math" else _CODE_KEYS
    record: dict[str, Any] = {
        "task_id": _ID_PREFIX + intent.intent_id,
        "task": kind,
        "fully_specified_prompt": intent.instruction,
        "shards": [_shard_record(s) for s in intent.shards],
    }
    if intent.task != LIC_TASKS[kind]:
        record[_TASK_KEY] = intent.task
    if kind == "math":
        record["question"] = intent.instruction
    record.update({key: reference.pop(key) for key in known if key in reference})
    if reference:
        record[_EXTRA_KEY] = reference
    return record
