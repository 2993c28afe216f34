"""LLM sharder: a chat model splits an instruction into shards; the reply is validated.

:class:`LLMSharder` sends each instruction with a sharding prompt through the library's LLM
client (:class:`userlm_env.llm.LLMClient`, or anything with ``config.model`` and
``chat_many``), checks the JSON reply with :func:`validate_shards`, feeds the validation error
back and asks again (up to ``max_tries`` replies per instruction, on the generate-vet-retry loop
of :mod:`userlm_env.resample`), and caches accepted shards in a
:class:`~userlm_env.json_cache.JsonCache` keyed by model, task, instruction and prompt version
(a corrupt or invalid entry is logged, counted and asked for again). Given
``progress=ProgressSettings()``, :meth:`LLMSharder.shard_many` shows its progress as ``[shard]``
(:mod:`userlm_env.progress`: instructions sharded of the total, cached ones counted as done
before the run, failures and the client's spend).

:func:`validate_shards` is pure: it parses the reply and checks that it has 3 to 10 shards with
ids 1..n, that no shard repeats another (containment or high word overlap), that together they
cover the instruction (every number, most content words) and that shard 1 states the goal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from userlm_env.errors import DataError
from userlm_env.json_cache import JsonCache, cache_key
from userlm_env.llm import ChatClient
from userlm_env.metrics.judge import parse_json_object
from userlm_env.progress import Progress, ProgressSettings, client_spend
from userlm_env.resample import Outcome, Verdict, resample
from userlm_env.tasks import TASK_KINDS
from userlm_env.types import Message, Shard

__all__ = [
    "MAX_OVERLAP",
    "MIN_WORD_COVERAGE",
    "PROMPT_VERSION",
    "LLMSharder",
    "sharding_messages",
    "validate_shards",
]

#: Bump when the prompt changes: it is part of the cache key.
PROMPT_VERSION = "1"
#: Share of the instruction's distinct content words the shards must contain.
MIN_WORD_COVERAGE = 0.7
#: Highest Jaccard overlap of two shards' content words before they count as repeats.
MAX_OVERLAP = 0.6
_MIN_SHARDS, _MAX_SHARDS = 3, 10

_TASK_KINDS = {**TASK_KINDS, "math": "math", "code": "code"}  # tasks, or kinds as such
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_WORD = re.compile(r"[a-z]+")
_STOPWORDS = frozenset(
    """the a an and or but if then than that this these those there their they them it its of
    to in on at by for from with as is are was were be been being has have had do does did will
    would can could should shall may might must not no so such what which who whom whose when
    where why how all any each other some into onto over under about after before per also just
    only very your you our we he she his her him i me my""".split()  # noqa: SIM905
)
_MATH_GOAL = re.compile(r"\?|\b(?:how|what|which|who|find|calculate|compute|determine)\b", re.I)
_CODE_GOAL = re.compile(r"\b(?:function|write|implement|code|program|return|returns)\b", re.I)
_DEF_NAME = re.compile(r"\bdef\s+([A-Za-z_]\w*)\s*\(|`([A-Za-z_]\w*)\(")

_SYSTEM_PROMPT = """\
You prepare tasks for a study of multi-turn conversations, in which a user reveals a task bit by \
bit. Split the instruction you are given into shards. A shard is one atomic piece of \
information from the instruction, written as a short sentence the user could say.

Rules:
1. Shard 1 states the overall goal: the question to answer for a math problem; for a coding \
task, what the function must do, with the function's name.
2. Every other shard adds exactly one fact, condition, constraint, edge case or example.
3. Shards never repeat or contain each other.
4. Taken together, the shards carry everything in the instruction: keep every number, name \
and condition, in the instruction's own words where possible.
5. Use at least 3 and at most 10 shards, numbered 1, 2, 3, ... in order.
6. "required" is true when the task cannot be solved without the shard, and false for shards \
that only help (examples, obvious details). Shard 1 is always required.

Answer with a single JSON object and nothing else, in this form:
{"shards": [{"id": 1, "text": "...", "required": true},
            {"id": 2, "text": "...", "required": false}]}"""

_TASK_HINTS = {
    "math": "This is a math word problem. Every fact needed to compute the answer is required.",
    "code": "This is a Python coding task. Examples of inputs with their outputs are not "
    "required; requirements and edge cases are.",
}


# --------------------------------------------------------------------------- validation


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _content_words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def _task_kind(task: str | None) -> str | None:
    if task is None:
        return None
    try:
        return _TASK_KINDS[task]
    except KeyError:
        known = ", ".join(sorted(_TASK_KINDS))
        raise ValueError(f"unknown task {task!r}; known: {known}") from None


def validate_shards(payload: str, instruction: str, task: str | None = None) -> tuple[Shard, ...]:
    """Parse and check an LLM's sharding reply for ``instruction``.

    ``payload`` is a JSON object ``{"shards": [{"id": 1, "text": ..., "required": true}, ...]}``,
    possibly inside a Markdown code fence or after a line of prose. ``task`` (``"gsm8k"``/
    ``"math"`` or ``"humaneval"``/``"code"``) sharpens the check that shard 1 states the goal.

    Raises:
        DataError: with the precise reason: not JSON, wrong shape, not 3-10 shards, ids not
            1..n, an empty or non-string text, a non-boolean ``required``, two shards that
            repeat each other, a number or too many words of the instruction missing, or a
            shard 1 that is not a required statement of the goal.
    """
    kind = _task_kind(task)
    return _checked_shards(parse_json_object(payload), instruction, kind)


def _checked_shards(value: Any, instruction: str, kind: str | None) -> tuple[Shard, ...]:
    """The shards of a decoded reply (or cache record), checked as :func:`validate_shards` says."""
    if not isinstance(value, Mapping):
        raise DataError("the sharding must be a JSON object")
    shards = _parse_shards(value)
    _check_distinct(shards)
    _check_coverage(shards, instruction)
    _check_goal(shards[0], instruction, kind)
    return shards


def _parse_shards(value: Mapping[str, Any]) -> tuple[Shard, ...]:
    items = _shard_items(value)
    shards = tuple(_shard(item, position) for position, item in enumerate(items, start=1))
    ids = [s.id for s in shards]
    if ids != list(range(1, len(ids) + 1)):
        raise DataError(f"shard ids must be 1..{len(ids)} in order, got {ids}")
    return shards


def _shard_items(value: Mapping[str, Any]) -> list[Any]:
    items = value.get("shards")
    if not isinstance(items, list):
        raise DataError('the JSON object needs a "shards" list')
    if not _MIN_SHARDS <= len(items) <= _MAX_SHARDS:
        raise DataError(f"expected {_MIN_SHARDS} to {_MAX_SHARDS} shards, got {len(items)}")
    return items


def _shard(item: Any, position: int) -> Shard:
    if not isinstance(item, dict):
        raise DataError(f"shard #{position} is not an object")
    shard_id, text, required = item.get("id"), item.get("text"), item.get("required", True)
    if not isinstance(shard_id, int) or isinstance(shard_id, bool):
        raise DataError(f'shard #{position} needs an integer "id", got {shard_id!r}')
    if not isinstance(text, str) or not text.strip():
        raise DataError(f'shard {shard_id} needs a non-empty string "text"')
    if not isinstance(required, bool):
        raise DataError(f'shard {shard_id}: "required" must be true or false, got {required!r}')
    return Shard(id=shard_id, text=text.strip(), required=required)


def _check_distinct(shards: Sequence[Shard]) -> None:
    """No shard's text inside another's, and no two shards sharing most of their words."""
    for a, b in combinations(shards, 2):
        text_a, text_b = " ".join(a.text.lower().split()), " ".join(b.text.lower().split())
        if text_a in text_b or text_b in text_a:
            raise DataError(f"shards {a.id} and {b.id} repeat each other (one contains the other)")
        words_a, words_b = _content_words(a.text), _content_words(b.text)
        union = words_a | words_b
        overlap = len(words_a & words_b) / len(union) if union else 0.0
        if overlap > MAX_OVERLAP:
            raise DataError(
                f"shards {a.id} and {b.id} overlap too much ({overlap:.0%} of their words are "
                f"shared; at most {MAX_OVERLAP:.0%}): each shard must add new information"
            )


def _check_coverage(shards: Sequence[Shard], instruction: str) -> None:
    """Every number and at least MIN_WORD_COVERAGE of the content words reappear."""
    joined = " ".join(s.text for s in shards)
    missing_numbers = sorted(_numbers(instruction) - _numbers(joined))
    if missing_numbers:
        raise DataError(f"the shards leave out numbers of the instruction: {missing_numbers}")
    wanted = _content_words(instruction)
    if not wanted:
        return
    missing = sorted(wanted - _content_words(joined))
    coverage = 1 - len(missing) / len(wanted)
    if coverage < MIN_WORD_COVERAGE:
        raise DataError(
            f"the shards cover only {coverage:.0%} of the instruction's content words "
            f"(at least {MIN_WORD_COVERAGE:.0%} needed); missing: {', '.join(missing[:12])}"
        )


def _check_goal(first: Shard, instruction: str, kind: str | None) -> None:
    """Shard 1 is required and asks the question (math) or names the function's job (code)."""
    if not first.required:
        raise DataError("shard 1 states the goal and must be required")
    name = _function_name(instruction) if kind != "math" else None
    if name and name in first.text:
        return
    patterns = {"math": (_MATH_GOAL,), "code": (_CODE_GOAL,), None: (_MATH_GOAL, _CODE_GOAL)}
    if not any(p.search(first.text) for p in patterns[kind]):
        goals = {"math": "the question", "code": "what the function must do"}
        what = goals.get(kind or "", "the goal")
        raise DataError(f"shard 1 must state {what}; got {first.text!r}")
    if name:
        raise DataError(f"shard 1 must name the function {name!r}; got {first.text!r}")


def _function_name(instruction: str) -> str | None:
    """The function a code instruction asks for (its first ``def`` or backticked call)."""
    match = _DEF_NAME.search(instruction)
    return (match[1] or match[2]) if match else None


# --------------------------------------------------------------------------- prompting


def sharding_messages(instruction: str, task: str) -> list[Message]:
    """The chat messages that ask a model to shard ``instruction`` (a ``task`` problem)."""
    kind = _task_kind(task)
    hint = _TASK_HINTS[kind] if kind else ""
    user = f"{hint}\n\nInstruction:\n<<<\n{instruction}\n>>>".strip()
    return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _feedback(error: DataError) -> Message:
    return {
        "role": "user",
        "content": f"That answer was rejected: {error}. Reply again with the corrected JSON "
        "object only.",
    }


# --------------------------------------------------------------------------- the sharder


class LLMSharder:
    """Shards instructions with an LLM, validating, retrying with feedback, and caching.

    Args:
        client: The LLM client (``config.model`` and ``chat_many``).
        cache_dir: Folder for cached results (created on first write); ``None``: no cache.
        max_tries: Replies requested per instruction before giving up (>= 1).
        seed: Base sampling seed; try ``k`` uses ``seed + k`` (``None``: unseeded).
        params: Extra parameters for every ``chat_many`` call (``temperature``...).
        progress: Show the progress of :meth:`shard_many` as ``[shard]`` with these settings
            (``None``: silent, for library use).
    """

    def __init__(
        self,
        client: ChatClient,
        cache_dir: Path | None = None,
        max_tries: int = 3,
        *,
        seed: int | None = 0,
        params: Mapping[str, Any] | None = None,
        progress: ProgressSettings | None = None,
    ) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.client = client
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache = JsonCache(self.cache_dir)
        self.max_tries = max_tries
        self.seed = seed
        self.params = dict(params or {})
        self.progress = progress

    def shard(self, intent_text: str, task: str) -> tuple[Shard, ...]:
        """Shard one instruction of ``task`` (``"gsm8k"``/``"math"``, ``"humaneval"``/``"code"``).

        Raises:
            DataError: no valid reply within ``max_tries`` (carries the last validation error).
            LLMCallError: the client failed (propagated from the client).
        """
        return self.shard_many([intent_text], task)[0]

    def shard_many(
        self, intent_texts: Sequence[str], tasks: str | Sequence[str]
    ) -> list[tuple[Shard, ...]]:
        """Shard many instructions, batching the LLM calls of each try into one ``chat_many``.

        ``tasks`` is one task for all instructions or one per instruction. Results accepted
        before a failure are cached, so a rerun only asks again for the failed ones.

        Raises:
            DataError: some instruction got no valid reply within ``max_tries``.
            LLMCallError: the client failed (propagated from the client).
        """
        task_list = [tasks] * len(intent_texts) if isinstance(tasks, str) else list(tasks)
        if len(task_list) != len(intent_texts):
            raise ValueError(f"got {len(intent_texts)} instructions but {len(task_list)} tasks")
        pairs = list(zip(intent_texts, task_list, strict=True))
        results = [self._cached(text, task) for text, task in pairs]
        rows = [
            _Pending(i, text, task, sharding_messages(text, task))
            for i, (text, task) in enumerate(pairs)
            if results[i] is None
        ]
        with self._progress(len(pairs), done_before=len(pairs) - len(rows)) as progress:

            def vet(row: _Pending, reply: Any) -> Verdict[tuple[Shard, ...]]:
                verdict = self._vet(row, reply)
                if progress is not None and verdict.value is not None:
                    progress.advance()
                return verdict

            outcomes = resample(rows, self._generate, vet, tries=self.max_tries)
            if progress is not None:
                failed = sum(1 for outcome in outcomes if outcome.value is None)
                progress.advance(failed, failed=failed)
        self._raise_failures(rows, outcomes)
        for row, outcome in zip(rows, outcomes, strict=True):
            results[row.index] = outcome.value
        return [r for r in results if r is not None]

    def _progress(self, total: int, done_before: int) -> AbstractContextManager[Progress | None]:
        """The ``[shard]`` progress of one :meth:`shard_many` call (nothing when it is off)."""
        if self.progress is None:
            return nullcontext()
        return Progress(
            total,
            label="shard",
            unit="instruction",
            done_before=done_before,
            spend=client_spend(self.client),
            settings=self.progress,
        )

    def _generate(self, rows: list[_Pending], attempt: int) -> Sequence[Any]:
        """One ``chat_many`` for the pending rows; try ``k`` uses seed ``seed + k``."""
        seeds = [None if self.seed is None else self.seed + attempt] * len(rows)
        conversations = [row.conversation for row in rows]
        return self.client.chat_many(conversations, seeds=seeds, **self.params)

    def _vet(self, row: _Pending, reply: Any) -> Verdict[tuple[Shard, ...]]:
        """Accept (and cache) valid shards; else feed the reply and its error back to the row."""
        try:
            shards = validate_shards(reply.text, row.instruction, row.task)
        except DataError as error:
            assistant: Message = {"role": "assistant", "content": reply.text}
            row.conversation = [*row.conversation, assistant, _feedback(error)]
            return Verdict.reject(str(error))
        self._store(row.instruction, row.task, shards)
        return Verdict.accept(shards)

    def _raise_failures(
        self, rows: Sequence[_Pending], outcomes: Sequence[Outcome[tuple[Shard, ...]]]
    ) -> None:
        """Raise :class:`DataError` naming the first instruction that got no valid shards."""
        failed = [(row, o) for row, o in zip(rows, outcomes, strict=True) if o.value is None]
        if failed:
            row, outcome = failed[0]
            raise DataError(
                f"LLM sharding failed for {len(failed)} instruction(s) after {self.max_tries} "
                f"tries; instruction {row.index}: {outcome.last_reason}"
            )

    # ---- cache

    def _cache_key(self, instruction: str, task: str) -> str:
        return cache_key(self.client.config.model, _task_kind(task), instruction, PROMPT_VERSION)

    def _cached(self, instruction: str, task: str) -> tuple[Shard, ...] | None:
        """The cached shards, or ``None`` (a miss, or a corrupt or invalid entry)."""
        if not self.cache.enabled:
            return None
        kind = _task_kind(task)
        return self.cache.get(
            self._cache_key(instruction, task),
            lambda record: _checked_shards(record, instruction, kind),
        )

    def _store(self, instruction: str, task: str, shards: tuple[Shard, ...]) -> None:
        record = {
            "model": self.client.config.model,
            "task": _task_kind(task),
            "prompt_version": PROMPT_VERSION,
            "instruction": instruction,
            "shards": [{"id": s.id, "text": s.text, "required": s.required} for s in shards],
        }
        self.cache.put(self._cache_key(instruction, task), record)


@dataclass
class _Pending:
    """One instruction still to shard: its position, task and the conversation so far."""

    index: int
    instruction: str
    task: str
    conversation: list[Message]
