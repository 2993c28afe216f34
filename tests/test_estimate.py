"""The dry-run estimate: bounds on calls, attempts, tokens and cost, and that it calls nothing.

The unit tests check the bounds against formulas written out by hand from the components'
settings. The key test (slow, real llama.cpp server) runs real episodes and checks that every
bound holds against what the clients really sent and the server really reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from assistants.hf import HFAssistant
from assistants.litellm import LiteLLMAssistant
from assistants.scripted import OracleAssistant, WrongAssistant
from simulators.human import HumanSimulator
from simulators.lic import LiCSimulator
from simulators.prompted import PromptedSimulator
from simulators.sharded import ShardedSimulator, stated
from simulators.userlm import UserLMSimulator
from simulators.userlm_server import UserLMServerSimulator
from tests.server_fixtures import LlamaServer, _free_port
from userlm_env.core import ConversationCore
from userlm_env.estimate import (
    CHAT_TOKENS_PER_CALL,
    CHAT_TOKENS_PER_MESSAGE,
    NotEstimableError,
    RunEstimate,
    client_budget,
    count_tokens,
    estimate_judging,
    estimate_run,
)
from userlm_env.intents.sources import load_gsm_symbolic
from userlm_env.llm import LLMClient, LLMConfig, LLMResult
from userlm_env.metrics.intrinsic import IntentAdherenceJudge
from userlm_env.metrics.judge import MAX_FEEDBACK_ERROR_BYTES, feedback_message
from userlm_env.rollout import make_jobs, run_episodes
from userlm_env.types import Intent, Message

PER_MESSAGE, PER_CALL = CHAT_TOKENS_PER_MESSAGE, CHAT_TOKENS_PER_CALL
PRICED = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 4.0}


@pytest.fixture(scope="module")
def closed_base() -> str:
    """An endpoint nothing listens on: any request would fail (and be counted)."""
    return f"http://127.0.0.1:{_free_port()}/v1"


def _clients(*components: Any) -> list[LLMClient]:
    found = []
    for component in components:
        found += component.llm_clients()
    return found


# -- no model -----------------------------------------------------------------------------------


def test_rule_based_user_and_scripted_assistant_call_nothing(apples_intent: Intent) -> None:
    estimate = estimate_run(
        [apples_intent],
        episodes_per_intent=2,
        max_replies=3,
        simulator=ShardedSimulator(),
        assistant=OracleAssistant(),
        already_finished=5,
    )
    assert (estimate.episodes, estimate.already_finished, estimate.max_replies) == (2, 5, 3)
    for role in estimate.roles:
        assert (role.calls, role.attempts, role.input_tokens, role.output_tokens) == (0, 0, 0, 0)
        assert role.cost_usd == 0.0
    user = estimate.role("simulator")
    assert (user.model, user.turns) == ("rule-based", 6)
    longest = [s.text for s in apples_intent.shards] + [ShardedSimulator().config.nudge]
    assert user.turn_tokens == max(count_tokens("rule-based", text) for text in longest)
    assert estimate.role("assistant").model == "scripted"
    assert estimate.role("judge").model == "none"
    assert estimate.cost_usd() == 0.0


@pytest.mark.parametrize(
    "settings",
    [{"strategy": "plain"}, {"strategy": "snowball"}, {"strategy": "recap"}, {"opening": "full"}],
)
def test_rule_turn_bounds_hold_in_real_episodes(settings: dict[str, str]) -> None:
    """Every turn a sharded user says, against wrong answers to the end, fits its bound."""
    intents = load_gsm_symbolic(n=4, seed=1)
    simulator, assistant = ShardedSimulator(**settings), WrongAssistant(intents)
    estimate = estimate_run(
        intents, episodes_per_intent=1, max_replies=6, simulator=simulator, assistant=assistant
    )
    records = run_episodes(
        make_jobs(intents, 1), ConversationCore(simulator, max_replies=6), assistant
    )
    turns = [m["content"] for r in records for m in r.messages if m["role"] == "user"]
    assert sum(r.user_turns for r in records) <= estimate.role("simulator").turns
    assert sum(r.replies for r in records) <= estimate.role("assistant").turns
    bound = estimate.role("simulator").turn_tokens
    assert bound is not None and max(count_tokens("rule-based", t) for t in turns) <= bound
    if settings.get("strategy") == "snowball":  # a late turn restates every shard
        everything = max(count_tokens("rule-based", stated(i.shards)) for i in intents)
        assert bound == max(everything, count_tokens("rule-based", simulator.config.nudge))


# -- API models ---------------------------------------------------------------------------------


def test_api_bounds_follow_each_components_settings(
    apples_intent: Intent, closed_base: str
) -> None:
    """Calls, attempts, tokens and cost, written out by hand from the settings."""
    assistant = LiteLLMAssistant(
        "openai/local",
        api_base=closed_base,
        system_prompt="Be brief.",
        max_tokens=100,
        max_retries=2,
        **PRICED,
    )
    simulator = PromptedSimulator(
        "openai/local",
        api_base=closed_base,
        max_tokens=50,
        max_tries=3,
        max_retries=1,
        input_usd_per_mtok=0.5,
        output_usd_per_mtok=2.0,
    )
    estimate = estimate_run(
        [apples_intent, apples_intent],
        episodes_per_intent=3,
        max_replies=4,
        simulator=simulator,
        assistant=assistant,
    )
    episodes, replies = 6, 4
    reply_cap, turn_cap = 100 + PER_MESSAGE, 50 + PER_MESSAGE
    helper = estimate.role("assistant")
    fixed = count_tokens("openai/local", "Be brief.") + PER_MESSAGE + PER_CALL
    # reply k sees k user turns and k - 1 replies
    per_episode = sum(fixed + k * turn_cap + (k - 1) * reply_cap for k in range(1, replies + 1))
    assert (helper.calls, helper.attempts) == (episodes * replies, episodes * replies * 3)
    assert helper.output_tokens == episodes * replies * 100
    assert helper.input_tokens == episodes * per_episode
    assert helper.cost_usd == pytest.approx(
        helper.input_tokens * 1e-6 + helper.output_tokens * 4e-6
    )

    user = estimate.role("simulator")
    (prompt,) = simulator.prompt_texts(apples_intent)
    assert apples_intent.instruction in prompt
    fixed = count_tokens("openai/local", prompt) + PER_MESSAGE + PER_CALL
    # user turn t sees t - 1 user turns and t - 1 replies; each of 3 tries sends it again
    per_episode = 3 * sum(fixed + (t - 1) * (turn_cap + reply_cap) for t in range(1, replies + 1))
    assert (user.calls, user.attempts) == (episodes * replies * 3, episodes * replies * 3 * 2)
    assert user.output_tokens == user.calls * 50
    assert user.input_tokens == episodes * per_episode
    assert user.cost_usd == pytest.approx(user.input_tokens * 0.5e-6 + user.output_tokens * 2e-6)
    assert estimate.cost_usd() == pytest.approx(helper.cost_usd + user.cost_usd)

    table = estimate.table()
    assert "6 episode(s) to run" in table and "at most 4 replies" in table
    assert f" {helper.calls} |" in table and f" {helper.input_tokens:,} |" in table
    assert f" {user.calls} |" in table and f" {user.attempts} |" in table
    assert f"{estimate.cost_usd():.4f}" in table
    assert _clients(assistant, simulator)[0].stats.calls == 0


def test_an_unpriced_model_makes_the_cost_unknown(apples_intent: Intent, closed_base: str) -> None:
    assistant = LiteLLMAssistant("openai/local", api_base=closed_base, max_tokens=64)
    estimate = estimate_run(
        [apples_intent],
        episodes_per_intent=1,
        max_replies=2,
        simulator=ShardedSimulator(),
        assistant=assistant,
    )
    helper = estimate.role("assistant")
    assert helper.cost_usd is None and helper.input_tokens is not None
    assert estimate.cost_usd() is None
    table = estimate.table()
    assert "no price for 'openai/local'" in table
    assert "assistant.input_usd_per_mtok" in table
    (total,) = [line for line in table.splitlines() if line.startswith("| total ")]
    assert total.split("|")[-2].strip() == "unknown"  # the total's cost cell
    assert "Total cost unknown, as the cost of the assistant is" in table


def test_uncapped_replies_leave_output_and_the_users_prompts_unbounded(
    apples_intent: Intent, closed_base: str
) -> None:
    assistant = LiteLLMAssistant("openai/local", api_base=closed_base, max_tokens=None, **PRICED)
    simulator = PromptedSimulator("openai/local", api_base=closed_base, **PRICED)

    def run(max_replies: int) -> RunEstimate:
        return estimate_run(
            [apples_intent],
            episodes_per_intent=1,
            max_replies=max_replies,
            simulator=simulator,
            assistant=assistant,
        )

    one, two = run(1), run(2)
    for estimate in (one, two):
        helper = estimate.role("assistant")
        assert helper.output_tokens is None and helper.cost_usd is None
        assert helper.calls == estimate.max_replies and estimate.cost_usd() is None
        assert "no cap" in estimate.table()
    # one reply: the user's only turn comes before it, so the user's prompts stay bounded
    assert one.role("simulator").input_tokens is not None
    assert one.role("simulator").cost_usd is not None
    assert two.role("simulator").input_tokens is None
    assert two.role("simulator").cost_usd is None
    assert "the assistant's turns have no length bound" in two.table()


def test_a_person_typing_leaves_the_assistants_prompts_unbounded(
    apples_intent: Intent, closed_base: str
) -> None:
    assistant = LiteLLMAssistant("openai/local", api_base=closed_base, max_tokens=32, **PRICED)
    estimate = estimate_run(
        [apples_intent],
        episodes_per_intent=1,
        max_replies=2,
        simulator=HumanSimulator(),
        assistant=assistant,
    )
    user, helper = estimate.role("simulator"), estimate.role("assistant")
    assert (user.model, user.calls, user.turn_tokens) == ("human", 0, None)
    assert helper.input_tokens is None and helper.output_tokens == 64
    assert "the simulator's turns have no length bound" in helper.note


def test_the_estimate_loads_no_model_and_sends_no_request(
    apples_intent: Intent, closed_base: str
) -> None:
    """Components whose models do not exist, or whose server is not there, are estimated."""
    missing = "no-such-org/no-such-model"
    in_process = [
        (UserLMSimulator(missing, max_tries=5, max_new_tokens=30), HFAssistant(missing)),
        (PromptedSimulator(missing, backend="hf", max_tokens=40), HFAssistant(missing)),
        (LiCSimulator(missing, backend="hf", shard_policy="rule"), OracleAssistant()),
    ]
    for simulator, assistant in in_process:
        estimate = estimate_run(
            [apples_intent],
            episodes_per_intent=1,
            max_replies=3,
            simulator=simulator,
            assistant=assistant,
        )
        assert estimate.cost_usd() == 0.0
        assert all(role.local and role.attempts == role.calls for role in estimate.roles)
    assert UserLMSimulator(missing).call_budget().calls_per_turn == 16
    assert in_process[0][0]._loaded is None and in_process[0][1]._loaded is None
    assert in_process[1][0].backend._loaded is None  # type: ignore[attr-defined]

    server_user = UserLMServerSimulator(
        "openai/local", missing, api_base=closed_base, max_tries=4, max_new_tokens=20, **PRICED
    )
    lic = LiCSimulator("openai/local", api_base=closed_base, max_tries=2, **PRICED)
    assistant = LiteLLMAssistant("openai/local", api_base=closed_base, max_tokens=24, **PRICED)
    for simulator in (server_user, lic):
        estimate = estimate_run(
            [apples_intent] * 3,
            episodes_per_intent=2,
            max_replies=3,
            simulator=simulator,
            assistant=assistant,
        )
        tries = simulator.call_budget().calls_per_turn
        assert estimate.role("simulator").calls == 6 * 3 * tries
        assert estimate.role("assistant").calls == 6 * 3
        assert all(role.cost_usd is not None for role in estimate.roles)
    assert server_user._tokenizer is None
    assert all(client.stats.calls == 0 for client in _clients(server_user, lic, assistant))


def test_judging_is_bounded_per_item_and_joins_the_run(
    apples_intent: Intent, closed_base: str
) -> None:
    config = LLMConfig("openai/local", api_base=closed_base, max_tokens=20, max_retries=1, **PRICED)
    judge = IntentAdherenceJudge(LLMClient(config), max_tries=2)
    items = [("What is 2+2?", "Let us talk about games.", "no, what is 2+2")] * 5
    judging = estimate_judging(judge, items, unseen_tokens_per_item=40)
    assert (judging.role, judging.turns, judging.calls, judging.attempts) == ("judge", 5, 10, 20)
    assert judging.output_tokens == 10 * 20
    first = sum(count_tokens("openai/local", t) + PER_MESSAGE for t in judge.prompt_texts(items[0]))
    first += PER_CALL + 40
    assert judging.input_tokens is not None and judging.input_tokens > 5 * 2 * first
    assert judging.cost_usd == pytest.approx(
        judging.input_tokens * 1e-6 + judging.output_tokens * 4e-6
    )
    assert estimate_judging(judge, items, unseen_tokens_per_item=None).cost_usd is None

    estimate = estimate_run(
        [apples_intent],
        episodes_per_intent=1,
        max_replies=2,
        simulator=ShardedSimulator(),
        assistant=OracleAssistant(),
        judging=[judging],
    )
    assert estimate.role("judge") == judging and estimate.cost_usd() == judging.cost_usd
    assert "| judge " in estimate.table()
    assert judge.client.stats.calls == 0


def test_a_judges_feedback_quotes_a_bounded_error() -> None:
    empty = feedback_message("")["content"]
    long = feedback_message("é" * 1000 + "tail")["content"]
    assert "tail" not in long
    assert len(long.encode()) <= len(empty.encode()) + MAX_FEEDBACK_ERROR_BYTES


def test_choices_per_request_multiply_the_output_cap() -> None:
    config = LLMConfig("openai/local", max_tokens=30, extra={"n": 3, "max_completion_tokens": 20})
    assert client_budget(config).max_output_tokens == 60
    assert client_budget(LLMConfig("openai/local")).max_output_tokens is None


def test_tokens_are_counted_offline_for_models_with_hub_tokenizers() -> None:
    """LiteLLM would fetch a Llama tokenizer from the Hub; the estimate counts with tiktoken."""
    text = "Sam has 12 apples and buys 7 more."
    assert count_tokens("meta-llama/llama-3-8b-instruct", text) == count_tokens("", text) > 5


def test_a_component_without_a_call_budget_is_refused(apples_intent: Intent) -> None:
    class Mute:
        def respond(self, states: Sequence[Any]) -> list[Any]:
            return []

    with pytest.raises(NotEstimableError, match="Mute"):
        estimate_run(
            [apples_intent],
            episodes_per_intent=1,
            max_replies=2,
            simulator=Mute(),
            assistant=OracleAssistant(),
        )


# -- the key test: bounds against a real server -------------------------------------------------


class RecordingClient(LLMClient):
    """An :class:`LLMClient` that keeps the usage the server reported for every call."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config)
        self.usages: list[dict[str, int]] = []

    async def achat(
        self, messages: Sequence[Message], *, seed: int | None = None, **params: Any
    ) -> LLMResult:
        return self._kept(await super().achat(messages, seed=seed, **params))

    async def acomplete(self, prompt: str, *, seed: int | None = None, **params: Any) -> LLMResult:
        return self._kept(await super().acomplete(prompt, seed=seed, **params))

    def _kept(self, result: LLMResult) -> LLMResult:
        assert "prompt_tokens" in result.usage and "completion_tokens" in result.usage
        self.usages.append(dict(result.usage))
        return result


@dataclass(frozen=True)
class Real:
    """What one role really did."""

    calls: int
    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


def _real(client: RecordingClient) -> Real:
    stats = client.stats
    assert stats.failures == 0 and stats.cache_hits == 0 and stats.calls == len(client.usages)
    return Real(
        calls=stats.calls,
        attempts=stats.calls + stats.retries,
        input_tokens=sum(u["prompt_tokens"] for u in client.usages),
        output_tokens=sum(u["completion_tokens"] for u in client.usages),
        cost_usd=stats.cost_known,
    )


def _server_simulator(kind: str, server: LlamaServer) -> tuple[Any, RecordingClient]:
    connection = {"api_base": server.api_base, "api_key": server.api_key, "timeout_s": 120.0}
    if kind == "prompted":
        prompted = PromptedSimulator(
            server.model, max_tokens=32, max_tries=2, temperature=1.0, **connection, **PRICED
        )
        client = RecordingClient(prompted.backend.client.config)  # type: ignore[attr-defined]
        prompted.backend.client = client  # type: ignore[attr-defined]
        return prompted, client
    from userlm_env.models import EMBEDDED_MODEL, load_tokenizer

    server_user = UserLMServerSimulator(
        server.model,
        load_tokenizer(EMBEDDED_MODEL),
        max_new_tokens=32,
        max_tries=2,
        **connection,
        **PRICED,
    )
    server_user.client = client = RecordingClient(server_user.client.config)
    return server_user, client


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("kind", ["prompted", "userlm_server"])
def test_every_bound_holds_against_real_episodes_on_the_server(
    llama_server: LlamaServer, kind: str
) -> None:
    intents = load_gsm_symbolic(n=3, seed=0)
    assistant = LiteLLMAssistant(
        llama_server.model,
        api_base=llama_server.api_base,
        api_key=llama_server.api_key,
        max_tokens=24,
        timeout_s=120.0,
        **PRICED,
    )
    assistant.client = assistant_client = RecordingClient(assistant.client.config)
    simulator, simulator_client = _server_simulator(kind, llama_server)
    max_replies = 3
    estimate = estimate_run(
        intents,
        episodes_per_intent=1,
        max_replies=max_replies,
        simulator=simulator,
        assistant=assistant,
    )
    assert assistant_client.stats.calls == simulator_client.stats.calls == 0

    core = ConversationCore(simulator, max_replies=max_replies)
    records = run_episodes(make_jobs(intents, 1, seed=3), core, assistant)
    assert len(records) == 3 and all(r.error is None for r in records), records[0].error

    print(f"\n{kind}:\n{estimate.table()}")
    for role, client in (("assistant", assistant_client), ("simulator", simulator_client)):
        bound, real = estimate.role(role), _real(client)
        print(f"{role}: bound {bound}\n{role}: real  {real}")
        assert real.calls >= 1
        assert bound.calls >= real.calls and bound.attempts >= real.attempts
        assert bound.input_tokens is not None and bound.input_tokens >= real.input_tokens
        assert bound.output_tokens is not None and bound.output_tokens >= real.output_tokens
        assert bound.cost_usd is not None and bound.cost_usd >= real.cost_usd > 0
    assert sum(r.replies for r in records) <= estimate.role("assistant").turns
    assert sum(r.user_turns for r in records) <= estimate.role("simulator").turns
    assert estimate.role("assistant").calls == 3 * max_replies  # tight: one call per reply
