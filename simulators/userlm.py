"""The in-process User LM simulator: a causal LM that writes the user's turns, with guardrails.

:class:`UserLMSimulator` (registered as ``"userlm"``) holds a loaded model and nothing about any
conversation. For each state it renders the prompt with
:func:`userlm_env.chat_format.render_user_prompt` (intent as the system message, the history,
then the user-turn opening) and generates all rows in one batched ``generate`` call.

Guardrails (paper appendix D.1), each switchable in :class:`UserLMConfig`:

1. The first generated token may not start "I", "You" or "Here" (:class:`BanFirstTokens`).
2. ``allow_end=False`` forbids the end marker at every step (:class:`SuppressTokens`); when the
   tokenizer has no end-marker token, the first token of the marker's spelling is banned.
3. Turns with fewer than ``min_words`` or more than ``max_words`` words are rejected; a row
   stops generating as soon as it passes ``max_words`` (:class:`WordLimitStop`).
4. Verbatim repeats of an earlier user turn or of the intent are rejected.

Rejected rows, and only those, are generated again in the next batched call, up to
``max_tries`` generations per row. A row still failing then returns its last non-empty candidate
with ``metadata["guardrail_failed"]`` naming the broken rule; if every candidate was empty the
call raises :class:`~userlm_env.errors.LLMCallError` (an empty user turn cannot exist).

End marker: a generation that starts with ``<|endconversation|>`` (after stripping whitespace)
becomes ``UserTurn(END_MARKER, ended=True)``. When the marker appears after some text, the text
before it is kept as an ordinary turn (``metadata["end_marker_cut"]=True``) and the marker is
dropped: the user spoke, and may end at their next turn.

Seeding: sampling is done by :class:`SeededSampler`, the last logits processor, with one
``torch.Generator`` per row seeded from ``state.turn_seed()`` and the try index; ``generate``
then decodes greedily and just picks the sampled token. The same states therefore give the same
turns, and a row's sample does not depend on the other rows of the batch except through the tiny
floating-point differences left padding can cause. The global torch RNG is not touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simulators.guardrails import (
    BanFirstTokens,
    SuppressTokens,
    TokenSequenceBias,
    TurnChecks,
    WordLimitStop,
    earlier_texts,
    first_token_ids,
    word_variants,
)
from userlm_env.chat_format import end_of_turn_token_ids, render_user_prompt
from userlm_env.errors import LLMCallError
from userlm_env.models import LoadedModel, load_model
from userlm_env.types import END_MARKER, ConversationState, UserTurn

__all__ = ["Candidate", "SeededSampler", "UserLMConfig", "UserLMSimulator", "judge"]


@dataclass
class UserLMConfig:
    """Generation settings and guardrails of :class:`UserLMSimulator`.

    Sampling defaults are UserLM-8b's generation config; guardrails follow paper appendix D.1.
    """

    temperature: float = 0.6  # softmax temperature when sampling
    top_p: float = 0.9  # nucleus sampling: smallest token set with this probability mass
    max_new_tokens: int = 60  # longest generation per user turn, in tokens
    do_sample: bool = True  # sample (seeded per row); False decodes greedily
    end_marker: str = END_MARKER  # text that ends the conversation (a token in UserLM-8b)
    ban_first_words: tuple[str, ...] = ("I", "You", "Here")  # forbidden opening words; () = off
    allow_end: bool = True  # let the user end the conversation; False forbids the end marker
    min_words: int | None = 3  # shortest accepted turn in words; None = no lower bound
    max_words: int | None = 25  # longest accepted turn in words; None = no upper bound
    reject_repeats: bool = True  # resample verbatim repeats of earlier user turns or the intent
    max_tries: int = 8  # generations per row before returning a flagged candidate (1 if greedy)
    batch_size: int = 16  # rows per generate call
    logit_bias: dict[str, float] | None = None  # text -> additive bias on its tokens (test hook)
    dtype: str | None = None  # model dtype name; None = float32 on CPU, bfloat16 on GPU
    device: str | None = None  # torch device; None = cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("max_tries, batch_size and max_new_tokens must be at least 1")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")
        lo, hi = self.min_words, self.max_words
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_words ({lo}) exceeds max_words ({hi})")
        if not self.end_marker:
            raise ValueError("end_marker must be a non-empty string")

    @property
    def checks(self) -> TurnChecks:
        """The text guardrails these settings switch on."""
        return TurnChecks(self.min_words, self.max_words, self.reject_repeats, self.ban_first_words)


@dataclass(frozen=True)
class Candidate:
    """One generated user turn and the verdict of the guardrails on it."""

    raw: str  # the decoded generation
    text: str  # what the user says (the end marker when ended)
    ended: bool  # the generation ends the conversation
    reason: str | None  # the guardrail it breaks, or None when accepted
    end_marker_cut: bool = False  # text followed by the end marker; the marker was dropped
    truncated: bool = False  # generation hit max_new_tokens before its end of turn

    def turn(self, tries: int, **extra: Any) -> UserTurn:
        """The :class:`UserTurn` for this candidate after ``tries`` generations."""
        meta = {"tries": tries, "raw": self.raw, "truncated": self.truncated, **extra}
        if self.end_marker_cut:
            meta["end_marker_cut"] = True
        return UserTurn(
            text=END_MARKER if self.ended else self.text, ended=self.ended, metadata=meta
        )


def judge(
    raw: str,
    earlier: Sequence[str],
    config: UserLMConfig,
    *,
    truncated: bool = False,
) -> Candidate:
    """Turn a raw generation into a :class:`Candidate`, applying the text guardrails."""
    text, marker = raw.strip(), config.end_marker
    head, found, _ = text.partition(marker)
    head = head.strip()
    if found and not head:
        reason = None if config.allow_end else "end_forbidden"
        return Candidate(raw, marker, True, reason, truncated=truncated)
    reason = config.checks.reason(head, earlier)
    return Candidate(raw, head, False, reason, end_marker_cut=bool(found), truncated=truncated)


class SeededSampler:
    """Last logits processor: samples one token per row with that row's own generator.

    Applies temperature and top-p to the processed scores, draws a token for row ``i`` with a
    ``torch.Generator`` seeded by ``seeds[i]``, and returns scores that are -inf everywhere but
    the drawn token, so greedy decoding in ``generate`` emits exactly that token.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = top_p
        self._generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self._generators:
            self._generators = [
                torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
        probs = self._nucleus(torch.softmax(scores.float() / self.temperature, dim=-1))
        chosen = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self._generators):
            token = torch.multinomial(probs[row], 1, generator=generator)
            chosen[row, token] = 0.0
        return chosen

    def _nucleus(self, probs: torch.Tensor) -> torch.Tensor:
        ordered, order = probs.sort(dim=-1, descending=True)
        outside = ordered.cumsum(dim=-1) - ordered > self.top_p  # mass before token exceeds p
        ordered = ordered.masked_fill(outside, 0.0)
        return torch.zeros_like(probs).scatter(-1, order, ordered)


@dataclass
class _Pending:
    """Book-keeping for one row across tries (never stored on the simulator)."""

    state: ConversationState
    earlier: list[str]
    last: Candidate | None = None
    tries: int = 0
    result: UserTurn | None = field(default=None)


class UserLMSimulator:
    """A User LM that writes the next user turn for a batch of conversations.

    Args:
        model: A model name for :func:`userlm_env.models.load_model` (hub id, local path, or
            ``"smollm2-135m-instruct"``), or an already :class:`LoadedModel`.
        config: Generation and guardrail settings; ``overrides`` replace single fields.
    """

    def __init__(
        self,
        model: str | LoadedModel = "microsoft/UserLM-8b",
        config: UserLMConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.config = _with_overrides(config or UserLMConfig(), overrides)
        if isinstance(model, LoadedModel):
            self.loaded = model
        else:
            self.loaded = load_model(model, dtype=self.config.dtype, device=self.config.device)
        tokenizer = self.loaded.tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._marker_id = self._single_token_id(self.config.end_marker)
        self._stop_ids = self._stop_token_ids()
        self._boundary = (set(self._stop_ids) | set(tokenizer.all_special_ids)) - {self._marker_id}

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Return the next user turn of each state (see the module docstring for guardrails)."""
        rows = [_Pending(state, earlier_texts(state)) for state in states]
        tries = self.config.max_tries if self.config.do_sample else 1  # greedy cannot vary
        for attempt in range(tries):
            pending = [row for row in rows if row.result is None]
            if not pending:
                break
            raws = self._generate([row.state for row in pending], attempt)
            for row, (raw, truncated) in zip(pending, raws, strict=True):
                self._settle(row, judge(raw, row.earlier, self.config, truncated=truncated))
        return [row.result or self._give_up(row) for row in rows]

    # --- per-row decisions --------------------------------------------------------------------

    def _settle(self, row: _Pending, candidate: Candidate) -> None:
        row.tries += 1
        if candidate.reason is None:
            row.result = candidate.turn(row.tries)
        elif not candidate.ended and candidate.text:
            row.last = candidate

    def _give_up(self, row: _Pending) -> UserTurn:
        if row.last is None:
            raise LLMCallError(
                f"the user LM produced no usable text for {row.state.intent.task_id!r} in "
                f"{row.tries} tries (every candidate was empty or a forbidden end marker)"
            )
        return row.last.turn(row.tries, guardrail_failed=row.last.reason)

    # --- generation ---------------------------------------------------------------------------

    def _generate(self, states: list[ConversationState], attempt: int) -> list[tuple[str, bool]]:
        size = self.config.batch_size
        out: list[tuple[str, bool]] = []
        for start in range(0, len(states), size):
            chunk = states[start : start + size]
            seeds = [_row_seed(state, attempt) for state in chunk]
            out.extend(self._generate_chunk([self._prompt(s) for s in chunk], seeds))
        return out

    def _prompt(self, state: ConversationState) -> str:
        return render_user_prompt(self.loaded.tokenizer, state.intent.system_prompt, state.messages)

    def _generate_chunk(self, prompts: list[str], seeds: list[int]) -> list[tuple[str, bool]]:
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        batch = tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(model.device)
        prompt_length = batch["input_ids"].shape[1]
        with torch.inference_mode():
            output = model.generate(
                **batch,
                generation_config=self._generation_config(),
                logits_processor=self._processors(prompt_length, seeds),
                stopping_criteria=self._stopping(prompt_length),
                tokenizer=tokenizer,
            )
        return [self._decode(row.tolist()) for row in output[:, prompt_length:]]

    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        needs_stop_string = self.config.allow_end and self._marker_id is None
        return GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            min_new_tokens=1,
            do_sample=False,
            eos_token_id=sorted({*self._stop_ids, *self._marker_ids()}),
            pad_token_id=self.loaded.tokenizer.pad_token_id,
            stop_strings=[self.config.end_marker] if needs_stop_string else None,
        )

    def _processors(self, prompt_length: int, seeds: list[int]) -> Any:
        from transformers import LogitsProcessorList

        cfg, tokenizer = self.config, self.loaded.tokenizer
        processors: list[Any] = []
        if cfg.logit_bias:
            encoded = [
                (tokenizer.encode(t, add_special_tokens=False), b)
                for t, b in cfg.logit_bias.items()
            ]
            processors.append(TokenSequenceBias(encoded))
        if cfg.ban_first_words:
            banned = first_token_ids(tokenizer, word_variants(cfg.ban_first_words))
            processors.append(BanFirstTokens(banned, prompt_length))
        if not cfg.allow_end:
            processors.append(SuppressTokens(self._end_ban_ids()))
        if cfg.do_sample:
            processors.append(SeededSampler(seeds, cfg.temperature, cfg.top_p))
        return LogitsProcessorList(processors)

    def _stopping(self, prompt_length: int) -> Any:
        from transformers import StoppingCriteriaList

        limit = self.config.max_words
        if limit is None:
            return StoppingCriteriaList()
        return StoppingCriteriaList([WordLimitStop(self.loaded.tokenizer, prompt_length, limit)])

    def _decode(self, ids: list[int]) -> tuple[str, bool]:
        """Decode one row's new tokens up to its end of turn; report whether it was cut short."""
        for position, token in enumerate(ids):
            if token == self._marker_id:  # keep text before it: judge() decides
                return self.loaded.tokenizer.decode(ids[: position + 1]), False
            if token in self._boundary:  # end of turn, padding, or any other special token
                return self.loaded.tokenizer.decode(ids[:position]), False
        text = self.loaded.tokenizer.decode(ids)
        return text, self.config.end_marker not in text

    # --- token helpers ------------------------------------------------------------------------

    def _single_token_id(self, text: str) -> int | None:
        return self.loaded.tokenizer.get_vocab().get(text)

    def _marker_ids(self) -> list[int]:
        return [self._marker_id] if self._marker_id is not None and self.config.allow_end else []

    def _end_ban_ids(self) -> list[int]:
        if self._marker_id is not None:
            return [self._marker_id]
        return first_token_ids(self.loaded.tokenizer, [self.config.end_marker])

    def _stop_token_ids(self) -> list[int]:
        ids = set(end_of_turn_token_ids(self.loaded.tokenizer))
        configured = self.loaded.model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        ids.discard(None)
        return sorted(ids)


def _row_seed(state: ConversationState, attempt: int) -> int:
    """Seed of one row's sampler: mixes the conversation's turn seed with the try index."""
    return int(np.random.SeedSequence([state.turn_seed(), attempt]).generate_state(1)[0])


def _with_overrides(config: UserLMConfig, overrides: dict[str, Any]) -> UserLMConfig:
    known = {f.name for f in dataclasses.fields(UserLMConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown UserLMConfig fields {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **overrides)
