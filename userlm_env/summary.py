"""Summaries of finished episodes: per-task rows and a plain-text table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

__all__ = ["format_table", "summarize"]


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
    return f"{value:.3f}" if isinstance(value, float) else str(value)
