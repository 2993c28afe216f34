"""Command line for intents: ``userlm-env-intents export|sources`` (or
``python -m userlm_env.intents``).

``export`` loads a source, shards it with the rule-based sharders where needed, and writes
Lost-in-Conversation JSON (read back by the ``lic`` source, or by ``intents=...`` configs)::

    userlm-env-intents export --source humaneval --out humaneval.json --limit 20
    userlm-env-intents export --source gsm8k --data-path test.jsonl --out gsm8k.json
    userlm-env-intents export --source gsm_symbolic --n 100 --seed 3 --out sym.json

``sources`` lists the registered source names. Exit status: 0 done; 1 an unknown source, or the
data cannot be read or written (one ``error: ...`` line on stderr); 2 a usage error (argparse's
message).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

from userlm_env.errors import UserLMEnvError
from userlm_env.intents.sources import SOURCES, export_lic_json

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "build_parser", "main"]

#: Exit status when the source is unknown or cannot be read, or the output cannot be written.
EXIT_ERROR = 1
#: Exit status of usage errors (argparse's).
EXIT_USAGE = 2

# command-line flag -> the source keyword argument it sets
_SOURCE_OPTIONS = {"limit": "limit", "data_path": "data_path", "seed": "seed", "n": "n"}

_DESCRIPTION = """\
Export the intents (hidden goals: an instruction split into shards) of a source as
Lost-in-Conversation JSON, or list the sources. "COMMAND --help" shows a command's options.
"""

_EXAMPLES = """\
examples:
  {prog} sources
  {prog} export --source humaneval --out humaneval.json --limit 20
  {prog} export --source gsm8k --data-path test.jsonl --out gsm8k.json
  {prog} export --source gsm_symbolic --n 100 --seed 3 --out sym.json

exit status: 0 done; 1 unknown source, or the data cannot be read or written; 2 a usage error
"""

_EXPORT_EXAMPLES = """\
examples:
  {prog} --source humaneval --out humaneval.json --limit 20
  {prog} --source gsm8k --data-path test.jsonl --out gsm8k.json
  {prog} --source gsm_symbolic --n 100 --seed 3 --out sym.json
  {prog} --source lic --data-path lic.json --out mine.json --limit 5

humaneval and gsm_symbolic work offline; gsm8k without --data-path downloads the dataset.
"""


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _program() -> str:
    """How the user called us: the console script's name, or ``python -m userlm_env.intents``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("__main__.py", "-c") else "python -m userlm_env.intents"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``userlm-env-intents`` (``prog``: the name shown in help)."""
    prog = prog or _program()
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EXAMPLES.format(prog=prog),
        formatter_class=raw,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{export,sources}")
    export = commands.add_parser(
        "export",
        help="write a source's sharded intents as LiC JSON",
        description="Load a source, shard it where needed, and write Lost-in-Conversation JSON.",
        epilog=_EXPORT_EXAMPLES.format(prog=f"{prog} export"),
        formatter_class=raw,
    )
    export.add_argument("--source", required=True, help=f"one of: {', '.join(SOURCES.names())}")
    export.add_argument("--out", required=True, help="output JSON file")
    export.add_argument("--limit", type=_count, help="keep the first N intents")
    export.add_argument("--data-path", help="input file (gsm8k JSONL, lic JSON)")
    export.add_argument("--seed", type=int, help="generator seed (gsm_symbolic)")
    export.add_argument("--n", type=_count, help="number of problems to generate (gsm_symbolic)")
    export.set_defaults(command_parser=export)  # its usage line goes with its usage errors
    commands.add_parser(
        "sources", help="list the registered sources", description="List the source names."
    )
    return parser


def _source_kwargs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options given on the command line, checked against the source's parameters."""
    accepted = inspect.signature(SOURCES.resolve(args.source)).parameters
    kwargs = {}
    for flag, name in _SOURCE_OPTIONS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if name not in accepted:
            parser.error(f"source {args.source!r} does not take --{flag.replace('_', '-')}")
        kwargs[name] = value
    return kwargs


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    kwargs = _source_kwargs(args, parser)
    intents = SOURCES.make(args.source, **kwargs)
    try:
        path = export_lic_json(intents, args.out)
    except OSError as exc:
        raise OSError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    shards = sum(len(i.shards) for i in intents)
    print(f"wrote {len(intents)} intents ({shards} shards) from {args.source!r} to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sources":
        print("\n".join(SOURCES.names()))
        return 0
    try:
        return _export(args, args.command_parser)
    except (UserLMEnvError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
