"""``LiteLLMAssistant``: any LiteLLM model string as the assistant under evaluation.

Every request goes through :class:`userlm_env.llm.LLMClient` (bounded concurrency, timeouts,
retries with backoff, cost, optional disk cache). The episode's per-turn seed is sent with each
request, so providers that accept a seed reproduce a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from userlm_env.estimate import CallBudget, client_budget
from userlm_env.llm import LLMClient, LLMConfig, LLMResult
from userlm_env.protocols import Conversations, IntentIds, Seeds
from userlm_env.types import AssistantReply, Intent, Message

__all__ = ["DEFAULT_SYSTEM_PROMPT", "LiteLLMAssistant", "with_system_prompt"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. When you solve a math problem, end with the final number. "
    "When you write code, give the complete Python function in one fenced code block."
)


def with_system_prompt(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """The messages sent to the model: the assistant's system prompt, then the conversation."""
    head: list[Message] = [Message(role="system", content=system_prompt)] if system_prompt else []
    return head + [Message(role=m["role"], content=m["content"]) for m in messages]


class LiteLLMAssistant:
    """Replies through LiteLLM; a batch of conversations becomes concurrent requests.

    A request that still fails after its retries does not fail the batch: its row of
    :meth:`respond` carries the error (the rollout records that episode as failed). Each reply
    carries its USD cost (``None`` when the model is unpriced).

    Args:
        model: Any LiteLLM model string (``"gpt-4o"``, ``"openai/<name>"`` with ``api_base``...).
        system_prompt: The assistant's system message (``None`` for none).
        temperature, max_tokens: Sampling settings sent with every request.
        api_base, api_key: Endpoint and credentials (passed through to every call).
        concurrency, timeout_s, max_retries, cache_dir: See :class:`userlm_env.llm.LLMConfig`.
        extra: Further LiteLLM parameters sent with every request.
        input_usd_per_mtok, output_usd_per_mtok: The model's price in USD per million tokens,
            for a model LiteLLM's price map lacks (``0`` for a free self-hosted server).
    """

    def __init__(
        self,
        model: str,
        *,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        temperature: float | None = 0.7,
        max_tokens: int | None = 1024,
        api_base: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_base_s: float = 1.0,
        cache_dir: str | None = None,
        extra: dict[str, Any] | None = None,
        input_usd_per_mtok: float | None = None,
        output_usd_per_mtok: float | None = None,
    ) -> None:
        self.system_prompt = system_prompt
        self.client = LLMClient(
            LLMConfig(
                model=model,
                api_base=api_base,
                api_key=api_key,
                temperature=temperature,
                max_tokens=max_tokens,
                timeout_s=timeout_s,
                max_retries=max_retries,
                backoff_base_s=backoff_base_s,
                concurrency=concurrency,
                cache_dir=cache_dir,
                extra=dict(extra or {}),
                input_usd_per_mtok=input_usd_per_mtok,
                output_usd_per_mtok=output_usd_per_mtok,
            )
        )

    def llm_clients(self) -> list[LLMClient]:
        """The assistant's client (for spend accounting: :mod:`userlm_env.spend`)."""
        return [self.client]

    def call_budget(self) -> CallBudget:
        """One request of at most ``max_tokens`` per reply, retried up to ``max_retries`` times,
        at the configured or LiteLLM's price (:mod:`userlm_env.estimate`)."""
        return client_budget(self.client.config)

    def prompt_texts(self, intent: Intent) -> list[str]:
        """The prompt besides the conversation: the system prompt (the intent is not sent)."""
        return [self.system_prompt] if self.system_prompt else []

    def respond(
        self, conversations: Conversations, *, intent_ids: IntentIds = None, seeds: Seeds = None
    ) -> list[AssistantReply]:
        """One reply per conversation (a failed request: its error, in its row).

        ``seeds`` go with the requests (providers that accept a seed reproduce a run);
        ``intent_ids`` are not used.
        """
        prompts = [with_system_prompt(c, self.system_prompt) for c in conversations]
        results = self.client.chat_many(prompts, seeds=seeds, return_exceptions=True)
        return [_reply(result) for result in results]


def _reply(result: LLMResult | BaseException) -> AssistantReply:
    if isinstance(result, LLMResult):
        return AssistantReply(result.text, cost=result.cost)
    return AssistantReply.failed(result)
