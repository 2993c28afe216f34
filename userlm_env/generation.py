"""Batched Hugging Face generation shared by every in-process model user.

:func:`generate_rows` is the one place that calls ``model.generate`` for the User LM simulator,
the prompted simulator's local backend and the local assistant: it tokenizes rendered prompts
with left padding (passed as a call argument; the shared tokenizer is never changed), runs
``generate`` in chunks of ``batch_size`` rows under ``torch.inference_mode`` and returns each
row's new token ids.

Sampling never touches a global random generator: :class:`SeededSampler`, added as the last
logits processor when :class:`Sampling` is given, draws each row's token with that row's own
``torch.Generator``; ``generate`` itself decodes greedily (``do_sample=False`` in the caller's
generation config) and so just emits the drawn token. A row's sample therefore depends on its
prompt and seed, not on the other rows of its batch (up to the tiny floating-point differences
that left padding can cause).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from userlm_env.models import LoadedModel

__all__ = ["HookFactory", "Sampling", "SeededSampler", "generate_rows"]

#: Builds one ``generate`` call's logits processors or stopping criteria from the call's padded
#: prompt width (the column where new tokens start), for hooks that must know it.
HookFactory = Callable[[int], Sequence[Any]]


@dataclass(frozen=True)
class Sampling:
    """Per-row seeded sampling: one seed per prompt, temperature and nucleus mass."""

    seeds: Sequence[int]  # one per prompt, in prompt order
    temperature: float = 1.0  # must be > 0; greedy decoding is ``sampling=None``
    top_p: float = 1.0  # nucleus mass in (0, 1]


class SeededSampler:
    """Last logits processor: samples one token per row with that row's own generator.

    Applies temperature and top-p to the processed scores, draws a token for row ``i`` with a
    ``torch.Generator`` seeded by ``seeds[i]``, and returns scores that are -inf everywhere but
    the drawn token, so greedy decoding in ``generate`` emits exactly that token.

    The nucleus is found among the ``candidates`` most likely tokens (widened until it fits)
    instead of by sorting the whole vocabulary, and each row draws one uniform number that
    picks its token from the cumulative nucleus mass; a full sort and a multinomial draw over
    the vocabulary per row cost about a tenth of a batched CPU generation.

    Args:
        seeds: One seed per batch row.
        temperature: Divides the scores before the softmax; must be > 0.
        top_p: Nucleus mass in (0, 1]; 1 samples from the whole distribution.
        candidates: How many top tokens to search for the nucleus first.
    """

    def __init__(
        self, seeds: Sequence[int], temperature: float, top_p: float, candidates: int = 64
    ) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = top_p
        self.candidates = candidates
        self._generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Return -inf scores except at each row's drawn token (0 there)."""
        if not self._generators:
            self._generators = [
                torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        kept, tokens = self._nucleus(probs)
        cumulative = kept.cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=g, device=g.device) for g in self._generators])
        targets = (draws * cumulative[:, -1]).unsqueeze(-1)
        picks = torch.searchsorted(cumulative, targets, right=True).clamp_(max=kept.shape[-1] - 1)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(-1, tokens.gather(-1, picks), 0.0)

    def _nucleus(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probabilities, token ids)`` of each row's nucleus, most likely first, 0 outside."""
        vocab = probs.shape[-1]
        if self.top_p >= 1.0:
            return probs, torch.arange(vocab, device=probs.device).expand_as(probs)
        size = min(self.candidates, vocab)
        while True:
            top, tokens = probs.topk(size, dim=-1)
            outside = top.cumsum(dim=-1) - top > self.top_p  # mass before token exceeds p
            if size == vocab or bool(outside[:, -1].all()):  # every nucleus ends in the top
                return top.masked_fill(outside, 0.0), tokens
            size = min(size * 8, vocab)


def generate_rows(
    loaded: LoadedModel,
    prompts: Sequence[str],
    *,
    generation_config: Any,
    sampling: Sampling | None = None,
    logits_processors: Sequence[Any] | HookFactory = (),
    stopping_criteria: Sequence[Any] | HookFactory = (),
    batch_size: int = 16,
) -> list[list[int]]:
    """Generate a continuation of every prompt, ``batch_size`` rows per ``generate`` call.

    Args:
        loaded: The model and its tokenizer (which must have a padding token, as
            :func:`userlm_env.models.load_model` gives it).
        prompts: Fully rendered prompt texts (chat template applied); no special tokens are
            added when tokenizing them.
        generation_config: A ``transformers.GenerationConfig`` used as is for every call (with
            ``do_sample=False`` when ``sampling`` is given: the sampler picks the token).
        sampling: Per-row seeded sampling, or ``None`` for the config's own decoding.
        logits_processors: Extra logits processors, or a :data:`HookFactory` making them for
            each call; they run after transformers' own, and before the sampler.
        stopping_criteria: Extra stopping criteria, or a :data:`HookFactory` making them.
        batch_size: Most rows per ``generate`` call.

    Returns:
        The new token ids of each row, in prompt order; a row that finished before the longest
        one of its call is filled up with the padding token.

    Raises:
        ValueError: No padding token, ``batch_size`` below 1, or not one seed per prompt.
    """
    _check(loaded, prompts, sampling, batch_size)
    rows: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        part = slice(start, start + batch_size)
        sampler = _sampler(sampling, part)
        hooks = _Hooks(logits_processors, stopping_criteria, sampler)
        rows += _generate_chunk(loaded, list(prompts[part]), generation_config, hooks)
    return rows


@dataclass(frozen=True)
class _Hooks:
    """The processors and criteria of one ``generate`` call, built from its prompt width."""

    processors: Sequence[Any] | HookFactory
    criteria: Sequence[Any] | HookFactory
    sampler: SeededSampler | None

    def logits_processor(self, width: int) -> Any:
        from transformers import LogitsProcessorList

        sampler = [self.sampler] if self.sampler is not None else []
        return LogitsProcessorList([*_build(self.processors, width), *sampler])

    def stopping_criteria(self, width: int) -> Any:
        from transformers import StoppingCriteriaList

        return StoppingCriteriaList(list(_build(self.criteria, width)))


def _build(hooks: Sequence[Any] | HookFactory, width: int) -> Sequence[Any]:
    return hooks if isinstance(hooks, Sequence) else hooks(width)


def _sampler(sampling: Sampling | None, part: slice) -> SeededSampler | None:
    if sampling is None:
        return None
    return SeededSampler(sampling.seeds[part], sampling.temperature, sampling.top_p)


def _generate_chunk(
    loaded: LoadedModel, prompts: list[str], generation_config: Any, hooks: _Hooks
) -> list[list[int]]:
    tokenizer, model = loaded.tokenizer, loaded.model
    batch = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(model.device)
    width = int(batch["input_ids"].shape[1])
    with torch.inference_mode():
        output = model.generate(
            **batch,
            generation_config=generation_config,
            logits_processor=hooks.logits_processor(width),
            stopping_criteria=hooks.stopping_criteria(width),
        )
    return [row.tolist() for row in output[:, width:]]


def _check(
    loaded: LoadedModel, prompts: Sequence[str], sampling: Sampling | None, batch_size: int
) -> None:
    if loaded.tokenizer.pad_token_id is None:
        raise ValueError(
            f"the tokenizer of {loaded.name!r} has no padding token: load it with "
            "userlm_env.models.load_model, which sets one"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if sampling is not None and len(sampling.seeds) != len(prompts):
        raise ValueError(f"{len(sampling.seeds)} seeds for {len(prompts)} prompts")
