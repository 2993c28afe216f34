"""The report's PNG figures (matplotlib, Agg backend: no display needed).

* ``turns.png``: turns per conversation, one box per simulator x task.
* ``coverage.png``: mean cumulative intent coverage after each user turn (an episode that
  ended keeps its final coverage).
* ``unigram_difference.png``: Unigram Difference per simulator x task (higher: simulations of
  the same intent share fewer words).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from userlm_env.metrics.episode import EpisodeView
from userlm_env.metrics.suite import SUITE, compute_suite

if TYPE_CHECKING:
    from experiments.report import Simulation

__all__ = ["coverage_curve", "unigram_note", "write_figures"]

Groups = Mapping[tuple[str, str], Sequence["Simulation"]]
_UNIGRAM = next(m for m in SUITE if m.name == "unigram_difference")


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


def write_figures(groups: Groups, folder: Path) -> list[Path]:
    """Write the three figures into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        _turns(groups, folder / "turns.png"),
        _coverage(groups, folder / "coverage.png"),
        _unigram(groups, folder / "unigram_difference.png"),
    ]
