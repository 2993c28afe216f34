"""The in-process User LM simulator: a causal LM that writes the user's turns, with guardrails.

:class:`UserLMSimulator` (registered as ``"userlm"``) holds a model and nothing about any
conversation. The model is loaded on first use (``respond`` or ``prompt``), not when the
simulator is built, so configurations can be instantiated without the weights; a model that
cannot be found then raises :class:`~userlm_env.errors.ModelUnavailableError`. For each state
the prompt is rendered with :func:`userlm_env.chat_format.render_user_prompt` (intent as the
system message, the history, then the user-turn opening) and the rows are generated together,
``batch_size`` per ``generate`` call (:func:`userlm_env.generation.generate_rows`).

Guardrails (paper appendix D.1), each switchable in :class:`UserLMConfig`:

1. The first generated token may not start "I", "You" or "Here" (transformers'
   ``GenerationConfig.begin_suppress_tokens``).
2. The end marker is forbidden at every step (``GenerationConfig.suppress_tokens``) of a first
   turn, always (a user never ends a conversation before speaking), and of every turn when
   ``allow_end=False``: its own token, or, when the tokenizer has none, the first token of its
   spelling alone and after a space (:func:`simulators.guardrails.end_ban_token_ids`, as the
   server simulator bans). First-turn rows and later rows therefore go to ``generate`` in
   separate calls, each with its own generation config.
3. Turns with fewer than ``min_words`` or more than ``max_words`` words are rejected; a row
   stops generating as soon as it passes ``max_words`` (:class:`WordLimitStop`).
4. Verbatim repeats of an earlier user turn or of the intent are rejected.

Rejected rows, and only those, are generated again in the next batched call, up to
``max_tries`` generations per row (the loop of :func:`simulators.sampling.respond_with_retries`,
shared with the server simulator). A row that never passes keeps its best-ranked candidate
(an over-long one cut back at a sentence end when it has one), with
``metadata["guardrail_failed"]`` naming the rule it still breaks (see
:mod:`simulators.sampling`); if every candidate was empty the call raises
:class:`~userlm_env.errors.LLMCallError`.

End marker: a generation that starts with ``<|endconversation|>`` (after stripping whitespace)
becomes ``UserTurn(END_MARKER, ended=True)``. When the marker appears after some text, the text
before it is kept as an ordinary turn (``metadata["end_marker_cut"]=True``) and the marker is
dropped: the user spoke, and may end at their next turn.

Defaults: :class:`UserLMConfig`'s defaults are UserLM-8b's generation config and the paper's
guardrails (the ``userlm_8b`` config). A simulator of the embedded model
(``"smollm2-135m-instruct"``) starts from :data:`EMBEDDED_SETTINGS` instead, the values of the
``userlm_embedded`` config, so ``make_simulator("userlm", model="smollm2-135m-instruct")`` behaves
as ``simulator=userlm_embedded`` does (:func:`default_config`). A ``config`` or keyword
overrides win over both.

Seeding: sampling is done by :class:`~userlm_env.generation.SeededSampler` (importable from
here too), the last logits processor, with one ``torch.Generator`` per row seeded by
:func:`simulators.sampling.row_seed` (the state's turn seed and the try index); ``generate``
then decodes greedily and just picks the sampled token. The same states therefore give the same
turns, and a row's sample does not depend on the other rows of the batch except through the
tiny floating-point differences left padding can cause. The global torch RNG is not touched.

Everything derived from the tokenizer (stop tokens, banned tokens, the stop-string matcher, the
generation config) is worked out once, at first use, not on every call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from simulators.guardrails import (
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
    in_turn_groups,
    respond_with_retries,
    row_seed,
    vet,
    with_overrides,
)
from userlm_env.chat_format import end_of_turn_token_ids, render_user_prompt
from userlm_env.estimate import CallBudget
from userlm_env.generation import Sampling, SeededSampler, generate_rows
from userlm_env.models import EMBEDDED_MODEL, LoadedModel, load_model
from userlm_env.types import ConversationState, Intent, UserTurn

__all__ = [
    "EMBEDDED_SETTINGS",
    "Candidate",
    "SeededSampler",
    "UserLMConfig",
    "UserLMSimulator",
    "default_config",
    "vet",
]

#: Where the embedded model's defaults differ from UserLM-8b's: its turns are cut at 40 tokens
#: (``max_words`` ends a turn sooner on its prose; the cap bounds code it copies from the intent).
#: ``experiments/conf/simulator/userlm_embedded.yaml`` holds the same values.
EMBEDDED_SETTINGS: Mapping[str, Any] = {"max_new_tokens": 40}


def default_config(model_name: str) -> UserLMConfig:
    """The settings a simulator of ``model_name`` starts from: :data:`EMBEDDED_SETTINGS` for the
    embedded model, UserLM-8b's (:class:`UserLMConfig`'s defaults) for any other."""
    if model_name == EMBEDDED_MODEL:
        return dataclasses.replace(UserLMConfig(), **EMBEDDED_SETTINGS)
    return UserLMConfig()


@dataclass(frozen=True)
class _Plan:
    """What generation needs from the tokenizer and config, worked out once per simulator."""

    marker_id: int | None  # the end marker's token id, when the vocabulary has it as one token
    boundary: frozenset[int]  # ids where a decoded turn stops (end of turn, special tokens)
    generation_config: Any  # transformers.GenerationConfig of later turns (guardrails 1-2)
    first_turn_config: Any  # the same for first turns: the end marker is always banned
    processors: tuple[Any, ...]  # logits processors of every call (the logit_bias hook)
    stop_string: Any  # StopStringCriteria for a marker spelled in several tokens, or None


class UserLMSimulator:
    """A User LM that writes the next user turn for a batch of conversations.

    Args:
        model: A model name for :func:`userlm_env.models.load_model` (hub id, local path, or
            ``"smollm2-135m-instruct"``), loaded at first use, or an already
            :class:`LoadedModel`.
        config: Generation and guardrail settings (``None``: :func:`default_config` of the
            model); ``overrides`` replace single fields.
    """

    def __init__(
        self,
        model: str | LoadedModel = "microsoft/UserLM-8b",
        config: UserLMConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.model_name = model.name if isinstance(model, LoadedModel) else model
        self.config = with_overrides(config or default_config(self.model_name), overrides)
        self._loaded = model if isinstance(model, LoadedModel) else None

    @property
    def loaded(self) -> LoadedModel:
        """The model, loaded on first access.

        Raises:
            ModelUnavailableError: It cannot be found locally (the message lists alternatives).
        """
        if self._loaded is None:
            cfg = self.config
            self._loaded = load_model(self.model_name, dtype=cfg.dtype, device=cfg.device)
        return self._loaded

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Return the next user turn of each state (see the module docstring for guardrails)."""
        return respond_with_retries(states, self.generate, self.config)

    def prompt(self, state: ConversationState) -> str:
        """The text the model continues for ``state``."""
        return render_user_prompt(self.loaded.tokenizer, state.intent.system_prompt, state.messages)

    def call_budget(self) -> CallBudget:
        """In-process: up to ``tries`` generations of ``max_new_tokens`` per user turn
        (:mod:`userlm_env.estimate`; loads nothing)."""
        cfg = self.config
        return CallBudget(
            self.model_name,
            local=True,
            calls_per_turn=cfg.tries,
            max_output_tokens=cfg.max_new_tokens,
        )

    def prompt_texts(self, intent: Intent) -> list[str]:
        """The prompt besides the conversation: the intent as the system message."""
        return [intent.system_prompt]

    # --- generation ---------------------------------------------------------------------------

    def generate(self, states: list[ConversationState], attempt: int) -> list[Generation]:
        """One raw generation per state for try ``attempt``, before the guardrails vet it.

        This is the backend ``respond`` retries with; first turns and later turns go to
        ``generate`` in separate calls (their end-marker bans differ), results in state order.
        """
        plan = self._plan

        def group(rows: list[ConversationState], at: int, first_turn: bool) -> list[Generation]:
            config = plan.first_turn_config if first_turn else plan.generation_config
            return self._generate_with(rows, at, config)

        return in_turn_groups(states, attempt, group)

    def _generate_with(
        self, states: list[ConversationState], attempt: int, generation_config: Any
    ) -> list[Generation]:
        rows = generate_rows(
            self.loaded,
            [self.prompt(state) for state in states],
            generation_config=generation_config,
            sampling=self._sampling(states, attempt),
            logits_processors=self._plan.processors,
            stopping_criteria=self._stopping,
            batch_size=self.config.batch_size,
        )
        return [self._decode(ids) for ids in rows]

    def _sampling(self, states: list[ConversationState], attempt: int) -> Sampling | None:
        """Per-row seeds (:func:`simulators.sampling.row_seed`), or ``None`` for greedy."""
        cfg = self.config
        if not cfg.do_sample:
            return None
        seeds = [row_seed(state, attempt) for state in states]
        return Sampling(seeds, temperature=cfg.temperature, top_p=cfg.top_p)

    def _stopping(self, prompt_length: int) -> list[Any]:
        """One ``generate`` call's stopping criteria (the word limit must know where rows start)."""
        limit, tokenizer = self.config.max_words, self.loaded.tokenizer
        criteria: list[Any] = []
        if limit is not None:
            criteria.append(WordLimitStop(tokenizer, prompt_length, limit))
        if self._plan.stop_string is not None:
            criteria.append(self._plan.stop_string)
        return criteria

    def _decode(self, ids: list[int]) -> Generation:
        """Decode one row's new tokens up to its end of turn; report whether it was cut short."""
        tokenizer, plan = self.loaded.tokenizer, self._plan
        for position, token in enumerate(ids):
            if token == plan.marker_id:  # keep text before it: vet() decides
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
        bias = [
            (tokenizer.encode(text, add_special_tokens=False), value)
            for text, value in (cfg.logit_bias or {}).items()
        ]
        return _Plan(
            marker_id=marker_id,
            boundary=frozenset((set(stop_ids) | set(tokenizer.all_special_ids)) - {marker_id}),
            generation_config=self._generation_config(marker_id, stop_ids, cfg.allow_end),
            first_turn_config=self._generation_config(marker_id, stop_ids, allow_end=False),
            processors=(TokenSequenceBias(bias),) if bias else (),
            stop_string=self._stop_string(marker_id),
        )

    def _generation_config(
        self, marker_id: int | None, stop_ids: list[int], allow_end: bool
    ) -> Any:
        """A call's config; guardrails 1 and 2 are transformers' own token bans.

        ``begin_suppress_tokens`` bans the first generated position only: transformers checks
        ``input_ids.shape[-1] == begin_index`` with ``begin_index`` the padded prompt width, the
        same for every left-padded row. ``suppress_tokens`` bans at every step; it holds the
        end marker's tokens unless ``allow_end``.
        """
        from transformers import GenerationConfig

        cfg, tokenizer = self.config, self.loaded.tokenizer
        ends = [marker_id] if marker_id is not None and allow_end else []
        first_words = word_variants(cfg.ban_first_words) if cfg.ban_first_words else []
        first_ban = first_token_ids(tokenizer, first_words)
        end_ban = [] if allow_end else end_ban_token_ids(tokenizer, cfg.end_marker)
        return GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=1,
            do_sample=False,  # the seeded sampler has already picked the token
            eos_token_id=sorted({*stop_ids, *ends}),
            pad_token_id=tokenizer.pad_token_id,
            begin_suppress_tokens=first_ban or None,
            suppress_tokens=end_ban or None,
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
