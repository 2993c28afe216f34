"""Hand-made intents and fixture paths shared by the metrics tests (written by us)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from userlm_env.types import Intent, Message, Shard

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pile_intent() -> Intent:
    """A code intent whose shards share many words (a hard case for lexical matching)."""
    return Intent(
        task="humaneval",
        intent_id="toy/pile",
        instruction="Write make_pile(n): a pile of n levels of stones ...",
        shards=(
            Shard(1, "I need a Python function called `make_pile` for a pile of n levels."),
            Shard(2, "The first level has n stones."),
            Shard(3, "The number of stones in the next level is:"),
            Shard(4, "- the next odd number if n is odd."),
            Shard(5, "- the next even number if n is even."),
            Shard(6, "For example:\n>>> make_pile(3)\n[3, 5, 7]", required=False),
        ),
        reference={"entry_point": "make_pile"},
    )


def read_jsonl(name: str) -> list[dict]:
    """The records of a fixture file."""
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@dataclass
class _Config:
    model: str = "scripted-judge"


@dataclass
class _Result:
    text: str


@dataclass
class ScriptedClient:
    """Replays fixed replies; stands in for the LLM client only to produce bad (or exact)
    replies on demand, which the real local model cannot be made to produce reliably."""

    replies: list[str]
    config: _Config = field(default_factory=_Config)
    prompts: list[list[Message]] = field(default_factory=list)

    def chat_many(self, conversations: Sequence[Sequence[Message]], **_: Any) -> list[_Result]:
        self.prompts.extend(list(c) for c in conversations)
        return [_Result(self.replies.pop(0)) for _ in conversations]
