"""The Lost-in-Conversation protocol (Laban et al.): one assistant, one set of intents, several
ways of stating them, N runs per intent.

A *setting* is how the intents reach the assistant: the simulator config of a run (``full``: the
fully specified instruction in one turn, ``concat``: every shard at once, ``sharded``: one shard
per turn, an LLM user or a UserLM in its own words). A run's score is
:func:`~userlm_env.metrics.suite.run_score` of its record's ``solved`` flag (1.0 or 0.0, the
Assistant Score's one definition). Per intent ``i`` with run scores ``S_i``:

* ``performance``   ``P_i = mean(S_i)``
* ``aptitude``      ``A_i = percentile(S_i, 90)``
* ``unreliability`` ``U_i = percentile(S_i, 90) - percentile(S_i, 10)``

Percentiles are numpy's default (``method="linear"``): with the ``N`` scores sorted,
``s_0 <= ... <= s_{N-1}``, the ``q``-th percentile sits at position ``h = q / 100 * (N - 1)``
and is ``s_floor(h) + (h - floor(h)) * (s_ceil(h) - s_floor(h))``. With 10 runs, one solved run
gives ``A_i = 0.1`` and one failed run ``U_i = 0.1``; with one run, ``A_i = P_i`` and ``U_i = 0``.

A setting's value is the mean over its intents; its 95% interval is a percentile bootstrap that
resamples intents (:func:`~userlm_env.metrics.suite.bootstrap_ci`). When the same assistant also
ran the ``full`` setting, ``degradation_vs_full`` is the mean over the intents both ran of
``P_i(full) - P_i`` (score points, on the 0-1 scale of ``performance``; positive: a drop) and
``degradation_vs_full_pct`` is 100 times that over the mean ``P_i(full)`` of those intents
(absent when ``full`` solved none of them). Directions and aggregations are declared in
:data:`~userlm_env.metrics.suite.PROTOCOL`. Everything reads records as they were written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import numpy as np

from userlm_env.metrics.suite import PROTOCOL, bootstrap_ci, run_score
from userlm_env.records import latest_by_key

__all__ = [
    "Estimate",
    "ProtocolConfig",
    "degradation",
    "intent_metrics",
    "protocol_rows",
    "run_scores",
    "setting_metrics",
]

Records = Sequence[Mapping[str, Any]]
_PER_INTENT = ("performance", "aptitude", "unreliability")


@dataclass(frozen=True)
class ProtocolConfig:
    """How the protocol's metrics and intervals are computed."""

    aptitude_percentile: float = 90.0  # percentile of an intent's run scores that is its aptitude
    floor_percentile: float = 10.0  # low percentile of unreliability (aptitude minus this one)
    level: float = 0.95  # coverage of the bootstrap intervals
    resamples: int = 2000  # bootstrap resamples of the intents
    seed: int = 0  # seed of the bootstrap's generator
    reference: str = "full"  # the setting degradations are measured against


@dataclass(frozen=True)
class Estimate:
    """A setting's value of one metric with its bootstrap interval.

    Attributes:
        value: The point estimate (mean over intents, or the ratio for the relative drop).
        low: Lower bound of the interval (``nan`` when it cannot be computed).
        high: Upper bound of the interval.
    """

    value: float
    low: float
    high: float


def run_scores(records: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per intent id (first-seen order), the score of each of its runs. The last record of each
    episode key counts; failed episodes (with an ``error``) are no runs."""
    scores: dict[str, list[float]] = defaultdict(list)
    for record in latest_by_key(records):
        if not record.get("error"):
            scores[str(record["intent_id"])].append(run_score(bool(record["solved"])))
    return dict(scores)


def intent_metrics(
    scores: Sequence[float], config: ProtocolConfig | None = None
) -> dict[str, float]:
    """``performance``, ``aptitude`` and ``unreliability`` of one intent's run scores.

    Raises:
        ValueError: ``scores`` is empty.
    """
    if not scores:
        raise ValueError("an intent needs at least one run score")
    config = config or ProtocolConfig()
    high, low = np.percentile(scores, [config.aptitude_percentile, config.floor_percentile])
    return {
        "performance": fmean(scores),
        "aptitude": float(high),
        "unreliability": float(high - low),
    }


def _estimate(values: Sequence[float], config: ProtocolConfig) -> Estimate:
    low, high = bootstrap_ci(
        values, level=config.level, resamples=config.resamples, seed=config.seed
    )
    return Estimate(fmean(values), low, high)


def setting_metrics(records: Records, config: ProtocolConfig | None = None) -> dict[str, Estimate]:
    """``performance``, ``aptitude`` and ``unreliability`` of one setting (``{}`` without runs)."""
    config = config or ProtocolConfig()
    per_intent = [intent_metrics(s, config) for s in run_scores(records).values()]
    if not per_intent:
        return {}
    return {name: _estimate([m[name] for m in per_intent], config) for name in _PER_INTENT}


def _relative_drop(samples: np.ndarray) -> np.ndarray:
    """Per resample of ``(P_full, P)`` pairs: 100 x the drop over the mean ``P_full``."""
    full, mine = samples[..., 0].mean(axis=1), samples[..., 1].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * (full - mine) / full


def degradation(
    records: Records, reference: Records, config: ProtocolConfig | None = None
) -> dict[str, Estimate]:
    """``degradation_vs_full`` (and ``degradation_vs_full_pct`` when the reference solved any
    shared intent) of ``records`` against the ``reference`` setting's records, over the intents
    both ran; ``{}`` when they share none."""
    config = config or ProtocolConfig()
    mine, full = run_scores(records), run_scores(reference)
    pairs = [(fmean(full[i]), fmean(mine[i])) for i in mine if i in full]
    if not pairs:
        return {}
    drop = _estimate([f - m for f, m in pairs], config)
    found = {"degradation_vs_full": drop}
    base = fmean(f for f, _ in pairs)
    if base > 0:
        low, high = bootstrap_ci(
            pairs, level=config.level, resamples=config.resamples, seed=config.seed,
            statistic=_relative_drop,
        )  # fmt: skip
        found["degradation_vs_full_pct"] = Estimate(100.0 * drop.value / base, low, high)
    return found


def _row(
    key: tuple[str, str], records: Records, reference: Records | None, config: ProtocolConfig
) -> dict[str, Any]:
    assistant, setting = key
    scores = run_scores(records)
    row: dict[str, Any] = {
        "assistant": assistant,
        "setting": setting,
        "intents": len(scores),
        "runs": sum(len(s) for s in scores.values()),
    }
    found = setting_metrics(records, config)
    if reference is not None:
        found |= degradation(records, reference, config)
    for metric in PROTOCOL:
        if metric.name in found:
            estimate = found[metric.name]
            row[metric.name] = estimate.value
            row[f"{metric.name}_ci95_low"] = estimate.low
            row[f"{metric.name}_ci95_high"] = estimate.high
    return row


def _order(key: tuple[str, str], reference: str) -> tuple[str, bool, str]:
    return key[0], key[1] != reference, key[1]


def protocol_rows(
    settings: Mapping[tuple[str, str], Records], config: ProtocolConfig | None = None
) -> list[dict[str, Any]]:
    """One row per ``(assistant, setting)``, the reference setting first for each assistant:
    ``assistant``, ``setting``, ``intents``, ``runs``, then each :data:`PROTOCOL` metric with
    ``<name>_ci95_low`` and ``<name>_ci95_high``. The degradation columns appear only where
    the same assistant ran the reference setting."""
    config = config or ProtocolConfig()
    rows = []
    for key in sorted(settings, key=lambda k: _order(k, config.reference)):
        reference = settings.get((key[0], config.reference))
        rows.append(_row(key, settings[key], reference, config))
    return rows
