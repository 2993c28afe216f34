"""Hand-made intents and fixture paths shared by the metrics tests (written by us)."""

from __future__ import annotations

import json
from pathlib import Path

from userlm_env.types import Intent, Shard

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pile_intent() -> Intent:
    """A code intent whose shards share many words (a hard case for lexical matching)."""
    return Intent(
        task="humaneval",
        task_id="toy/pile",
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
