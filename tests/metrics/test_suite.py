"""The Table 3 suite over episodes, with values computed by hand."""

from __future__ import annotations

import pytest

from userlm_env.metrics.episode import EpisodeView
from userlm_env.metrics.suite import (
    SUITE,
    SimulatedEpisode,
    by_intent,
    compute_suite,
    format_value,
)
from userlm_env.types import Intent

BASE = {
    "intent_coverage": 1.0,
    "repeat_required": False,
    "skip_non_required": None,
    "add_demands": False,
    "role_break": False,
    "drift": False,
    "premature_end": False,
}


def episode(intent: str, turns: int, words: str, solved: bool, **metrics: object):
    return SimulatedEpisode(intent, "gsm8k", turns, solved, frozenset(words), {**BASE, **metrics})


EPISODES = [
    # intent a: turns 2, 4 -> variance 1, range 2-4; words {x,y} vs {y,z} -> Jaccard 1/3
    episode("a", 2, "xy", True, intent_coverage=0.5, repeat_required=True),
    episode("a", 4, "yz", False, skip_non_required=True, role_break=True),
    # intent b: turns 3, 3, 6 -> variance 2, range 3-6; words identical -> Jaccard 1
    episode("b", 3, "q", True, skip_non_required=False, add_demands=True),
    episode("b", 3, "q", True, drift=True),
    episode("b", 6, "q", False, premature_end=True),
    # intent c: a single episode: left out of the per-intent metrics
    episode("c", 9, "r", False),
]


def test_suite_by_hand() -> None:
    values = compute_suite(EPISODES)
    assert values["intent_coverage"] == pytest.approx((0.5 + 5 * 1.0) / 6)
    assert values["repeat_required"] == pytest.approx(1 / 6)
    assert values["skip_non_required"] == pytest.approx(1 / 2)  # 2 episodes define it
    assert values["add_demands"] == pytest.approx(1 / 6)
    assert values["turn_variance"] == pytest.approx((1.0 + 2.0) / 2)
    assert values["turn_range"] == pytest.approx(((2 + 3) / 2, (4 + 6) / 2))
    assert values["unigram_difference"] == pytest.approx(((1 - 1 / 3) + (1 - 1.0)) / 2)
    assert values["assistant_score"] == pytest.approx(3 / 6)
    for flag in ("role_break", "drift", "premature_end"):
        assert values[flag] == pytest.approx(1 / 6)


def test_metrics_declare_direction_and_aggregation() -> None:
    declared = {m.name: (m.higher_is_better, m.aggregation) for m in SUITE}
    assert declared["assistant_score"] == (True, "mean over episodes")
    assert declared["unigram_difference"] == (True, "mean over intents")
    assert declared["repeat_required"] == (None, "mean over episodes")
    assert declared["turn_range"] == (None, "mean over intents")
    assert declared["premature_end"] == (False, "mean over episodes")
    assert len({m.name for m in SUITE}) == len(SUITE) == 12
    assert declared["kept_violations"][0] is False


def test_undefined_values_and_formatting() -> None:
    single = compute_suite(EPISODES[-1:])
    assert single["turn_variance"] is None and single["unigram_difference"] is None
    assert single["skip_non_required"] is None and compute_suite([])["assistant_score"] is None
    metric = {m.name: m for m in SUITE}
    assert format_value(metric["intent_coverage"], 0.8667) == "86.7"
    assert format_value(metric["turn_range"], (2.1, 6.7)) == "2.1-6.7"
    assert format_value(metric["unigram_difference"], 0.714) == "0.71"
    assert format_value(metric["drift"], None) == "-"
    assert list(by_intent(EPISODES)) == ["a", "b", "c"]


def test_episodes_from_views(apples_intent: Intent) -> None:
    view = EpisodeView(apples_intent, ("Sam starts with 12 apples.",), ((2,),), solved=True)
    made = SimulatedEpisode.from_view(view)
    assert (made.intent_id, made.user_turns, made.solved) == ("toy/apples", 1, True)
    assert made.words == {"sam", "start", "with", "12", "apple"}
    assert made.metrics["intent_coverage"] == pytest.approx(0.2)
