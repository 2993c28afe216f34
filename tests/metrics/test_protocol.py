"""The Lost-in-Conversation protocol on constructed run sets, with values computed by hand."""

from __future__ import annotations

from typing import Any

import pytest

from userlm_env.metrics import protocol
from userlm_env.metrics.suite import PROTOCOL, SUITE, SimulatedEpisode, compute_suite

FAST = protocol.ProtocolConfig(resamples=400)


def runs(intent: str, solved: int, total: int, setting: str = "s") -> list[dict[str, Any]]:
    """``total`` records of ``intent``, the first ``solved`` of them solved."""
    return [
        {"key": f"{setting}:{intent}#{k}", "intent_id": intent, "solved": k < solved}
        for k in range(total)
    ]


# intent a: 1 of 10 solved -> P .1, p90 at h = 8.1: 0 + .1 (1 - 0) = .1, p10 at h = .9: 0 -> U .1
# intent b: 9 of 10 solved -> P .9, p90: 1, p10 at h = .9: 0 + .9 (1 - 0) = .9 -> U .1
# intent c: 5 of 10 solved -> P .5, p90: 1, p10: 0 -> U 1
SHARDED = runs("a", 1, 10) + runs("b", 9, 10) + runs("c", 5, 10)
FULL = runs("a", 10, 10, "f") + runs("b", 10, 10, "f") + runs("c", 10, 10, "f")


def test_intent_metrics_use_linear_interpolation() -> None:
    assert protocol.intent_metrics([0.0] * 9 + [1.0]) == pytest.approx(
        {"performance": 0.1, "aptitude": 0.1, "unreliability": 0.1}
    )
    # 4 runs: p90 at h = 2.7 -> 1, p10 at h = .3 -> 0 + .3 (1 - 0) = .3
    assert protocol.intent_metrics([1.0, 0.0, 1.0, 1.0]) == pytest.approx(
        {"performance": 0.75, "aptitude": 1.0, "unreliability": 0.7}
    )
    with pytest.raises(ValueError, match="at least one run"):
        protocol.intent_metrics([])


def test_setting_metrics_by_hand_with_intervals_around_them() -> None:
    found = protocol.setting_metrics(SHARDED, FAST)
    assert found["performance"].value == pytest.approx((0.1 + 0.9 + 0.5) / 3)
    assert found["aptitude"].value == pytest.approx((0.1 + 1.0 + 1.0) / 3)
    assert found["unreliability"].value == pytest.approx((0.1 + 0.1 + 1.0) / 3)
    for estimate in found.values():
        assert estimate.low <= estimate.value <= estimate.high
        assert estimate.low < estimate.high  # the three intents differ


def test_degradation_against_full_by_hand() -> None:
    found = protocol.degradation(SHARDED, FULL, FAST)
    drop = found["degradation_vs_full"]
    assert drop.value == pytest.approx(((1 - 0.1) + (1 - 0.9) + (1 - 0.5)) / 3)
    assert found["degradation_vs_full_pct"].value == pytest.approx(50.0)
    for estimate in found.values():
        assert estimate.low <= estimate.value <= estimate.high
    itself = protocol.degradation(FULL, FULL, FAST)["degradation_vs_full"]
    assert (itself.value, itself.low, itself.high) == (0.0, 0.0, 0.0)


def test_degradation_pairs_shared_intents_only() -> None:
    partial = runs("a", 10, 10, "f") + runs("z", 0, 10, "f")
    found = protocol.degradation(SHARDED, partial, FAST)  # only intent a is shared
    assert found["degradation_vs_full"].value == pytest.approx(0.9)
    assert protocol.degradation(SHARDED, runs("z", 3, 3, "f"), FAST) == {}


def test_one_run_per_intent_and_an_intent_never_solved() -> None:
    single = runs("a", 1, 1) + runs("b", 0, 1)
    found = protocol.setting_metrics(single, FAST)
    assert found["performance"].value == found["aptitude"].value == pytest.approx(0.5)
    assert found["unreliability"].value == 0.0
    never = protocol.setting_metrics(runs("a", 0, 10), FAST)
    for name in ("performance", "aptitude", "unreliability"):
        assert (never[name].value, never[name].low, never[name].high) == (0.0, 0.0, 0.0)
    # a reference that solved nothing has no relative drop
    nothing = protocol.degradation(runs("a", 0, 4), runs("a", 0, 4, "f"), FAST)
    assert set(nothing) == {"degradation_vs_full"}


def test_rows_without_full_carry_no_degradation() -> None:
    settings = {("oracle", "sharded"): SHARDED, ("oracle", "concat"): FULL}
    rows = protocol.protocol_rows(settings, FAST)
    assert [r["setting"] for r in rows] == ["concat", "sharded"]
    for row in rows:
        assert "degradation_vs_full" not in row and "degradation_vs_full_pct" not in row
        assert {"performance", "aptitude", "unreliability"} <= set(row)
        assert row["intents"] == 3 and row["runs"] == 30


def test_rows_with_full_lead_with_it_per_assistant() -> None:
    settings = {
        ("m1", "sharded"): SHARDED,
        ("m1", "full"): FULL,
        ("m2", "sharded"): SHARDED,  # m2 never ran full: no protocol.degradation for it
    }
    rows = protocol.protocol_rows(settings, FAST)
    assert [(r["assistant"], r["setting"]) for r in rows] == [
        ("m1", "full"),
        ("m1", "sharded"),
        ("m2", "sharded"),
    ]
    assert rows[0]["degradation_vs_full"] == 0.0
    assert rows[1]["degradation_vs_full"] == pytest.approx(0.5)
    assert rows[1]["degradation_vs_full_pct"] == pytest.approx(50.0)
    low, high = rows[1]["degradation_vs_full_ci95_low"], rows[1]["degradation_vs_full_ci95_high"]
    assert low <= 0.5 <= high
    assert "degradation_vs_full" not in rows[2]


def test_failed_and_replaced_records() -> None:
    records = runs("a", 1, 2)
    records.append({"key": "s:a#1", "intent_id": "a", "solved": True})  # the retry counts
    records.append({"key": "s:b#0", "intent_id": "b", "solved": False, "error": "timeout"})
    assert protocol.run_scores(records) == {"a": [1.0, 1.0]}


def test_metrics_are_declared() -> None:
    declared = {m.name: (m.higher_is_better, m.aggregation) for m in PROTOCOL}
    assert declared == {
        "performance": (True, "mean over intents"),
        "aptitude": (True, "mean over intents"),
        "unreliability": (False, "mean over intents"),
        "degradation_vs_full": (False, "mean over intents"),
        "degradation_vs_full_pct": (False, "ratio of means over intents"),
    }
    kept = next(m for m in SUITE if m.name == "kept_violations")
    assert (kept.higher_is_better, kept.aggregation) == (False, "share of user turns")


def test_kept_violations_is_a_share_of_user_turns() -> None:
    kept = {"tries": 3, "guardrail_failed": "too_long"}
    first = {"key": "a#0", "intent_id": "a", "task": "gsm8k", "user_turns": 3, "solved": False}
    first["user_turn_metadata"] = [{}, kept, {"tries": 1}, kept]  # the last one is the ending
    second = {"key": "a#1", "intent_id": "a", "task": "gsm8k", "user_turns": 1, "solved": True}
    episodes = [SimulatedEpisode.from_record(r) for r in (first, second)]
    assert [e.kept_violations for e in episodes] == [1, 0]
    assert compute_suite(episodes)["kept_violations"] == pytest.approx(1 / 4)
    unknown = SimulatedEpisode("a", "gsm8k", 2, False, frozenset(), {})
    assert compute_suite([unknown])["kept_violations"] is None
