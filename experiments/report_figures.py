"""The report's PNG figures (matplotlib, Agg backend: no display needed).

* ``protocol.png`` (:func:`write_protocol_figure`): the Lost-in-Conversation comparison, one bar
  per assistant x setting: its height is the aptitude (mean over intents of the 90th percentile
  of run scores), its dark top band spans the unreliability (from the mean 10th to the mean 90th
  percentile), the dot is the performance with its 95% interval; the drop from ``full`` is in
  the label.
* ``turns.png``: turns per conversation, one box per simulator x task.
* ``coverage.png``: mean cumulative intent coverage after each user turn (an episode that
  ended keeps its final coverage).
* ``unigram_difference.png``: Unigram Difference per simulator x task (higher: simulations of
  the same intent share fewer words).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from userlm_env.metrics.episode import EpisodeView
from userlm_env.metrics.protocol import ProtocolConfig
from userlm_env.metrics.suite import SUITE, compute_suite

if TYPE_CHECKING:
    from experiments.report import Simulation

__all__ = [
    "coverage_curve",
    "protocol_label",
    "unigram_note",
    "write_figures",
    "write_protocol_figure",
]

Groups = Mapping[tuple[str, str], Sequence["Simulation"]]
_UNIGRAM = next(m for m in SUITE if m.name == "unigram_difference")
_REFERENCE = ProtocolConfig().reference


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def coverage_curve(views: Sequence[EpisodeView], turns: int) -> list[float]:
    """Mean cumulative coverage after user turns ``1..turns`` over ``views``."""
    curve = []
    for k in range(1, turns + 1):
        values = []
        for view in views:
            shown = {i for ids in view.revealed[:k] for i in ids}
            values.append(len(shown) / len(view.intent.shards))
        curve.append(sum(values) / len(values) if values else 0.0)
    return curve


def _name(key: tuple[str, str]) -> str:
    """An axis label: simulator, assistant (when swept) and task on separate lines."""
    return "\n".join([*key[0].split(" / "), key[1]])


def _turns(groups: Groups, path: Path) -> Path:
    plt = _pyplot()
    keys = list(groups)
    figure, axes = plt.subplots(figsize=(max(5.0, 1.6 * len(keys)), 3.6))
    axes.boxplot([[s.episode.user_turns for s in groups[k]] or [0] for k in keys], showmeans=True)
    axes.set_xticks(range(1, len(keys) + 1), [_name(k) for k in keys], fontsize=8)
    axes.set_ylabel("user turns per conversation")
    axes.set_title("Turns per conversation")
    return _save(figure, path)


def _coverage(groups: Groups, path: Path) -> Path:
    plt = _pyplot()
    longest = max((s.episode.user_turns for sims in groups.values() for s in sims), default=1)
    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    for key, sims in groups.items():
        curve = coverage_curve([s.view for s in sims], max(longest, 1))
        axes.plot(range(1, len(curve) + 1), curve, marker="o", label=" / ".join(key))
    axes.set_xlabel("user turn")
    axes.set_ylabel("mean cumulative coverage")
    axes.set_ylim(0.0, 1.05)
    axes.set_title("Intent coverage by turn")
    axes.legend(fontsize=7)
    return _save(figure, path)


def _unigram(groups: Groups, path: Path) -> Path:
    plt = _pyplot()
    keys = list(groups)
    values = [
        compute_suite([s.episode for s in groups[k]], [_UNIGRAM])[_UNIGRAM.name] for k in keys
    ]
    figure, axes = plt.subplots(figsize=(max(5.0, 1.6 * len(keys)), 3.6))
    bars = axes.bar(range(len(keys)), [v or 0.0 for v in values], color="#4c72b0")
    axes.bar_label(bars, labels=["-" if v is None else f"{v:.2f}" for v in values], fontsize=8)
    axes.set_xticks(range(len(keys)), [_name(k) for k in keys], fontsize=8)
    axes.set_ylabel("unigram difference")
    axes.set_ylim(0.0, 1.0)
    axes.set_title("Lexical diversity between simulations of an intent")
    note = unigram_note(values)
    if note:
        axes.text(0.5, 0.5, note, transform=axes.transAxes, ha="center", va="center", fontsize=9)
    return _save(figure, path)


def unigram_note(values: Sequence[float | None]) -> str | None:
    """Why the diversity figure is empty, or ``None`` when any group has a value."""
    if any(v is not None for v in values):
        return None
    return "no intent was simulated twice in one group:\nrun with n_per_intent >= 2 to compare"


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def protocol_label(row: Mapping[str, Any], several_assistants: bool) -> str:
    """An axis label: the setting, the assistant (when several) and the drop from ``full``."""
    lines = [str(row["setting"])]
    if several_assistants:
        lines.append(str(row["assistant"]))
    if row.get("degradation_vs_full_pct") is not None and row["setting"] != _REFERENCE:
        lines.append(f"{0.0 - row['degradation_vs_full_pct']:+.0f}% vs full")
    return "\n".join(lines)


def _protocol_bars(axes, rows: Sequence[Mapping[str, Any]]) -> None:
    """Aptitude bars, their unreliability bands, and the performance dots with intervals."""
    x = range(len(rows))
    aptitude = [float(r["aptitude"]) for r in rows]
    spread = [float(r["unreliability"]) for r in rows]
    floor = [a - u for a, u in zip(aptitude, spread, strict=True)]
    axes.bar(x, aptitude, width=0.6, color="#c9d6ea", label="aptitude (mean p90)")
    axes.bar(x, spread, width=0.6, bottom=floor, color="#4c72b0",
             label="unreliability (mean p10 to p90)")  # fmt: skip
    performance = [float(r["performance"]) for r in rows]
    below = [p - float(r["performance_ci95_low"]) for p, r in zip(performance, rows, strict=True)]
    above = [float(r["performance_ci95_high"]) - p for p, r in zip(performance, rows, strict=True)]
    axes.errorbar(x, performance, yerr=[below, above], fmt="o", color="#c44e52", capsize=4,
                  label="performance (95% CI)")  # fmt: skip
    for i, (a, u) in enumerate(zip(aptitude, spread, strict=True)):
        axes.text(i, a + 0.02, f"A {a:.2f}\nU {u:.2f}", ha="center", va="bottom", fontsize=7)


def write_protocol_figure(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Draw the protocol rows (:func:`userlm_env.metrics.protocol.protocol_rows`) to ``path``."""
    plt = _pyplot()
    several = len({r["assistant"] for r in rows}) > 1
    figure, axes = plt.subplots(figsize=(max(6.4, 1.4 * len(rows)), 4.2))
    _protocol_bars(axes, rows)
    axes.set_xticks(range(len(rows)), [protocol_label(r, several) for r in rows], fontsize=8)
    axes.set_ylabel("run score (1 = solved)")
    axes.set_ylim(0.0, 1.5)
    axes.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_title("Aptitude and unreliability per setting")
    axes.legend(fontsize=7, loc="upper left", ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(figure, path)


def write_figures(groups: Groups, folder: Path) -> list[Path]:
    """Write the three figures into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        _turns(groups, folder / "turns.png"),
        _coverage(groups, folder / "coverage.png"),
        _unigram(groups, folder / "unigram_difference.png"),
    ]
