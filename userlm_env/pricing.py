"""What one token of a model costs: a price given in the config, else LiteLLM's local price map.

A self-hosted model (``openai/<name>`` behind ``api_base``) is usually missing from LiteLLM's
price map, so its calls cost "unknown". Giving ``input_usd_per_mtok`` and
``output_usd_per_mtok`` (USD per million tokens; ``0`` for a free local server) in an LLM
config prices it: the client then computes each call's cost from the usage the server reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PRICE_FIELDS", "Price", "configured_price", "litellm_price", "model_price"]

#: The two config fields that give a model's price, in USD per million tokens.
PRICE_FIELDS = ("input_usd_per_mtok", "output_usd_per_mtok")


@dataclass(frozen=True)
class Price:
    """USD per input (prompt) token and per output (completion) token.

    Attributes:
        input_usd_per_token: Price of one prompt token.
        output_usd_per_token: Price of one generated token.
        source: ``"config"`` (given by the user) or ``"litellm"`` (LiteLLM's price map).
    """

    input_usd_per_token: float
    output_usd_per_token: float
    source: str

    def cost(self, usage: Mapping[str, int]) -> float | None:
        """USD of one call from its reported usage; ``None`` when the usage is missing."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if prompt is None or completion is None:
            return None
        return self.of_tokens(prompt, completion)

    def of_tokens(self, input_tokens: float, output_tokens: float) -> float:
        """USD of ``input_tokens`` prompt tokens and ``output_tokens`` generated tokens."""
        return input_tokens * self.input_usd_per_token + output_tokens * self.output_usd_per_token


def configured_price(
    input_usd_per_mtok: float | None, output_usd_per_mtok: float | None
) -> Price | None:
    """The price given in a config (``None`` when neither field is set).

    Raises:
        ValueError: Only one of the two is set, or one is negative or not finite.
    """
    if input_usd_per_mtok is None and output_usd_per_mtok is None:
        return None
    if input_usd_per_mtok is None or output_usd_per_mtok is None:
        raise ValueError(
            "give both input_usd_per_mtok and output_usd_per_mtok (USD per million tokens), "
            f"got {input_usd_per_mtok!r} and {output_usd_per_mtok!r}"
        )
    for name, value in zip(PRICE_FIELDS, (input_usd_per_mtok, output_usd_per_mtok), strict=True):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return Price(input_usd_per_mtok / 1e6, output_usd_per_mtok / 1e6, "config")


def litellm_price(model: str) -> Price | None:
    """The price of ``model`` in LiteLLM's local price map (``None`` when it has none)."""
    from userlm_env.llm_transport import load_litellm

    try:
        info: Any = load_litellm().get_model_info(model)
    except Exception:  # LiteLLM raises for unmapped models; "no price" is the answer
        return None
    prices = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if not all(isinstance(p, int | float) and math.isfinite(p) for p in prices):
        return None
    return Price(float(prices[0]), float(prices[1]), "litellm")


def model_price(
    model: str,
    input_usd_per_mtok: float | None = None,
    output_usd_per_mtok: float | None = None,
) -> Price | None:
    """The price of ``model``: the configured one when given, else LiteLLM's, else ``None``."""
    return configured_price(input_usd_per_mtok, output_usd_per_mtok) or litellm_price(model)
