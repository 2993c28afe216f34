"""Tests of LLM-written intents (userlm_env.training.intents).

The prompt, normalisation and cache are checked offline; generation runs against the real local
llama.cpp server (the embedded SmolLM2 model), whose answers are not judged, only normalised and
cached. A scripted client stands in only for a failed request, which the server cannot produce.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.server_fixtures import LlamaServer
from userlm_env.errors import LLMCallError
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.training.data import Conversation
from userlm_env.training.intents import (
    FEW_SHOT,
    INTENT_PREFIX,
    IntentCache,
    IntentConfig,
    generate_intents,
    intent_messages,
    normalise_intent,
    render_conversation,
)


@pytest.mark.parametrize(
    ("raw", "expected_rest"),
    [
        (f"{INTENT_PREFIX} plan a garden.", "plan a garden."),
        (f"  \n{INTENT_PREFIX.upper()} plan a garden.\nextra line", "plan a garden."),
        ('Intent: "The user wants to plan a garden."', "plan a garden."),
        ("Summary: to plan a garden", "plan a garden"),
        ("**Plan a garden for spring**", "plan a garden for spring"),
        ("The person is trying to fix an SQL query", "fix an SQL query"),
        ("SQL help with joins", "SQL help with joins"),
    ],
)
def test_normalise_intent(raw: str, expected_rest: str) -> None:
    assert normalise_intent(raw) == f"{INTENT_PREFIX} {expected_rest}"


@pytest.mark.parametrize("raw", ["", "  \n ", "Intent:", f"{INTENT_PREFIX}", '""'])
def test_empty_answers_are_rejected(raw: str) -> None:
    with pytest.raises(ValueError, match="no intent"):
        normalise_intent(raw)


def test_prompt_is_instruction_three_shots_and_query(conversations: list[Conversation]) -> None:
    messages = intent_messages(conversations[0], IntentConfig())
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert INTENT_PREFIX in messages[0]["content"]
    assert all(m["content"].startswith(INTENT_PREFIX) for m in messages[2:7:2])
    assert "boil eggs for soft yolks" in messages[-1]["content"]
    assert len(FEW_SHOT) == 3
    assert not any(word in str(messages) for word in ("Algeria", "allertine", "Einstein"))


def test_rendering_clips_messages_and_conversations(conversations: list[Conversation]) -> None:
    config = IntentConfig(max_message_chars=20, max_conversation_chars=60)
    text = render_conversation(conversations[1].messages, config)
    lines = text.splitlines()
    assert lines[0] == "USER: my tomato seedlings…"
    assert lines[-1].startswith("[... ") and lines[-1].endswith("more messages]")
    assert all(len(line) <= len("ASSISTANT: ") + 20 for line in lines[:-1])


def test_cache_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "intents.jsonl"
    IntentCache(path).add(
        [("k1", "c1", f"{INTENT_PREFIX} a."), ("k2", "c2", f"{INTENT_PREFIX} b.")]
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "k3", "conv')  # a write cut off by a crash
    cache = IntentCache(path)
    assert cache.get("k2") == f"{INTENT_PREFIX} b." and cache.get("k3") is None


@dataclass
class _Answer:
    text: str


class _FlakyClient:
    """Answers every request except those about "FAIL-ME", which fail (a fault)."""

    def __init__(self) -> None:
        self.config = LLMConfig(model="scripted/flaky")
        self.requests = 0

    def chat_many(self, conversations: list[Any], **_: Any) -> list[Any]:
        self.requests += len(conversations)
        return [
            LLMCallError("server gone", attempts=5)
            if "FAIL-ME" in prompt[-1]["content"]
            else _Answer("Get some help.")
            for prompt in conversations
        ]


def test_failures_raise_after_caching_the_rest(
    tmp_path: Path, conversations: list[Conversation]
) -> None:
    doomed = ({"role": "user", "content": "FAIL-ME please"},)
    todo = [c for c in conversations if c.intent is None]
    todo.append(Conversation("x1", "u", "Peru", "English", doomed))
    config = IntentConfig(cache_path=str(tmp_path / "cache.jsonl"))
    with pytest.raises(LLMCallError, match="no intent for 1 conversations"):
        generate_intents(todo, _FlakyClient(), config)
    client = _FlakyClient()
    config.skip_failed = True
    result, report = generate_intents(todo, client, config)
    assert (report.cached, report.generated, report.failed) == (1, 0, ("x1",))
    assert client.requests == 1  # only the failed one was asked again
    assert result[0].intent == f"{INTENT_PREFIX} get some help." and result[1].intent is None


@pytest.mark.server
def test_intents_from_llama_server_are_cached(
    llama_server: LlamaServer, tmp_path: Path, conversations: list[Conversation]
) -> None:
    # syn-001 keeps its intent; syn-002 (intent removed) and syn-007 (none) need one
    sample = [conversations[0], replace(conversations[1], intent=None), conversations[6]]
    server = llama_server
    client = LLMClient(LLMConfig(server.model, api_base=server.api_base, api_key=server.api_key))
    config = IntentConfig(cache_path=str(tmp_path / "intents.jsonl"), max_tokens=40, batch_size=2)
    result, report = generate_intents(sample, client, config)
    assert (report.preset, report.cached, report.generated, report.failed) == (1, 0, 2, ())
    assert result[0].intent == conversations[0].intent
    assert all(c.intent and c.intent.startswith(f"{INTENT_PREFIX} ") for c in result)
    calls = client.stats.calls
    again, report = generate_intents(sample, client, config)
    assert (report.cached, report.generated) == (2, 0)
    assert client.stats.calls == calls  # the second run made no request
    assert [c.intent for c in again] == [c.intent for c in result]
