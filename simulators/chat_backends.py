"""The chat-model backends the LLM-driven users share: their settings and how they generate.

:class:`ChatModelConfig` holds what every chat-model user (the prompted simulator, the
Lost-in-Conversation user) needs to reach its model; each simulator's config extends it. Two
backends turn ``(conversations, seeds)`` into one text per conversation, in order:

* ``"litellm"`` (:class:`LiteLLMBackend`): any LiteLLM model through
  :class:`userlm_env.llm.LLMClient` (bounded concurrency, retries, a seed per request);
* ``"hf"`` (:class:`HFBackend`): a local model in-process (e.g. the embedded
  ``smollm2-135m-instruct``), batched through :func:`userlm_env.generation.generate_rows` with
  per-row seeds, loaded at its first ``generate`` (building it loads nothing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from userlm_env.errors import UnknownNameError
from userlm_env.estimate import CallBudget, client_budget
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.types import Message

if TYPE_CHECKING:  # torch-free at import: the HF backend imports its pieces at first use
    from userlm_env.generation import Sampling
    from userlm_env.models import LoadedModel

__all__ = [
    "BACKENDS",
    "ChatBackend",
    "ChatModelConfig",
    "HFBackend",
    "LiteLLMBackend",
    "make_backend",
]


@dataclass
class ChatModelConfig:
    """How a chat-model user reaches and samples its model (simulator configs extend it)."""

    backend: str = "litellm"  # "litellm" (any LiteLLM model) or "hf" (a local model in-process)
    temperature: float = 1.0  # sampling temperature; 0 decodes greedily
    top_p: float | None = None  # nucleus sampling mass; None = the backend's default (1.0)
    max_tokens: int = 200  # longest generated text, in tokens
    max_tries: int = 4  # generations per row before the simulator gives up with an error
    api_base: str | None = None  # litellm: endpoint URL of a self-hosted server
    api_key: str | None = None  # litellm: key for the endpoint (None: LiteLLM's env lookup)
    timeout_s: float = 60.0  # litellm: per request, seconds
    max_retries: int = 4  # litellm: retries of a failed request
    concurrency: int = 8  # litellm: requests in flight at once
    extra_body: dict[str, Any] = field(default_factory=dict)  # litellm: server-only fields
    input_usd_per_mtok: float | None = None  # litellm: USD per million prompt tokens (None: map)
    output_usd_per_mtok: float | None = None  # litellm: USD per million generated tokens
    batch_size: int = 16  # hf: rows per generate call
    dtype: str | None = None  # hf: model dtype name; None = float32 on CPU, bfloat16 on GPU
    device: str | None = None  # hf: torch device; None = cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UnknownNameError(
                f"unknown chat-model backend {self.backend!r}; known: {sorted(BACKENDS)}"
            )
        if self.max_tries < 1 or self.max_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_tries, max_tokens and batch_size must be at least 1")
        if self.temperature < 0 or not (self.top_p is None or 0 < self.top_p <= 1):
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


class ChatBackend(Protocol):
    """Generates one text per conversation, row ``i`` sampled with ``seeds[i]``."""

    def generate(self, conversations: list[list[Message]], seeds: list[int]) -> list[str]: ...

    def call_budget(self, calls_per_turn: int, *, sees_history: bool = True) -> CallBudget:
        """What ``calls_per_turn`` generations per turn call (:mod:`userlm_env.estimate`)."""
        ...


class LiteLLMBackend:
    """Chat completions through the project's single LiteLLM wrapper."""

    def __init__(self, model: str, config: ChatModelConfig) -> None:
        # Fields both configs have (api_base, temperature, timeout_s ...) mean the same thing.
        names = {f.name for f in dataclasses.fields(LLMConfig)} & set(vars(config))
        self.client = LLMClient(LLMConfig(model=model, **{n: getattr(config, n) for n in names}))
        self.params: dict[str, Any] = {"top_p": config.top_p} if config.top_p is not None else {}
        if config.extra_body:
            self.params["extra_body"] = dict(config.extra_body)

    def generate(self, conversations: list[list[Message]], seeds: list[int]) -> list[str]:
        results = self.client.chat_many(conversations, seeds=seeds, **self.params)
        return [result.text for result in results]

    def llm_clients(self) -> list[LLMClient]:
        """The backend's client (for spend accounting: :mod:`userlm_env.spend`)."""
        return [self.client]

    def call_budget(self, calls_per_turn: int, *, sees_history: bool = True) -> CallBudget:
        """Requests of at most ``max_tokens``, retried up to ``max_retries`` times each, at the
        configured or LiteLLM's price."""
        return client_budget(
            self.client.config, calls_per_turn=calls_per_turn, sees_history=sees_history
        )


class HFBackend:
    """Batched, per-row seeded ``generate`` of a local chat model (left padding).

    The model is loaded at the first ``generate``, not when the backend is built; generation
    goes through :func:`userlm_env.generation.generate_rows`.
    """

    def __init__(self, model: str, config: ChatModelConfig) -> None:
        self.model_name = model
        self.config = config
        self._loaded: LoadedModel | None = None

    @property
    def loaded(self) -> LoadedModel:
        """The :class:`~userlm_env.models.LoadedModel`, loaded on first access.

        Raises:
            ModelUnavailableError: It cannot be found locally.
        """
        if self._loaded is None:
            from userlm_env.models import load_model

            cfg = self.config
            self._loaded = load_model(self.model_name, dtype=cfg.dtype, device=cfg.device)
        return self._loaded

    def call_budget(self, calls_per_turn: int, *, sees_history: bool = True) -> CallBudget:
        """In-process generations of at most ``max_tokens`` (loads nothing)."""
        return CallBudget(
            self.model_name,
            local=True,
            calls_per_turn=calls_per_turn,
            max_output_tokens=self.config.max_tokens,
            sees_history=sees_history,
        )

    def generate(self, conversations: list[list[Message]], seeds: list[int]) -> list[str]:
        from userlm_env.generation import generate_rows

        tokenizer = self.loaded.tokenizer
        prompts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        rows = generate_rows(
            self.loaded,
            prompts,
            generation_config=self._generation_config(),
            sampling=self._sampling(seeds),
            batch_size=self.config.batch_size,
        )
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in rows]

    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        from userlm_env.chat_format import end_of_turn_token_ids

        return GenerationConfig(
            max_new_tokens=self.config.max_tokens,
            do_sample=False,  # the seeded sampler draws the tokens
            eos_token_id=end_of_turn_token_ids(self.loaded.tokenizer),  # EOS, <|im_end|> ...
            pad_token_id=self.loaded.tokenizer.pad_token_id,
        )

    def _sampling(self, seeds: list[int]) -> Sampling | None:
        """Per-row seeded sampling, or ``None`` (greedy) at temperature 0."""
        from userlm_env.generation import Sampling

        cfg = self.config
        return Sampling(seeds, cfg.temperature, cfg.top_p or 1.0) if cfg.temperature else None


#: Backend name -> class.
BACKENDS: dict[str, Callable[[str, ChatModelConfig], ChatBackend]] = {
    "litellm": LiteLLMBackend,
    "hf": HFBackend,
}


def make_backend(model: str, config: ChatModelConfig) -> ChatBackend:
    """The backend ``config.backend`` for ``model``."""
    return BACKENDS[config.backend](model, config)
