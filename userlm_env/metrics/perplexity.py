"""Per-token perplexity of user turns under a causal LM (paper section 2.3, Table 1).

The user turns of a conversation file are scored exactly as the trainer sees them: each
conversation is flipped into next-user-turn samples by :mod:`userlm_env.training.flip` (same
rendering, same tokenization, same label mask), and the negative log-likelihood is summed over the
labelled tokens only (the user turn and its end-of-turn text). Perplexity is
``exp(total NLL / total labelled tokens)`` over all samples (token-weighted, never a mean of
per-conversation perplexities), and per user turn index. Lower is better.

With ``use_intent=False`` the same samples are rendered without the intent (the paper's
"no conditioning" column), so :func:`intent_comparison` gives both columns of Table 1. End-of-
conversation samples are scored only with ``include_end=True`` (then reported as turn ``"end"``):
for a model without the end token they measure the marker's spelling, not a decision to stop.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from userlm_env.training.data import Conversation
from userlm_env.training.flip import (
    IGNORE_INDEX,
    FlipCollator,
    FlipConfig,
    FlipSample,
    flip_conversations,
)

__all__ = [
    "AGGREGATION",
    "HIGHER_IS_BETTER",
    "PerplexityConfig",
    "PerplexityResult",
    "intent_comparison",
    "perplexity",
    "sample_nll",
]

#: Perplexity is better when lower.
HIGHER_IS_BETTER = False
#: How per-sample values combine: exp of the token-weighted mean negative log-likelihood.
AGGREGATION = "exp(sum of token NLL / number of target tokens)"


@dataclass
class PerplexityConfig:
    """Which samples are scored and how they are batched."""

    use_intent: bool = True  # condition on the conversation's intent (False: no conditioning)
    include_end: bool = False  # also score the end-of-conversation samples (turn "end")
    max_length: int = 2048  # longest sample in tokens (targets beyond it are cut)
    batch_size: int = 4  # samples per forward pass (sorted by length to limit padding)
    missing_intent: str = "error"  # conversations without intent: "error" or "skip"


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity overall and per user turn.

    Attributes:
        perplexity: ``exp(nll / tokens)`` over every scored sample.
        nll: Total negative log-likelihood (nats) of the scored tokens.
        tokens: Number of scored (target) tokens.
        samples: Number of scored samples.
        per_turn: Turn index (1-based, or ``"end"``) -> perplexity of those samples.
        per_turn_tokens: Turn index -> scored tokens.
    """

    perplexity: float
    nll: float
    tokens: int
    samples: int
    per_turn: dict[int | str, float] = field(default_factory=dict)
    per_turn_tokens: dict[int | str, int] = field(default_factory=dict)


def sample_nll(model: Any, samples: Sequence[FlipSample], pad_token_id: int) -> list[float]:
    """Summed NLL (nats) of each sample's labelled tokens, in one padded forward pass."""
    import torch

    batch = FlipCollator(pad_token_id)(
        [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    )
    batch = {k: v.to(model.device) for k, v in batch.items()}
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    scored = targets != IGNORE_INDEX
    return (-(picked * scored).sum(dim=1)).tolist()


def perplexity(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    config: PerplexityConfig | None = None,
) -> PerplexityResult:
    """Per-token perplexity of the user turns of ``conversations`` (see the module doc)."""
    config = config or PerplexityConfig()
    flip = FlipConfig(
        config.use_intent, config.include_end, config.max_length, config.missing_intent
    )
    samples = flip_conversations(conversations, tokenizer, flip).samples
    if not samples:
        raise ValueError("no user turns to score: the conversations produced no samples")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ordered = sorted(samples, key=lambda s: len(s.input_ids))
    nll: list[float] = []
    for start in range(0, len(ordered), config.batch_size):
        nll += sample_nll(model, ordered[start : start + config.batch_size], pad)
    return _aggregate(ordered, nll)


def _aggregate(samples: Sequence[FlipSample], nll: Sequence[float]) -> PerplexityResult:
    turn_nll: dict[int | str, float] = defaultdict(float)
    turn_tokens: dict[int | str, int] = defaultdict(int)
    for sample, value in zip(samples, nll, strict=True):
        key: int | str = "end" if sample.is_end else sample.turn
        turn_nll[key] += value
        turn_tokens[key] += sample.target_tokens
    total, tokens = sum(nll), sum(s.target_tokens for s in samples)
    order = sorted(turn_nll, key=lambda k: (isinstance(k, str), k if isinstance(k, int) else 0))
    return PerplexityResult(
        perplexity=math.exp(total / tokens),
        nll=total,
        tokens=tokens,
        samples=len(samples),
        per_turn={k: math.exp(turn_nll[k] / turn_tokens[k]) for k in order},
        per_turn_tokens={k: turn_tokens[k] for k in order},
    )


def intent_comparison(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    config: PerplexityConfig | None = None,
) -> dict[str, PerplexityResult]:
    """Perplexity ``"with_intent"`` and ``"without_intent"`` on the same conversations.

    Only conversations that carry an intent are scored, so both columns cover the same turns.
    """
    config = config or PerplexityConfig()
    with_intent = [c for c in conversations if c.intent is not None]
    results: dict[str, PerplexityResult] = {}
    for name, use_intent in (("with_intent", True), ("without_intent", False)):
        variant = PerplexityConfig(**{**config.__dict__, "use_intent": use_intent})
        results[name] = perplexity(model, tokenizer, with_intent, variant)
    return results
