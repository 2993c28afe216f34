"""Per-episode metrics and faithfulness flags, with values computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.metrics.data import ScriptedClient
from userlm_env.errors import DataError
from userlm_env.metrics.episode import (
    EpisodeMetricsConfig,
    EpisodeView,
    LexicalDemandDetector,
    LLMDemandJudge,
    RoleBreakDetector,
    drift_run,
    episode_metrics,
    intent_coverage,
    pace,
    premature_end,
    repeat_required,
    skip_non_required,
)
from userlm_env.records import intent_summary
from userlm_env.types import END_MARKER, ConversationState, Intent, Shard, UserTurn


def view(
    intent: Intent,
    revealed: list[tuple[int, ...]],
    texts: list[str] | None = None,
    replies: tuple[str, ...] = (),
    ended: bool = False,
) -> EpisodeView:
    texts = texts or [f"turn {i}" for i in range(1, len(revealed) + 1)]
    return EpisodeView(intent, tuple(texts), tuple(revealed), replies, user_ended=ended)


def test_d3_metrics_by_hand(apples_intent: Intent) -> None:
    # shards 1-4 required, 5 optional; turns reveal {1}, {2, 3}, {2}, {} and the user ends
    episode = view(apples_intent, [(1,), (2, 3), (2,), ()], ended=True)
    assert intent_coverage(episode) == pytest.approx(3 / 5)
    assert repeat_required(episode) is True  # shard 2 in turns 2 and 3
    assert skip_non_required(episode) is True  # shard 5 never revealed
    assert premature_end(episode) is True  # shard 4 still missing
    assert drift_run(episode) == 1


def test_no_repeat_no_skip_and_no_optional_shard(apples_intent: Intent) -> None:
    complete = view(apples_intent, [(1,), (2,), (3, 4), (5,)], ended=True)
    assert (repeat_required(complete), skip_non_required(complete)) == (False, False)
    assert premature_end(complete) is False
    required_only = Intent("gsm8k", "toy/r", "x", (Shard(1, "a"), Shard(2, "b")))
    assert skip_non_required(view(required_only, [(1,)])) is None


def test_optional_repeats_do_not_count_as_repeat_required(apples_intent: Intent) -> None:
    assert repeat_required(view(apples_intent, [(1, 5), (5,)])) is False


def test_drift_counts_only_while_required_shards_are_pending(apples_intent: Intent) -> None:
    # three empty turns with shard 2 pending, then everything, then two nudges
    episode = view(apples_intent, [(1,), (), (), (), (2, 3, 4), (), ()])
    assert drift_run(episode) == 3
    flags = episode_metrics(episode, EpisodeMetricsConfig(drift_turns=3))
    assert flags["drift"] is True and flags["longest_idle_run"] == 3
    assert episode_metrics(episode, EpisodeMetricsConfig(drift_turns=4))["drift"] is False
    nudges_only = view(apples_intent, [(1,), (2,), (3,), (4,), (), (), (), ()])
    assert drift_run(nudges_only) == 0


def test_pace_of_the_latest_turn(apples_intent: Intent) -> None:
    episode = view(apples_intent, [(1,), (1, 2)], texts=["a b c", "d  e"])
    assert pace(episode) == {"user_turn": 2, "words": 2, "cumulative_words": 5, "new_shards": [2]}
    empty = view(apples_intent, [])
    assert pace(empty) == {"user_turn": 0, "words": 0, "cumulative_words": 0, "new_shards": []}


@pytest.mark.parametrize(
    ("text", "novel"),
    [
        ("Sam starts with 12 apples.", False),
        ("That is everything I have. Can you give me your final answer now?", False),
        ("Please lay out the steps in a table with colors", True),  # 3 new content lemmas
        ("Sam also has 3 pears", True),  # a new number
        ("name the result variable 'leftover'", True),  # a new quoted literal
        ("use a table please", False),  # one new word only
        ("I don't think it's right", False),  # apostrophes are not quotes
    ],
)
def test_lexical_add_demands(apples_intent: Intent, text: str, novel: bool) -> None:
    episode = view(apples_intent, [()], texts=[text])
    assert LexicalDemandDetector().novel_turns(episode) == ([1] if novel else [])


def test_add_demands_ignore_what_the_assistant_just_said(apples_intent: Intent) -> None:
    texts = ["Sam starts with 12 apples.", "yes, count the 3 pears too"]
    episode = view(apples_intent, [(2,), ()], texts, replies=("Should I count 3 pears?",))
    assert LexicalDemandDetector().novel_turns(episode) == []
    assert LexicalDemandDetector().novel_turns(view(apples_intent, [(2,), ()], texts)) == [2]


@pytest.mark.parametrize(
    ("text", "broken"),
    [
        ("How many apples are left?", False),
        ("Sure, here is the solution you asked for.", True),
        ("As an AI language model I cannot shop.", True),
        ("Hi there! I'm an AI assistant.", True),
        ("def left(a):\n    return a - 4", True),
        ("```python\nprint(12 + 7 - 4)\n```", True),
        ("I already know it is 15, just checking", True),  # the reference answer
    ],
)
def test_role_breaks(apples_intent: Intent, text: str, broken: bool) -> None:
    assert RoleBreakDetector().breaks_role(text, apples_intent) is broken


def test_role_break_spares_answers_the_assistant_gave_and_pasted_stubs() -> None:
    stub = '```python\ndef add(a, b):\n    """Add two numbers."""\n```'
    code = Intent("humaneval", "toy/add", f"Write add.\n{stub}", (Shard(1, "Write add."),))
    detector = RoleBreakDetector()
    assert detector.breaks_role(f"here is what I have:\n{stub}", code) is False
    math = Intent("gsm8k", "toy/m", "2 + 3?", (Shard(1, "2 + 3?"),), {"answer": "5"})
    episode = view(math, [(1,), ()], ["2 + 3?", "you said 5, right?"], replies=("It is 5.",))
    assert detector.broken_turns(episode) == []
    assert detector.broken_turns(view(math, [(1,), ()], ["2 + 3?", "is it 5?"])) == [2]


def test_episode_metrics_dict(apples_intent: Intent) -> None:
    texts = ["How many apples are left?", "Sam starts with 12 apples.", "As an AI, hi"]
    metrics = episode_metrics(view(apples_intent, [(1,), (2,), ()], texts, ended=True))
    assert metrics == {
        "intent_coverage": pytest.approx(0.4),
        "repeat_required": False,
        "skip_non_required": True,
        "add_demands": False,
        "demand_turns": [],
        "role_break": True,
        "role_break_turns": [3],
        "drift": False,
        "longest_idle_run": 1,
        "premature_end": True,
        "user_turns": 3,
        "user_words": 14,  # 5 + 5 + 4
    }


def test_views_from_states_and_records(apples_intent: Intent) -> None:
    state = ConversationState(intent=apples_intent, seed=0)
    state.user_turns.append(UserTurn("Sam starts with 12 apples."))
    state.ending = UserTurn(END_MARKER, ended=True)
    state.revealed.append((2,))
    state.messages += [
        {"role": "user", "content": "Sam starts with 12 apples."},
        {"role": "assistant", "content": "ok"},
    ]
    from_state = EpisodeView.from_state(state)
    assert from_state.user_texts == ("Sam starts with 12 apples.",)
    assert from_state.user_ended and from_state.assistant_texts == ("ok",)
    record = {
        "key": "toy/apples#0",
        "intent_id": "toy/apples",
        "messages": state.messages,
        "revealed": [[2], []],
        "termination_reason": "user_ended",
        "solved": False,
    }
    assert EpisodeView.from_record(record, apples_intent) == from_state
    carried = {**record, "task": "gsm8k", "intent": intent_summary(apples_intent)}
    view = EpisodeView.from_record(carried)  # the intent the record carries, sans reference
    assert view.user_texts == from_state.user_texts and view.intent.shards == apples_intent.shards
    assert not view.intent.reference
    with pytest.raises(DataError, match="carries no intent"):
        EpisodeView.from_record(record)
    with pytest.raises(DataError, match="not about intent"):
        EpisodeView.from_record({**record, "intent_id": "other"}, apples_intent)
    with pytest.raises(ValueError, match="revealed"):
        EpisodeView(apples_intent, ("a",), ())


def test_llm_demand_judge_validates_and_caches(apples_intent: Intent, tmp_path: Path) -> None:
    episode = view(apples_intent, [(2,), ()], ["Sam starts with 12 apples.", "call it total"])
    good = {"turns": [{"turn": 1, "novel": []}, {"turn": 2, "novel": ["variable named total"]}]}
    client = ScriptedClient(['{"turns": [{"turn": 1}]}', json.dumps(good)])
    assert LLMDemandJudge(client, cache_dir=tmp_path).novel_turns(episode) == [2]
    assert "one entry for each" in client.prompts[1][-1]["content"]
    assert LLMDemandJudge(ScriptedClient([]), cache_dir=tmp_path).novel_turns(episode) == [2]
    with pytest.raises(DataError):
        LLMDemandJudge(ScriptedClient(["{}", "{}"])).novel_turns(episode)
    config = EpisodeMetricsConfig(demands=LLMDemandJudge(ScriptedClient([]), cache_dir=tmp_path))
    assert episode_metrics(episode, config)["add_demands"] is True
