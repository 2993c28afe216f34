"""Intrinsic evaluation of a user simulator (the paper's Table 2) on conversation data.

    python -m experiments.intrinsic --simulator sharded \\
        --conversations tests/metrics/fixtures/conversations.jsonl \\
        --mcq tests/metrics/fixtures/mcq.jsonl --questions tests/metrics/fixtures/questions.jsonl
    python -m experiments.intrinsic --simulator userlm --online 200 \\
        --judge-model openai/gpt-4o --out outputs/intrinsic/userlm

Any simulator of :func:`simulators.make_simulator` works (``--simulator-kwargs`` is JSON).
``--online N`` loads N records each of PRISM, CommonsenseQA and NaturalQuestions through
``datasets`` instead of files. Intent adherence needs a judge model (``--judge-model``); the
naturalness detector is a library hook (:class:`userlm_env.metrics.intrinsic.NaturalnessDetector`)
with no command-line default, since no detector ships offline. Progress goes to stderr as
``[intrinsic]`` lines (a live bar on a terminal; ``--no-progress`` turns it off); libraries'
INFO logs (LiteLLM's per-call lines) show only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from userlm_env.logs import quiet_libraries
from userlm_env.metrics.intrinsic import (
    IntentAdherenceJudge,
    IntrinsicData,
    load_jsonl,
    load_online,
    run_intrinsic,
)
from userlm_env.metrics.suite import format_table
from userlm_env.progress import ProgressSettings

__all__ = ["load_data", "main", "make_judge"]

_KINDS = ("conversations", "mcq", "questions")


def load_data(args: argparse.Namespace) -> IntrinsicData:
    """The records named on the command line (files, or ``--online N`` of each kind)."""
    if args.online:
        return IntrinsicData(**{k: load_online(k, args.online, args.seed) for k in _KINDS})
    return IntrinsicData(
        **{k: load_jsonl(getattr(args, k), k) if getattr(args, k) else [] for k in _KINDS}
    )


def make_judge(args: argparse.Namespace) -> IntentAdherenceJudge | None:
    """The intent-adherence judge, when ``--judge-model`` is given."""
    if not args.judge_model:
        return None
    from userlm_env.llm import LLMClient, LLMConfig

    config = LLMConfig(model=args.judge_model, api_base=args.judge_api_base, temperature=0.0)
    return IntentAdherenceJudge(LLMClient(config), cache_dir=args.judge_cache)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.intrinsic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--simulator", default="sharded", help="a registered simulator name")
    parser.add_argument("--simulator-kwargs", default="{}", help="JSON keyword arguments")
    for kind in _KINDS:
        parser.add_argument(f"--{kind}", type=Path, default=None, help=f"JSONL of {kind} records")
    parser.add_argument("--online", type=int, default=0, help="load N records of each kind")
    parser.add_argument("--judge-model", default=None, help="LiteLLM model of the judge")
    parser.add_argument("--judge-api-base", default=None, help="endpoint of the judge model")
    parser.add_argument("--judge-cache", default=None, help="cache folder of the judge")
    parser.add_argument("--first-turns-per-intent", type=int, default=1, help="samples/intent")
    parser.add_argument("--batch-size", type=int, default=16, help="states per simulator call")
    parser.add_argument("--seed", type=int, default=0, help="base sampling seed")
    parser.add_argument("--out", type=Path, default=None, help="folder for intrinsic.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    parser.add_argument("--verbose", action="store_true", help="show libraries' INFO logs")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the suite; print one table row; write ``<out>/intrinsic.json`` when asked."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.online and not any(getattr(args, k) for k in _KINDS):
        parser.error("give at least one of --conversations, --mcq, --questions, or --online N")
    quiet_libraries(verbose=args.verbose)
    from simulators import make_simulator

    simulator = make_simulator(args.simulator, **json.loads(args.simulator_kwargs))
    results = run_intrinsic(
        simulator,
        load_data(args),
        judge=make_judge(args),
        first_turns_per_intent=args.first_turns_per_intent,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=None if args.no_progress else ProgressSettings(),
    )
    row = {"simulator": args.simulator, **results}
    print(format_table([row]))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "intrinsic.json").write_text(json.dumps(row, indent=2), encoding="utf-8")
    return row


if __name__ == "__main__":
    main()
