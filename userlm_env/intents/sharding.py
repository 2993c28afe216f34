"""Rule-based sharders: split a task into atomic shards the simulated user can reveal one by one.

* :func:`shard_math` (:mod:`userlm_env.intents.math_sharding`) splits a word problem into its
  question (shard 1) and its facts.
* :func:`shard_code` and :func:`code_instruction` (:mod:`userlm_env.intents.code_sharding`)
  split a HumanEval-style prompt into purpose, requirements and examples, or phrase it as one
  instruction.
* :mod:`userlm_env.intents.text_units` holds the sentence splitter and merge helpers they share.

Both sharders are deterministic: the same input always yields the same shards.
The LLM-based sharder lives in :mod:`userlm_env.intents.llm_sharder`.
"""

from __future__ import annotations

from userlm_env.intents.code_sharding import code_instruction, shard_code
from userlm_env.intents.math_sharding import (
    is_stray_instruction,
    shard_math,
    split_clause,
    split_phrase,
    strip_stray_instructions,
)
from userlm_env.intents.text_units import MAX_SHARDS, MIN_SHARDS, split_sentences

__all__ = [
    "MAX_SHARDS",
    "MIN_SHARDS",
    "code_instruction",
    "is_stray_instruction",
    "shard_code",
    "shard_math",
    "split_clause",
    "split_phrase",
    "split_sentences",
    "strip_stray_instructions",
]
