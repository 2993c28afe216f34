"""Shard matchers: the lexical default on hand cases, sharded conversations and paraphrases;
the LLM judge's validator, retries and cache (scripted client), and its HTTP path."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from simulators.sharded import ShardedSimulator
from tests.conftest import GSM8K_TEST
from tests.fault_server import FaultServer
from tests.metrics.data import ScriptedClient, pile_intent, read_jsonl
from tests.server_fixtures import LlamaServer
from userlm_env.errors import DataError
from userlm_env.intents import load_gsm8k_jsonl, load_humaneval
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.metrics.shards import (
    LabelledTurn,
    LexicalShardMatcher,
    LLMJudgeShardMatcher,
    match_turns,
    matcher_scores,
    validate_judgement,
)
from userlm_env.types import ConversationState, Intent

# --------------------------------------------------------------------------- lexical


def test_lexical_matcher_on_hand_turns(apples_intent: Intent) -> None:
    matcher = LexicalShardMatcher()
    assert matcher.match("Sam starts with 12 apples.", apples_intent) == (2,)
    assert matcher.match("so sam had twelve apples and bought 7 more", apples_intent) == (2, 3)
    assert matcher.match("How many apples are left for Sam?", apples_intent) == (1,)
    assert matcher.match("That is all I know, what do you think?", apples_intent) == ()
    assert matcher.match("Give me a whole number as the answer", apples_intent) == (5,)
    assert matcher.match("He gives 5 apples away.", apples_intent) == ()  # wrong number


def test_greedy_explanation_keeps_only_the_shard_that_brings_new_evidence() -> None:
    intent, matcher = pile_intent(), LexicalShardMatcher()
    assert matcher.match("- the next odd number if n is odd.", intent) == (4,)
    assert matcher.match("when n is even, the next level gets the next even number", intent) == (5,)
    assert matcher.match("e.g. make_pile(3) returns [3, 5, 7]", intent) == (6,)


def test_matcher_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        LexicalShardMatcher(threshold=0.0)
    with pytest.raises(ValueError, match="min_new"):
        LexicalShardMatcher(min_new=1.5)


def sharded_turns(intents: Sequence[Intent]) -> list[LabelledTurn]:
    """Every turn of the rule-based simulator (each shard once, then one nudge)."""
    simulator, turns = ShardedSimulator(), []
    for intent in intents:
        state = ConversationState(intent=intent, seed=0)
        while True:
            turn = simulator.respond([state])[0]
            state.user_turns.append(turn)
            state.revealed.append(tuple(turn.shard_ids or ()))
            turns.append(LabelledTurn(intent, turn.text, tuple(turn.shard_ids or ())))
            if not turn.shard_ids:
                break
    return turns


def test_lexical_matcher_recovers_sharded_turns_on_all_humaneval_and_300_gsm8k() -> None:
    intents = load_humaneval() + load_gsm8k_jsonl(GSM8K_TEST, limit=300)
    turns = sharded_turns(intents)
    scores = matcher_scores(LexicalShardMatcher(), turns)
    assert len(intents) == 464 and scores.turns > 2000
    assert scores.f1 >= 0.95, scores
    assert scores.precision >= 0.95 and scores.recall >= 0.95


def test_paraphrase_f1_on_hand_written_turns() -> None:
    intents = {i.intent_id: i for i in load_humaneval() + load_gsm8k_jsonl(GSM8K_TEST, limit=10)}
    rows = read_jsonl("paraphrased_turns.jsonl")
    assert all("hand-written" in row["written_by"] for row in rows)
    turns = [LabelledTurn(intents[r["intent_id"]], r["text"], tuple(r["shard_ids"])) for r in rows]
    scores = matcher_scores(LexicalShardMatcher(), turns)
    assert scores.turns == 32
    assert scores.f1 >= 0.9, scores  # measured 0.94: lexical overlap misses some rewordings


def test_matcher_scores_counts_pairs(apples_intent: Intent) -> None:
    class Fixed:
        def match(self, turn: str, intent: Intent) -> tuple[int, ...]:
            return (1, 2)

    turns = [LabelledTurn(apples_intent, "x", (1,)), LabelledTurn(apples_intent, "y", ())]
    scores = matcher_scores(Fixed(), turns)  # 1 hit of 4 found, 1 true
    assert (scores.precision, scores.recall) == (0.25, 1.0)
    assert scores.f1 == pytest.approx(0.4)
    with pytest.raises(ValueError):
        matcher_scores(Fixed(), [])


# --------------------------------------------------------------------------- LLM judge


def test_validator_accepts_well_formed_replies() -> None:
    reply = {"turns": [{"turn": 2, "shards": [3, 1, 3]}, {"turn": 1, "shards": []}]}
    assert validate_judgement(reply, 2, [1, 2, 3]) == [(), (1, 3)]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"turn": []}, "must be a list"),
        ({"turns": [{"turn": 1, "shards": [1]}]}, "missing"),
        ({"turns": [{"turn": 1, "shards": [1]}, {"turn": 1, "shards": []}]}, "twice"),
        ({"turns": [{"turn": 1, "shards": [9]}, {"turn": 2, "shards": []}]}, "unknown shard"),
        ({"turns": [{"turn": True, "shards": []}, {"turn": 2, "shards": []}]}, "integer"),
        ({"turns": [{"turn": 1, "shards": "1"}, {"turn": 2, "shards": []}]}, "list of integers"),
        ({"turns": [{"turn": 3, "shards": []}, {"turn": 2, "shards": []}]}, "from 1 to 2"),
    ],
)
def test_validator_rejects_malformed_replies(reply: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        validate_judgement(reply, 2, [1, 2, 3])


GOOD = json.dumps({"turns": [{"turn": 1, "shards": [2]}, {"turn": 2, "shards": [3, 4]}]})
TURNS = ["Sam starts with 12 apples", "then he buys 7 and gives 4 away"]


def test_judge_retries_with_feedback_then_caches(apples_intent: Intent, tmp_path: Path) -> None:
    client = ScriptedClient(["not json at all", f"```json\n{GOOD}\n```"])
    judge = LLMJudgeShardMatcher(client, cache_dir=tmp_path)
    assert judge.match_turns(TURNS, apples_intent) == [(2,), (3, 4)]
    assert len(client.prompts) == 2 and "invalid" in client.prompts[1][-1]["content"]
    assert "[5] Answer with a whole number." in client.prompts[0][1]["content"]
    again = LLMJudgeShardMatcher(ScriptedClient([]), cache_dir=tmp_path)  # no reply left
    assert match_turns(again, TURNS, apples_intent) == [(2,), (3, 4)]
    assert again.match(TURNS[0], apples_intent) == (2,)  # per-turn cache entries


def test_judge_gives_up_with_a_typed_error(apples_intent: Intent) -> None:
    client = ScriptedClient(['{"turns": []}', '{"turns": 3}'])
    with pytest.raises(DataError, match="after 2 tries"):
        LLMJudgeShardMatcher(client).match_turns(TURNS, apples_intent)


@pytest.mark.slow  # imports LiteLLM (seconds)
def test_judge_over_http_reports_unusable_replies(
    fault_server: FaultServer, apples_intent: Intent
) -> None:
    config = LLMConfig(model="openai/judge", api_base=fault_server.api_base, api_key="k")
    judge = LLMJudgeShardMatcher(LLMClient(config), max_tries=2)
    with pytest.raises(DataError, match="no JSON object"):
        judge.match_turns(TURNS, apples_intent)  # the fault server echoes plain text
    assert len(fault_server.requests) == 2
    assert "invalid" in fault_server.requests[1].body["messages"][-1]["content"]


@pytest.mark.server
def test_judge_on_the_local_model_returns_labels_or_a_typed_error(
    llama_server: LlamaServer, apples_intent: Intent
) -> None:
    config = LLMConfig(
        model=llama_server.model, api_base=llama_server.api_base, api_key=llama_server.api_key,
        temperature=0.0, max_tokens=80,
    )  # fmt: skip
    client = LLMClient(config)
    try:
        labels = LLMJudgeShardMatcher(client).match_turns(TURNS, apples_intent)
    except DataError as error:  # a 135M model rarely writes the JSON asked for
        assert "after 2 tries" in str(error)
    else:
        assert len(labels) == 2 and all(set(ids) <= {1, 2, 3, 4, 5} for ids in labels)
    assert client.stats.calls >= 1 and client.stats.failures == 0
