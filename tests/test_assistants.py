"""Assistants and reply labels: heuristic and LLM-judge labels, per-row API failures, HF replies."""

from __future__ import annotations

import inspect
import typing

import pytest

from assistants.litellm import LiteLLMAssistant, with_system_prompt
from tests.fault_server import bad_request, running_fault_server
from userlm_env import ConversationEnv
from userlm_env.errors import LLMCallError
from userlm_env.labels import LABELS, HeuristicLabeler, LLMJudgeLabeler, heuristic_label
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.types import Intent, Score

NO = Score(attempted=False, solved=False, reward=0.0)
YES = Score(attempted=True, solved=False, reward=0.0)


@pytest.mark.parametrize(
    ("reply", "score", "label"),
    [
        ("The answer is 17.", YES, "answer_attempt"),
        ("How many apples did Sam start with?", NO, "clarification"),
        ("Could you share the edge cases\nyou care about", NO, "clarification"),
        ("Let us first add the apples he bought, then subtract.", NO, "discussion"),
        ("", NO, "other"),
        ("ok", NO, "other"),
    ],
)
def test_heuristic_labels(reply: str, score: Score, label: str) -> None:
    assert heuristic_label(reply, score) == label


def test_labels_reach_step_info(apples_intent: Intent) -> None:
    env = ConversationEnv(simulator="sharded", intents=[apples_intent])
    _, info = env.reset(seed=0)
    assert info["reply_label"] is None
    assert env.step("Which numbers are involved?")[4]["reply_label"] == "clarification"
    assert env.step("The answer is 99.")[4]["reply_label"] == "answer_attempt"


def test_assistant_messages_are_its_system_prompt_then_the_conversation() -> None:
    messages = with_system_prompt([{"role": "user", "content": "hi"}], "be brief")
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert with_system_prompt([{"role": "user", "content": "hi"}], None) == messages[1:]


def test_assistant_interface_never_carries_the_intent() -> None:
    from userlm_env.protocols import Assistant

    signature = inspect.signature(Assistant.respond)
    assert list(signature.parameters) == ["self", "conversations", "intent_ids", "seeds"]
    hints = typing.get_type_hints(Assistant.respond)
    assert "ConversationState" not in repr(hints) and "Intent" not in repr(hints["conversations"])


def test_a_failed_row_fails_alone() -> None:
    chats = [[{"role": "user", "content": "how many apples are left?"}] for _ in range(3)]
    with running_fault_server() as server:
        server.push([bad_request()])  # a 400 is never retried: exactly one row fails
        assistant = LiteLLMAssistant(
            "openai/local", api_base=server.api_base, api_key="k", concurrency=1
        )
        replies = assistant.respond(chats, seeds=[0, 1, 2])
    failed = [r for r in replies if r.error is not None]
    assert len(failed) == 1 and failed[0].error.startswith(LLMCallError.__name__)
    assert failed[0].text == "" and failed[0].cost is None
    assert sum(bool(r.text) and r.error is None for r in replies) == 2


@pytest.mark.server
def test_llm_judge_labels_come_from_the_label_set(llama_server) -> None:
    client = LLMClient(
        LLMConfig(model=llama_server.model, api_base=llama_server.api_base, api_key="k",
                  max_tokens=8)
    )  # fmt: skip
    labels = LLMJudgeLabeler(client).label_many(
        ["The answer is 4.", "What do you mean?"], [YES, NO]
    )
    assert len(labels) == 2 and set(labels) <= set(LABELS)
    assert HeuristicLabeler().label_many(["x"], [NO]) == ["other"]


@pytest.mark.slow
def test_hf_assistant_replies_in_a_batch() -> None:
    from assistants.hf import HFAssistant

    assistant = HFAssistant(max_new_tokens=12)
    chats = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "user", "content": "Write a haiku about cats."}],
    ]
    replies = assistant.respond(chats)
    assert len(replies) == 2 and all(r.text.strip() and r.cost == 0.0 for r in replies)
    assert assistant.respond(chats) == replies  # greedy by default: deterministic
    sampling = HFAssistant(max_new_tokens=12, temperature=1.0)
    alone = sampling.respond(chats[:1], seeds=[5])[0]
    assert sampling.respond(chats, seeds=[5, 9])[0] == alone  # a row's own seed decides it
