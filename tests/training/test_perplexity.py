"""Tests of user-turn perplexity (userlm_env.metrics.perplexity): a hand-computed log-softmax on
one sample, token-weighted aggregation, per-turn keys, padding invariance, intent comparison."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from userlm_env.metrics.perplexity import (
    HIGHER_IS_BETTER,
    PerplexityConfig,
    intent_comparison,
    perplexity,
    sample_nll,
)
from userlm_env.training.data import Conversation
from userlm_env.training.flip import add_end_token, flip_conversations


def _manual_nll(model: Any, input_ids: list[int], labels: list[int]) -> float:
    """Sum over labelled positions t of -log softmax(logits[t-1])[input_ids[t]], one at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0]
    total = 0.0
    for t in range(1, len(input_ids)):
        if labels[t] != -100:
            row = logits[t - 1].double()
            total -= (row[input_ids[t]] - torch.logsumexp(row, dim=0)).item()
    return total


def test_sample_nll_matches_a_manual_log_softmax(
    tiny_model: Any, tokenizer: Any, conversations: list[Conversation]
) -> None:
    samples = flip_conversations(conversations[:2], tokenizer).samples
    nll = sample_nll(tiny_model, samples[:3], tokenizer.pad_token_id)
    for sample, value in zip(samples[:3], nll, strict=True):
        assert value == pytest.approx(
            _manual_nll(tiny_model, sample.input_ids, sample.labels), rel=1e-4
        )
        assert value > 0


def test_perplexity_is_token_weighted(
    tiny_model: Any, tokenizer: Any, conversations: list[Conversation]
) -> None:
    chosen = conversations[:2]
    samples = flip_conversations(chosen, tokenizer).samples
    user_samples = [s for s in samples if not s.is_end]
    nll = [_manual_nll(tiny_model, s.input_ids, s.labels) for s in user_samples]
    tokens = sum(s.target_tokens for s in user_samples)
    result = perplexity(tiny_model, tokenizer, chosen, PerplexityConfig(batch_size=3))
    assert result.tokens == tokens and result.samples == len(user_samples)
    assert result.perplexity == pytest.approx(math.exp(sum(nll) / tokens), rel=1e-4)
    assert list(result.per_turn) == [1, 2, 3]
    first = [v for s, v in zip(user_samples, nll, strict=True) if s.turn == 1]
    first_tokens = result.per_turn_tokens[1]
    assert result.per_turn[1] == pytest.approx(math.exp(sum(first) / first_tokens), rel=1e-4)
    assert HIGHER_IS_BETTER is False


def test_padding_and_batch_size_do_not_change_the_result(
    tiny_model: Any, tokenizer: Any, conversations: list[Conversation]
) -> None:
    chosen = [c for c in conversations if c.intent][:5]
    one = perplexity(tiny_model, tokenizer, chosen, PerplexityConfig(batch_size=1))
    many = perplexity(tiny_model, tokenizer, chosen, PerplexityConfig(batch_size=16))
    assert many.perplexity == pytest.approx(one.perplexity, rel=1e-4)
    assert many.per_turn == pytest.approx(one.per_turn, rel=1e-4)


def test_end_samples_and_intent_comparison(
    tiny_model: Any, tokenizer: Any, conversations: list[Conversation]
) -> None:
    add_end_token(tokenizer, tiny_model)
    config = PerplexityConfig(include_end=True)
    with_end = perplexity(tiny_model, tokenizer, conversations[:3], config)
    assert list(with_end.per_turn)[-1] == "end" and with_end.per_turn_tokens["end"] == 3 * 3
    both = intent_comparison(tiny_model, tokenizer, conversations[:8])
    assert set(both) == {"with_intent", "without_intent"}
    assert both["with_intent"].samples == both["without_intent"].samples
    assert both["with_intent"].tokens == both["without_intent"].tokens  # same targets
    assert both["with_intent"].nll != both["without_intent"].nll  # different conditioning
    with pytest.raises(ValueError, match="no user turns"):
        perplexity(tiny_model, tokenizer, [], config)


@pytest.mark.slow
def test_embedded_model_perplexity_is_finite(conversations: list[Conversation]) -> None:
    from userlm_env.models import EMBEDDED_MODEL, load_model

    loaded = load_model(EMBEDDED_MODEL)
    both = intent_comparison(loaded.model, loaded.tokenizer, conversations[:3])
    for result in both.values():
        assert 1.0 < result.perplexity < 1e4 and result.tokens > 50
