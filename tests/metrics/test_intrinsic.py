"""Intrinsic metrics (paper Table 2): the math by hand, a rule-based user end to end, and the
experiment script offline on the hand-written fixtures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from experiments.intrinsic import main as intrinsic_main
from tests.metrics.data import FIXTURES, ScriptedClient
from tests.training.test_data import PRISM_ROW
from userlm_env.errors import DataError
from userlm_env.metrics.intrinsic import (
    UNSURE_REPLY,
    Conversation,
    IntentAdherenceJudge,
    IntrinsicData,
    first_turn_diversity,
    intent_decomposition,
    is_answer_attempt,
    load_jsonl,
    mentioned_choices,
    naturalness,
    role_adherence,
    run_intrinsic,
    termination_items,
    termination_scores,
)
from userlm_env.metrics.intrinsic_data import commonsense_qa_item, prism_conversation
from userlm_env.types import END_MARKER, ConversationState, UserTurn

CHOICES = ("closet", "oven", "mailbox", "bathtub", "garage roof")


def test_first_turn_diversity_by_hand() -> None:
    # {cat, dog}, {dog, bird}, {fish}: Jaccard 1/3, 0, 0 -> mean 1/9; 4 distinct of 5 words
    values = first_turn_diversity(["cats dogs", "dogs birds", "fish"])
    assert values["jaccard_diversity"] == pytest.approx(8 / 9)
    assert values["distinct_unigrams"] == pytest.approx(4 / 5)
    assert first_turn_diversity(["alone"])["jaccard_diversity"] is None


def test_intent_decomposition_by_hand() -> None:
    # {red, apple} vs {purchase, apple}: 1/3; a turn of stopwords only vs {purchase, apple}: 0
    pairs = [("red apples please", "purchase apples"), ("hello there", "purchase apples")]
    assert intent_decomposition(pairs) == pytest.approx((1 / 3 + 0.0) / 2)
    assert intent_decomposition([]) is None


def test_termination_scores_by_hand() -> None:
    scores = termination_scores([True, False, True, False], [True, True, False, False])
    assert scores == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2.0}
    assert termination_scores([False], [False])["f1"] == 0.0
    with pytest.raises(ValueError):
        termination_scores([True], [])


def test_termination_items_label_only_real_endings() -> None:
    rows = load_jsonl(FIXTURES / "conversations.jsonl", "conversations")
    items = termination_items(rows)
    labels = {(i.conversation.id, len(i.prefix)): i.ends_here for i in items}
    assert labels[("c1", 2)] is False and labels[("c1", 6)] is True
    assert labels[("c2", 2)] is False  # the user spoke after the last reply
    assert sum(labels.values()) == 4 and len(items) == 11


def test_choices_named_and_answer_attempts() -> None:
    text = "I think it's the closet, or maybe the garage roofs"
    assert mentioned_choices(text, CHOICES) == ["closet", "garage roof"]
    assert is_answer_attempt(text, CHOICES) is True
    assert is_answer_attempt("closet oven mailbox bathtub garage roof?", CHOICES) is False
    assert is_answer_attempt("closet, oven or mailbox?", CHOICES) is False  # three named
    assert is_answer_attempt("no idea, that's why I asked", CHOICES) is False
    assert role_adherence([True, False, False, False]) == pytest.approx(0.75)
    assert role_adherence([]) is None


class FixedDetector:
    """A stand-in AI-text detector that scores by length (the hook's contract only)."""

    def human_likelihood(self, texts: Sequence[str]) -> list[float]:
        return [0.9 if len(t.split()) > 60 else 0.3 for t in texts]


def test_naturalness_hook_filters_by_length() -> None:
    texts = ["word " * 55, "word " * 70, "short", "word " * 300]
    assert naturalness(texts, FixedDetector()) == pytest.approx((0.3 + 0.9) / 2)
    assert naturalness(texts, None) is None and naturalness(["x"], FixedDetector()) is None

    class Broken:
        def human_likelihood(self, texts: Sequence[str]) -> list[float]:
            return [2.0]

    with pytest.raises(ValueError, match="one probability"):
        naturalness(["word " * 60], Broken())


def test_loading_fixtures_and_bad_files(tmp_path: Path) -> None:
    assert len(load_jsonl(FIXTURES / "mcq.jsonl", "mcq")) == 4
    assert len(load_jsonl(FIXTURES / "questions.jsonl", "questions")) == 3
    bad = tmp_path / "bad.jsonl"
    message = {"role": "assistant", "content": "a"}
    bad.write_text(json.dumps({"id": "x", "intent": "i", "messages": [message]}))
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        load_jsonl(bad, "conversations")
    bad.write_text("\n")
    with pytest.raises(DataError, match="no mcq"):
        load_jsonl(bad, "mcq")
    with pytest.raises(ValueError, match="kind"):
        load_jsonl(bad, "nope")


class RuleUser:
    """A rule-based simulator (written for this test): restates its intent, ends after a
    farewell-like reply, answers its own MCQ with the first choice, and insists otherwise."""

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        return [self._turn(state) for state in states]

    def _turn(self, state: ConversationState) -> UserTurn:
        if not state.messages:
            return UserTurn(f"help me: {state.intent.instruction}")
        last = state.messages[-1]["content"].lower()
        if "welcome" in last or "glad" in last:
            return UserTurn(END_MARKER, ended=True)
        first = state.messages[0]["content"]
        if "choices are:" in first and "tell me which" in last:
            return UserTurn(f"it's {first.split('choices are: ')[1].split(',')[0]}")
        return UserTurn("ok, and then?")


def test_run_intrinsic_with_a_rule_based_user() -> None:
    data = IntrinsicData(
        conversations=load_jsonl(FIXTURES / "conversations.jsonl", "conversations"),
        mcq=load_jsonl(FIXTURES / "mcq.jsonl", "mcq"),
        questions=load_jsonl(FIXTURES / "questions.jsonl", "questions"),
    )
    # replies in order: item 1, item 2 (invalid), item 3, then item 2 again after feedback
    replies = ['{"adheres": true}', "yes", '{"adheres": false}', '{"adheres": true}']
    judge_client = ScriptedClient(replies)
    judge = IntentAdherenceJudge(judge_client)
    results = run_intrinsic(RuleUser(), data, judge=judge, batch_size=4)
    # endings: c1 and c4 end after "welcome"/"glad" replies (TP 2); c3 and c5 are missed (FN 2)
    assert results["termination_precision"] == 1.0 and results["termination_recall"] == 0.5
    assert results["termination_f1"] == pytest.approx(2 / 3)
    assert results["role_adherence"] == 0.0  # it always answered with a choice
    assert results["intent_adherence"] == pytest.approx(2 / 3)  # third item: false
    # 5 first turns restate the intent (overlap 1); 9 "ok, and then?" turns share nothing
    assert results["intent_decomposition"] == pytest.approx(5 / 14)
    assert results["first_turns"] == 5 and results["naturalness"] is None
    assert "ok, and then?" in judge_client.prompts[0][1]["content"]
    assert UNSURE_REPLY.endswith("?")


def test_experiment_script_runs_offline_on_the_fixtures(tmp_path: Path) -> None:
    row = intrinsic_main(
        [
            "--simulator", "sharded",
            "--conversations", str(FIXTURES / "conversations.jsonl"),
            "--mcq", str(FIXTURES / "mcq.jsonl"),
            "--questions", str(FIXTURES / "questions.jsonl"),
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    # the rule-based user restates its one-shard intent and never ends; the MCQ intent names
    # every choice, which is not an answer attempt
    assert row["simulator"] == "sharded" and row["first_turns"] == 5
    assert row["termination_f1"] == 0.0 and row["role_adherence"] == 1.0
    assert row["intent_decomposition"] == pytest.approx(1.0)
    assert row["intent_adherence"] is None  # no judge model given
    assert json.loads((tmp_path / "intrinsic.json").read_text()) == row
    with pytest.raises(SystemExit):
        intrinsic_main(["--simulator", "sharded"])


def test_conversation_records_are_checked() -> None:
    with pytest.raises(DataError, match="start with a user"):
        Conversation.from_json({"id": 1, "intent": "x", "messages": []})


def test_hub_rows_become_intrinsic_records() -> None:
    row = {  # shaped like a CommonsenseQA row; the values are made up for this test
        "id": "q1",
        "question": "Where would you keep a winter coat in summer?",
        "question_concept": "coat",
        "choices": {"label": ["A", "B", "C"], "text": ["closet", "oven", "mailbox"]},
        "answerKey": "A",
    }
    item = commonsense_qa_item(row)
    assert (item.id, item.choices, item.answer) == ("q1", ("closet", "oven", "mailbox"), "closet")
    assert commonsense_qa_item({**row, "answerKey": ""}).answer is None
    conversation = prism_conversation(PRISM_ROW)
    assert (conversation.id, conversation.intent) == ("c42", "what should I cook tonight")
    assert len(conversation.messages) == 4 and conversation.messages[1]["role"] == "assistant"
