"""Intents: the tasks a simulated user pursues, as fully specified instructions plus shards.

* :mod:`~userlm_env.intents.sources`: loaders for HumanEval, GSM8k (JSONL or ``datasets``),
  GSM-Symbolic and Lost-in-Conversation JSON, the :data:`SOURCES` registry and
  :func:`load_intents`.
* :mod:`~userlm_env.intents.sharding`: deterministic rule-based sharders for math and code.
* :mod:`~userlm_env.intents.llm_sharder`: an LLM sharder with a strict reply validator.
* :mod:`~userlm_env.intents.schema`: Intent <-> Lost-in-Conversation JSON records.

Command line: ``python -m userlm_env.intents export --source humaneval --out intents.json``.
"""

from __future__ import annotations

from userlm_env.intents.llm_sharder import LLMSharder, sharding_messages, validate_shards
from userlm_env.intents.schema import (
    LIC_TASKS,
    final_answer,
    intent_to_record,
    normalize_number,
    record_to_intent,
)
from userlm_env.intents.sharding import (
    code_instruction,
    shard_code,
    shard_math,
    split_sentences,
    strip_stray_instructions,
)
from userlm_env.intents.sources import (
    SOURCES,
    export_lic_json,
    load_gsm8k,
    load_gsm8k_datasets,
    load_gsm8k_jsonl,
    load_gsm_symbolic,
    load_humaneval,
    load_intents,
    load_lic_json,
)

__all__ = [
    "LIC_TASKS",
    "SOURCES",
    "LLMSharder",
    "code_instruction",
    "export_lic_json",
    "final_answer",
    "intent_to_record",
    "load_gsm8k",
    "load_gsm8k_datasets",
    "load_gsm8k_jsonl",
    "load_gsm_symbolic",
    "load_humaneval",
    "load_intents",
    "load_lic_json",
    "normalize_number",
    "record_to_intent",
    "shard_code",
    "shard_math",
    "sharding_messages",
    "split_sentences",
    "strip_stray_instructions",
    "validate_shards",
]
