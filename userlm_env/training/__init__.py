"""The bundled UserLM trainer: conversations -> intents -> flipped samples -> fine-tuned model.

* :mod:`~userlm_env.training.data`: load (OpenAI/TRL ``messages`` or ShareGPT records from JSONL,
  a ``datasets.Dataset`` or the hub), filter, de-duplicate, split by user.
* :mod:`~userlm_env.training.intents`: LLM-written high-level intents, cached on disk.
* :mod:`~userlm_env.training.whole`: one sequence per conversation, every user turn a target
  (the default sample mode).
* :mod:`~userlm_env.training.flip`: K user turns -> K+1 samples with target-only labels (the
  paper's exact recipe), the dataset and the padded and packed collators.
* :mod:`~userlm_env.training.adapters`: LoRA adapters (PEFT), saved merged or as an adapter.
* :mod:`~userlm_env.training.train`: :class:`TrainConfig` and :func:`train_userlm` (transformers
  ``Trainer``); imported on first use, as it loads transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from userlm_env.training.data import (
    Conversation,
    DataConfig,
    DedupReport,
    LoadReport,
    PreparedData,
    Splits,
    assign_splits,
    conversations_from_rows,
    filter_language,
    load_conversations,
    load_hub_conversations,
    prepare_conversations,
    read_conversations,
    remove_near_duplicates,
    write_conversations,
)
from userlm_env.training.flip import (
    FlipCollator,
    FlipConfig,
    FlipDataset,
    FlipResult,
    FlipSample,
    PackedCollator,
    add_end_token,
    flip_conversation,
    flip_conversations,
)
from userlm_env.training.intents import IntentConfig, IntentReport, generate_intents
from userlm_env.training.whole import WholeResult, WholeSample, whole_conversations

__all__ = [
    "Conversation",
    "DataConfig",
    "DedupReport",
    "FlipCollator",
    "FlipConfig",
    "FlipDataset",
    "FlipResult",
    "FlipSample",
    "IntentConfig",
    "IntentReport",
    "LoadReport",
    "PackedCollator",
    "PreparedData",
    "Splits",
    "TrainConfig",
    "TrainResult",
    "WholeResult",
    "WholeSample",
    "add_end_token",
    "assign_splits",
    "conversations_from_rows",
    "filter_language",
    "flip_conversation",
    "flip_conversations",
    "generate_intents",
    "load_conversations",
    "load_hub_conversations",
    "prepare_conversations",
    "read_conversations",
    "remove_near_duplicates",
    "train_userlm",
    "whole_conversations",
    "write_conversations",
]

_LAZY = {"TrainConfig", "TrainResult", "train_userlm"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("userlm_env.training.train"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
