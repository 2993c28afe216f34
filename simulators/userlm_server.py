"""The User LM simulator over an OpenAI-compatible *completions* server (vLLM, llama.cpp ...).

:class:`UserLMServerSimulator` (registered as ``"userlm_server"``) behaves like the in-process
:class:`simulators.userlm.UserLMSimulator` but sends raw text completions through the single
LiteLLM wrapper (:class:`userlm_env.llm.LLMClient`), so the model can live on a GPU box (vLLM) or
a CPU server (llama.cpp). It shares the in-process simulator's sampling and guardrail settings
(:class:`UserLMServerConfig` extends :class:`simulators.sampling.UserLMBaseConfig`), its verdict
(:func:`simulators.sampling.vet`) and its retry loop
(:func:`simulators.sampling.respond_with_retries`), so both reject, retry and end turns the same
way. Neither this module nor building the simulator imports torch or loads the tokenizer: it is
loaded (:func:`userlm_env.models.load_tokenizer`) at first use, ``respond`` or ``prompt``.

The prompt is rendered *locally* with the model's own tokenizer by
:func:`userlm_env.chat_format.render_user_prompt` (the intent as the system message, the history,
then the user-turn opening) and sent to ``/v1/completions``, never to a chat endpoint, so the
server cannot re-template it. Generation stops at the template's end-of-turn text
(``<|im_end|>`` for ChatML).

Guardrails (paper appendix D.1) and how each is enforced server-side:

1. First words "I" / "You" / "Here": a server's ``logit_bias`` applies at *every* position, so it
   cannot ban a word only as the opening one. Such turns are rejected and resampled instead.
2. The end marker, on first turns always (a user never ends a conversation before speaking)
   and on every turn when ``allow_end=False``: the tokens of
   :func:`simulators.guardrails.end_ban_token_ids` (the same ones the in-process simulator
   suppresses: the marker's own token, else the first token of the marker alone and after a
   space) get a ``logit_bias`` of -100 (``suppress_end_with_logit_bias``), which overrides any
   configured bias on them. As the bias holds at every position, the user cannot type those
   tokens anywhere in such a turn (for SmolLM2 ``<`` and `` <``; for UserLM-8b the marker is
   one token of its own). First-turn requests and later ones are therefore sent as two groups
   with their own parameters (:meth:`UserLMServerSimulator.request_params`). The returned text
   is checked as well: a forbidden end is rejected and resampled.
3. and 4. Word-count bounds and verbatim repeats: checked on the returned text.

Rejected rows, and only those, are requested again (concurrently, up to ``concurrency`` requests
in flight), up to ``max_tries`` requests per row (one when greedy); ``metadata["tries"]``
counts them. A row that never passes keeps its best-ranked candidate (an over-long one cut back
at a sentence end when it has one), flagged with ``metadata["guardrail_failed"]`` when it still
breaks a rule (see :mod:`simulators.sampling`); a row whose every candidate was empty or a
forbidden end raises :class:`~userlm_env.errors.LLMCallError`. A completion that is, or begins
with, the end marker becomes ``UserTurn(END_MARKER, ended=True)``.

Seeding: every request carries a ``seed`` derived from ``state.turn_seed()`` and the try index.
llama.cpp and vLLM honour it, but a server's floating-point results also depend on what else it
is doing: llama.cpp reuses the cached prefix of the request it served before (measured: the same
seeded request gave two texts, depending on that request), and vLLM batches requests. Seeds
therefore reproduce turns exactly only when requests go one at a time (``concurrency=1``) in the
same order to a server in the same state; the in-process simulator is exactly reproducible.

vLLM note: the default ``extra_body={"skip_special_tokens": False}`` keeps a special-token end
marker in the returned text (vLLM drops special tokens from text by default, which would turn
an end into an empty completion); llama.cpp ignores the field. Set ``extra_body={}`` for servers
that reject unknown fields. ``extra_body`` also carries server features such as llama.cpp's
``grammar``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from simulators.guardrails import end_ban_token_ids
from simulators.sampling import (
    Candidate,
    Generation,
    UserLMBaseConfig,
    in_turn_groups,
    respond_with_retries,
    row_seed,
    vet,
    with_overrides,
)
from userlm_env.chat_format import render_user_prompt, user_turn_suffix
from userlm_env.estimate import CallBudget, client_budget
from userlm_env.llm import LLMClient, LLMConfig, LLMResult
from userlm_env.models import load_tokenizer
from userlm_env.types import ConversationState, Intent, UserTurn

__all__ = ["UserLMServerConfig", "UserLMServerSimulator", "parse_completion"]

#: The bound of OpenAI-style ``logit_bias`` values; -100 in effect bans a token.
_BIAS_LIMIT = 100.0


def _default_extra_body() -> dict[str, Any]:
    return {"skip_special_tokens": False}


@dataclass
class UserLMServerConfig(UserLMBaseConfig):
    """Settings of :class:`UserLMServerSimulator`: shared sampling and guardrails, connection.

    Inherited fields keep their meaning, except: ``max_new_tokens`` is sent as ``max_tokens``;
    ``do_sample=False`` sends temperature 0; ``logit_bias`` biases every token of each text at
    every position (a server cannot spell sequences).
    """

    api_base: str | None = "http://127.0.0.1:8000/v1"  # completions server URL (vLLM's default)
    api_key: str | None = "EMPTY"  # key sent to the server (local servers ignore it)
    timeout_s: float = 60.0  # per request, seconds
    max_retries: int = 2  # retries of a failed request (timeouts, connection errors, 5xx)
    concurrency: int = 8  # requests in flight at once
    suppress_end_with_logit_bias: bool = True  # ban a forbidden marker server-side too
    input_usd_per_mtok: float | None = None  # price per million prompt tokens (None: LiteLLM's)
    output_usd_per_mtok: float | None = None  # price per million generated tokens
    extra_body: dict[str, Any] = field(default_factory=_default_extra_body)  # server-only fields


class UserLMServerSimulator:
    """A User LM behind an OpenAI-compatible completions endpoint, for a batch of states.

    Args:
        model: LiteLLM model string of the served model, e.g. ``"openai/microsoft/UserLM-8b"``
            (``openai/`` reaches any OpenAI-compatible server at ``config.api_base``).
        tokenizer: The served model's tokenizer, or a name for
            :func:`userlm_env.models.load_tokenizer` (loaded at first use); it must be the
            server's own, since the prompt format is rendered with it.
        config: Guardrail, sampling and connection settings; ``overrides`` replace fields.
    """

    def __init__(
        self,
        model: str = "openai/microsoft/UserLM-8b",
        tokenizer: Any = "microsoft/UserLM-8b",
        config: UserLMServerConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.config = with_overrides(config or UserLMServerConfig(), overrides)
        self.tokenizer_name = tokenizer if isinstance(tokenizer, str) else None
        self._tokenizer = None if isinstance(tokenizer, str) else tokenizer
        self.client = LLMClient(self._llm_config(model))

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer, loaded on first access.

        Raises:
            ModelUnavailableError: It cannot be found locally (the message lists alternatives).
        """
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(str(self.tokenizer_name))
        return self._tokenizer

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Return the next user turn of each state (see the module docstring for guardrails)."""
        source = "the user LM server"
        return respond_with_retries(states, self._complete, self.config, source=source)

    def prompt(self, state: ConversationState) -> str:
        """The exact text sent to the server for ``state``."""
        return render_user_prompt(self.tokenizer, state.intent.system_prompt, state.messages)

    def request_params(self, *, first_turn: bool = False) -> dict[str, Any]:
        """Sampling parameters sent with a request (besides prompt and seed).

        Args:
            first_turn: For a conversation with no message yet (the end marker is banned).
        """
        cfg = self.config
        params: dict[str, Any] = {"max_tokens": cfg.max_new_tokens, "stop": list(self._stop)}
        greedy = {"temperature": 0.0}
        params |= {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else greedy
        bias = self._logit_bias(ban_end=first_turn or not cfg.allow_end)
        params |= {"logit_bias": bias} if bias else {}
        params |= {"extra_body": dict(cfg.extra_body)} if cfg.extra_body else {}
        return params

    def _complete(self, states: list[ConversationState], attempt: int) -> list[Generation]:
        """One completion per state: first turns and later turns as two groups, in order."""
        return in_turn_groups(states, attempt, self._complete_group)

    def _complete_group(
        self, states: list[ConversationState], attempt: int, first_turn: bool
    ) -> list[Generation]:
        prompts = [self.prompt(state) for state in states]
        seeds = [row_seed(state, attempt) for state in states]
        params = self.request_params(first_turn=first_turn)
        results = self.client.complete_many(prompts, seeds=seeds, **params)
        return [_generation(result) for result in results]

    def _llm_config(self, model: str) -> LLMConfig:
        cfg = self.config
        return LLMConfig(
            model=model,
            api_base=cfg.api_base,
            api_key=cfg.api_key,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            concurrency=cfg.concurrency,
            input_usd_per_mtok=cfg.input_usd_per_mtok,
            output_usd_per_mtok=cfg.output_usd_per_mtok,
        )

    def llm_clients(self) -> list[LLMClient]:
        """The client of the server (for spend accounting: :mod:`userlm_env.spend`)."""
        return [self.client]

    def call_budget(self) -> CallBudget:
        """Up to ``tries`` requests of ``max_new_tokens`` per user turn, each retried up to
        ``max_retries`` times, at the configured or LiteLLM's price (:mod:`userlm_env.estimate`;
        loads no tokenizer)."""
        cfg = self.config
        return client_budget(
            self.client.config, calls_per_turn=cfg.tries, max_output_tokens=cfg.max_new_tokens
        )

    def prompt_texts(self, intent: Intent) -> list[str]:
        """The prompt besides the conversation: the intent as the system message."""
        return [intent.system_prompt]

    @cached_property
    def _stop(self) -> list[str]:
        """Texts that end a user turn: the template's end-of-turn text and the EOS token."""
        texts = [user_turn_suffix(self.tokenizer).strip(), self.tokenizer.eos_token or ""]
        return sorted({text for text in texts if text})

    @cached_property
    def _configured_bias(self) -> dict[str, float]:
        """The ``logit_bias`` field as token id (a string, the OpenAI convention) -> bias."""
        bias: dict[str, float] = {}
        for text, value in (self.config.logit_bias or {}).items():
            for token in self.tokenizer.encode(text, add_special_tokens=False):
                bias[str(token)] = bias.get(str(token), 0.0) + value
        return bias

    @cached_property
    def _end_ban(self) -> dict[str, float]:
        """The bias banning the end marker (empty when ``suppress_end_with_logit_bias`` is off)."""
        cfg = self.config
        if not cfg.suppress_end_with_logit_bias:
            return {}
        return {str(t): -_BIAS_LIMIT for t in end_ban_token_ids(self.tokenizer, cfg.end_marker)}

    def _logit_bias(self, *, ban_end: bool) -> dict[str, float]:
        """Token id -> bias of one request, clipped to [-100, 100]; the end ban overrides."""
        bias = {**self._configured_bias, **(self._end_ban if ban_end else {})}
        return {k: max(-_BIAS_LIMIT, min(_BIAS_LIMIT, v)) for k, v in bias.items()}


def parse_completion(
    result: LLMResult, earlier: Sequence[str], config: UserLMBaseConfig
) -> Candidate:
    """Judge one server completion: end marker, guardrails, and cut-off at ``max_tokens``."""
    generation = _generation(result)
    return vet(generation.text, earlier, config, truncated=generation.truncated)


def _generation(result: LLMResult) -> Generation:
    return Generation(result.text, truncated=result.finish_reason == "length")
