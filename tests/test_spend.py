"""Prices, spend accounting and the run folder's spend ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistants import make_assistant
from simulators import make_simulator
from tests.fault_server import FaultServer
from userlm_env.errors import DataError
from userlm_env.llm import LLMClient, LLMConfig
from userlm_env.pricing import Price, configured_price, litellm_price, model_price
from userlm_env.spend import (
    LEDGER,
    Spend,
    SpendMeter,
    llm_clients,
    read_ledger,
    unpriced_models,
    write_ledger,
)


def test_spend_reads_as_money_with_unknown_parts_named() -> None:
    assert str(Spend(0.01234)) == "$0.0123"
    assert str(Spend(0.5, 2)) == "$0.5000 + unknown"
    assert str(Spend(0.0, 3)) == "unknown"
    assert Spend(1.0, 1) + Spend(0.5, 2) == Spend(1.5, 3)
    assert not Spend(2.0).unknown and Spend(0.0, 1).unknown


def test_a_configured_price_needs_both_halves_and_non_negative_numbers() -> None:
    assert configured_price(None, None) is None
    price = configured_price(0.15, 0.6)
    assert price == Price(0.15e-6, 0.6e-6, "config")
    assert price.cost({"prompt_tokens": 1_000_000, "completion_tokens": 10}) == pytest.approx(
        0.15 + 6e-6
    )
    assert price.cost({"prompt_tokens": 3}) is None
    with pytest.raises(ValueError, match="give both"):
        configured_price(0.15, None)
    with pytest.raises(ValueError, match="output_usd_per_mtok"):
        configured_price(0.1, -1.0)
    with pytest.raises(ValueError, match="give both"):
        LLMConfig("openai/x", input_usd_per_mtok=1.0)


def test_litellm_knows_hosted_prices_and_not_self_hosted_names() -> None:
    hosted = litellm_price("gpt-4o-mini")
    assert hosted is not None and hosted.source == "litellm" and hosted.input_usd_per_token > 0
    assert litellm_price("openai/my-local-model") is None
    given = model_price("openai/my-local-model", 0.0, 0.0)
    assert given is not None and given.of_tokens(100, 100) == 0.0
    assert model_price("gpt-4o-mini", 1.0, 2.0) == Price(1e-6, 2e-6, "config")


def test_a_configured_price_prices_an_unmapped_model_from_the_reported_usage(
    fault_server: FaultServer,
) -> None:
    settings = {"api_base": fault_server.api_base, "api_key": "k", "max_retries": 0}
    unpriced = LLMClient(LLMConfig("openai/my-local-model", **settings))  # type: ignore[arg-type]
    (result,) = unpriced.chat_many([[{"role": "user", "content": "hi"}]])
    assert result.cost is None and unpriced.stats.cost_unknown_calls == 1
    priced = LLMClient(
        LLMConfig(
            "openai/my-local-model",
            input_usd_per_mtok=2.0,
            output_usd_per_mtok=10.0,
            **settings,  # type: ignore[arg-type]
        )
    )
    results = priced.chat_many([[{"role": "user", "content": "hi"}]] * 3)
    per_call = 10 * 2e-6 + 5 * 10e-6  # the fault server reports 10 prompt, 5 completion tokens
    assert [r.cost for r in results] == pytest.approx([per_call] * 3)
    meter = SpendMeter([unpriced, priced], earlier=Spend(1.0, 2))
    assert meter.this_run() == Spend(pytest.approx(3 * per_call), 1)  # type: ignore[arg-type]
    assert meter().known_usd == pytest.approx(1.0 + 3 * per_call)
    assert meter().unknown_calls == 3
    assert unpriced_models([unpriced, priced]) == ["openai/my-local-model"]


def test_components_that_call_hosted_models_expose_their_clients() -> None:
    assistant = make_assistant(
        "litellm", model="gpt-4o-mini", input_usd_per_mtok=1.0, output_usd_per_mtok=1.0
    )
    prompted = make_simulator("prompted", model="openai/x", api_base="http://127.0.0.1:9/v1")
    server_user = make_simulator("userlm_server", model="openai/u", tokenizer="embedded")
    found = llm_clients(assistant, prompted, server_user, make_simulator("sharded"), object())
    assert [c.config.model for c in found] == ["gpt-4o-mini", "openai/x", "openai/u"]
    assert found[0].config.input_usd_per_mtok == 1.0
    local = make_simulator("prompted", model="embedded", backend="hf")
    assert llm_clients(local) == []
    assert llm_clients(found[0], found[0]) == [found[0]]  # counted once


def test_the_ledger_round_trips_and_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    assert read_ledger(tmp_path) == Spend()
    write_ledger(tmp_path, Spend(0.25, 1), note="x")
    assert read_ledger(tmp_path) == Spend(0.25, 1)
    (tmp_path / LEDGER).write_text("[1, 2]")
    with pytest.raises(DataError, match="not a spend ledger"):
        read_ledger(tmp_path)
