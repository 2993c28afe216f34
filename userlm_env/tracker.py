"""``EpisodeTracker``: the metrics and ``info`` of the envs, beside the core's transitions.

The core only changes conversation states. What the envs report about them, and everything
that spans episodes, lives here:

* the episode counter per intent (``info["episode_index"]``),
* the user-turn words of finished episodes per intent (``info["diversity"]``),
* the per-step ``info`` dict, and the episode metrics once an episode ends (computed once).

A seeded ``reset`` calls :meth:`forget`, so the same seed gives the same episodes and ``info``.
Rollouts that need no per-step ``info`` use the core alone and compute the episode metrics once
per finished episode (:func:`userlm_env.rollout.record_of`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from userlm_env.core import Transition
from userlm_env.metrics.diversity import EpisodeHistory, diversity_against
from userlm_env.metrics.episode import (
    EpisodeMetricsConfig,
    EpisodeView,
    episode_metrics,
    pace,
    shard_coverage,
)
from userlm_env.metrics.text import unigrams
from userlm_env.types import ConversationState

__all__ = ["EpisodeTracker", "step_info"]


class EpisodeTracker:
    """Counts episodes per intent, remembers finished ones, and builds each step's ``info``.

    Args:
        metrics: Settings of the episode metrics (drift length, the Add Demands detector...).
    """

    def __init__(self, metrics: EpisodeMetricsConfig | None = None) -> None:
        self.metrics = metrics or EpisodeMetricsConfig()
        self.history = EpisodeHistory()
        self._episodes: Counter[str] = Counter()

    def next_index(self, intent_id: str) -> int:
        """How many episodes on ``intent_id`` were started since the last :meth:`forget`."""
        return self._episodes[intent_id]

    def started(self, state: ConversationState) -> None:
        """Count the episode of ``state`` as started."""
        self._episodes[state.intent.intent_id] += 1

    def forget(self) -> None:
        """Forget the counters and the finished episodes (a new seed, a new experiment)."""
        self._episodes.clear()
        self.history.clear()

    def info(self, state: ConversationState, transition: Transition) -> dict[str, Any]:
        """The ``info`` of one step (see :func:`step_info`); an ended episode is remembered."""
        intent_id = state.intent.intent_id
        words = unigrams(t.text for t in state.user_turns)
        info = step_info(state, transition, metrics=self.metrics)
        info["diversity"] = diversity_against(words, self.history.earlier(intent_id))
        if state.over:
            self.history.add(intent_id, words)
        return info


def step_info(
    state: ConversationState,
    transition: Transition,
    *,
    metrics: EpisodeMetricsConfig | None = None,
) -> dict[str, Any]:
    """The ``info`` dict of a step, without ``diversity`` (which needs earlier episodes).

    Keys: ``messages`` (OpenAI chat format, copied), ``user_turns`` (spoken user turns so
    far), ``replies`` (assistant replies so far), ``intent_id``, ``task``, ``episode_index``,
    ``attempted``/``solved``/``score_detail`` (of the reply just scored; ``False``/``False``/
    ``""`` at reset), ``solved_any`` (any reply so far), ``reply_label`` (of the reply just
    scored; ``None`` at reset), ``termination_reason`` (``None`` while running, else
    ``"solved"``, ``"user_ended"`` or ``"max_replies"``), ``revealed_shards`` (sorted ids
    revealed so far), ``coverage`` (their share of the intent's shards), ``user_ended``,
    ``user_turn_metadata`` (of what the user said last, the ending included), ``pace`` (the
    latest user turn: ``user_turn``, ``words``, ``cumulative_words``, ``new_shards``) and, once
    the episode ended, ``episode_metrics`` (see :func:`userlm_env.metrics.episode.episode_metrics`).
    """
    score = transition.score
    revealed = sorted(state.revealed_ids)
    view = EpisodeView.from_state(state)
    info: dict[str, Any] = {
        "messages": [dict(m) for m in state.messages],
        "user_turns": len(state.user_turns),
        "replies": len(state.scores),
        "intent_id": state.intent.intent_id,
        "task": state.intent.task,
        "episode_index": state.episode_index,
        "attempted": bool(score and score.attempted),
        "solved": bool(score and score.solved),
        "score_detail": score.detail if score else "",
        "solved_any": state.solved,
        "reply_label": state.reply_labels[-1] if score else None,
        "termination_reason": state.termination_reason,
        "revealed_shards": revealed,
        "coverage": shard_coverage(state.intent, revealed),
        "user_ended": state.user_ended,
        "user_turn_metadata": dict(state.last_user_turn.metadata),
        "pace": pace(view),
    }
    if state.over:
        info["episode_metrics"] = episode_metrics(view, metrics)
    return info
