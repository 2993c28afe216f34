"""The metric suite: the paper's Table 3 over many episodes, and the score table of a run.

Each metric declares (:class:`MetricDeclaration`) whether a higher value is better (``None``
when neither: the information-diversity rates describe a simulator's behaviour rather than rank
it) and how it aggregates: ``"mean over episodes"`` (each conversation counts once), ``"mean over
intents"`` (computed per intent from its simulations, then averaged over intents), ``"share of
user turns"`` (each user turn counts once) or ``"ratio of means over intents"``. :data:`SUITE`
lists the :class:`SuiteMetric` s in the paper's order followed by the faithfulness flags (the
last one, ``kept_violations``, is the share of user turns a simulator kept although they broke
a guardrail after every try); :func:`compute_suite` evaluates any subset. :data:`PROTOCOL`
declares the Lost-in-Conversation protocol's metrics, which
:mod:`userlm_env.metrics.protocol` computes with bootstrap intervals.

Per-intent metrics need at least two simulations of an intent; intents with fewer are left out
of them (and a suite with no such intent reports ``None``).

:func:`score_rows` is the table the ``simulate`` and ``score`` entry points print and the report
extends: per task and overall, episodes, failures, the Assistant Score (the one definition,
:func:`assistant_score` over :func:`run_score`, shared with the suite and the protocol) with a
bootstrap 95% interval (:func:`bootstrap_ci`, the one bootstrap), mean user turns,
mean coverage, answer attempts and cost. Everything here reads records as they were written;
nothing is recomputed from the conversations except the words behind Unigram Difference.
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
from userlm_env.records import latest_by_key

__all__ = [
    "PROTOCOL",
    "SUITE",
    "Aggregation",
    "MetricDeclaration",
    "SimulatedEpisode",
    "SuiteMetric",
    "assistant_score",
    "bootstrap_ci",
    "by_intent",
    "compute_suite",
    "format_table",
    "format_value",
    "run_score",
    "score_rows",
]

Aggregation = Literal[
    "mean over episodes", "mean over intents", "share of user turns", "ratio of means over intents"
]


@dataclass(frozen=True)
class SimulatedEpisode:
    """One finished conversation as the suite reads it.

    Attributes:
        intent_id: The intent the user pursued.
        task: The task that scored it (``gsm8k``, ``humaneval``...).
        user_turns: Spoken user turns.
        solved: Some assistant reply solved the task (Assistant Score).
        words: Lemmatised unigrams of all the user turns (for Unigram Difference).
        metrics: The episode's :func:`~userlm_env.metrics.episode.episode_metrics`.
        kept_violations: User turns the simulator kept although they broke a guardrail after
            every try (``None`` when unknown: a view carries no simulator metadata).
    """

    intent_id: str
    task: str
    user_turns: int
    solved: bool
    words: frozenset[str]
    metrics: Mapping[str, Any]
    kept_violations: int | None = None

    @classmethod
    def from_view(
        cls, view: EpisodeView, config: EpisodeMetricsConfig | None = None
    ) -> SimulatedEpisode:
        """Compute the per-episode metrics of ``view``."""
        return cls(
            intent_id=view.intent.intent_id,
            task=view.intent.task,
            user_turns=len(view.user_texts),
            solved=view.solved,
            words=unigrams(view.user_texts),
            metrics=episode_metrics(view, config),
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SimulatedEpisode:
        """The episode of a ``results.jsonl`` record, with the metrics it stored."""
        users = [m["content"] for m in record.get("messages") or [] if m.get("role") == "user"]
        return cls(
            intent_id=str(record["intent_id"]),
            task=str(record["task"]),
            user_turns=int(record["user_turns"]),
            solved=bool(record["solved"]),
            words=unigrams(users),
            metrics=dict(record.get("metrics") or {}),
            kept_violations=kept_violations(record),
        )


def kept_violations(record: Mapping[str, Any]) -> int:
    """User turns of ``record`` whose simulator metadata names a ``guardrail_failed`` rule (the
    metadata entry of the user's ending, which is no turn, does not count)."""
    metadata = list(record.get("user_turn_metadata") or [])[: int(record["user_turns"])]
    return sum(1 for meta in metadata if isinstance(meta, Mapping) and meta.get("guardrail_failed"))


@dataclass(frozen=True)
class MetricDeclaration:
    """What a metric is: its name, its direction and how it aggregates.

    Attributes:
        name: Key in the results (``snake_case``).
        label: Column title, as in the paper.
        higher_is_better: ``True``/``False``, or ``None`` when neither direction is better.
        aggregation: How per-episode, per-turn or per-intent values become one number.
    """

    name: str
    label: str
    higher_is_better: bool | None
    aggregation: Aggregation


@dataclass(frozen=True)
class SuiteMetric(MetricDeclaration):
    """One column of the suite: a declaration and how to compute it from episodes.

    Attributes:
        compute: Episodes -> value (``None`` when it cannot be computed).
        percent: Shown as a percentage.
    """

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


def run_score(solved: bool) -> float:
    """The score of one episode (a run): 1.0 when some reply solved the task, else 0.0."""
    return 1.0 if solved else 0.0


def assistant_score(solved: Iterable[bool]) -> float | None:
    """Share of episodes in which some reply solved the task (``None`` for none): the one
    definition of the Assistant Score, the mean :func:`run_score`."""
    values = [run_score(s) for s in solved]
    return fmean(values) if values else None


def _assistant_score(episodes: Sequence[SimulatedEpisode]) -> float | None:
    return assistant_score(e.solved for e in episodes)


def _repeated_intents(episodes: Sequence[SimulatedEpisode]) -> list[list[SimulatedEpisode]]:
    return [group for group in by_intent(episodes).values() if len(group) >= 2]


def _turn_variance(episodes: Sequence[SimulatedEpisode]) -> float | None:
    """Mean over intents of the empirical variance (``ddof=0``) of turns per conversation."""
    groups = _repeated_intents(episodes)
    if not groups:
        return None
    return fmean(float(np.var([e.user_turns for e in group])) for group in groups)


def _turn_range(episodes: Sequence[SimulatedEpisode]) -> tuple[float, float] | None:
    """(mean over intents of the fewest turns, mean over intents of the most turns)."""
    groups = _repeated_intents(episodes)
    if not groups:
        return None
    low = fmean(min(e.user_turns for e in group) for group in groups)
    high = fmean(max(e.user_turns for e in group) for group in groups)
    return low, high


def _unigram_difference(episodes: Sequence[SimulatedEpisode]) -> float | None:
    """Mean over intents of ``1 -`` the mean pairwise Jaccard of user-turn unigrams."""
    values = [unigram_difference([e.words for e in g]) for g in _repeated_intents(episodes)]
    kept = [v for v in values if v is not None]
    return fmean(kept) if kept else None


def _kept_violations(episodes: Sequence[SimulatedEpisode]) -> float | None:
    """Kept guardrail violations over user turns, pooled over the episodes that know them."""
    known = [e for e in episodes if e.kept_violations is not None]
    turns = sum(e.user_turns for e in known)
    return sum(e.kept_violations or 0 for e in known) / turns if turns else None


EPISODES: Aggregation = "mean over episodes"
INTENTS: Aggregation = "mean over intents"
TURNS: Aggregation = "share of user turns"
RATIO: Aggregation = "ratio of means over intents"

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
    SuiteMetric("kept_violations", "%Kept Violations", False, TURNS, _kept_violations,
                percent=True),
)  # fmt: skip

#: The Lost-in-Conversation protocol over N runs per intent, computed with bootstrap intervals
#: by :mod:`userlm_env.metrics.protocol`; the degradations compare a setting with ``full``.
PROTOCOL: tuple[MetricDeclaration, ...] = (
    MetricDeclaration("performance", "Performance", True, INTENTS),
    MetricDeclaration("aptitude", "Aptitude (p90)", True, INTENTS),
    MetricDeclaration("unreliability", "Unreliability (p90-p10)", False, INTENTS),
    MetricDeclaration("degradation_vs_full", "Degradation vs FULL", False, INTENTS),
    MetricDeclaration("degradation_vs_full_pct", "Degradation vs FULL (%)", False, RATIO),
)


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


# --------------------------------------------------------------------------- score table


Statistic = Callable[[np.ndarray], np.ndarray]


def _mean_of_rows(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1)


def bootstrap_ci(
    values: Sequence[float] | Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    statistic: Statistic = _mean_of_rows,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of ``values`` (``nan`` bounds when empty).

    Args:
        values: One value per unit (an episode, an intent), or one tuple per unit when a unit
            carries paired values; units are resampled with replacement, tuples whole.
        level: Coverage of the interval.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling generator.
        statistic: Resampled data, shape ``(resamples, units, ...)`` -> one value per resample;
            the mean over units by default. Resamples where it is not finite are left out.
    """
    if not len(values):
        return float("nan"), float("nan")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    stats = statistic(data[rng.integers(0, len(data), size=(resamples, len(data)))])
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def score_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per task, and overall when there are several: episodes, failed, Assistant Score with
    its 95% bootstrap interval, mean user turns, mean coverage, answer attempts per episode and
    total cost (``None`` if any cost is unknown). The last record of each key counts."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in latest_by_key(records):
        by_task[record["task"]].append(record)
    groups = sorted(by_task.items())
    if len(groups) > 1:
        groups.append(("all", [r for _, group in groups for r in group]))
    return [_score_row(task, group) for task, group in groups]


def _score_row(task: str, group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r for r in group if not r.get("error")]
    solved = [run_score(r["solved"]) for r in ok]
    low, high = bootstrap_ci(solved)
    costs = [r.get("cost") for r in ok]
    score = assistant_score(r["solved"] for r in ok)
    return {
        "task": task,
        "episodes": len(group),
        "failed": len(group) - len(ok),
        "assistant_score": float("nan") if score is None else score,
        "ci95_low": low,
        "ci95_high": high,
        "mean_user_turns": _mean(r["user_turns"] for r in ok),
        "mean_coverage": _mean(r["coverage"] for r in ok),
        "attempts_per_episode": _mean(r["attempts"] for r in ok),
        "cost_usd": _total(costs),
    }


def _total(costs: Sequence[float | None]) -> float | None:
    """The sum of ``costs``; ``None`` when any of them is unknown."""
    known = [c for c in costs if c is not None]
    return float(sum(known)) if len(known) == len(costs) else None


def _mean(values: Iterable[float]) -> float:
    kept = list(values)
    return fmean(kept) if kept else float("nan")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of ``rows`` (floats with 3 decimals, ``None`` as ``unknown``)."""
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
