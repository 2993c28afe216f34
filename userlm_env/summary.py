"""Summaries of finished episodes: per-task rows and a plain-text table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

import numpy as np

__all__ = ["bootstrap_ci", "format_table", "latest_by_key", "score_report", "summarize"]


def summarize(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per task plus an ``all`` row: conversations, mean turns, assistant score."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    rows = [_row(task, group) for task, group in sorted(by_task.items())]
    if len(rows) > 1:
        rows.append(_row("all", [r for group in by_task.values() for r in group]))
    return rows


def _row(task: str, group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r for r in group if not r.get("error")]
    return {
        "task": task,
        "conversations": len(group),
        "failed": len(group) - len(ok),
        "mean_turns": fmean(r["turns"] for r in ok) if ok else float("nan"),
        "mean_coverage": fmean(r["coverage"] for r in ok) if ok else float("nan"),
        "assistant_score": fmean(1.0 if r["solved"] else 0.0 for r in ok) if ok else float("nan"),
    }


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of ``rows`` (floats with 3 decimals)."""
    if not rows:
        return "(no episodes)"
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "unknown"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def latest_by_key(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last record of each episode key (a resumed run's retry replaces its failure)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for record in records:
        latest[record["key"]] = record
    return list(latest.values())


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``nan`` bounds when empty)."""
    if not values:
        return float("nan"), float("nan")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def score_report(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per task and overall: episodes, failures, Assistant Score with a 95% bootstrap interval,
    mean turns, answer attempts per episode and total cost (``None`` if any cost is unknown)."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in latest_by_key(records):
        by_task[record["task"]].append(record)
    groups = sorted(by_task.items())
    if len(groups) > 1:
        groups.append(("all", [r for _, group in groups for r in group]))
    return [_score_row(task, group) for task, group in groups]


def _score_row(task: str, group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r for r in group if not r.get("error")]
    solved = [1.0 if r["solved"] else 0.0 for r in ok]
    low, high = bootstrap_ci(solved)
    costs = [r.get("cost") for r in ok]
    nan = float("nan")
    return {
        "task": task,
        "episodes": len(group),
        "failed": len(group) - len(ok),
        "assistant_score": fmean(solved) if solved else nan,
        "ci95_low": low,
        "ci95_high": high,
        "mean_turns": fmean(r["turns"] for r in ok) if ok else nan,
        "attempts_per_episode": fmean(r["attempts"] for r in ok) if ok else nan,
        "cost_usd": None if any(c is None for c in costs) else float(sum(costs)),
    }
