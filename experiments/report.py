"""Merge the runs of an experiment or a sweep into one table (Markdown and CSV).

    python -m experiments.report multirun/simulate/2026-11-23_12-00-00
    python -m experiments.report outputs/score/my-run --out report

Every folder below the given one that holds a ``results.jsonl`` is a run; its
``run_info.json`` says which simulator, task and assistant made it. The table has one row per
simulator x task (x assistant when several were swept).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.run_info import read_run_info
from userlm_env.rollout import read_records
from userlm_env.summary import format_table, latest_by_key, score_report

__all__ = ["collect_runs", "main", "merge_rows", "write_tables"]


def collect_runs(root: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``(run_info, records)`` of every run below ``root``, in path order."""
    return [
        (read_run_info(results.parent), read_records(results))
        for results in sorted(root.rglob("results.jsonl"))
    ]


def merge_rows(runs: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per simulator x task (x assistant when several were swept).

    The task is the run's task option (``humaneval``, ``gsm_symbolic``...); a run whose task
    option mixes tasks gets one row per scoring task (``tiny:gsm8k``, ``tiny:humaneval``).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    assistants = {info.get("assistant", "?") for info, _ in runs}
    for info, records in runs:
        simulator = info.get("simulator", "?")
        if len(assistants) > 1:
            simulator = f"{simulator} / {info.get('assistant', '?')}"
        latest = latest_by_key(records)
        mixed = len({r["task"] for r in latest}) > 1
        for record in latest:
            task = info.get("task", record["task"])
            groups[(simulator, f"{task}:{record['task']}" if mixed else task)].append(record)
    rows = []
    for (simulator, task), records in sorted(groups.items()):
        (row,) = score_report(records)
        rows.append({"simulator": simulator, **row, "task": task})
    return rows


def write_tables(rows: Sequence[dict[str, Any]], out_stem: Path) -> tuple[Path, Path]:
    """Write ``<out_stem>.md`` and ``<out_stem>.csv``; return both paths."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    markdown, table = out_stem.with_suffix(".md"), out_stem.with_suffix(".csv")
    markdown.write_text(format_table(rows) + "\n", encoding="utf-8")
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["simulator"])
        writer.writeheader()
        writer.writerows(rows)
    return markdown, table


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: merge the runs below a folder and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run folder or a sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default root/report)")
    args = parser.parse_args(argv)
    runs = collect_runs(args.root)
    if not runs:
        parser.error(f"no results.jsonl below {args.root}")
    rows = merge_rows(runs)
    markdown, table = write_tables(rows, args.out or args.root / "report")
    print(format_table(rows))
    print(f"\nwrote {markdown} and {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
