"""Merge the runs of an experiment or a sweep into tables, figures and one HTML page.

    python -m experiments.report multirun/simulate/2026-11-23_12-00-00
    python -m experiments.report outputs/score/my-run --out report

Every folder below the given one that holds a ``results.jsonl`` is a run; its
``run_info.json`` says which simulator, intents and assistant made it. Each record carries its
intent (instruction and shards) and the episode metrics computed when it finished, so nothing is
reloaded or recomputed here.

The report leads with the comparison people come for, the Lost-in-Conversation protocol
(:mod:`userlm_env.metrics.protocol`): one row per assistant x setting (the run's simulator
config: ``full``, ``concat``, ``sharded``, an LLM user, a UserLM...) with ``performance``,
``aptitude``, ``unreliability`` and, when the assistant also ran ``full``,
``degradation_vs_full`` (and ``_pct``), each with its 95% bootstrap interval (``_ci95``).
Then the simulator table: one row per simulator x intents option (x assistant when several were
swept): the score columns (:func:`userlm_env.metrics.suite.score_rows`), the paper's Table 3
metrics and the simulator faithfulness flags. Beside ``<out>.md`` (both tables),
``<out>.csv`` (the simulator table) and ``<out>_protocol.csv`` (the protocol, bounds as numbers)
the report writes PNG figures (the protocol's first) and ``<out>.html``, a static page with the
simulations of each intent side by side.

Exit status: 0 the report was written (failed episodes, if any, are counted in the tables and
summed up on stderr); 1 no run below the folder finished an episode (the most common error is
printed); 2 the folder holds no readable run (missing, no ``results.jsonl``, records written by
an older version). Errors are one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from experiments.run_info import read_run_info
from userlm_env.errors import DataError
from userlm_env.metrics.episode import EpisodeView
from userlm_env.metrics.protocol import protocol_rows
from userlm_env.metrics.suite import (
    PROTOCOL,
    SUITE,
    SimulatedEpisode,
    compute_suite,
    format_table,
    format_value,
    score_rows,
)
from userlm_env.records import latest_by_key, read_records

__all__ = [
    "EXIT_NO_EPISODES",
    "EXIT_UNREADABLE",
    "Simulation",
    "build_parser",
    "collect_runs",
    "group_simulations",
    "main",
    "merge_rows",
    "protocol_table",
    "setting_groups",
    "write_tables",
]

Run = tuple[dict[str, Any], list[dict[str, Any]]]
#: Exit status when no run below the folder finished an episode.
EXIT_NO_EPISODES = 1
#: Exit status when the folder holds no readable run.
EXIT_UNREADABLE = 2
_REQUIRED = ("key", "task")  # fields every record has, failed or not
_SUITE_COLUMNS = [m for m in SUITE if m.name != "assistant_score"]  # score_rows has it


def collect_runs(root: Path) -> list[Run]:
    """``(run_info, records)`` of every run below ``root``, in path order.

    Raises:
        DataError: A record lacks ``key`` or ``task`` (the message names the file and line).
    """
    runs = []
    for results in sorted(root.rglob("results.jsonl")):
        records = read_records(results)
        for line, record in enumerate(records, start=1):
            missing = [name for name in _REQUIRED if name not in record]
            if missing:
                raise DataError(f"{results}: record {line} has no {', '.join(missing)} field")
        runs.append((read_run_info(results.parent), records))
    return runs


@dataclass(frozen=True)
class Simulation:
    """One finished episode of a run, with its metrics."""

    record: Mapping[str, Any]
    view: EpisodeView
    episode: SimulatedEpisode


def _label(info: Mapping[str, Any], several_assistants: bool) -> str:
    simulator = str(info.get("simulator", "?"))
    return f"{simulator} / {info.get('assistant', '?')}" if several_assistants else simulator


Groups = dict[tuple[str, str], list[Mapping[str, Any]]]


def _groups(runs: Sequence[Run]) -> Groups:
    """``(simulator, intents) -> records``; ``intents`` is the run's intents option, or
    ``option:task`` when one run mixes tasks."""
    groups: Groups = defaultdict(list)
    several = len({info.get("assistant", "?") for info, _ in runs}) > 1
    for info, records in runs:
        latest = latest_by_key(records)
        mixed = len({r["task"] for r in latest}) > 1
        for record in latest:
            option = info.get("intents", record["task"])
            key = (_label(info, several), f"{option}:{record['task']}" if mixed else option)
            groups[key].append(record)
    return dict(sorted(groups.items()))


def group_simulations(runs: Sequence[Run]) -> dict[tuple[str, str], list[Simulation]]:
    """Finished (error-free) episodes per simulator x intents, as their records hold them.

    Raises:
        DataError: A record carries no intent or metrics (written by an older version).
    """
    return {
        key: [_simulation(r) for r in members if not r.get("error")]
        for key, members in _groups(runs).items()
    }


def _simulation(record: Mapping[str, Any]) -> Simulation:
    if not record.get("metrics"):
        raise DataError(f"record {record.get('key')!r} has no episode metrics; re-run it")
    return Simulation(record, EpisodeView.from_record(record), SimulatedEpisode.from_record(record))


def merge_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per simulator x intents (x assistant when several were swept): the score
    columns, then the Table 3 metrics and the faithfulness flags, formatted as in the paper
    (percentages, ``low-high`` ranges)."""
    sims = group_simulations(runs)
    rows = []
    for (simulator, option), members in _groups(runs).items():
        (row,) = score_rows(members)
        row = {"simulator": simulator, "intents": option, **row}
        del row["task"]
        values = compute_suite([s.episode for s in sims[(simulator, option)]], _SUITE_COLUMNS)
        rows.append(row | {m.name: format_value(m, values[m.name]) for m in _SUITE_COLUMNS})
    return rows


def setting_groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """``(assistant, setting) -> records``, the setting being the run's simulator config; the
    runs of one setting (several intents options, say) are pooled."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for info, records in runs:
        key = (str(info.get("assistant", "?")), str(info.get("simulator", "?")))
        groups[key].extend(records)
    return dict(groups)


def _number(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if percent else f"{value:.3f}"


def _interval(row: Mapping[str, Any], name: str, percent: bool) -> str:
    if name not in row:
        return "-"
    low, high = row[f"{name}_ci95_low"], row[f"{name}_ci95_high"]
    return f"[{_number(low, percent)}, {_number(high, percent)}]"


def protocol_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The protocol rows as printed: each metric's value and its ``<name>_ci95`` interval (the
    relative drop without one); metrics no row has are left out, ``-`` where a row lacks one."""
    names = [m.name for m in PROTOCOL if any(m.name in row for row in rows)]
    table = []
    for row in rows:
        cells = {key: str(row[key]) for key in ("assistant", "setting", "intents", "runs")}
        for name in names:
            percent = name.endswith("_pct")
            cells[name] = _number(row.get(name), percent)
            if not percent:
                cells[f"{name}_ci95"] = _interval(row, name, percent)
        table.append(cells)
    return table


PROTOCOL_TITLE = "Same assistant, fully specified vs in conversation (95% bootstrap intervals)"
SIMULATOR_TITLE = "Simulators (score, Table 3 metrics, faithfulness flags)"


def _markdown(rows: Sequence[Mapping[str, Any]], protocol: Sequence[Mapping[str, Any]]) -> str:
    """Both tables with their titles, the protocol first."""
    return (
        f"## {PROTOCOL_TITLE}\n\n{format_table(protocol_table(protocol))}\n\n"
        f"## {SIMULATOR_TITLE}\n\n{format_table(rows)}\n"
    )


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path, first: str) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row)) or [first]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_tables(
    rows: Sequence[dict[str, Any]],
    out_stem: Path,
    protocol: Sequence[Mapping[str, Any]] = (),
) -> tuple[Path, Path, Path]:
    """Write ``<out_stem>.md`` (both tables), ``<out_stem>.csv`` (the simulator table) and
    ``<out_stem>_protocol.csv`` (the protocol rows, bounds as numbers); return the paths."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    markdown = out_stem.with_suffix(".md")
    markdown.write_text(_markdown(rows, protocol), encoding="utf-8")
    table = _write_csv(rows, out_stem.with_suffix(".csv"), "simulator")
    protocol_csv = out_stem.parent / f"{out_stem.name}_protocol.csv"
    return markdown, table, _write_csv(protocol, protocol_csv, "assistant")


EXAMPLES = """\
examples:
  python -m experiments.report outputs/simulate/2026-11-23_12-00-00     # one run
  python -m experiments.report multirun/simulate/2026-11-23_12-00-00    # a sweep: one row per job
  python -m experiments.report runs/lic --out reports/lic    # reports/lic.md, .csv, .html ...

exit status: 0 written; 1 no run finished an episode; 2 no readable run below the folder
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m experiments.report``."""
    summary = __doc__.split("\n\n")[0].splitlines()[0] if __doc__ else ""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description=f"{summary}\n\nEvery folder below ROOT holding a results.jsonl is a run "
        "(simulate, score or a sweep job);\nwrites <out>.md, <out>.csv, <out>_protocol.csv, "
        "<out>_figures/*.png and <out>.html.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", type=Path, help="a run folder or a sweep folder")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default ROOT/report)")
    return parser


def _stop(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _usage_error(message: str) -> NoReturn:
    """Exit with :data:`EXIT_UNREADABLE` (``SystemExit``, as argparse's usage errors do)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_UNREADABLE)


def _failures(runs: Sequence[Run], limit: int = 400) -> tuple[int, int, str]:
    """``(failed, episodes, most common error)`` over the latest record of each run's
    episodes (a resumed run's retry replaces its failure)."""
    latest = [r for _, records in runs for r in latest_by_key(records)]
    errors = Counter(str(r["error"]) for r in latest if r.get("error"))
    if not errors:
        return 0, len(latest), ""
    text, count = errors.most_common(1)[0]
    text = " ".join(text.split())  # one line
    text = text if len(text) <= limit else text[:limit] + "..."
    failed = sum(errors.values())
    return failed, len(latest), f"most common error ({count} of {failed}): {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: merge the runs below a folder, print the table, write the report; return
    the exit status (see the module docstring). A folder without readable runs is a usage error:
    ``SystemExit`` with :data:`EXIT_UNREADABLE`, as for argparse's own."""
    args = build_parser().parse_args(argv)
    root: Path = args.root
    if not root.is_dir():
        _usage_error(f"{root} is not a folder")
    if not any(root.rglob("results.jsonl")):
        _usage_error(
            f"no results.jsonl below {root}: pass the folder of a simulate or score run, "
            "or of a sweep"
        )
    try:
        runs = collect_runs(root)
        failed, episodes, common = _failures(runs)
        if not episodes:
            files = sum(1 for _ in root.rglob("results.jsonl"))
            return _stop(
                f"no episode records in the {files} results.jsonl file(s) below {root}: "
                "the runs finished no episode",
                EXIT_NO_EPISODES,
            )
        if failed == episodes:
            return _stop(
                f"no finished episode below {root} ({failed} of {episodes} failed); {common}",
                EXIT_NO_EPISODES,
            )
        rows = merge_rows(runs)
        sims = group_simulations(runs)
        protocol = protocol_rows(setting_groups(runs))
    except (OSError, KeyError, ValueError) as error:  # DataError is a ValueError
        _usage_error(f"unreadable results below {root}: {error}")
    out = args.out or root / "report"
    written = [
        *write_tables(rows, out, protocol),
        *_write_visuals(rows, sims, protocol, out, root),
    ]
    print(_markdown(rows, protocol))
    print("wrote " + ", ".join(str(p) for p in written))
    if failed:
        print(
            f"{failed} of {episodes} episodes failed and are left out of the metrics; {common}",
            file=sys.stderr,
        )
    return 0


def _write_visuals(
    rows: Sequence[Mapping[str, Any]],
    sims: Mapping[tuple[str, str], Sequence[Simulation]],
    protocol: Sequence[Mapping[str, Any]],
    out: Path,
    root: Path,
) -> list[Path]:
    """Write the figures (the protocol's first) and the HTML page; return their paths."""
    from experiments.report_figures import write_figures, write_protocol_figure
    from experiments.report_page import write_page

    folder = out.parent / f"{out.name}_figures"
    folder.mkdir(parents=True, exist_ok=True)
    drawn = [row for row in protocol if "aptitude" in row]  # settings with finished episodes
    lead = write_protocol_figure(drawn, folder / "protocol.png") if drawn else None
    figures = write_figures(sims, folder)
    page = write_page(
        rows, sims, figures, out.with_suffix(".html"), root,
        protocol=protocol_table(protocol), protocol_figure=lead,
    )  # fmt: skip
    return [*([lead] if lead else []), *figures, page]


if __name__ == "__main__":
    raise SystemExit(main())
