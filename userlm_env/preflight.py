"""Cheap checks before a run spends anything: settings, keys, local models, endpoints.

A scoring run that cannot work should stop in seconds with one line that names what to fix,
not after an hour of retried calls. :func:`preflight` checks the components of a run (the
assistant and the simulator, keyed by their config group), cheapest first, and raises
:class:`PreflightError` at the first problem:

1. **Keys of hosted models** (offline): a component's LLM clients
   (:func:`userlm_env.spend.llm_clients`) without an ``api_base`` and without a configured
   key need their provider's key variable (LiteLLM's ``validate_environment``; see
   :func:`userlm_env.llm_transport.missing_api_keys`).
2. **Local models** (offline, no load): the model a component runs in-process (its
   :meth:`call_budget` says ``local`` and calls a model; a component without one may expose a
   ``model_name`` string) and the tokenizer a server-backed component renders prompts with (a
   ``tokenizer_name`` string) must resolve the way :func:`userlm_env.models.load_model`
   resolves names: the embedded model is installed, a path exists, a hub id is in the local
   Hugging Face cache when the hub is offline (:func:`userlm_env.models.check_available`).
3. **Endpoints** (one request each): every distinct ``api_base`` gets one ``GET
   {api_base}/models`` (llama.cpp's server and vLLM answer it) with a short timeout and no
   retry. No answer (connection refused, unknown host, timeout) fails; HTTP 401/403 fails for
   OpenAI-compatible endpoints (the key was refused); any other answer means the server is
   there (a 404 from a server without that route included), and the run goes on.

:func:`check_required` catches mandatory config values left unset (``???``) before anything
is built. Nothing here loads a model or sends a completion request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from userlm_env.errors import ModelUnavailableError, UserLMEnvError
from userlm_env.estimate import HasCallBudget
from userlm_env.llm_transport import (
    OPENAI_SDK_PROVIDERS,
    key_hint,
    missing_api_keys,
    provider_of,
    resolve_api_key,
)
from userlm_env.models import check_available
from userlm_env.spend import llm_clients

__all__ = [
    "PROBE_TIMEOUT_S",
    "REQUIRED_EXAMPLES",
    "PreflightError",
    "check_required",
    "local_models",
    "preflight",
    "probe_endpoint",
]

#: Seconds the one request to an endpoint may take (connect and answer).
PROBE_TIMEOUT_S = 5.0
#: Example values of mandatory settings, shown when one is missing.
REQUIRED_EXAMPLES: Mapping[str, str] = {"assistant.model": "openai/gpt-4o-mini"}
#: Providers whose endpoints take the key as ``Authorization: Bearer`` and answer ``/models``.
_BEARER_PROVIDERS = OPENAI_SDK_PROVIDERS | {"hosted_vllm"}


class PreflightError(UserLMEnvError, RuntimeError):
    """A run cannot start as configured; the message is one line naming what to fix."""


@dataclass(frozen=True)
class _Endpoint:
    """One ``api_base`` to ask, with the first role and model that use it."""

    role: str
    model: str
    api_base: str
    api_key: str | None
    bearer: bool  # OpenAI-compatible: the key goes as a bearer token and 401/403 mean refused


def check_required(cfg: Any, examples: Mapping[str, str] = REQUIRED_EXAMPLES) -> None:
    """Refuse a config with mandatory values left unset (``???`` in the YAML).

    Args:
        cfg: An OmegaConf config (a Hydra job's ``cfg``).
        examples: Example values to show, by dotted key.

    Raises:
        PreflightError: ``"assistant.model is required, e.g. assistant.model=openai/gpt-4o-mini"``
            (every missing key is named).
    """
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return
    shown = [f"{key}={examples[key]}" for key in missing if key in examples]
    verb = "is" if len(missing) == 1 else "are"
    advice = f"e.g. {' '.join(shown)}" if shown else f"pass {missing[0]}=<value>"
    raise PreflightError(f"{', '.join(missing)} {verb} required, {advice}")


def preflight(components: Mapping[str, object], *, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Check what can be checked cheaply before ``components`` are used.

    Args:
        components: Built components by config group, e.g. ``{"assistant": ..., "simulator":
            ...}``; the group names the settings in messages (``assistant.api_base``).
        timeout_s: Limit on each endpoint's one request.

    Returns:
        One line per check passed (for the run's log), e.g. ``"simulator endpoint
        http://127.0.0.1:8080/v1 answered (HTTP 200)"``.

    Raises:
        PreflightError: At the first failed check, with one line that names the variable,
            the setting and URL, or the model to fix.
    """
    passed: list[str] = []
    for role, component in components.items():
        passed += _check_keys(role, component)
    for role, component in components.items():
        for setting, name in local_models(component):
            _check_local(role, setting, name)
            passed.append(f"{role} {setting} {name!r} is available offline")
    for endpoint in _endpoints(components):
        passed.append(_check_endpoint(endpoint, timeout_s))
    return passed


def _check_keys(role: str, component: object) -> list[str]:
    passed = []
    for client in llm_clients(component):
        cfg = client.config
        missing = missing_api_keys(cfg.model, cfg.api_base, cfg.api_key)
        if len(missing) == 1:
            raise PreflightError(
                f"the {role} model {cfg.model!r} needs {missing[0]}, which is not set (export "
                f"it, or pass {role}.api_key=...)"
            )
        if missing:
            raise PreflightError(
                f"the {role} model {cfg.model!r} needs {' or '.join(missing)}, none of which is "
                f"set (export one, or pass {role}.api_key=...)"
            )
        if not cfg.api_base:
            passed.append(f"{role} model {cfg.model!r}: no key variable missing")
    return passed


def local_models(component: object) -> list[tuple[str, str]]:
    """The local models and tokenizers ``component`` will load, as ``(setting, name)``.

    The model comes from :meth:`call_budget` when it runs in-process and calls a model (the
    embedded or a Hugging Face model), else from a ``model_name`` string attribute of a
    component without a call budget; a ``tokenizer_name`` string attribute names the tokenizer
    of a server-backed component (:class:`simulators.userlm_server.UserLMServerSimulator`).
    ``setting`` is ``"model"`` or ``"tokenizer"``, the key of the component's config.
    """
    found: list[tuple[str, str]] = []
    if isinstance(component, HasCallBudget):
        budget = component.call_budget()
        if budget.local and budget.calls_model:
            found.append(("model", budget.model))
    elif isinstance(name := getattr(component, "model_name", None), str):
        found.append(("model", name))
    if isinstance(tokenizer := getattr(component, "tokenizer_name", None), str):
        found.append(("tokenizer", tokenizer))
    return found


def _check_local(role: str, setting: str, name: str) -> None:
    try:
        check_available(name, tokenizer_only=setting == "tokenizer")
    except ModelUnavailableError as error:
        raise PreflightError(
            f"the {role} {setting} ({role}.{setting}={name}) is not available: {error}"
        ) from error


def _endpoints(components: Mapping[str, object]) -> Iterator[_Endpoint]:
    """The distinct endpoints of the components' clients, in order of first use."""
    seen: set[tuple[str, str | None]] = set()
    for role, component in components.items():
        for client in llm_clients(component):
            cfg = client.config
            if not cfg.api_base:
                continue
            key = resolve_api_key(cfg.model, cfg.api_base, cfg.api_key)
            key = key or os.environ.get("OPENAI_API_KEY")
            if (cfg.api_base, key) in seen:
                continue
            seen.add((cfg.api_base, key))
            bearer = provider_of(cfg.model, cfg.api_base)[0] in _BEARER_PROVIDERS
            yield _Endpoint(role, cfg.model, cfg.api_base, key, bearer)


def _check_endpoint(endpoint: _Endpoint, timeout_s: float) -> str:
    role, url = endpoint.role, endpoint.api_base
    try:
        status = probe_endpoint(url, endpoint.api_key if endpoint.bearer else None, timeout_s)
    except OSError as error:
        raise PreflightError(
            f"cannot reach the {role} endpoint {url} ({error}): start the server there, or fix "
            f"{role}.api_base={url}"
        ) from error
    if endpoint.bearer and status in (401, 403):
        setting = f"{role}.api_key=..."
        hint = key_hint(endpoint.model, url, endpoint.api_key, setting=setting)
        raise PreflightError(
            f"the {role} endpoint {url} refused the key (HTTP {status} on GET {_models_url(url)}): "
            f"{hint}"
        )
    return f"{role} endpoint {url} answered (HTTP {status})"


def probe_endpoint(api_base: str, api_key: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> int:
    """Send the one ``GET {api_base}/models`` request; no retry.

    Args:
        api_base: The endpoint, e.g. ``http://127.0.0.1:8080/v1``.
        api_key: Sent as ``Authorization: Bearer`` when given.
        timeout_s: Limit on connecting and on the answer.

    Returns:
        The HTTP status of the answer.

    Raises:
        OSError: No answer: ``ConnectionError`` (refused, unknown host, not a URL) or
            ``TimeoutError``, with the reason as message.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(_models_url(api_base), headers=headers, timeout=timeout_s)
    except httpx.TimeoutException as error:
        raise TimeoutError(f"no answer within {timeout_s:g} s") from error
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        raise ConnectionError(f"not a usable URL: {error}") from error
    except httpx.HTTPError as error:
        raise ConnectionError(str(error) or type(error).__name__) from error
    return response.status_code


def _models_url(api_base: str) -> str:
    return api_base.rstrip("/") + "/models"
