"""What a run would call and spend, bounded before anything is called (``dry_run=true``).

:func:`estimate_run` bounds, for a set of episodes (intents x repetitions) of one simulator and
one assistant, per role: the LLM calls, the HTTP attempts (every retry counted), the prompt
(input) and generated (output) tokens and the cost. :func:`estimate_judging` does the same for
an LLM judge over the items it will judge. Nothing is called and no model or tokenizer is loaded:
the components describe themselves.

How the components describe themselves (duck-typed; :class:`HasCallBudget` is required):

* ``call_budget() -> CallBudget``: the model, whether it runs in-process, the generations per
  turn (guardrail and validation resampling included: ``max_tries``), the cap on generated
  tokens per call, the retries per call and the price.
* ``prompt_texts(intent) -> list[str]`` (components that call a model): the texts, one per
  message, of the longest prompt the component sends for ``intent`` *without* the conversation
  (system prompts, templates, the intent's own text).
* ``rule_turns(intent) -> list[str]`` (components that write some or all turns without a model:
  the sharded user, scripted assistants, the nudges of the Lost-in-Conversation user): texts at
  least as long as each such turn. A component that calls no model and has no ``rule_turns`` (a
  person typing) writes turns of unbounded length.

How the bounds are built:

* Per episode (:class:`userlm_env.core.ConversationCore`): at most ``max_replies`` replies, and
  at most ``max_replies`` user turns: the first one at the start and one after each reply that
  neither solves the task nor spends the reply budget (the simulator is not asked after the
  last allowed reply).
* Calls: turns x ``calls_per_turn``; attempts: calls x (``max_retries`` + 1) (calls when local).
  Output tokens: calls x ``max_output_tokens`` (``None`` when a model has no cap).
* Input tokens of each call: the component's fixed prompt (``prompt_texts``) plus, when it
  sends the conversation, every earlier message bounded by the longest turn of its side: the
  output cap of the model that wrote it, or the longest ``rule_turns`` text. Text is counted
  with ``litellm.token_counter`` for the model (LiteLLM's tiktoken encoding for models it has no
  offline tokenizer for; never a download), and every message gets
  :data:`CHAT_TOKENS_PER_MESSAGE` and every call :data:`CHAT_TOKENS_PER_CALL` for chat-template
  tokens (role headers, end-of-turn tokens, a template's default system prompt).
* Cost: input and output bounds at the component's price
  (:func:`userlm_env.pricing.model_price`); ``0.0`` in-process or without calls, ``None`` when
  the model has no price or a token bound is unknown. Failed attempts are not priced (providers
  bill answered calls).

Calls, attempts and output tokens are strict upper bounds. Input tokens are as counted by that
tokenizer: the served model's own tokenizer may split the same text differently (the slack of
the output caps and the per-message allowance usually covers it, but it is not a proof). Two
things the bounds assume: no batched simulator call fails (:func:`userlm_env.rollout.run_episodes`
replays a failed batch one conversation at a time, which repeats that step's simulator calls),
and a simulator with a call budget never ends a conversation before its first turn (the built-in
ones ban it; the core would otherwise ask again, up to ``FIRST_TURN_TRIES`` times).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from userlm_env.errors import UserLMEnvError
from userlm_env.pricing import Price, model_price
from userlm_env.types import Intent

__all__ = [
    "CHAT_TOKENS_PER_CALL",
    "CHAT_TOKENS_PER_MESSAGE",
    "CallBudget",
    "HasCallBudget",
    "NotEstimableError",
    "RoleEstimate",
    "RunEstimate",
    "WritesPrompts",
    "WritesRuleTurns",
    "client_budget",
    "count_tokens",
    "estimate_judging",
    "estimate_run",
]

#: Tokens allowed per chat message for its template (role header, end-of-turn tokens,
#: transcript labels such as ``AI system:``); ChatML spends 5.
CHAT_TOKENS_PER_MESSAGE = 8
#: Tokens allowed per call for its template: the generation prompt and a default system
#: prompt that some templates add when the request has none (SmolLM2's spends about 20).
CHAT_TOKENS_PER_CALL = 48


class NotEstimableError(UserLMEnvError, TypeError):
    """A component cannot say what it calls (it has no ``call_budget`` or ``prompt_texts``)."""


@dataclass(frozen=True)
class CallBudget:
    """What one component may call for one turn (one user turn, one reply, one judged item).

    Attributes:
        model: The model string; ``"rule-based"``, ``"scripted"`` or ``"human"`` when no model
            writes the turns.
        local: Runs in-process: no request, no cost.
        calls_per_turn: Generations per turn at most, resampling included (``max_tries``);
            ``0`` when no model is called.
        max_output_tokens: Cap on the tokens one call generates (``None``: no cap).
        max_retries: Retries of one failed request (``0`` when local).
        price: USD per token (``None``: unknown, or nothing to pay for).
        sees_history: Each call carries the conversation so far (``False``: only the fixed
            prompt, e.g. a model that only rephrases one shard).
        max_input_tokens: The component cuts longer prompts to this many tokens (``None``: no
            cut).
    """

    model: str
    local: bool
    calls_per_turn: int
    max_output_tokens: int | None = None
    max_retries: int = 0
    price: Price | None = None
    sees_history: bool = True
    max_input_tokens: int | None = None

    def __post_init__(self) -> None:
        numbers = {
            "calls_per_turn": self.calls_per_turn,
            "max_retries": self.max_retries,
            "max_output_tokens": self.max_output_tokens,
            "max_input_tokens": self.max_input_tokens,
        }
        bad = [f"{k}={v!r}" for k, v in numbers.items() if v is not None and v < 0]
        if bad:
            raise ValueError(f"a call budget needs counts >= 0, got {', '.join(bad)}")

    @classmethod
    def without_model(cls, kind: str) -> CallBudget:
        """The budget of a component that calls no model (``kind``: who writes its turns)."""
        return cls(kind, local=True, calls_per_turn=0, max_output_tokens=0)

    @property
    def calls_model(self) -> bool:
        """Whether a model is called at all."""
        return self.calls_per_turn > 0

    @property
    def attempts_per_call(self) -> int:
        """HTTP requests per call at most: the first one and every retry (1 when local)."""
        return 1 if self.local else self.max_retries + 1


@runtime_checkable
class HasCallBudget(Protocol):
    """A component that can say what it calls per turn."""

    def call_budget(self) -> CallBudget: ...


@runtime_checkable
class WritesPrompts(Protocol):
    """A component that calls a model: the fixed texts of its longest prompt for an intent."""

    def prompt_texts(self, intent: Intent) -> list[str]: ...


@runtime_checkable
class WritesRuleTurns(Protocol):
    """A component that writes turns without a model: texts at least as long as each one."""

    def rule_turns(self, intent: Intent) -> list[str]: ...


def client_budget(
    config: Any,
    *,
    calls_per_turn: int = 1,
    max_output_tokens: int | None = None,
    sees_history: bool = True,
) -> CallBudget:
    """The budget of a component that calls through an :class:`~userlm_env.llm.LLMClient`.

    Args:
        config: The client's :class:`~userlm_env.llm.LLMConfig` (anything with ``model``; the
            other fields are read when present).
        calls_per_turn: Generations per turn, resampling included.
        max_output_tokens: The cap sent with each request when the component sets its own
            (``None``: the config's ``max_tokens``, or a ``max_tokens`` /
            ``max_completion_tokens`` in its ``extra`` parameters, whichever is lowest). An
            ``n`` in ``extra`` (choices per request) multiplies it.
        sees_history: Each call carries the conversation so far.
    """
    extra = getattr(config, "extra", None) or {}
    cap = max_output_tokens if max_output_tokens is not None else _config_cap(config, extra)
    if cap is not None:
        cap *= int(extra.get("n") or 1)
    price = model_price(
        config.model,
        getattr(config, "input_usd_per_mtok", None),
        getattr(config, "output_usd_per_mtok", None),
    )
    return CallBudget(
        model=config.model,
        local=False,
        calls_per_turn=calls_per_turn,
        max_output_tokens=cap,
        max_retries=getattr(config, "max_retries", 0),
        price=price,
        sees_history=sees_history,
    )


def _config_cap(config: Any, extra: Mapping[str, Any]) -> int | None:
    caps = [extra.get("max_tokens", getattr(config, "max_tokens", None))]
    caps.append(extra.get("max_completion_tokens"))
    known = [int(cap) for cap in caps if cap is not None]
    return min(known) if known else None


# --------------------------------------------------------------------------- token counting


def count_tokens(model: str, text: str) -> int:
    """Tokens of ``text`` as ``litellm.token_counter`` counts them for ``model``.

    Models for which LiteLLM would fetch or load a Hugging Face tokenizer (Llama, Claude,
    DeepSeek, Cohere) are counted with its default tiktoken encoding instead, so counting never
    touches the network or the disk.
    """
    return _count(_counting_model(model), text)


@functools.lru_cache(maxsize=1 << 16)
def _count(model: str, text: str) -> int:
    if not text:
        return 0
    return int(_litellm().token_counter(model=model, text=text))


@functools.lru_cache(maxsize=256)
def _counting_model(model: str) -> str:
    """``model`` when LiteLLM counts it with tiktoken, else ``""`` (its default encoding; also
    for LiteLLM releases that cannot say which tokenizer they would pick)."""
    kind_of = getattr(_litellm().utils, "huggingface_tokenizer_kind", None)
    return model if kind_of is not None and kind_of(model) is None else ""


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price map
    from userlm_env.llm_transport import load_litellm

    return load_litellm()


def _message_tokens(model: str, texts: Iterable[str]) -> int:
    """Tokens of ``texts`` sent as one message each, template allowance included."""
    return sum(count_tokens(model, text) + CHAT_TOKENS_PER_MESSAGE for text in texts)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RoleEstimate:
    """Upper bounds on what one role calls over a run.

    Attributes:
        role: ``"assistant"``, ``"simulator"`` or ``"judge"``.
        model: The model string (``"rule-based"``, ``"scripted"``, ``"human"``, ``"none"``
            when no model is called).
        local: Runs in-process (no request, no cost).
        turns: User turns, replies or judged items at most.
        calls: LLM calls (generations) at most; retries of a failed request not counted.
        attempts: Requests at most, every retry counted (``calls`` when local).
        input_tokens: Prompt tokens over all calls (``None``: cannot be bounded), as counted
            by LiteLLM's tokenizer (see the module docstring).
        output_tokens: Generated tokens over all calls (``None``: a model without a cap).
        cost_usd: USD at most (``0.0`` when local or without calls; ``None`` when unpriced or
            a token bound is unknown).
        turn_tokens: The longest turn this role can write, in tokens (``None``: unbounded).
        note: Why a bound is unknown, and how to give it.
    """

    role: str
    model: str
    local: bool
    turns: int
    calls: int
    attempts: int
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    turn_tokens: int | None = None
    note: str = ""

    @classmethod
    def no_judge(cls) -> RoleEstimate:
        """The judge row of a run without a judge."""
        return cls("judge", "none", True, 0, 0, 0, 0, 0, 0.0, 0, "no judge in this run")


@dataclass(frozen=True)
class RunEstimate:
    """Upper bounds on a run: how many episodes it starts and what each role calls.

    Attributes:
        episodes: Episodes this run would start.
        already_finished: Episodes finished by earlier runs (not started again).
        max_replies: Assistant replies per episode at most.
        roles: One estimate per role: assistant, simulator, judge.
    """

    episodes: int
    already_finished: int
    max_replies: int
    roles: tuple[RoleEstimate, ...]

    def role(self, name: str) -> RoleEstimate:
        """The estimate of role ``name``.

        Raises:
            KeyError: No such role.
        """
        for role in self.roles:
            if role.role == name:
                return role
        raise KeyError(f"no role {name!r}; roles: {[r.role for r in self.roles]}")

    def cost_usd(self) -> float | None:
        """USD at most over every role; ``None`` when some role's cost is unknown."""
        costs = [role.cost_usd for role in self.roles]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def calls(self) -> int:
        """LLM calls at most over every role."""
        return sum(role.calls for role in self.roles)

    def table(self) -> str:
        """A Markdown table of the bounds, with what the numbers mean and what is unknown."""
        head = (
            f"dry run: nothing was called. {self.episodes} episode(s) to run "
            f"({self.already_finished} already finished), at most {self.max_replies} "
            "replies each; upper bounds:"
        )
        rows = [_row(role) for role in self.roles]
        total = {
            "role": "total",
            "calls": f"{self.calls():,}",
            "attempts": f"{sum(r.attempts for r in self.roles):,}",
            "input tokens": _tokens(_total(r.input_tokens for r in self.roles)),
            "output tokens": _tokens(_total(r.output_tokens for r in self.roles)),
            "cost USD": _usd(self.cost_usd()),
        }
        notes = [f"- {r.role}: {r.note}" for r in self.roles if r.note and r.calls]
        unknown = [r.role for r in self.roles if r.cost_usd is None]
        if unknown:
            notes.insert(0, f"Total cost unknown, as the cost of the {' and '.join(unknown)} is:")
        legend = (
            "turns: user turns, replies or judged items; turn tokens: the longest one. Calls "
            "(generations, resampling included), attempts (every retry counted) and output "
            "tokens are strict bounds; input tokens are counted with LiteLLM's tokenizer for "
            f"each model, plus {CHAT_TOKENS_PER_MESSAGE} per message and "
            f"{CHAT_TOKENS_PER_CALL} per call for chat templates."
        )
        return "\n".join([head, _markdown([*rows, total]), legend, *notes])

    def as_dict(self) -> dict[str, Any]:
        """The estimate as plain data (JSON-ready)."""
        return {
            "episodes": self.episodes,
            "already_finished": self.already_finished,
            "max_replies": self.max_replies,
            "cost_usd": self.cost_usd(),
            "roles": [asdict(role) for role in self.roles],
        }


_COLUMNS = (
    "role",
    "model",
    "runs",
    "turns",
    "turn tokens",
    "calls",
    "attempts",
    "input tokens",
    "output tokens",
    "cost USD",
)


def _row(role: RoleEstimate) -> dict[str, str]:
    runs = "-" if role.calls == 0 else "in-process" if role.local else "API"
    return {
        "role": role.role,
        "model": role.model,
        "runs": runs,
        "turns": f"{role.turns:,}",
        "turn tokens": _tokens(role.turn_tokens),
        "calls": f"{role.calls:,}",
        "attempts": f"{role.attempts:,}",
        "input tokens": _tokens(role.input_tokens),
        "output tokens": _tokens(role.output_tokens),
        "cost USD": _usd(role.cost_usd),
    }


def _markdown(rows: Sequence[dict[str, str]]) -> str:
    cells = [[row.get(column, "") for column in _COLUMNS] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(_COLUMNS)]
    left = {"role", "model", "runs"}

    def line(values: Sequence[str]) -> str:
        padded = [
            v.ljust(w) if c in left else v.rjust(w)
            for c, v, w in zip(_COLUMNS, values, widths, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(_COLUMNS), rule, *(line(c) for c in cells)])


def _tokens(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def _total(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


# --------------------------------------------------------------------------- bounds


def _times(count: int, value: int | None) -> int | None:
    """``count * value``, where no occurrence of an unknown value costs nothing."""
    if count == 0:
        return 0
    return None if value is None else count * value


def _plus(*values: int | None) -> int | None:
    return _total(values)


def _budget(component: object, role: str) -> CallBudget:
    if not isinstance(component, HasCallBudget):
        raise NotEstimableError(
            f"the {role} {type(component).__name__} cannot be estimated: it has no "
            "call_budget() method (see userlm_env.estimate.CallBudget)"
        )
    return component.call_budget()


@dataclass(frozen=True)
class _Side:
    """One component of the conversation and its budget."""

    role: str
    component: object
    budget: CallBudget

    def turn_tokens(self, counting_model: str, intent: Intent) -> int | None:
        """The longest turn this side writes for ``intent``, counted for ``counting_model``."""
        bounds: list[int | None] = []
        if self.budget.calls_model:
            bounds.append(self.budget.max_output_tokens)
        if isinstance(self.component, WritesRuleTurns):
            texts = self.component.rule_turns(intent)
            bounds.append(max((count_tokens(counting_model, t) for t in texts), default=0))
        elif not self.budget.calls_model:
            bounds.append(None)  # writes turns without a model and cannot bound them (a person)
        return None if any(b is None for b in bounds) else max(b for b in bounds if b is not None)

    def fixed_tokens(self, intent: Intent) -> int:
        """Tokens of one call's prompt besides the conversation, template allowance included."""
        if not isinstance(self.component, WritesPrompts):
            raise NotEstimableError(
                f"the {self.role} {type(self.component).__name__} calls a model but has no "
                "prompt_texts(intent) method, so its prompts cannot be bounded"
            )
        texts = self.component.prompt_texts(intent)
        return _message_tokens(self.budget.model, texts) + CHAT_TOKENS_PER_CALL

    def cap(self, tokens: int | None) -> int | None:
        """``tokens`` cut to the component's own prompt limit."""
        limit = self.budget.max_input_tokens
        if limit is None:
            return tokens
        return limit if tokens is None else min(tokens, limit)


@dataclass
class _Totals:
    """Running sums of one role over the episodes."""

    turns: int = 0
    calls: int = 0
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    turn_tokens: int | None = 0

    def add(self, turns: int, calls: int, input_tokens: int | None, output: int | None) -> None:
        self.turns += turns
        self.calls += calls
        self.input_tokens = _plus(self.input_tokens, input_tokens)
        self.output_tokens = _plus(self.output_tokens, output)

    def widen(self, turn_tokens: int | None) -> None:
        if self.turn_tokens is not None:
            self.turn_tokens = None if turn_tokens is None else max(self.turn_tokens, turn_tokens)


def _episode_bounds(
    intent: Intent, simulator: _Side, assistant: _Side, max_replies: int
) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None]]:
    """``((simulator input, output), (assistant input, output))`` tokens of one episode.

    User turn ``t`` (1..R) is asked with ``t - 1`` user turns and ``t - 1`` replies before it;
    reply ``k`` (1..R) with ``k`` user turns and ``k - 1`` replies.
    """
    sim_in = _side_input(intent, simulator, assistant, max_replies, user_side=True)
    asst_in = _side_input(intent, assistant, simulator, max_replies, user_side=False)
    sim_out = _times(max_replies * simulator.budget.calls_per_turn, _out(simulator.budget))
    asst_out = _times(max_replies * assistant.budget.calls_per_turn, _out(assistant.budget))
    return (sim_in, sim_out), (asst_in, asst_out)


def _out(budget: CallBudget) -> int | None:
    return budget.max_output_tokens if budget.calls_model else 0


def _side_input(
    intent: Intent, side: _Side, other: _Side, max_replies: int, *, user_side: bool
) -> int | None:
    """Input tokens of every call ``side`` makes in one episode."""
    tries = side.budget.calls_per_turn
    if tries == 0:
        return 0
    model = side.budget.model
    fixed = side.fixed_tokens(intent)
    own = _plus_allowance(side.turn_tokens(model, intent))
    theirs = _plus_allowance(other.turn_tokens(model, intent))
    total: int | None = 0
    for turn in range(1, max_replies + 1):
        if not side.budget.sees_history:
            history: int | None = 0
        elif user_side:  # turn - 1 user turns and turn - 1 replies before user turn `turn`
            history = _plus(_times(turn - 1, own), _times(turn - 1, theirs))
        else:  # `turn` user turns and turn - 1 replies before reply `turn`
            history = _plus(_times(turn, theirs), _times(turn - 1, own))
        prompt = side.cap(_plus(fixed, history))
        total = _plus(total, _times(tries, prompt))
    return total


def _plus_allowance(tokens: int | None) -> int | None:
    return None if tokens is None else tokens + CHAT_TOKENS_PER_MESSAGE


def _role_estimate(
    role: str, budget: CallBudget, totals: _Totals, *, unbounded_prompts: str = ""
) -> RoleEstimate:
    """The estimate of ``role`` from its totals; ``unbounded_prompts`` says why its prompt
    tokens may be unknown."""
    calls = totals.calls
    cost = _cost(budget, calls, totals.input_tokens, totals.output_tokens)
    notes = []
    if totals.input_tokens is None:
        notes.append(f"prompt tokens unbounded: {unbounded_prompts}")
    if totals.output_tokens is None:
        notes.append(f"generated tokens unbounded: {budget.model!r} has no cap (set max_tokens)")
    if cost is None and budget.price is None:
        notes.append(
            f"no price for {budget.model!r} in LiteLLM's price map: give "
            f"{role}.input_usd_per_mtok and {role}.output_usd_per_mtok (USD per million "
            "tokens; 0 and 0 for a free self-hosted server)"
        )
    return RoleEstimate(
        role=role,
        model=budget.model,
        local=budget.local,
        turns=totals.turns,
        calls=calls,
        attempts=calls * budget.attempts_per_call,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cost_usd=cost,
        turn_tokens=totals.turn_tokens,
        note="; ".join(notes),
    )


def _cost(
    budget: CallBudget, calls: int, input_tokens: int | None, output: int | None
) -> float | None:
    """USD at most: ``0.0`` without calls or in-process; ``None`` when unpriced or unbounded."""
    if calls == 0 or budget.local:
        return 0.0
    if budget.price is None or input_tokens is None or output is None:
        return None
    return budget.price.of_tokens(input_tokens, output)


def estimate_run(
    intents: Sequence[Intent],
    *,
    episodes_per_intent: int,
    max_replies: int,
    simulator: object,
    assistant: object,
    already_finished: int = 0,
    judging: Sequence[RoleEstimate] = (),
) -> RunEstimate:
    """Bound what running ``episodes_per_intent`` episodes of each intent would call.

    Args:
        intents: The intents of the episodes to run (repeated intents count once per entry).
        episodes_per_intent: Episodes per entry of ``intents``.
        max_replies: The reply budget of an episode.
        simulator: The user simulator (with ``call_budget()``; see the module docstring).
        assistant: The assistant (likewise).
        already_finished: Episodes finished earlier, reported only.
        judging: Judge estimates (:func:`estimate_judging`) to add as rows; none gives a judge
            row of zero calls.

    Returns:
        The bounds per role (see :class:`RunEstimate`).

    Raises:
        NotEstimableError: A component has no ``call_budget()``, or calls a model but has no
            ``prompt_texts(intent)``.
        ValueError: A count below its minimum.
    """
    if max_replies < 1 or episodes_per_intent < 0 or already_finished < 0:
        raise ValueError(
            "max_replies must be >= 1 and episodes_per_intent, already_finished >= 0; got "
            f"{max_replies}, {episodes_per_intent}, {already_finished}"
        )
    sim = _Side("simulator", simulator, _budget(simulator, "simulator"))
    asst = _Side("assistant", assistant, _budget(assistant, "assistant"))
    totals = {"simulator": _Totals(), "assistant": _Totals()}
    for intent in intents:
        bounds = _episode_bounds(intent, sim, asst, max_replies)
        for side, (input_tokens, output) in zip((sim, asst), bounds, strict=True):
            n = episodes_per_intent
            turns = n * max_replies
            calls = turns * side.budget.calls_per_turn
            totals[side.role].add(turns, calls, _times(n, input_tokens), _times(n, output))
            totals[side.role].widen(side.turn_tokens(side.budget.model, intent))
    unbounded = " and ".join(
        f"the {side.role}'s turns have no length bound"
        for side in (sim, asst)
        if totals[side.role].turn_tokens is None
    )
    roles = [
        _role_estimate(side.role, side.budget, totals[side.role], unbounded_prompts=unbounded)
        for side in (asst, sim)
    ]
    roles += list(judging) or [RoleEstimate.no_judge()]
    return RunEstimate(
        episodes=len(intents) * episodes_per_intent,
        already_finished=already_finished,
        max_replies=max_replies,
        roles=tuple(roles),
    )


def estimate_judging(
    judge: object, items: Sequence[Any], *, unseen_tokens_per_item: int | None = 0
) -> RoleEstimate:
    """Bound what an LLM judge calls to judge ``items`` (judges on :func:`ask_json`).

    Each item is asked up to ``calls_per_turn`` (the judge's ``max_tries``) times; every try
    after the first carries the rejected replies and the feedback of
    :func:`userlm_env.metrics.judge.feedback_message` before it.

    Args:
        judge: A judge with ``call_budget()`` and ``prompt_texts(item)`` (the messages of the
            item's first prompt), e.g. :class:`userlm_env.metrics.intrinsic.IntentAdherenceJudge`.
        items: What it will judge, in the form its ``judge`` method takes.
        unseen_tokens_per_item: Tokens of text the items will hold that is not written yet
            (e.g. a simulator turn still to be generated, bounded by that simulator's cap);
            ``None``: unbounded.

    Raises:
        NotEstimableError: The judge has no ``call_budget()`` or no ``prompt_texts(item)``.
    """
    from userlm_env.metrics.judge import MAX_FEEDBACK_ERROR_BYTES, feedback_message

    budget = _budget(judge, "judge")
    prompt_texts: Callable[[Any], list[str]] | None = getattr(judge, "prompt_texts", None)
    if prompt_texts is None:
        raise NotEstimableError(
            f"the judge {type(judge).__name__} has no prompt_texts(item) method, so its "
            "prompts cannot be bounded"
        )
    model, tries = budget.model, budget.calls_per_turn
    feedback = count_tokens(model, feedback_message("")["content"]) + MAX_FEEDBACK_ERROR_BYTES
    retry_growth = _plus(budget.max_output_tokens, feedback + 2 * CHAT_TOKENS_PER_MESSAGE)
    totals = _Totals(turn_tokens=_out(budget))
    for item in items:
        first = _plus(
            _message_tokens(model, prompt_texts(item)) + CHAT_TOKENS_PER_CALL,
            unseen_tokens_per_item,
        )
        tokens = _total(_plus(first, _times(t, retry_growth)) for t in range(tries))
        totals.add(1, tries, tokens, _times(tries, _out(budget)))
    unbounded = "the items hold text not written yet, of unbounded length"
    return _role_estimate("judge", budget, totals, unbounded_prompts=unbounded)
