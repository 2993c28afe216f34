"""Merge the runs of an experiment or a sweep into tables, figures and one HTML page.

    python -m experiments.report multirun/simulate/2026-11-23_12-00-00
    python -m experiments.report outputs/score/my-run --out report

Every folder below the given one that holds a ``results.jsonl`` is a run; its
``run_info.json`` says which simulator, task and assistant made it, and its Hydra
``.hydra/config.yaml`` which intents it ran (read again here for the shard metadata). The table
has one row per simulator x task (x assistant when several were swept): the Assistant Score
columns, the paper's Table 3 metrics and the simulator faithfulness flags. Beside
``<out>.md``/``<out>.csv`` the report writes PNG figures and ``<out>.html``, a static page with
the simulations of each intent side by side (``--no-intents`` skips what needs the intents).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.run_info import read_run_info
from userlm_env.errors import DataError
from userlm_env.metrics.episode import EpisodeView
from userlm_env.metrics.suite import SUITE, SimulatedEpisode, compute_suite, format_value
from userlm_env.rollout import read_records
from userlm_env.summary import format_table, latest_by_key, score_report
from userlm_env.types import Intent

__all__ = [
    "Simulation",
    "collect_runs",
    "group_simulations",
    "main",
    "merge_rows",
    "run_intents",
    "write_tables",
]

Run = tuple[dict[str, Any], list[dict[str, Any]]]
_SUITE_COLUMNS = [m for m in SUITE if m.name != "assistant_score"]  # score_report has it


def collect_runs(root: Path) -> list[Run]:
    """``(run_info, records)`` of every run below ``root``, in path order."""
    return [
        (read_run_info(results.parent), read_records(results))
        for results in sorted(root.rglob("results.jsonl"))
    ]


def run_intents(run_dir: Path) -> dict[str, Intent]:
    """The intents of one run, rebuilt from its Hydra config (``.hydra/config.yaml``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = run_dir / ".hydra" / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config} is missing: rerun with --no-intents")
    return {i.task_id: i for i in instantiate(OmegaConf.load(config).task)}


@dataclass(frozen=True)
class Simulation:
    """One finished episode of a run, with its metrics."""

    record: Mapping[str, Any]
    view: EpisodeView
    episode: SimulatedEpisode


def _label(info: Mapping[str, Any], several_assistants: bool) -> str:
    simulator = str(info.get("simulator", "?"))
    return f"{simulator} / {info.get('assistant', '?')}" if several_assistants else simulator


def _groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[tuple[int, Mapping[str, Any]]]]:
    """``(simulator, task) -> [(run index, record)]``; the task is the run's task option, or
    ``option:task`` when one run mixes tasks."""
    groups: dict[tuple[str, str], list[tuple[int, Mapping[str, Any]]]] = defaultdict(list)
    several = len({info.get("assistant", "?") for info, _ in runs}) > 1
    for index, (info, records) in enumerate(runs):
        latest = latest_by_key(records)
        mixed = len({r["task"] for r in latest}) > 1
        for record in latest:
            task = info.get("task", record["task"])
            key = (_label(info, several), f"{task}:{record['task']}" if mixed else task)
            groups[key].append((index, record))
    return dict(sorted(groups.items()))


def group_simulations(
    runs: Sequence[Run], intents: Sequence[Mapping[str, Intent]]
) -> dict[tuple[str, str], list[Simulation]]:
    """Finished (error-free) episodes per simulator x task, with their metrics."""
    result = {}
    for key, members in _groups(runs).items():
        result[key] = [_simulation(r, intents[i]) for i, r in members if not r.get("error")]
    return result


def _simulation(record: Mapping[str, Any], intents: Mapping[str, Intent]) -> Simulation:
    intent = intents.get(record["intent_id"])
    if intent is None:
        raise DataError(f"intent {record['intent_id']!r} of record {record['key']!r} not found")
    view = EpisodeView.from_record(record, intent)
    return Simulation(record, view, SimulatedEpisode.from_view(view))


def merge_rows(
    runs: Sequence[Run], intents: Sequence[Mapping[str, Intent]] | None = None
) -> list[dict[str, Any]]:
    """One row per simulator x task (x assistant when several were swept).

    With ``intents`` (one mapping per run) the rows also carry the Table 3 metrics and the
    faithfulness flags, formatted as in the paper (percentages, ``low-high`` ranges).
    """
    sims = group_simulations(runs, intents) if intents is not None else {}
    rows = []
    for (simulator, task), members in _groups(runs).items():
        (row,) = score_report([r for _, r in members])
        row = {"simulator": simulator, **row, "task": task}
        if intents is not None:
            values = compute_suite([s.episode for s in sims[(simulator, task)]], _SUITE_COLUMNS)
            row |= {m.name: format_value(m, values[m.name]) for m in _SUITE_COLUMNS}
        rows.append(row)
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
    """Command line: merge the runs below a folder, print the table, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run folder or a sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default root/report)")
    parser.add_argument("--no-intents", action="store_true", help="Assistant Score columns only")
    args = parser.parse_args(argv)
    paths = [p.parent for p in sorted(args.root.rglob("results.jsonl"))]
    if not paths:
        parser.error(f"no results.jsonl below {args.root}")
    try:  # unreadable runs are a usage error (exit 2), reported without a traceback
        runs = collect_runs(args.root)
        intents = None if args.no_intents else [run_intents(p) for p in paths]
        rows = merge_rows(runs, intents)
        sims = group_simulations(runs, intents) if intents is not None else None
    except (OSError, DataError) as error:
        parser.error(str(error))
    out = args.out or args.root / "report"
    written = list(write_tables(rows, out))
    if sims is not None:
        from experiments.report_figures import write_figures
        from experiments.report_page import write_page

        figures = write_figures(sims, out.parent / f"{out.name}_figures")
        written.append(write_page(rows, sims, figures, out.with_suffix(".html"), args.root))
    print(format_table(rows))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
