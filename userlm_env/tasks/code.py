"""The HumanEval verifiable reward: run the reply's function against the problem's tests.

1. Find the code: fenced blocks (```python, ```py, ``` or ~~~), else bare code around
   ``def <entry_point>(``; of several, the last block that defines the entry point. A reply
   with no such block is not an attempt.
2. Build the program: the import lines of the problem's prompt, then the prompt's helper
   functions the block does not define itself (e.g. ``poly`` for ``find_zero``), then the block.
3. Run it in the sandbox (:mod:`userlm_env.tasks.sandbox`): the candidate process loads the
   program; a separate checker process runs the prompt (for helpers the tests use), the tests and
   ``check(candidate)``. Reward 1.0 iff the checker reports that every test passed.

Model-written code never runs in this process.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from userlm_env.errors import DataError
from userlm_env.tasks.sandbox import Program, RunResult, Sandbox, SandboxConfig
from userlm_env.types import Intent, Score

__all__ = ["CodeScorer", "build_program", "extract_code", "find_code_blocks"]

_FENCE_RE = re.compile(
    r"^[ \t]*(?P<fence>```|~~~)[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n(?P<body>.*?)"
    r"(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_PYTHON_LANGS = {"", "python", "py", "python3", "py3", "ipython"}
_CODE_START_RE = re.compile(
    r"^(def|class|import|from|async|if|for|while|with|try|except|finally|elif|else|return|"
    r"raise|assert|[@#])\b|^[@#]"
)
_REQUIRED_KEYS = ("prompt", "test", "entry_point")


def _defines(code: str, name: str) -> bool:
    pattern = rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\("
    return re.search(pattern, code, re.MULTILINE) is not None


def _fenced_blocks(reply: str) -> list[str]:
    return [m["body"] for m in _FENCE_RE.finditer(reply) if m["lang"].lower() in _PYTHON_LANGS]


def find_code_blocks(reply: str) -> list[str]:
    """Python code blocks of ``reply``: fenced ones, or the whole reply when it has no fence."""
    return _fenced_blocks(reply) if _FENCE_RE.search(reply) else [reply]


def _is_code_line(line: str) -> bool:
    """Whether a non-indented line reads as Python rather than prose."""
    stripped = line.strip()
    if not stripped or line[0] in " \t" or _CODE_START_RE.match(stripped):
        return True
    try:
        ast.parse(stripped)
    except SyntaxError:
        return False
    return True


def _bare_region(text: str, name: str) -> str:
    """The contiguous code region around ``def name(`` in text that mixes prose and code."""
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if _defines(line, name))
    start = index
    while start > 0 and lines[start - 1].strip() and _is_code_line(lines[start - 1]):
        start -= 1
    end = index + 1
    while end < len(lines) and _is_code_line(lines[end]):
        end += 1
    region = textwrap.dedent("\n".join(lines[start:end])).splitlines()
    for stop in range(len(region), index - start, -1):
        candidate = "\n".join(region[:stop])
        try:
            ast.parse(candidate)
        except SyntaxError:
            continue
        return candidate
    return "\n".join(region)


def extract_code(reply: str, entry_point: str) -> str | None:
    """The last code block of ``reply`` that defines ``entry_point``; ``None`` if none does."""
    if _FENCE_RE.search(reply):
        defining = [b for b in _fenced_blocks(reply) if _defines(b, entry_point)]
        return defining[-1] if defining else None
    return _bare_region(reply, entry_point) if _defines(reply, entry_point) else None


def _top_level_names(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(re.findall(r"^(?:async\s+)?(?:def|class)\s+(\w+)", code, re.M))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in tree.body if isinstance(node, kinds)}


def _prompt_parts(prompt: str, entry_point: str) -> tuple[list[str], dict[str, str]]:
    """The prompt's import lines and its helper definitions (name -> source)."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        imports = re.findall(r"^(?:import|from)\s.*$", prompt, re.M)
        return imports, {}
    imports, helpers, lines = [], {}, prompt.splitlines()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(ast.get_source_segment(prompt, node) or "")
        elif isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name != entry_point:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            helpers[node.name] = "\n".join(lines[first - 1 : node.end_lineno])
    return imports, helpers


def build_program(code: str, reference: Mapping[str, Any]) -> Program:
    """The sandbox program for ``code`` against a HumanEval reference.

    Raises:
        DataError: ``reference`` lacks ``prompt``, ``test`` or ``entry_point``.
    """
    prompt, test, entry_point = _reference_fields(reference)
    imports, helpers = _prompt_parts(prompt, entry_point)
    defined = _top_level_names(code)
    needed = [source for name, source in helpers.items() if name not in defined]
    source = "\n".join([*imports, *needed, code])
    source += "" if source.endswith("\n") else "\n"
    return Program(source=source, test=test, entry_point=entry_point, setup=prompt)


def _reference_fields(reference: object) -> tuple[str, str, str]:
    try:
        fields = tuple(reference[key] for key in _REQUIRED_KEYS)  # type: ignore[index]
    except (KeyError, TypeError):
        raise DataError(f"a humaneval reference needs {', '.join(_REQUIRED_KEYS)}") from None
    if not all(isinstance(f, str) and f for f in fields):
        raise DataError("humaneval reference fields must be non-empty strings")
    return fields


def _to_score(result: RunResult) -> Score:
    if result.passed:
        return Score(attempted=True, solved=True, reward=1.0, detail="passed")
    return Score(attempted=True, solved=False, reward=0.0, detail=result.detail)


class CodeScorer:
    """Scores HumanEval-style replies by running the problem's tests in the sandbox.

    Cheap to construct: the sandbox starts its workers on first use. Thread-safe.

    Args:
        config: Sandbox limits and isolation (ignored when ``sandbox`` is given).
        sandbox: A sandbox to share; by default the task owns one and closes it in
            :meth:`close`.
    """

    name = "humaneval"

    def __init__(self, config: SandboxConfig | None = None, sandbox: Sandbox | None = None) -> None:
        self._owns_sandbox = sandbox is None
        self.sandbox = sandbox if sandbox is not None else Sandbox(config)

    def program_for(self, reply: str, intent: Intent) -> Program | None:
        """The program that scores ``reply``; ``None`` when the reply defines no entry point."""
        if not isinstance(reply, str):
            raise TypeError(f"reply must be a str, got {type(reply).__name__}")
        _, _, entry_point = _reference_fields(intent.reference)
        code = extract_code(reply, entry_point)
        return None if code is None else build_program(code, intent.reference)

    def score(self, reply: str, intent: Intent) -> Score:
        """Score one reply to one HumanEval intent."""
        return self.score_many([reply], [intent])[0]

    def score_many(self, replies: Sequence[str], intents: Sequence[Intent]) -> list[Score]:
        """Score ``replies[i]`` against ``intents[i]``; the sandbox runs them in parallel."""
        if len(replies) != len(intents):
            raise ValueError(f"{len(replies)} replies for {len(intents)} intents")
        programs = [self.program_for(r, i) for r, i in zip(replies, intents, strict=True)]
        results = iter(self.sandbox.run_many([p for p in programs if p is not None]))
        return [
            _to_score(next(results)) if p is not None else self._not_attempted(i)
            for p, i in zip(programs, intents, strict=True)
        ]

    @staticmethod
    def _not_attempted(intent: Intent) -> Score:
        detail = f"no code defining {intent.reference['entry_point']}()"
        return Score(attempted=False, solved=False, reward=0.0, detail=detail)

    def close(self) -> None:
        """Stop the sandbox's workers if this task owns the sandbox."""
        if self._owns_sandbox:
            self.sandbox.close()
