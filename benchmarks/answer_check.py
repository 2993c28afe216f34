"""Benchmark: how often the GSM8k scorer finds the answer a reply commits to, vs math-verify.

Claim: on the labelled replies of ``tests/tasks/fixtures/answer_replies.jsonl`` (written by us,
produced by the embedded model in-process and by the llama.cpp server; see
``README_answer_replies.md`` beside it), :class:`userlm_env.tasks.math.MathScorer` reaches
accuracy >= 0.98, where a reply counts as right when the number it commits to is found (or none
is, when it commits to none) and the solved verdict equals the label.

For comparison, HF's math-verify alone judges each whole reply the way its README shows
(``verify(parse(reference), parse(reply))``, default settings); its accuracy is the share of
replies whose verdict equals the label (it reports no single committed number, so only the
verdict is counted, a looser test than ours). Both run in the same process on the same rows.

Run: ``python benchmarks/answer_check.py``. The last line printed is a JSON object
``{"replies", "accuracy", "verdict_accuracy", "math_verify_accuracy", "ratio", ...}`` where
``ratio`` = accuracy / math_verify_accuracy.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from math_verify import parse, verify  # noqa: E402

from tests.tasks.answer_fixture import load_answer_replies  # noqa: E402
from userlm_env.tasks.math import MathScorer, extract_answer, parse_number  # noqa: E402
from userlm_env.types import Intent, Shard  # noqa: E402

SOURCES = ("written", "embedded_model", "llama_server")

Row = dict[str, Any]


def load_rows() -> list[Row]:
    """The labelled replies, GSM8k rows completed from ``../shared`` at run time."""
    return load_answer_replies()


def intent_of(row: Row) -> Intent:
    """The GSM8k intent a row's reply answers."""
    question = row["question"]
    return Intent("gsm8k", row["id"], question, (Shard(1, question),), {"answer": row["answer"]})


def ours_right(row: Row, scorer: MathScorer) -> tuple[bool, bool]:
    """(committed number found and verdict right, verdict right) for our scorer."""
    committed = row["committed"]
    wanted: Fraction | None = None if committed is None else parse_number(committed)
    found = extract_answer(row["reply"], row["question"]) == wanted
    verdict = scorer.score(row["reply"], intent_of(row)).solved == row["correct"]
    return found and verdict, verdict


def math_verify_right(row: Row) -> bool:
    """Whether math-verify alone, judging the whole reply, agrees with the label."""
    return bool(verify(parse(row["answer"]), parse(row["reply"]))) == row["correct"]


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    return function(), time.perf_counter() - start


def share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def main() -> None:
    rows, scorer = load_rows(), MathScorer()
    extract_answer("\\boxed{\\frac{1}{2}}"), parse("\\boxed{\\frac{1}{2}}")  # warm both up
    ours, ours_s = timed(lambda: [ours_right(row, scorer) for row in rows])
    theirs, theirs_s = timed(lambda: [math_verify_right(row) for row in rows])
    report: dict[str, Any] = {"replies": len(rows)}
    for source in (*SOURCES, "overall"):
        picked = [i for i, row in enumerate(rows) if source in (row["source"], "overall")]
        accuracy = share([ours[i][0] for i in picked])
        verdicts = share([ours[i][1] for i in picked])
        baseline = share([theirs[i] for i in picked])
        solved = sum(rows[i]["correct"] for i in picked)
        print(
            f"{source:>15}: {len(picked):4d} replies ({solved:3d} correct)  ours {accuracy:.4f} "
            f"(verdict {verdicts:.4f})  math-verify {baseline:.4f}"
        )
        if source != "overall":
            report[f"{source}_accuracy"] = accuracy
            report[f"{source}_math_verify_accuracy"] = baseline
    report["accuracy"] = share([flags[0] for flags in ours])
    report["verdict_accuracy"] = share([flags[1] for flags in ours])
    report["math_verify_accuracy"] = share(theirs)
    report["ratio"] = round(report["accuracy"] / max(report["math_verify_accuracy"], 1e-9), 3)
    report["ours_ms_per_reply"] = round(1000 * ours_s / len(rows), 2)
    report["math_verify_ms_per_reply"] = round(1000 * theirs_s / len(rows), 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
