"""The User LM simulator over an OpenAI-compatible *completions* server (vLLM, llama.cpp ...).

:class:`UserLMServerSimulator` (registered as ``"userlm_server"``) behaves like the in-process
:class:`simulators.userlm.UserLMSimulator` but sends raw text completions through the single
LiteLLM wrapper (:class:`userlm_env.llm.LLMClient`), so the model can live on a GPU box (vLLM) or
a CPU server (llama.cpp). It shares the in-process simulator's settings
(:class:`UserLMServerConfig` extends :class:`simulators.userlm.UserLMConfig`) and its verdict
function (:func:`simulators.userlm.judge`), so both reject and end turns the same way.

The prompt is rendered *locally* with the model's own tokenizer by
:func:`userlm_env.chat_format.render_user_prompt` (the intent as the system message, the history,
then the user-turn opening) and sent to ``/v1/completions``, never to a chat endpoint, so the
server cannot re-template it. Generation stops at the template's end-of-turn text
(``<|im_end|>`` for ChatML).

Guardrails (paper appendix D.1) and how each is enforced server-side:

1. First words "I" / "You" / "Here": a server's ``logit_bias`` applies at *every* position, so it
   cannot ban a word only as the opening one. Such turns are rejected and resampled instead.
2. ``allow_end=False``: the first token of the end marker (and of the marker after a space) gets
   a ``logit_bias`` of -100 (``suppress_end_with_logit_bias``). As the bias holds at every
   position, the user cannot type that token anywhere (for SmolLM2 it is ``<``; for UserLM-8b
   the marker is one token of its own). The returned text is checked as well: an end is
   rejected and resampled.
3. and 4. Word-count bounds and verbatim repeats: checked on the returned text.

Rejected rows, and only those, are requested again (concurrently, up to ``concurrency`` requests
in flight), up to ``max_tries`` requests per row; ``metadata["tries"]`` counts them. A row that
never passes returns its last non-empty candidate flagged with ``metadata["guardrail_failed"]``;
a row whose every candidate was empty or a forbidden end raises
:class:`~userlm_env.errors.LLMCallError`. A completion that is, or begins with, the end marker
becomes ``UserTurn(END_MARKER, ended=True)``.

Seeding: every request carries a ``seed`` derived from ``state.turn_seed()`` and the try index.
llama.cpp and vLLM honour it, so the same states give the same turns on the same server.

vLLM note: the default ``extra_body={"skip_special_tokens": False}`` keeps a special-token end
marker in the returned text (vLLM drops special tokens from text by default, which would turn
an end into an empty completion); llama.cpp ignores the field. Set ``extra_body={}`` for servers
that reject unknown fields. ``extra_body`` also carries server features such as llama.cpp's
``grammar``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.guardrails import earlier_texts, first_token_ids
from simulators.userlm import Candidate, UserLMConfig, _row_seed, judge
from userlm_env.chat_format import render_user_prompt, user_turn_suffix
from userlm_env.errors import LLMCallError, ModelUnavailableError
from userlm_env.llm import LLMClient, LLMConfig, LLMResult
from userlm_env.models import EMBEDDED_MODELS, embedded_gguf_path
from userlm_env.types import ConversationState, UserTurn

__all__ = [
    "UserLMServerConfig",
    "UserLMServerSimulator",
    "end_ban_token_ids",
    "load_tokenizer",
    "parse_completion",
]

#: The bound of OpenAI-style ``logit_bias`` values; -100 in effect bans a token.
_BIAS_LIMIT = 100.0


def _default_extra_body() -> dict[str, Any]:
    return {"skip_special_tokens": False}


@dataclass
class UserLMServerConfig(UserLMConfig):
    """Settings of :class:`UserLMServerSimulator`: the in-process ones plus the connection.

    Inherited fields keep their meaning, except: ``max_new_tokens`` is sent as ``max_tokens``;
    ``do_sample=False`` sends temperature 0; ``batch_size`` is the number of prompts per
    concurrent batch of requests; ``logit_bias`` biases every token of each text at every
    position (a server cannot spell sequences); ``dtype`` and ``device`` must stay ``None``.
    """

    api_base: str | None = "http://127.0.0.1:8000/v1"  # completions server URL (vLLM's default)
    api_key: str | None = "EMPTY"  # key sent to the server (local servers ignore it)
    timeout_s: float = 60.0  # per request, seconds
    max_retries: int = 2  # retries of a failed request (timeouts, connection errors, 5xx)
    concurrency: int = 8  # requests in flight at once
    suppress_end_with_logit_bias: bool = True  # allow_end=False also bans the marker server-side
    extra_body: dict[str, Any] = field(default_factory=_default_extra_body)  # server-only fields

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype is not None or self.device is not None:
            raise ValueError("dtype and device apply to the in-process simulator only")


class UserLMServerSimulator:
    """A User LM behind an OpenAI-compatible completions endpoint, for a batch of states.

    Args:
        model: LiteLLM model string of the served model, e.g. ``"openai/microsoft/UserLM-8b"``
            (``openai/`` reaches any OpenAI-compatible server at ``config.api_base``).
        tokenizer: The served model's tokenizer, or a name for :func:`load_tokenizer`; it must
            be the server's own, since the prompt format is rendered with it.
        config: Guardrail, sampling and connection settings; ``overrides`` replace fields.
    """

    def __init__(
        self,
        model: str = "openai/microsoft/UserLM-8b",
        tokenizer: Any = "microsoft/UserLM-8b",
        config: UserLMServerConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.config = _with_overrides(config or UserLMServerConfig(), overrides)
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.client = LLMClient(self._llm_config(model))
        self.stop = _stop_texts(self.tokenizer)
        self.logit_bias = self._logit_bias()

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Return the next user turn of each state (see the module docstring for guardrails)."""
        rows = [_Row(state, earlier_texts(state)) for state in states]
        for attempt in range(self.config.max_tries):
            pending = [row for row in rows if row.result is None]
            if not pending:
                break
            results = self._complete([row.state for row in pending], attempt)
            for row, result in zip(pending, results, strict=True):
                row.settle(parse_completion(result, row.earlier, self.config))
        return [row.finish() for row in rows]

    def prompt(self, state: ConversationState) -> str:
        """The exact text sent to the server for ``state``."""
        return render_user_prompt(self.tokenizer, state.intent.system_prompt, state.messages)

    def request_params(self) -> dict[str, Any]:
        """Sampling parameters sent with every request (besides prompt and seed)."""
        cfg = self.config
        params: dict[str, Any] = {"max_tokens": cfg.max_new_tokens, "stop": list(self.stop)}
        greedy = {"temperature": 0.0}
        params |= {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else greedy
        params |= {"logit_bias": dict(self.logit_bias)} if self.logit_bias else {}
        params |= {"extra_body": dict(cfg.extra_body)} if cfg.extra_body else {}
        return params

    def _complete(self, states: list[ConversationState], attempt: int) -> list[LLMResult]:
        prompts = [self.prompt(state) for state in states]
        seeds = [_row_seed(state, attempt) for state in states]
        size, params = self.config.batch_size, self.request_params()
        results: list[LLMResult] = []
        for start in range(0, len(prompts), size):
            chunk = slice(start, start + size)
            results.extend(self.client.complete_many(prompts[chunk], seeds=seeds[chunk], **params))
        return results

    def _llm_config(self, model: str) -> LLMConfig:
        cfg = self.config
        return LLMConfig(
            model=model,
            api_base=cfg.api_base,
            api_key=cfg.api_key,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            concurrency=cfg.concurrency,
        )

    def _logit_bias(self) -> dict[str, float]:
        """Token id (as a string, the OpenAI convention) -> bias, clipped to [-100, 100]."""
        cfg, bias = self.config, {}
        for text, value in (cfg.logit_bias or {}).items():
            for token in self.tokenizer.encode(text, add_special_tokens=False):
                bias[str(token)] = bias.get(str(token), 0.0) + value
        if not cfg.allow_end and cfg.suppress_end_with_logit_bias:
            for token in end_ban_token_ids(self.tokenizer, cfg.end_marker):
                bias[str(token)] = -_BIAS_LIMIT
        return {k: max(-_BIAS_LIMIT, min(_BIAS_LIMIT, v)) for k, v in bias.items()}


def parse_completion(result: LLMResult, earlier: Sequence[str], config: UserLMConfig) -> Candidate:
    """Judge one server completion: end marker, guardrails, and cut-off at ``max_tokens``."""
    return judge(result.text, earlier, config, truncated=result.finish_reason == "length")


def end_ban_token_ids(tokenizer: Any, end_marker: str) -> list[int]:
    """Tokens to ban so the marker cannot start: its own id, else its first token(s)."""
    single = tokenizer.get_vocab().get(end_marker)
    if single is not None:
        return [single]
    return first_token_ids(tokenizer, [end_marker, " " + end_marker])


def load_tokenizer(name: str) -> Any:
    """Load only the tokenizer of a model: an embedded name, a ``.gguf`` file, a path or hub id.

    Raises:
        ModelUnavailableError: It cannot be found locally (offline hub ids must be cached).
    """
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path(name) if name in EMBEDDED_MODELS else Path(name).expanduser()
    try:
        if gguf.suffix == ".gguf" and gguf.is_file():
            return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"cannot load the tokenizer of {name!r} ({error}); pass the served model's hub id, "
            f"a local checkpoint directory, a .gguf file, or {next(iter(EMBEDDED_MODELS))!r}"
        ) from error


def _stop_texts(tokenizer: Any) -> list[str]:
    """Texts that end a user turn: the template's end-of-turn text and the EOS token."""
    texts = [user_turn_suffix(tokenizer).strip(), tokenizer.eos_token or ""]
    return sorted({text for text in texts if text})


@dataclass
class _Row:
    """One state's progress across tries, local to a ``respond`` call."""

    state: ConversationState
    earlier: list[str]
    tries: int = 0
    last: Candidate | None = None
    result: UserTurn | None = None

    def settle(self, candidate: Candidate) -> None:
        self.tries += 1
        if candidate.reason is None:
            self.result = candidate.turn(self.tries)
        elif not candidate.ended and candidate.text:
            self.last = candidate

    def finish(self) -> UserTurn:
        if self.result is not None:
            return self.result
        if self.last is None:
            raise LLMCallError(
                f"the user LM server produced no usable text for {self.state.intent.task_id!r} "
                f"in {self.tries} tries (every completion was empty or a forbidden end marker)",
                attempts=self.tries,
            )
        return self.last.turn(self.tries, guardrail_failed=self.last.reason)


def _with_overrides(config: UserLMServerConfig, overrides: dict[str, Any]) -> UserLMServerConfig:
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown UserLMServerConfig fields {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **overrides)
