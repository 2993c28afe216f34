"""The simulation metrics suite of the paper's Table 3, computed over many episodes.

Each :class:`SuiteMetric` declares whether a higher value is better (``None`` when neither: the
information-diversity rates describe a simulator's behaviour rather than rank it) and how it
aggregates: ``"mean over episodes"`` (each conversation counts once) or ``"mean over intents"``
(computed per intent from its simulations, then averaged over intents). :data:`SUITE` lists
them in the paper's order followed by the faithfulness flags; :func:`compute_suite` evaluates
any subset.

Per-intent metrics need at least two simulations of an intent; intents with fewer are left out
of them (and a suite with no such intent reports ``None``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Literal

import numpy as np

from userlm_env.metrics.diversity import unigram_difference
from userlm_env.metrics.episode import EpisodeMetricsConfig, EpisodeView, episode_metrics
from userlm_env.metrics.text import unigrams

__all__ = [
    "SUITE",
    "Aggregation",
    "SimulatedEpisode",
    "SuiteMetric",
    "by_intent",
    "compute_suite",
    "format_value",
]

Aggregation = Literal["mean over episodes", "mean over intents"]


@dataclass(frozen=True)
class SimulatedEpisode:
    """One finished conversation as the suite reads it.

    Attributes:
        intent_id: The intent the user pursued.
        task: The task that scored it (``gsm8k``, ``humaneval``...).
        turns: Spoken user turns (user-assistant exchanges).
        solved: Some assistant reply solved the task (Assistant Score).
        words: Lemmatised unigrams of all the user turns (for Unigram Difference).
        metrics: The episode's :func:`~userlm_env.metrics.episode.episode_metrics`.
    """

    intent_id: str
    task: str
    turns: int
    solved: bool
    words: frozenset[str]
    metrics: Mapping[str, Any]

    @classmethod
    def from_view(
        cls, view: EpisodeView, config: EpisodeMetricsConfig | None = None
    ) -> SimulatedEpisode:
        """Compute the per-episode metrics of ``view``."""
        return cls(
            intent_id=view.intent.task_id,
            task=view.intent.task,
            turns=len(view.user_texts),
            solved=view.solved,
            words=unigrams(view.user_texts),
            metrics=episode_metrics(view, config),
        )


@dataclass(frozen=True)
class SuiteMetric:
    """One column of the suite.

    Attributes:
        name: Key in the results (``snake_case``).
        label: Column title, as in the paper.
        higher_is_better: ``True``/``False``, or ``None`` when neither direction is better.
        aggregation: How per-episode or per-intent values become one number.
        compute: Episodes -> value (``None`` when it cannot be computed).
        percent: Shown as a percentage.
    """

    name: str
    label: str
    higher_is_better: bool | None
    aggregation: Aggregation
    compute: Callable[[Sequence[SimulatedEpisode]], Any]
    percent: bool = False


def by_intent(episodes: Iterable[SimulatedEpisode]) -> dict[str, list[SimulatedEpisode]]:
    """Episodes grouped by intent id, in first-seen order."""
    groups: dict[str, list[SimulatedEpisode]] = defaultdict(list)
    for episode in episodes:
        groups[episode.intent_id].append(episode)
    return dict(groups)


def _episode_mean(key: str) -> Callable[[Sequence[SimulatedEpisode]], float | None]:
    """Mean of ``metrics[key]`` over the episodes where it is defined (bools count 0/1)."""

    def compute(episodes: Sequence[SimulatedEpisode]) -> float | None:
        values = [float(e.metrics[key]) for e in episodes if e.metrics.get(key) is not None]
        return fmean(values) if values else None

    return compute


def _assistant_score(episodes: Sequence[SimulatedEpisode]) -> float | None:
    return fmean(1.0 if e.solved else 0.0 for e in episodes) if episodes else None


def _repeated_intents(episodes: Sequence[SimulatedEpisode]) -> list[list[SimulatedEpisode]]:
    return [group for group in by_intent(episodes).values() if len(group) >= 2]


def _turn_variance(episodes: Sequence[SimulatedEpisode]) -> float | None:
    """Mean over intents of the empirical variance (``ddof=0``) of turns per conversation."""
    groups = _repeated_intents(episodes)
    if not groups:
        return None
    return fmean(float(np.var([e.turns for e in group])) for group in groups)


def _turn_range(episodes: Sequence[SimulatedEpisode]) -> tuple[float, float] | None:
    """(mean over intents of the fewest turns, mean over intents of the most turns)."""
    groups = _repeated_intents(episodes)
    if not groups:
        return None
    low = fmean(min(e.turns for e in group) for group in groups)
    high = fmean(max(e.turns for e in group) for group in groups)
    return low, high


def _unigram_difference(episodes: Sequence[SimulatedEpisode]) -> float | None:
    """Mean over intents of ``1 -`` the mean pairwise Jaccard of user-turn unigrams."""
    values = [unigram_difference([e.words for e in g]) for g in _repeated_intents(episodes)]
    kept = [v for v in values if v is not None]
    return fmean(kept) if kept else None


EPISODES: Aggregation = "mean over episodes"
INTENTS: Aggregation = "mean over intents"

#: Table 3 in the paper's order, then the simulator faithfulness flags.
SUITE: tuple[SuiteMetric, ...] = (
    SuiteMetric("intent_coverage", "Intent Coverage", True, EPISODES,
                _episode_mean("intent_coverage"), percent=True),
    SuiteMetric("repeat_required", "%Repeat Required", None, EPISODES,
                _episode_mean("repeat_required"), percent=True),
    SuiteMetric("skip_non_required", "%Skip Non-Required", None, EPISODES,
                _episode_mean("skip_non_required"), percent=True),
    SuiteMetric("add_demands", "%Add Demands", None, EPISODES,
                _episode_mean("add_demands"), percent=True),
    SuiteMetric("turn_variance", "Turn Variance", True, INTENTS, _turn_variance),
    SuiteMetric("turn_range", "Turn Range", None, INTENTS, _turn_range),
    SuiteMetric("unigram_difference", "Unigram Difference", True, INTENTS, _unigram_difference),
    SuiteMetric("assistant_score", "Assistant Score", True, EPISODES, _assistant_score,
                percent=True),
    SuiteMetric("role_break", "%Role Break", False, EPISODES, _episode_mean("role_break"),
                percent=True),
    SuiteMetric("drift", "%Drift", False, EPISODES, _episode_mean("drift"), percent=True),
    SuiteMetric("premature_end", "%Premature End", False, EPISODES,
                _episode_mean("premature_end"), percent=True),
)  # fmt: skip


def compute_suite(
    episodes: Sequence[SimulatedEpisode], metrics: Sequence[SuiteMetric] = SUITE
) -> dict[str, Any]:
    """``{metric name: value}`` over ``episodes`` (values ``None`` where undefined)."""
    return {metric.name: metric.compute(episodes) for metric in metrics}


def format_value(metric: SuiteMetric, value: Any) -> str:
    """A table cell: percentages with one decimal, ranges as ``low-high``, ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:.1f}-{value[1]:.1f}"
    if metric.percent:
        return f"{100.0 * value:.1f}"
    return f"{value:.2f}"
