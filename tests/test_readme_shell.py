"""The README's bash blocks: every command runs here as written, or names the test that covers it.

A command is run here unless the comment line right above it (or above the run of commands it
opens, up to the next comment or blank line) is a marker:

* ``# tested: TEST``: TEST runs this command;
* ``# needs WHAT; offline variant: TEST`` (or ``CPU variant:``): the command needs a network, a
  key, a GPU, a cluster or a server, and TEST runs its closest offline variant;
* ``# full size (...)``: the full-size form of the sized command just above it, which is run
  here (or of the TEST named on the line).

TEST is ``tests/<file>.py::<test function>``, or ``.ci/run`` for CI's command. The README's
"How this README is tested" section says the same to its readers.

Commands run offline in a scratch folder that links the repository's files, so what they write
(``runs/``, ``outputs/``, ``data/``, exported files) stays there; ``.venv/bin/`` stands for the
environment running the tests; a block's commands run in order in one folder, so a report can
read the sweep above it. The commands that are not run are still parsed by bash, and those of
``experiments`` compose their Hydra config as written (sweeps expanded), which is where a
placeholder or a typo in an override shows.
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
CONF_DIR = REPO_ROOT / "experiments" / "conf"
VENV_BIN = Path(sys.executable).parent

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
KNOWN_LANGUAGES = {"python", "bash", "text", "toml", "yaml"}
MARKER = re.compile(r"#\s*(tested|needs|full size)\b")
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
CI_REF = ".ci/run"
VENV_PREFIX = re.compile(r"(?<![\w./-])\.venv/bin/")
# entry point -> its Hydra config in experiments/conf
HYDRA_CONFIGS = {
    "experiments.score": "score",
    "experiments.simulate": "config",
    "experiments.train": "train",
    "experiments.rl_grpo": "rl_grpo",
}
# what the commands write, never linked into the scratch folder
WRITTEN = {"runs", "outputs", "multirun", "data", "build", "dist"}
COMMAND_TIMEOUT_S = 300


@dataclass(frozen=True)
class Command:
    """One command of a bash block.

    Attributes:
        text: The command as written, continuation lines included.
        line: README line of its first line (1-based).
        block: Index of its block among the README's bash blocks.
        section: The heading it sits under.
        marker: The marker line covering it; None when this suite runs it.
    """

    text: str
    line: int
    block: int
    section: str
    marker: str | None

    @property
    def kind(self) -> str | None:
        """``tested``, ``needs`` or ``full size``; None when run here."""
        match = MARKER.match(self.marker) if self.marker else None
        return match.group(1) if match else None

    @property
    def refs(self) -> list[tuple[str, str]]:
        """(file, function) of every test the marker names."""
        return TEST_REF.findall(self.marker or "")

    @property
    def argv(self) -> list[str]:
        """The words of the command, comments dropped."""
        return shlex.split(self.text.replace("\\\n", " "), comments=True)


def fenced_blocks(markdown: str) -> list[tuple[str, str, int]]:
    """(language, body, line of the body's first line) of every fenced block."""
    return [
        (m.group(1), m.group(2), markdown.count("\n", 0, m.start(2)) + 1)
        for m in FENCE.finditer(markdown)
    ]


def bash_commands(markdown: str) -> list[Command]:
    """The commands of every bash block, each with the marker that covers it."""
    commands: list[Command] = []
    bash_blocks = [b for b in fenced_blocks(markdown) if b[0] == "bash"]
    headings = _headings(markdown)
    for index, (_, body, first_line) in enumerate(bash_blocks):
        section = [title for at, title in headings if at < first_line]
        marker: str | None = None
        previous, comment = "blank", ""
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            start, text = i, lines[i]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text += "\n" + lines[i]
            i += 1
            stripped = text.strip()
            if not stripped:
                marker, previous = None, "blank"
            elif stripped.startswith("#"):
                comment, previous = stripped, "comment"
            else:
                if previous == "comment":
                    marker = comment if MARKER.match(comment) else None
                elif previous == "blank":
                    marker = None
                title = section[-1] if section else "top"
                commands.append(Command(text, first_line + start, index, title, marker))
                previous = "command"
    return commands


def _headings(markdown: str) -> list[tuple[int, str]]:
    """(line, title) of every Markdown heading outside fenced blocks."""
    headings, fenced = [], False
    for number, line in enumerate(markdown.splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#+ (.+)$", line)):
            headings.append((number, match.group(1)))
    return headings


def coverage_problems(commands: list[Command], root: Path) -> list[str]:
    """Why each command that is neither run here nor properly marked is not covered."""
    problems = []
    for position, command in enumerate(commands):
        where = f"README line {command.line}"
        if command.kind is None:
            continue
        for file, function in command.refs:
            path = root / file
            defined = re.compile(rf"^\s*(async\s+)?def {function}\(", re.M)
            if not path.is_file():
                problems.append(f"{where}: {file} does not exist")
            elif not defined.search(path.read_text(encoding="utf-8")):
                problems.append(f"{where}: {file} defines no {function}")
        names_ci = CI_REF in (command.marker or "")
        if names_ci and command.text.strip() not in _read(root / CI_REF):
            problems.append(f"{where}: {CI_REF} does not run {command.text.strip()!r}")
        if command.kind in ("tested", "needs") and not (command.refs or names_ci):
            problems.append(f"{where}: the marker names no test: {command.marker}")
        if command.kind == "full size" and not command.refs:
            before = commands[position - 1] if position else None
            sized = before is not None and before.block == command.block
            if not (sized and before is not None and before.kind in (None, "tested")):
                problems.append(
                    f"{where}: a full-size command needs a sized command run here right "
                    f"above it, or a test named on its marker"
                )
    return problems


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def expanded_overrides(overrides: list[str]) -> list[list[str]]:
    """Every job of a sweep: the cartesian product of its comma-separated choices."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [str(o.input_line)]
        for o in OverridesParser.create().parse_overrides(overrides)
    ]
    return [list(job) for job in itertools.product(*choices)]


def hydra_entry_point(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """(module, config name, overrides) of a command running an ``experiments`` entry point."""
    for i, word in enumerate(argv[:-1]):
        if word == "-m" and argv[i + 1] in HYDRA_CONFIGS:
            overrides = [w for w in argv[i + 2 :] if w not in ("-m", "--multirun")]
            return argv[i + 1], HYDRA_CONFIGS[argv[i + 1]], overrides
    return None


TEXT = README.read_text(encoding="utf-8")
COMMANDS = bash_commands(TEXT)
RUN_BLOCKS = sorted({c.block for c in COMMANDS if c.kind is None})


def _block_id(block: int) -> str:
    first = next(c for c in COMMANDS if c.block == block)
    slug = re.sub(r"[^a-z0-9]+", "-", first.section.lower()).strip("-")
    return f"{slug}-L{first.line}"


# ------------------------------------------------------------------------------- the harness


def test_harness_reads_markers_groups_and_bad_references(tmp_path: Path) -> None:
    """The parser and the checks on a README of our own: a run of commands shares its marker,
    a plain comment or a blank line ends it, and an unknown test or a bare marker is reported."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_y() -> None:\n    pass\n")
    markdown = (
        "# Title\n\n```bash\n"
        "# needs network; offline variant: tests/test_x.py::test_y\n"  # line 4
        "one --flag \\\n    --more\n"
        "two\n"
        "# a plain comment\n"
        "three\n"
        "# full size (big)\n"  # line 10
        "four\n\n"
        "five\n"
        "# tested: tests/test_x.py::test_z\n"  # line 14
        "six\n"
        "# tested: nothing named\n"  # line 16
        "seven\n"
        "# needs a GPU; CPU variant: tests/test_x.py::test_y\n"  # line 18
        "eight\n"
        "# full size (big)\n"  # line 20
        "nine\n"
        "```\n\n## Next\n\n```python\nnot_a = 'command'\n```\n"
    )
    commands = bash_commands(markdown)
    assert [c.argv[0] for c in commands] == [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"
    ]  # fmt: skip
    assert commands[0].argv == ["one", "--flag", "--more"] and commands[0].line == 5
    assert {c.section for c in commands} == {"Title"}
    assert [c.kind for c in commands] == [
        "needs", "needs", None, "full size", None, "tested", "tested", "needs", "full size"
    ]  # fmt: skip
    assert commands[0].refs == [("tests/test_x.py", "test_y")]
    problems = coverage_problems(commands, tmp_path)
    assert problems == [
        "README line 15: tests/test_x.py defines no test_z",
        "README line 17: the marker names no test: # tested: nothing named",
        "README line 21: a full-size command needs a sized command run here right above it, "
        "or a test named on its marker",
    ]


def test_sweeps_expand_into_their_jobs() -> None:
    assert expanded_overrides(["a=1,2", "+b=x", "c=3,4"]) == [
        ["a=1", "+b=x", "c=3"], ["a=1", "+b=x", "c=4"],
        ["a=2", "+b=x", "c=3"], ["a=2", "+b=x", "c=4"],
    ]  # fmt: skip
    argv = ["accelerate", "launch", "-m", "experiments.train", "train=x"]
    assert hydra_entry_point(argv) == ("experiments.train", "train", ["train=x"])
    argv = ["python", "-m", "experiments.score", "-m", "a=1"]
    assert hydra_entry_point(argv) == ("experiments.score", "score", ["a=1"])


# -------------------------------------------------------------------------------- the README


def test_every_fenced_block_is_python_shell_or_data() -> None:
    """A block in another language (or none) would escape both README tests."""
    languages = [language for language, _, _ in fenced_blocks(TEXT)]
    assert set(languages) <= KNOWN_LANGUAGES, languages
    assert languages.count("bash") >= 10 and COMMANDS


def test_data_blocks_parse() -> None:
    for language, body, line in fenced_blocks(TEXT):
        if language == "toml":
            assert tomllib.loads(body), f"README line {line}"
        elif language == "yaml":
            assert yaml.safe_load(body), f"README line {line}"


def test_every_command_is_run_or_names_the_test_that_covers_it() -> None:
    assert coverage_problems(COMMANDS, REPO_ROOT) == []


def test_every_command_parses_in_bash() -> None:
    """No placeholder (``<checkpoint>``) or broken quoting in any command, run here or not."""
    broken = [
        f"README line {command.line}: {error}"
        for command in COMMANDS
        if (error := bash_syntax_error(command.text))
    ]
    assert broken == []


def test_commands_not_run_anywhere_compose_their_hydra_config() -> None:
    """The ``experiments`` commands no test runs as written (they need a network, a cluster, a
    GPU, or hours) compose their config as written, every job of a sweep."""
    failures, composed = [], 0
    for command in COMMANDS:
        entry = hydra_entry_point(command.argv) if command.kind in ("needs", "full size") else None
        if entry is None:
            continue
        module, config_name, overrides = entry
        for job in expanded_overrides(overrides):
            if error := compose_error(module, config_name, job):
                failures.append(f"README line {command.line}: {job}: {error}")
            composed += 1
    assert failures == []
    assert composed >= 10


def test_the_checks_catch_placeholders_and_bad_overrides() -> None:
    """What the issue found when pasting: a ``<placeholder>`` and a literal ``...``."""
    line = ".venv/bin/python -m experiments.perplexity model=<checkpoint> conversations=<c.jsonl>"
    assert bash_syntax_error(line)
    assert bash_syntax_error(".venv/bin/python -m experiments.score simulator=sharded") is None
    assert compose_error("experiments.score", "score", ["simulator=..."])
    assert compose_error("experiments.score", "score", ["simulator=sharded"]) is None


def bash_syntax_error(text: str) -> str | None:
    """bash's complaint about ``text`` when it does not parse, else None."""
    done = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True, check=False)
    return done.stderr.strip() or f"exit status {done.returncode}" if done.returncode else None


def compose_error(module: str, config_name: str, overrides: list[str]) -> str | None:
    """Why Hydra cannot compose ``config_name`` with ``overrides``, or None when it can."""
    from hydra import compose, initialize_config_dir

    importlib.import_module(module)  # registers its structured configs, if any
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            compose(config_name, overrides=overrides, return_hydra_config=True)
        except Exception as error:  # any failure is the answer: its type and message
            return f"{type(error).__name__}: {error}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[_block_id(b) for b in RUN_BLOCKS])
def test_readme_commands_run_as_written(block: int, tmp_path: Path) -> None:
    """The block's unmarked commands, in order, in one scratch folder: each exits with 0."""
    scratch = _scratch_folder(tmp_path)
    timings = []
    for command in (c for c in COMMANDS if c.block == block and c.kind is None):
        started = time.monotonic()
        status, output = _run(command.text, scratch)
        timings.append(f"{time.monotonic() - started:6.1f} s  README line {command.line}")
        assert status == 0, (
            f"README line {command.line} exited with {status}:\n{command.text}\n{output[-4000:]}"
        )
    print("\n".join(timings))


def _scratch_folder(tmp_path: Path) -> Path:
    """A folder linking the repository's tracked top-level entries and its environment."""
    scratch = tmp_path / "repo"
    scratch.mkdir()
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode == 0 and listed.stdout:
        names = {line.split("/", 1)[0] for line in listed.stdout.splitlines()}
        names |= {".venv"} if (REPO_ROOT / ".venv").exists() else set()
    else:  # not a git checkout: everything but what the commands write
        names = {p.name for p in REPO_ROOT.iterdir() if not p.name.startswith(".git")}
    for name in sorted(names - WRITTEN):
        if (REPO_ROOT / name).exists():
            (scratch / name).symlink_to(REPO_ROOT / name)
    return scratch


def _run(text: str, cwd: Path) -> tuple[int, str]:
    """Run ``text`` with bash in ``cwd``; its whole process group is killed on timeout."""
    process = subprocess.Popen(
        ["bash", "-c", VENV_PREFIX.sub(f"{VENV_BIN}/", text)],
        cwd=cwd,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        output, _ = process.communicate()
        return -1, f"timed out after {COMMAND_TIMEOUT_S} s\n{output}"
    _kill_group(process.pid)  # workers a command left behind (joblib's, for one)
    return process.returncode, output


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return  # every process of the group has exited
