"""``LiteLLMAssistant``: any LiteLLM model string as the assistant under evaluation.

Every request goes through :class:`userlm_env.llm.LLMClient` (bounded concurrency, timeouts,
retries with backoff, cost, optional disk cache). The episode's per-turn seed is sent with each
request, so providers that accept a seed reproduce a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from userlm_env.llm import LLMClient, LLMConfig, LLMResult
from userlm_env.types import ConversationState, Message

__all__ = ["DEFAULT_SYSTEM_PROMPT", "LiteLLMAssistant", "conversation_for_assistant"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. When you solve a math problem, end with the final number. "
    "When you write code, give the complete Python function in one fenced code block."
)


def conversation_for_assistant(
    state: ConversationState, system_prompt: str | None
) -> list[Message]:
    """The messages an assistant sees: its system prompt, then the user/assistant turns.

    The intent and its shards are never shown: the assistant only learns what the user says.
    """
    head: list[Message] = [Message(role="system", content=system_prompt)] if system_prompt else []
    return head + [Message(role=m["role"], content=m["content"]) for m in state.messages]


class LiteLLMAssistant:
    """Replies through LiteLLM; a batch of conversations becomes concurrent requests.

    A request that still fails after its retries does not fail the batch: its row of
    :meth:`respond` holds the :class:`~userlm_env.errors.LLMCallError` instead of a string
    (the rollout records that episode as failed). ``last_costs`` holds the USD cost of each row
    of the latest batch (``None`` when unknown or failed).

    Args:
        model: Any LiteLLM model string (``"gpt-4o"``, ``"openai/<name>"`` with ``api_base``...).
        system_prompt: The assistant's system message (``None`` for none).
        temperature, max_tokens: Sampling settings sent with every request.
        api_base, api_key: Endpoint and credentials (passed through to every call).
        concurrency, timeout_s, max_retries, cache_dir: See :class:`userlm_env.llm.LLMConfig`.
        extra: Further LiteLLM parameters sent with every request.
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
            )
        )
        self.last_costs: list[float | None] = []

    def respond(self, states: Sequence[ConversationState]) -> list[Any]:
        """One reply (or the row's ``LLMCallError``) per state."""
        conversations = [conversation_for_assistant(s, self.system_prompt) for s in states]
        seeds = [s.turn_seed() for s in states]
        results = self.client.chat_many(conversations, seeds=seeds, return_exceptions=True)
        self.last_costs = [r.cost if isinstance(r, LLMResult) else None for r in results]
        return [r.text if isinstance(r, LLMResult) else r for r in results]
