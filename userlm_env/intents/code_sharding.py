"""The rule-based code sharder and the one-instruction phrasing of a HumanEval-style prompt.

* :func:`shard_code` splits a prompt into the function's purpose with its name (shard 1), the
  docstring's requirements (required shards) and its examples (non-required shards).
* :func:`code_instruction` phrases the prompt as one fully specified instruction.

The docstring is read by a small state machine (:class:`_DocReader`) that tells prose,
requirement bullets and examples apart. The same input always yields the same shards.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass

from userlm_env.errors import DataError
from userlm_env.intents.text_units import (
    MAX_SHARDS,
    MIN_SHARDS,
    merge_down,
    split_sentences,
    tidy,
    word_count,
)
from userlm_env.types import Shard

__all__ = ["code_instruction", "shard_code"]

# --------------------------------------------------------------------------- code: parsing


@dataclass(frozen=True)
class _FunctionSpec:
    """What the code sharder needs to know about the function a prompt asks for."""

    name: str  # the entry point
    signature: str  # e.g. "add(x: int, y: int) -> int"
    doc: str  # the docstring as written (escapes kept), dedented
    helpers: str  # source of the other functions the prompt defines


def _parse_function(prompt: str, entry_point: str) -> _FunctionSpec:
    """Find ``entry_point`` in ``prompt`` (parsed with :mod:`ast`; nothing is executed)."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError as exc:
        raise DataError(f"code prompt for {entry_point!r} does not parse: {exc}") from None
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    target = next((f for f in functions if f.name == entry_point), None)
    if target is None:
        raise DataError(f"code prompt does not define the entry point {entry_point!r}")
    returns = f" -> {ast.unparse(target.returns)}" if target.returns else ""
    helpers = [ast.get_source_segment(prompt, f) or "" for f in functions if f is not target]
    return _FunctionSpec(
        name=entry_point,
        signature=f"{entry_point}({ast.unparse(target.args)}){returns}",
        doc=_raw_docstring(prompt, target),
        helpers="\n\n".join(h.strip() for h in helpers if h.strip()),
    )


def _raw_docstring(prompt: str, function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The function's first string statement as written in the source, dedented."""
    for node in function.body:
        value = node.value if isinstance(node, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            segment = ast.get_source_segment(prompt, value) or ""
            return inspect.cleandoc(_unquote(segment) or value.value)
    return ""


def _unquote(literal: str) -> str:
    """Strip the prefix and quotes of a string literal's source text."""
    body = literal.lstrip("rRuUbBfF")
    for quote in ('"""', "'''", '"', "'"):
        if body.startswith(quote) and body.endswith(quote) and len(body) >= 2 * len(quote):
            return body[len(quote) : -len(quote)]
    return ""


# --------------------------------------------------------------------------- code: docstrings

_EXAMPLE_HEADER = re.compile(
    r"^(?:for\s+)?exam[bp]les?\s*\d*\s*:?$|^\[input/output\]\s*samples?\s*:?$", re.IGNORECASE
)
_SECTION_HEADER = re.compile(
    r"^(?:notes?|constraints?|constrain|variables|restrictions?|hints?)\s*:", re.IGNORECASE
)
_CALL = re.compile(r"^(?:[*-]\s+)?(?:for\s+|assert\s+)?(?:round\()?(?P<name>[A-Za-z_]\w*)\s*\(")
_EXAMPLE_ITEM = re.compile(r"^(?:>>>|for\s+\w+\s*=|input\s*:)", re.IGNORECASE)
_EXAMPLE_INNER = re.compile(r"^(?:for\s+\w+\s*=|input|output|explanation)\b", re.IGNORECASE)
_SENTENCE_LIKE = re.compile(r"^[A-Z][a-z']*(?:\s+[a-z'(),]+){3,}")
_BULLET = re.compile(r"^(?:[-*•]|\d+[.)])\s+")
_HEADER_ONLY = re.compile(r"^[A-Z][\w /-]{0,30}:$")


@dataclass
class _DocParts:
    """Docstring units: prose units (requirements) and example units."""

    prose: list[str]
    examples: list[list[str]]


class _DocReader:
    """Line-by-line reader that sorts a docstring into prose units and example units."""

    def __init__(self, entry_point: str) -> None:
        self.entry_point = entry_point
        self.parts = _DocParts(prose=[], examples=[])
        self.paragraph: list[str] = []  # plain prose lines not yet split into sentences
        self.in_examples = False
        self.example_indent = 0
        self.structured = False  # inside a block introduced by a line ending with ":"
        self.prefix = ""  # a header-only line ("Constraints:") waiting for its content
        self.header_block = False  # the current unit was opened by a header-only line

    def read(self, doc: str) -> _DocParts:
        for raw in doc.splitlines():
            self._line(raw)
        self._flush_paragraph()
        return self.parts

    def _line(self, raw: str) -> None:
        line, indent = raw.strip(), len(raw) - len(raw.lstrip())
        if self.in_examples and self._ends_examples(line, indent):
            self.in_examples = False
        if not line or not line.strip("\"'") or line.lower() == "task":
            self._blank()
        elif _EXAMPLE_HEADER.match(line):
            self._start_examples(indent)
        elif self.in_examples:
            self._example_line(line)
        elif line.startswith(">>>") or self._is_example_call(line):
            self._start_examples(indent)
            self._example_line(line)
        else:
            self._prose_line(line)

    def _blank(self) -> None:
        self._flush_paragraph()
        self.structured = self.header_block = False

    def _start_examples(self, indent: int) -> None:
        self._flush_paragraph()
        self.in_examples, self.example_indent, self.structured = True, indent, False
        self.parts.examples.append([])

    def _ends_examples(self, line: str, indent: int) -> bool:
        """A section header or an unindented plain sentence ends an example block."""
        if _SECTION_HEADER.match(line):
            return True
        return (
            indent <= self.example_indent
            and bool(_SENTENCE_LIKE.match(line))
            and not _EXAMPLE_INNER.match(line)
            and not _CALL.match(line)
        )

    def _example_line(self, line: str) -> None:
        current = self.parts.examples[-1]
        starts_item = bool(_EXAMPLE_ITEM.match(line) or _CALL.match(line))
        doctest_output = bool(current) and current[-1].startswith(">>>")
        if current and starts_item and (line.startswith(">>>") or not doctest_output):
            current = []
            self.parts.examples.append(current)
        current.append(line)

    def _is_example_call(self, line: str) -> bool:
        match = _CALL.match(line)
        return match is not None and match["name"] == self.entry_point and not self.structured

    def _prose_line(self, line: str) -> None:
        if _HEADER_ONLY.match(line) and word_count(line) <= 3 and not self.paragraph:
            self._flush_paragraph()
            self.prefix, self.structured, self.header_block = line, True, True
        elif _BULLET.match(line) or (self.structured and not _SENTENCE_LIKE.match(line)):
            self._structured_line(line)
        else:
            self._plain_line(line)

    def _structured_line(self, line: str) -> None:
        """A bullet, table row or definition: its own unit, or a continuation of the last."""
        self._flush_paragraph()
        bullet = bool(_BULLET.match(line))
        if self.prefix or not self.parts.prose or (bullet and not self.header_block):
            self._add_unit(line)
        else:
            self.parts.prose[-1] += "\n" + line
        self.structured = True

    def _plain_line(self, line: str) -> None:
        self.structured = self.header_block = False
        if self._starts_unpunctuated_sentence(line):
            self._flush_paragraph()
        self.paragraph.append(line)
        if line.endswith(":"):
            self._flush_paragraph()
            self.structured = True

    def _starts_unpunctuated_sentence(self, line: str) -> bool:
        """A capitalised sentence after a line that ended without punctuation."""
        previous = self.paragraph[-1] if self.paragraph else ""
        return previous[-1:].isalnum() and bool(_SENTENCE_LIKE.match(line))

    def _flush_paragraph(self) -> None:
        if self.paragraph:
            for sentence in split_sentences(" ".join(self.paragraph), strict_case=False):
                self._add_unit(sentence)
            self.paragraph = []

    def _add_unit(self, text: str) -> None:
        if self.prefix:
            text, self.prefix = f"{self.prefix} {text}", ""
        self.parts.prose.append(text)


def _read_docstring(doc: str, entry_point: str) -> _DocParts:
    """Split a docstring into prose units and example units (lists of lines)."""
    parts = _DocReader(entry_point).read(doc)
    parts.examples = [item for item in parts.examples if item]
    return parts


# --------------------------------------------------------------------------- code: phrasing

_VERBS = frozenset(
    """return check find filter insert compute calculate count create concatenate change add
    evaluate determine sort remove convert generate separate parse detect flip select obtain
    apply get output decode encode implement take make validate replace reverse split round
    multiply sum compare give produce build extract list test verify circle shift""".split()  # noqa: SIM905
)
_FUNCTION_REFERENCE = re.compile(
    r"^(?:.*?\b)?(?:write|create|implement|complete)\s+(?:a|the)\s+(?:python\s+)?function\b"
    r"(?:\s+`?\w+`?(?:\(\))?)?\s*,?\s+(?:that|which)\s+(?P<rest>.+)$",
    re.IGNORECASE | re.DOTALL,
)
_SELF_REFERENCE = re.compile(r"^(?:this|the)\s+function\s+(?P<rest>\w+s\b.+)$", re.IGNORECASE)
_TASK_REFERENCE = re.compile(
    r"^(?:your\s+(?:task|job|goal)\s+is\s+to|you\s+(?:need|have|should|must)(?:\s+to)?)\s+",
    re.IGNORECASE,
)
_GIVEN = re.compile(
    r"^(?:given|(?:for|from)(?=\s+(?:a|an|the)\s))\s+(?P<what>[^,]{3,}),\s+"
    r"(?P<rest>[a-z]\w*\b.*)$",
    re.IGNORECASE,
)
_GOAL_WINDOW = 3  # the goal sentence is looked for among the docstring's first prose units


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in ("a", "e", "i", "o", "u"):
        return verb[:-1] + "ies"
    return verb + "s"


def _purpose_clause(sentence: str, name: str) -> str | None:
    """Rephrase a purpose sentence as "that <verb>s ..."; ``None`` when it states no purpose."""
    for pattern in (_FUNCTION_REFERENCE, _SELF_REFERENCE):
        match = pattern.match(sentence)
        if match:
            return "that " + match["rest"]
    lead = re.match(rf"^{re.escape(name)}\s+(?:is\s+a\s+function\s+(?:that|which)\s+)?", sentence)
    lead = lead or _TASK_REFERENCE.match(sentence)
    rest = sentence[lead.end() if lead else 0 :]
    first, _, tail = rest.partition(" ")
    verb = first.lower()
    if verb in _VERBS:
        return _conjugate_and(f"that {_third_person(verb)} {tail}".rstrip())
    if verb.endswith("s") and (verb[:-1] in _VERBS or verb[:-2] in _VERBS):
        return f"that {verb} {tail}".rstrip()
    return None


def _conjugate_and(clause: str) -> str:
    """Put verbs joined by "and" in the third person too ("checks x and return y")."""

    def third(match: re.Match[str]) -> str:
        return f"and {_third_person(match[1])}"

    return re.sub(rf"\band ({'|'.join(sorted(_VERBS))})\b", third, clause)


def _purpose_and_input(sentence: str) -> tuple[str, str]:
    """Split "Given X, return Y." into ("return Y.", "The input is X."); keep others whole."""
    match = _GIVEN.match(sentence)
    if match and match["rest"].split(" ", 1)[0].lower() in _VERBS:
        return match["rest"], f"The input is {match['what']}."
    return sentence, ""


@dataclass(frozen=True)
class _Goal:
    """The docstring's goal sentence, rephrased, and the prose units left as requirements."""

    text: str  # shard 1
    clause: str | None  # "that checks ..." when the goal could be rephrased
    rest: list[str]  # the other prose units, in order (input description first)


def _find_goal(prose: list[str], name: str) -> _Goal:
    """Pick the first of the leading prose units that states a purpose (else the first)."""
    lead = f"I need a Python function called `{name}`"
    for i, unit in enumerate(prose[:_GOAL_WINDOW]):
        sentence, given = _purpose_and_input(unit)
        clause = _purpose_clause(sentence, name)
        if clause:
            others = [t for t in (given, *prose[:i], *prose[i + 1 :]) if t]
            return _Goal(tidy(f"{lead} {clause}"), clause, others)
    if not prose:
        return _Goal(lead + ".", None, [])
    return _Goal(f"{lead}. {prose[0]}", None, prose[1:])


def code_instruction(prompt: str, entry_point: str) -> str:
    """A fully specified instruction for a code prompt: names the function, quotes the code.

    Raises:
        DataError: the prompt does not parse or does not define ``entry_point``.
    """
    spec = _parse_function(prompt, entry_point)
    goal = _find_goal(_read_docstring(spec.doc, entry_point).prose, entry_point)
    head = f"Write a Python function `{spec.signature}`" + (
        f" {goal.clause}" if goal.clause else ""
    )
    return (
        f"{tidy(head)} Complete the code below, keeping the function's name and signature:"
        f"\n\n```python\n{prompt.strip()}\n```"
    )


# --------------------------------------------------------------------------- code: sharding

_EXAMPLE_SHARDS = 3  # at most this many example shards when requirements leave room
_EXAMPLE_PREFIX = "For example:\n"
# Prose sentences that only illustrate ("For example, ...", "E.g. ...") are not required.
_PROSE_EXAMPLE = re.compile(r"^(?:for example|for instance|e\.g\.|example)\b", re.IGNORECASE)


def shard_code(prompt: str, entry_point: str) -> tuple[Shard, ...]:
    """Shard a code prompt: purpose, requirements (required) and examples (non-required).

    Shard 1 names the function and states its purpose (the first of the docstring's leading
    sentences that says what the function does). Every other docstring sentence, bullet or
    block becomes a required shard; helper functions the prompt defines become one required
    shard; docstring examples (doctest lines, "Example:" blocks, ``f(x) == y`` lines, prose
    sentences opening with "For example") become up to three non-required shards. When the
    docstring says nothing beyond its goal, the signature is added as a required shard. The
    result is merged down to at most 10 shards.

    Raises:
        DataError: the prompt does not parse or does not define ``entry_point``.
    """
    spec = _parse_function(prompt, entry_point)
    parts = _read_docstring(spec.doc, entry_point)
    goal = _find_goal(parts.prose, entry_point)
    required = [t for t in goal.rest if not _PROSE_EXAMPLE.match(t)]
    examples = [t for t in goal.rest if _PROSE_EXAMPLE.match(t)]
    examples += [_EXAMPLE_PREFIX + "\n".join(lines) for lines in parts.examples]
    if spec.helpers:
        required.append(f"It can use this helper, which is already defined:\n{spec.helpers}")
    if not required or 1 + len(required) + len(examples) < MIN_SHARDS:
        required.append(f"Its signature should be `{spec.signature}`.")
    required, examples = _fit_code(required, examples)
    shards = [Shard(1, goal.text)]
    shards += [Shard(len(shards) + i, t) for i, t in enumerate(required, start=1)]
    shards += [Shard(len(shards) + i, t, required=False) for i, t in enumerate(examples, 1)]
    return tuple(shards)


def _fit_code(required: list[str], examples: list[str]) -> tuple[list[str], list[str]]:
    """Merge requirements and examples so that together with shard 1 they fit in 10."""
    budget = MAX_SHARDS - 1
    floor = 1 if examples else 0
    example_target = min(len(examples), _EXAMPLE_SHARDS, max(budget - len(required), floor))
    examples = merge_down(examples, example_target, sep="\n") if examples else []
    examples = [text.replace("\n" + _EXAMPLE_PREFIX, "\n") for text in examples]
    required = merge_down(required, budget - len(examples), sep="\n") if required else []
    return required, examples
