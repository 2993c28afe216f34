"""Metrics of one simulated conversation (paper appendix D.3) and simulator faithfulness flags.

An :class:`~userlm_env.metrics.view.EpisodeView` is what every metric reads: the intent, the
spoken user turns, the shard ids each turn revealed, the assistant replies and how the episode
ended. The Add Demands and Role Break detectors live in :mod:`userlm_env.metrics.detectors`;
this module re-exports them with the view, so the metrics' settings come from one place.

Per-episode metrics: Intent Coverage, Repeat Required, Skip Non-Required (``None`` when the
intent has no non-required shard), Add Demands (novel information beyond the intent, found by a
:class:`DemandDetector`: lexical by default, an LLM judge optionally). Faithfulness flags:

* ``role_break``: a user turn reads like the assistant's (assistant boilerplate, a solution
  in code, or the reference answer the user is not supposed to know).
* ``drift``: ``drift_turns`` consecutive user turns reveal no shard while a required shard is
  still unrevealed (turns after every required shard is out, such as requests for the final
  answer, never count).
* ``premature_end``: the user ended the conversation before every required shard was out.

:func:`pace` describes one user turn (its length and the shards it newly revealed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from userlm_env.metrics.detectors import (
    DemandDetector,
    LexicalDemandDetector,
    LLMDemandJudge,
    RoleBreakDetector,
)
from userlm_env.metrics.text import word_count
from userlm_env.metrics.view import EpisodeView, intent_of_record
from userlm_env.types import Intent

__all__ = [
    "DemandDetector",
    "EpisodeMetricsConfig",
    "EpisodeView",
    "LLMDemandJudge",
    "LexicalDemandDetector",
    "RoleBreakDetector",
    "drift_run",
    "episode_metrics",
    "intent_coverage",
    "intent_of_record",
    "pace",
    "premature_end",
    "repeat_required",
    "shard_coverage",
    "skip_non_required",
]


# --------------------------------------------------------------------------- D.3 metrics


def shard_coverage(intent: Intent, revealed: Iterable[int]) -> float:
    """Share of ``intent``'s shards among the ``revealed`` shard ids (ids it does not have do
    not count). The one definition of coverage: the env's ``info``, the records and the
    suite all use it."""
    known = {s.id for s in intent.shards}
    return len(known.intersection(revealed)) / len(known)


def intent_coverage(view: EpisodeView) -> float:
    """Share of the intent's shards revealed at least once (paper eq. 1)."""
    return shard_coverage(view.intent, view.revealed_ids())


def repeat_required(view: EpisodeView) -> bool:
    """Some required shard was revealed in two or more user turns (paper eq. 2)."""
    turns_per_shard = Counter(i for ids in view.revealed for i in set(ids))
    return any(turns_per_shard[i] >= 2 for i in view.intent.required_ids)


def skip_non_required(view: EpisodeView) -> bool | None:
    """Some non-required shard was never revealed (eq. 3); ``None`` when there is none."""
    optional = {s.id for s in view.intent.shards if not s.required}
    if not optional:
        return None
    return not optional <= view.revealed_ids()


def premature_end(view: EpisodeView) -> bool:
    """The user ended the conversation while a required shard was still unrevealed."""
    return view.user_ended and not view.intent.required_ids <= view.revealed_ids()


def drift_run(view: EpisodeView) -> int:
    """Longest run of consecutive user turns that revealed nothing while a required shard
    was still unrevealed."""
    pending, run, longest = set(view.intent.required_ids), 0, 0
    for ids in view.revealed:
        run = run + 1 if not ids and pending else 0
        longest = max(longest, run)
        pending -= set(ids)
    return longest


def pace(view: EpisodeView) -> dict[str, Any]:
    """The latest user turn: its index, its words, the user's words so far, new shard ids."""
    if not view.user_texts:
        return {"user_turn": 0, "words": 0, "cumulative_words": 0, "new_shards": []}
    before = frozenset(i for ids in view.revealed[:-1] for i in ids)
    return {
        "user_turn": len(view.user_texts),
        "words": word_count(view.user_texts[-1]),
        "cumulative_words": sum(word_count(t) for t in view.user_texts),
        "new_shards": sorted(set(view.revealed[-1]) - before),
    }


# --------------------------------------------------------------------------- all together


@dataclass(frozen=True)
class EpisodeMetricsConfig:
    """Settings of :func:`episode_metrics` (and of the per-step ``info`` of the envs)."""

    drift_turns: int = 3  # consecutive shard-less turns (required shards pending) that drift
    demands: DemandDetector = field(default_factory=LexicalDemandDetector)  # Add Demands
    role: RoleBreakDetector = field(default_factory=RoleBreakDetector)  # role-break finder

    def __post_init__(self) -> None:
        if self.drift_turns < 1:
            raise ValueError(f"drift_turns must be >= 1, got {self.drift_turns}")


def episode_metrics(
    view: EpisodeView, config: EpisodeMetricsConfig | None = None
) -> dict[str, Any]:
    """Every per-episode metric and flag of ``view`` as a JSON-ready dict."""
    config = config or EpisodeMetricsConfig()
    demand_turns = config.demands.novel_turns(view)
    broken = config.role.broken_turns(view)
    idle = drift_run(view)
    return {
        "intent_coverage": intent_coverage(view),
        "repeat_required": repeat_required(view),
        "skip_non_required": skip_non_required(view),
        "add_demands": bool(demand_turns),
        "demand_turns": demand_turns,
        "role_break": bool(broken),
        "role_break_turns": broken,
        "drift": idle >= config.drift_turns,
        "longest_idle_run": idle,
        "premature_end": premature_end(view),
        "user_turns": len(view.user_texts),
        "user_words": sum(word_count(t) for t in view.user_texts),
    }
