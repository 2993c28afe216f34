"""Command line for intents: ``python -m userlm_env.intents export|sources``.

``export`` loads a source, shards it with the rule-based sharders where needed, and writes
Lost-in-Conversation JSON::

    python -m userlm_env.intents export --source humaneval --out humaneval.json --limit 20
    python -m userlm_env.intents export --source gsm8k --data-path test.jsonl --out gsm8k.json
    python -m userlm_env.intents export --source gsm_symbolic --n 100 --seed 3 --out sym.json

``sources`` lists the registered source names.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from userlm_env.errors import DataError, UnknownNameError
from userlm_env.intents.sources import SOURCES, export_lic_json

__all__ = ["build_parser", "main"]

# command-line flag -> the source keyword argument it sets
_SOURCE_OPTIONS = {"limit": "limit", "data_path": "data_path", "seed": "seed", "n": "n"}


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m userlm_env.intents``."""
    parser = argparse.ArgumentParser(prog="python -m userlm_env.intents", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a source's sharded intents as LiC JSON")
    export.add_argument("--source", required=True, help=f"one of: {', '.join(SOURCES.names())}")
    export.add_argument("--out", required=True, help="output JSON file")
    export.add_argument("--limit", type=_count, help="keep the first N intents")
    export.add_argument("--data-path", help="input file (gsm8k JSONL, lic JSON)")
    export.add_argument("--seed", type=int, help="generator seed (gsm_symbolic)")
    export.add_argument("--n", type=_count, help="number of problems to generate (gsm_symbolic)")
    commands.add_parser("sources", help="list the registered sources")
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
    path = export_lic_json(intents, args.out)
    shards = sum(len(i.shards) for i in intents)
    print(f"wrote {len(intents)} intents ({shards} shards) from {args.source!r} to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for usage errors, 1 for data errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sources":
        print("\n".join(SOURCES.names()))
        return 0
    try:
        return _export(args, parser)
    except (DataError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
