"""How the LLM client's requests reach a provider: LiteLLM, the key, the HTTP connection pool.

* :func:`load_litellm` imports LiteLLM once, lazily (the import takes seconds).
* :func:`provider_of` asks LiteLLM which provider serves a model string.
* :func:`resolve_api_key` picks the key sent with every call; an OpenAI-compatible local
  server with no key anywhere gets :data:`PLACEHOLDER_API_KEY`.
* :func:`missing_api_keys` names the environment variables a hosted provider needs and lacks
  (checked offline); :func:`key_hint` says how to give a key, for error messages.
* :func:`sized_openai_client` builds an ``AsyncOpenAI`` client whose httpx pool holds as many
  connections as the client allows requests in flight (for providers LiteLLM serves through
  the OpenAI SDK, which accept it as LiteLLM's ``client=`` hook).
* :class:`LoopResources` holds what is bound to one event loop: the semaphore and that client.
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from userlm_env.logs import import_litellm

__all__ = [
    "OPENAI_SDK_PROVIDERS",
    "PLACEHOLDER_API_KEY",
    "LoopResources",
    "key_hint",
    "load_litellm",
    "missing_api_keys",
    "provider_of",
    "resolve_api_key",
    "sized_openai_client",
]

#: Providers that LiteLLM serves through the OpenAI SDK, which accept our sized client.
OPENAI_SDK_PROVIDERS = frozenset({"openai", "text-completion-openai"})
#: Key sent to an OpenAI-compatible ``api_base`` when none is configured or in the environment:
#: local servers (vLLM, llama.cpp) ignore keys, but the OpenAI SDK sends no request without one.
PLACEHOLDER_API_KEY = "EMPTY"


@dataclass
class LoopResources:
    """Objects bound to one event loop: the in-flight limit and the sized HTTP client.

    Attributes:
        semaphore: Bounds the requests in flight on this loop.
        http_client: An ``openai.AsyncOpenAI`` for LiteLLM's ``client=`` hook, or ``None``.
    """

    semaphore: asyncio.Semaphore
    http_client: Any | None

    async def aclose(self) -> None:
        """Close the HTTP client, if any."""
        if self.http_client is not None:
            await self.http_client.close()


@functools.cache
def load_litellm() -> ModuleType:
    """Import LiteLLM once, quietly (its import costs seconds).

    Its loggers stay at WARNING unless a level was set on them, and print each record once
    (see :func:`userlm_env.logs.import_litellm`). Set ``LITELLM_LOCAL_MODEL_COST_MAP`` before
    (:mod:`userlm_env.llm` does), or LiteLLM fetches its price map from the network.
    """
    return import_litellm()


def provider_of(model: str, api_base: str | None) -> tuple[str | None, str | None]:
    """The LiteLLM provider of ``model`` and the endpoint it resolves to.

    Returns:
        ``(provider, api_base)``; the provider is ``None`` for a model string LiteLLM does not
        know (the call itself will report it).
    """
    try:
        _, provider, _, resolved = load_litellm().get_llm_provider(model=model, api_base=api_base)
    except Exception:  # unknown model string: the call itself will report it
        return None, api_base
    return provider, resolved or api_base


def resolve_api_key(model: str, api_base: str | None, api_key: str | None) -> str | None:
    """The key sent with every call.

    The configured key; else ``None`` (LiteLLM reads the provider's environment variable),
    except for an OpenAI-compatible ``api_base`` with no ``OPENAI_API_KEY`` set, which gets
    :data:`PLACEHOLDER_API_KEY`: without it every call to a keyless local server would fail
    with "Missing credentials".
    """
    if api_key:
        return api_key
    keyless_local = api_base and provider_of(model, api_base)[0] in OPENAI_SDK_PROVIDERS
    if keyless_local and not os.environ.get("OPENAI_API_KEY"):
        return PLACEHOLDER_API_KEY
    return None


def missing_api_keys(model: str, api_base: str | None, api_key: str | None) -> list[str]:
    """The key variables a hosted provider of ``model`` needs and the environment lacks.

    Asks LiteLLM's offline ``validate_environment``, for a model with neither a configured key
    nor an ``api_base`` (an endpoint of one's own is checked by asking it, not here). Only
    variables named ``*_API_KEY`` or ``*_API_TOKEN`` count: the others it lists (AWS and Vertex
    credentials, ``OLLAMA_API_BASE``) have other sources or defaults. When several are listed
    (Gemini: ``GEMINI_API_KEY`` and ``GOOGLE_API_KEY``), any one of them would do.

    Returns:
        The missing variable names, sorted; empty when nothing is known to be missing.
    """
    if api_key or api_base:
        return []
    try:
        verdict = load_litellm().validate_environment(model=model)
    except Exception:  # a model string LiteLLM cannot parse: the call itself will report it
        return []
    names = verdict.get("missing_keys") or []
    return sorted({str(n) for n in names if str(n).endswith(("_API_KEY", "_API_TOKEN"))})


def key_hint(model: str, api_base: str | None, api_key: str | None, *, setting: str) -> str:
    """How to give ``model`` a key that works, for error messages.

    Args:
        model, api_base, api_key: The client's settings.
        setting: Where a key is configured, as the message should name it (e.g.
            ``"assistant.api_key=..."``).

    Returns:
        ``"set X, or give the key as <setting>"`` naming the missing variables
        (:func:`missing_api_keys`), else ``"check the key given as <setting>"`` (and
        ``OPENAI_API_KEY`` for providers served through the OpenAI SDK).
    """
    missing = missing_api_keys(model, api_base, api_key)
    if missing:
        return f"set {' or '.join(missing)}, or give the key as {setting}"
    if provider_of(model, api_base)[0] in OPENAI_SDK_PROVIDERS:
        return f"check the key given as {setting} or in OPENAI_API_KEY"
    return f"check the key given as {setting} or in the provider's key variable"


def sized_openai_client(
    model: str, api_base: str | None, api_key: str | None, *, size: int, timeout_s: float
) -> Any | None:
    """An ``AsyncOpenAI`` whose connection pool holds ``size`` connections.

    Args:
        model: The LiteLLM model string.
        api_base: The configured endpoint, if any.
        api_key: The resolved key (see :func:`resolve_api_key`).
        size: Connections in the pool.
        timeout_s: Per-request timeout.

    Returns:
        The client for providers LiteLLM serves through the OpenAI SDK when a key is known;
        otherwise ``None`` (LiteLLM builds its own client).
    """
    provider, base_url = provider_of(model, api_base)
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if provider not in OPENAI_SDK_PROVIDERS or not key:
        return None
    import httpx
    import openai

    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    http = httpx.AsyncClient(limits=limits, timeout=timeout_s)
    # openai accepts an httpx client at run time even where its annotation names httpx2's
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=base_url,
        timeout=timeout_s,
        max_retries=0,
        http_client=http,  # type: ignore[arg-type,unused-ignore]
    )
