"""Fixtures of the trainer tests: the synthetic conversation file, the embedded tokenizer, and a
tiny random Llama-style model that shares its vocabulary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from userlm_env.models import EMBEDDED_MODEL
from userlm_env.training.data import Conversation, read_conversations

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "synthetic_conversations.jsonl"
#: A 2-layer, 64-wide Llama: fast enough for exact checks on CPU.
TINY_ARCHITECTURE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="session")
def fixture_path() -> Path:
    """The synthetic conversation file (written for these tests)."""
    return FIXTURE


@pytest.fixture()
def conversations() -> list[Conversation]:
    """Every conversation of the synthetic fixture, in file order."""
    return read_conversations(FIXTURE)


@pytest.fixture(scope="session")
def _embedded_tokenizer() -> Any:
    from userlm_env.training.train import load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL)


@pytest.fixture()
def tokenizer(_embedded_tokenizer: Any) -> Any:
    """A private copy of the embedded SmolLM2 tokenizer (tests may add tokens to it)."""
    return copy.deepcopy(_embedded_tokenizer)


@pytest.fixture()
def tiny_model(tokenizer: Any) -> Any:
    """A seeded random tiny Llama whose vocabulary covers ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), **TINY_ARCHITECTURE)
    return LlamaForCausalLM(config).eval()
