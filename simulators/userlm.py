"""The in-process User LM simulator: a causal LM that writes the user's turns, with guardrails.

:class:`UserLMSimulator` (registered as ``"userlm"``) holds a model and nothing about any
conversation. The model is loaded on first use (``respond`` or ``prompt``), not when the
simulator is built, so configurations can be instantiated without the weights; a model that
cannot be found then raises :class:`~userlm_env.errors.ModelUnavailableError`. For each state
the prompt is rendered with :func:`userlm_env.chat_format.render_user_prompt` (intent as the
system message, the history, then the user-turn opening) and all rows are generated in one
batched ``generate`` call.

Guardrails (paper appendix D.1), each switchable in :class:`UserLMConfig`:

1. The first generated token may not start "I", "You" or "Here" (:class:`BanFirstTokens`).
2. ``allow_end=False`` forbids the end marker at every step (:class:`SuppressTokens`): its own
   token, or, when the tokenizer has none, the first token of its spelling alone and after a
   space (:func:`simulators.guardrails.end_ban_token_ids`, as the server simulator bans).
3. Turns with fewer than ``min_words`` or more than ``max_words`` words are rejected; a row
   stops generating as soon as it passes ``max_words`` (:class:`WordLimitStop`).
4. Verbatim repeats of an earlier user turn or of the intent are rejected.

Rejected rows, and only those, are generated again in the next batched call, up to
``max_tries`` generations per row (the loop of :func:`simulators.sampling.respond_with_retries`,
shared with the server simulator). A row still failing then returns its last non-empty
candidate with ``metadata["guardrail_failed"]`` naming the broken rule; if every candidate was
empty the call raises :class:`~userlm_env.errors.LLMCallError`.

End marker: a generation that starts with ``<|endconversation|>`` (after stripping whitespace)
becomes ``UserTurn(END_MARKER, ended=True)``. When the marker appears after some text, the text
before it is kept as an ordinary turn (``metadata["end_marker_cut"]=True``) and the marker is
dropped: the user spoke, and may end at their next turn.

Seeding: sampling is done by :class:`SeededSampler`, the last logits processor, with one
``torch.Generator`` per row seeded by :func:`simulators.sampling.row_seed` (the state's turn seed
and the try index); ``generate`` then decodes greedily and just picks the sampled token. The same
states therefore give the same turns, and a row's sample does not depend on the other rows of
the batch except through the tiny floating-point differences left padding can cause. The global
torch RNG is not touched.

Everything derived from the tokenizer (stop tokens, banned tokens, the stop-string matcher, the
generation config) is worked out once, at first use, not on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from simulators.guardrails import (
    BanFirstTokens,
    SuppressTokens,
    TokenSequenceBias,
    WordLimitStop,
    end_ban_token_ids,
    first_token_ids,
    word_variants,
)
from simulators.sampling import (
    Candidate,
    Generation,
    UserLMConfig,
    judge,
    respond_with_retries,
    row_seed,
    with_overrides,
)
from userlm_env.chat_format import end_of_turn_token_ids, render_user_prompt
from userlm_env.models import LoadedModel, load_model
from userlm_env.types import ConversationState, UserTurn

__all__ = ["Candidate", "SeededSampler", "UserLMConfig", "UserLMSimulator", "judge"]


class SeededSampler:
    """Last logits processor: samples one token per row with that row's own generator.

    Applies temperature and top-p to the processed scores, draws a token for row ``i`` with a
    ``torch.Generator`` seeded by ``seeds[i]``, and returns scores that are -inf everywhere but
    the drawn token, so greedy decoding in ``generate`` emits exactly that token.

    The nucleus is found among the ``candidates`` most likely tokens (widened until it fits)
    instead of by sorting the whole vocabulary, and each row draws one uniform number that
    picks its token from the cumulative nucleus mass; a full sort and a multinomial draw over
    the vocabulary per row cost about a tenth of a batched CPU generation.
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


@dataclass(frozen=True)
class _Plan:
    """What generation needs from the tokenizer and config, worked out once per simulator."""

    marker_id: int | None  # the end marker's token id, when the vocabulary has it as one token
    boundary: frozenset[int]  # ids where a decoded turn stops (end of turn, special tokens)
    first_ban: list[int]  # ids a turn may not open with
    end_ban: list[int]  # ids suppressed at every step when the end is not allowed
    bias: list[tuple[list[int], float]]  # logit_bias texts as token ids
    generation_config: Any  # transformers.GenerationConfig shared by every call
    stop_string: Any  # StopStringCriteria for a marker spelled in several tokens, or None


class UserLMSimulator:
    """A User LM that writes the next user turn for a batch of conversations.

    Args:
        model: A model name for :func:`userlm_env.models.load_model` (hub id, local path, or
            ``"smollm2-135m-instruct"``), loaded at first use, or an already
            :class:`LoadedModel`.
        config: Generation and guardrail settings; ``overrides`` replace single fields.
    """

    def __init__(
        self,
        model: str | LoadedModel = "microsoft/UserLM-8b",
        config: UserLMConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.config = with_overrides(config or UserLMConfig(), overrides)
        self.model_name = model.name if isinstance(model, LoadedModel) else model
        self._loaded = _with_pad_token(model) if isinstance(model, LoadedModel) else None

    @property
    def loaded(self) -> LoadedModel:
        """The model, loaded on first access.

        Raises:
            ModelUnavailableError: It cannot be found locally (the message lists alternatives).
        """
        if self._loaded is None:
            cfg = self.config
            loaded = load_model(self.model_name, dtype=cfg.dtype, device=cfg.device)
            self._loaded = _with_pad_token(loaded)
        return self._loaded

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Return the next user turn of each state (see the module docstring for guardrails)."""
        return respond_with_retries(states, self._generate, self.config)

    def prompt(self, state: ConversationState) -> str:
        """The text the model continues for ``state``."""
        return render_user_prompt(self.loaded.tokenizer, state.intent.system_prompt, state.messages)

    # --- generation ---------------------------------------------------------------------------

    def _generate(self, states: list[ConversationState], attempt: int) -> list[Generation]:
        size = self.config.batch_size
        out: list[Generation] = []
        for start in range(0, len(states), size):
            chunk = states[start : start + size]
            seeds = [row_seed(state, attempt) for state in chunk]
            out.extend(self._generate_chunk([self.prompt(s) for s in chunk], seeds))
        return out

    def _generate_chunk(self, prompts: list[str], seeds: list[int]) -> list[Generation]:
        tokenizer, model, plan = self.loaded.tokenizer, self.loaded.model, self._plan
        options = {"padding": True, "padding_side": "left", "add_special_tokens": False}
        batch = tokenizer(prompts, return_tensors="pt", **options).to(model.device)
        prompt_length = batch["input_ids"].shape[1]
        with torch.inference_mode():
            output = model.generate(
                **batch,
                generation_config=plan.generation_config,
                logits_processor=self._processors(prompt_length, seeds),
                stopping_criteria=self._stopping(prompt_length),
            )
        return [self._decode(row.tolist()) for row in output[:, prompt_length:]]

    def _processors(self, prompt_length: int, seeds: list[int]) -> Any:
        from transformers import LogitsProcessorList

        cfg, plan = self.config, self._plan
        processors: list[Any] = [TokenSequenceBias(plan.bias)] if plan.bias else []
        if plan.first_ban:
            processors.append(BanFirstTokens(plan.first_ban, prompt_length))
        if not cfg.allow_end:
            processors.append(SuppressTokens(plan.end_ban))
        if cfg.do_sample:
            processors.append(SeededSampler(seeds, cfg.temperature, cfg.top_p))
        return LogitsProcessorList(processors)

    def _stopping(self, prompt_length: int) -> Any:
        from transformers import StoppingCriteriaList

        limit, tokenizer = self.config.max_words, self.loaded.tokenizer
        criteria = [WordLimitStop(tokenizer, prompt_length, limit)] if limit is not None else []
        if self._plan.stop_string is not None:
            criteria.append(self._plan.stop_string)
        return StoppingCriteriaList(criteria)

    def _decode(self, ids: list[int]) -> Generation:
        """Decode one row's new tokens up to its end of turn; report whether it was cut short."""
        tokenizer, plan = self.loaded.tokenizer, self._plan
        for position, token in enumerate(ids):
            if token == plan.marker_id:  # keep text before it: judge() decides
                return Generation(tokenizer.decode(ids[: position + 1]))
            if token in plan.boundary:  # end of turn, padding, or any other special token
                return Generation(tokenizer.decode(ids[:position]))
        text = tokenizer.decode(ids)
        return Generation(text, truncated=self.config.end_marker not in text)

    # --- set-up at first use ------------------------------------------------------------------

    @cached_property
    def _plan(self) -> _Plan:
        cfg, tokenizer = self.config, self.loaded.tokenizer
        marker_id = tokenizer.get_vocab().get(cfg.end_marker)
        stop_ids = self._stop_token_ids()
        first_ban = word_variants(cfg.ban_first_words) if cfg.ban_first_words else []
        return _Plan(
            marker_id=marker_id,
            boundary=frozenset((set(stop_ids) | set(tokenizer.all_special_ids)) - {marker_id}),
            first_ban=first_token_ids(tokenizer, first_ban),
            end_ban=end_ban_token_ids(tokenizer, cfg.end_marker),
            bias=[
                (tokenizer.encode(text, add_special_tokens=False), value)
                for text, value in (cfg.logit_bias or {}).items()
            ],
            generation_config=self._generation_config(marker_id, stop_ids),
            stop_string=self._stop_string(marker_id),
        )

    def _generation_config(self, marker_id: int | None, stop_ids: list[int]) -> Any:
        from transformers import GenerationConfig

        ends = [marker_id] if marker_id is not None and self.config.allow_end else []
        return GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            min_new_tokens=1,
            do_sample=False,  # SeededSampler has already picked the token
            eos_token_id=sorted({*stop_ids, *ends}),
            pad_token_id=self.loaded.tokenizer.pad_token_id,
        )

    def _stop_string(self, marker_id: int | None) -> Any:
        """A criterion stopping at a marker spelled in several tokens (when ending is allowed)."""
        if marker_id is not None or not self.config.allow_end:
            return None
        from transformers import StopStringCriteria

        return StopStringCriteria(self.loaded.tokenizer, [self.config.end_marker])

    def _stop_token_ids(self) -> list[int]:
        ids = set(end_of_turn_token_ids(self.loaded.tokenizer))
        configured = self.loaded.model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        ids.discard(None)
        return sorted(ids)


def _with_pad_token(loaded: LoadedModel) -> LoadedModel:
    """Give the tokenizer a padding token (its EOS) when it has none; batches are padded."""
    if loaded.tokenizer.pad_token_id is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    return loaded
