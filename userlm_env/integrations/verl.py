"""verl adapter: an agent loop that plays one userlm-env conversation per dataset row.

verl 0.9 rolls out through *agent loops*: an ``AgentLoopWorker`` (a Ray actor with one asyncio
loop) runs one ``AgentLoopBase.run(sampling_params, **row)`` coroutine per dataset row, all at
once, and the row's ``agent_name`` column picks the loop class from verl's registry. The loop
here, registered as ``"userlm_agent"``:

1. starts an episode of a :class:`~userlm_env.sessions.Session` (its intent and seed from the
   row's ``extra_info``); the prompt is the row's system messages plus the simulator's first
   user turn (the dataset prompt holds no user turn: the simulator speaks them all);
2. renders the prompt with verl's Continuous Token builder and asks the server manager for a
   reply; the reply's tokens enter the response with ``response_mask`` 1 (and their logprobs);
3. steps the session with the decoded reply; the next user turn is rendered by the chat
   template, as verl's tool agent loop renders tool messages, and enters the response with
   ``response_mask`` 0;
4. repeats until the episode ends or the ``response_length`` token budget is spent (each
   generation is capped at the budget left, so a reply cut by it is scored as it stands; a user
   turn that does not fit ends the rollout).

The reward (``reward_score``) is the episode's return, the sum of the env's rewards (1.0 once
a reply solves the task). Every agent loop of a worker process with the same settings shares
one :class:`~userlm_env.sessions.SessionPool`, so the simulator calls of concurrent
conversations are batched.

verl finds the class through an agent-loop config file (``agent.agent_loop_config_path``)::

    - name: userlm_agent
      _target_: userlm_env.integrations.verl.UserLMAgentLoop
      env_id: userlm_env/GSMSymbolic-v0
      simulator: userlm_server  # the UserLM behind a vLLM server
      simulator_kwargs:
        api_base: http://127.0.0.1:8001/v1

The agent-loop workers are CPU actors (8 by default), each with its own pool, so a User LM is
best served once (``userlm_server``) rather than loaded in-process (``userlm``) by each.

Dataset rows: :func:`verl_rows`, or ``python -m userlm_env.integrations.verl --help``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)
from verl.utils.profiler import simple_timer
from verl.utils.rollout_trace import rollout_trace_op
from verl.workers.rollout.replica import TokenOutput

from userlm_env.errors import UserLMEnvError
from userlm_env.integrations import episodes
from userlm_env.integrations.episodes import episode_plan
from userlm_env.sessions import Session, SessionPool

__all__ = [
    "AGENT_NAME",
    "DEFAULT_SYSTEM_PROMPT",
    "UserLMAgentLoop",
    "VerlSettingsError",
    "close_verl_pools",
    "main",
    "verl_rows",
]

#: The ``agent_name`` of dataset rows played by :class:`UserLMAgentLoop`.
AGENT_NAME = "userlm_agent"
#: The system message of dataset rows built by :func:`verl_rows` unless one is given.
DEFAULT_SYSTEM_PROMPT = episodes.DEFAULT_SYSTEM_PROMPT
#: ``extra_fields["termination_reason"]`` of a rollout whose token budget ran out first.
BUDGET_SPENT = "response_length"


class VerlSettingsError(UserLMEnvError, ValueError):
    """Settings, a dataset row or a prompt that the verl agent loop cannot use."""


#: This adapter's checks of rows and settings (raising :class:`VerlSettingsError`) and its pools.
_CHECKS = episodes.Checks(VerlSettingsError, "userlm-env settings for verl")
_POOL_CACHE = episodes.PoolCache(_CHECKS)
#: The open pools by their settings' key (the cache's own dict, never rebound).
_POOLS: dict[str, SessionPool] = _POOL_CACHE.pools


@register(AGENT_NAME)
class UserLMAgentLoop(AgentLoopBase):
    """Plays one userlm-env conversation: the policy replies, the simulator is the user.

    ## Input (one dataset row)
    ``raw_prompt``: system messages only. ``extra_info``: ``intent_id`` (default: drawn with
    the seed), ``seed`` (default: unseeded) and, to override this loop's settings for the row,
    ``env_id``, ``simulator``, ``simulator_kwargs`` and ``env_kwargs``.

    ## Output (``AgentLoopOutput``)
    ``prompt_ids``: the system messages and the first user turn, chat-template rendered with a
    generation prompt. ``response_ids``: the replies (``response_mask`` 1, with their
    ``response_logprobs`` when the server returns them) interleaved with the later user turns
    (``response_mask`` 0, logprob 0.0). ``reward_score``: the sum of the env's rewards.
    ``num_turns``: the user turns and replies in the tokens. ``extra_fields``: ``intent_id``,
    ``coverage``, ``termination_reason`` (the env's, or ``"response_length"`` when the token
    budget ran out first), ``solved``, ``turn_scores`` (each reply's reward), ``tool_rewards``
    (empty) and ``reward_extra_info`` (``coverage``, ``solved``, ``replies``, logged by verl).
    ``metrics.generate_sequences`` times the generations, ``metrics.tool_calls`` the env calls.

    ## Arguments (from the agent-loop config entry; verl passes the rest)
    * ``env_id``: the userlm-env id (rows may name their own).
    * ``simulator``: a simulator name (default ``"userlm"``); ``simulator_kwargs``: its
      keyword arguments.
    * ``env_kwargs``: other env settings (``max_replies``, ``data_path``...).
    * ``window_s``, ``max_batch``: the shared pool's batching (see :class:`SessionPool`).
    """

    def __init__(
        self,
        *args: Any,
        env_id: str | None = None,
        simulator: str = "userlm",
        simulator_kwargs: Mapping[str, Any] | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        window_s: float = 0.02,
        max_batch: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.env_id = env_id
        self.simulator = simulator
        self.simulator_kwargs = _plain_mapping(simulator_kwargs, "simulator_kwargs")
        self.env_kwargs = _plain_mapping(env_kwargs, "env_kwargs")
        self.window_s = window_s
        self.max_batch = max_batch
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)

    def pool_for(self, extra_info: Mapping[str, Any]) -> SessionPool:
        """The process's shared pool for a row (its ``extra_info`` over this loop's settings).

        Raises:
            VerlSettingsError: No env id at all, or settings that are not plain data.
        """
        env_id = _given(extra_info, "env_id", self.env_id)
        if env_id is None:
            raise VerlSettingsError(
                "no userlm-env id: set env_id in the agent loop config entry or in the row's "
                "extra_info"
            )
        settings: dict[str, Any] = {
            "simulator": _given(extra_info, "simulator", self.simulator),
            "window_s": self.window_s,
            "max_batch": self.max_batch,
            **self.env_kwargs,
            **_plain_mapping(extra_info.get("env_kwargs"), "extra_info.env_kwargs"),
        }
        simulator_kwargs = _given(extra_info, "simulator_kwargs", self.simulator_kwargs)
        if simulator_kwargs:
            settings["simulator_kwargs"] = _plain_mapping(simulator_kwargs, "simulator_kwargs")
        return shared_pool(str(env_id), settings)

    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """Play the row's conversation (``kwargs`` are the row's fields from verl's dataset).

        Raises:
            VerlSettingsError: A prompt with non-system messages, a bad seed or settings.
            UnknownNameError: An unknown env id or intent id.
        """
        extra_info = _plain_mapping(kwargs.get("extra_info"), "extra_info")
        # The first call builds the pool (intents, simulator): off the loop all rollouts share.
        pool = await asyncio.get_running_loop().run_in_executor(None, self.pool_for, extra_info)
        system = system_messages(kwargs["raw_prompt"])
        intent_id, seed = episode_choice(extra_info)
        priority = int(kwargs.get("priority", 0))
        deterministic = bool(getattr(self.rollout_config, "full_determinism", False))
        request_id = f"det-{priority}" if deterministic else uuid4().hex
        session = pool.open()
        try:
            return await self._play(session, system, intent_id, seed, sampling_params, request_id)
        finally:
            session.close()

    async def _play(
        self,
        session: Session,
        system: list[dict[str, Any]],
        intent_id: str | None,
        seed: int | None,
        sampling_params: dict[str, Any],
        request_id: str,
    ) -> AgentLoopOutput:
        run = _Rollout()
        options = {"intent_id": intent_id} if intent_id is not None else None
        with simple_timer("tool_calls", run.metrics):
            observation, run.info = await session.reset(seed=seed, options=options)
        messages = [*system, {"role": "user", "content": observation}]
        run.tokens = await self.ct_build_initial_tokens(messages)
        while (budget := self.response_length - len(run.mask)) >= 1:
            with simple_timer("generate_sequences", run.metrics):
                output: TokenOutput = await self.server_manager.generate(
                    request_id=request_id,
                    prompt_ids=run.tokens,
                    sampling_params={**sampling_params, "max_tokens": budget},
                )
            run.note_server_output(output)
            keep_logprobs = bool(run.logprobs or output.log_probs)
            merged, run.mask, logprobs = await self.ct_merge_assistant_token(
                run.tokens,
                output.token_ids,
                run.mask,
                run.logprobs if keep_logprobs else None,
                assistant_logprobs=output.log_probs or None,
            )
            run.tokens = merged.token_ids
            if logprobs is not None:
                run.logprobs = logprobs
            reply = self._decode(output.token_ids)
            messages.append({"role": "assistant", "content": reply})
            with simple_timer("tool_calls", run.metrics):
                observation, reward, terminated, truncated, run.info = await session.step(reply)
            run.rewards.append(float(reward))
            if terminated or truncated:
                break
            previous = list(messages)
            messages.append({"role": "user", "content": observation})
            merged, mask, logprobs = await self.ct_merge_context_msg(
                previous, messages, run.tokens, run.mask, run.logprobs or None
            )
            if len(mask) >= self.response_length:
                messages.pop()  # the user turn does not fit: the rollout ends before it
                break
            run.tokens, run.mask = merged.token_ids, mask
            if run.logprobs:
                run.logprobs = logprobs or []
        run.turns = len(messages) - len(system)
        return run.output(self.response_length)

    def _decode(self, token_ids: list[int]) -> str:
        """A reply's text as the user reads it (no special tokens such as the end token)."""
        tokenizer: Any = self.tokenizer  # verl annotates it as the AutoTokenizer factory
        return str(tokenizer.decode(token_ids, skip_special_tokens=True))


@dataclass
class _Rollout:
    """What one conversation's rollout has gathered so far."""

    tokens: list[int] = field(default_factory=list)  # the prompt and the response so far
    mask: list[int] = field(default_factory=list)  # one per response token: 1 = generated
    logprobs: list[float] = field(default_factory=list)  # per response token, when served
    rewards: list[float] = field(default_factory=list)  # each reply's reward
    info: dict[str, Any] = field(default_factory=dict)  # the env's latest info
    turns: int = 0  # user turns and replies in the tokens
    metrics: dict[str, Any] = field(default_factory=dict)
    server_fields: dict[str, Any] = field(default_factory=dict)

    def note_server_output(self, output: TokenOutput) -> None:
        """Count preemptions and keep the server's extra fields, as verl's tool loop does."""
        preempted = output.num_preempted
        if self.metrics.get("num_preempted") is None:
            self.metrics["num_preempted"] = preempted if preempted is not None else -1
        else:
            self.metrics["num_preempted"] += preempted or 0
        if not self.server_fields:
            self.server_fields.update(output.extra_fields)
        elif output.extra_fields.get("max_global_steps"):
            self.server_fields["max_global_steps"] = output.extra_fields["max_global_steps"]

    def output(self, response_length: int) -> AgentLoopOutput:
        """The rollout as verl's ``AgentLoopOutput`` (the response capped at its length)."""
        info, split = self.info, len(self.tokens) - len(self.mask)
        coverage, solved = float(info["coverage"]), bool(info["solved_any"])
        extra_fields = {
            **self.server_fields,
            "intent_id": info["intent_id"],
            "coverage": coverage,
            "termination_reason": info["termination_reason"] or BUDGET_SPENT,
            "solved": solved,
            "turn_scores": list(self.rewards),
            "tool_rewards": [],
            "reward_extra_info": {
                "coverage": coverage,
                "solved": float(solved),
                "replies": float(info["replies"]),
            },
        }
        return AgentLoopOutput(
            prompt_ids=self.tokens[:split],
            response_ids=self.tokens[split:][:response_length],
            response_mask=self.mask[:response_length],
            response_logprobs=self.logprobs[:response_length] if self.logprobs else None,
            reward_score=float(sum(self.rewards)),
            num_turns=self.turns,
            metrics=AgentLoopMetrics(**self.metrics),
            extra_fields=extra_fields,
        )


# ------------------------------------------------------------------------------ dataset rows
def verl_rows(
    env_id: str,
    *,
    rows: int | None = None,
    seed: int = 0,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    simulator: str | None = None,
    **env_kwargs: Any,
) -> list[dict[str, Any]]:
    """Dataset rows for verl (``datasets.Dataset.from_list(rows).to_parquet(path)``).

    Row ``i``: ``data_source`` = ``env_id``, ``agent_name`` = ``"userlm_agent"``, ``prompt`` =
    ``[{"role": "system", "content": system_prompt}]`` (the simulator speaks the user's turns)
    and ``extra_info`` = ``{"index": i, "env_id": env_id, "intent_id": ..., "seed": seed + i}``,
    plus ``simulator`` and ``env_kwargs`` when given (they override the loop's settings). The
    rows go through the env's intents in order, one each when ``rows`` is ``None``, else
    cycling to ``rows``.

    Args:
        env_id: A userlm-env id (``"userlm_env/GSMSymbolic-v0"``...).
        rows: How many rows; default one per intent.
        seed: The first row's episode seed.
        system_prompt: The system message every conversation starts with.
        simulator: A simulator name to store in every row.
        **env_kwargs: Env settings: they choose the intents (``data_path``...) and are stored
            in every row.

    Raises:
        VerlSettingsError: ``env_kwargs`` are not plain data.
        UnknownNameError: ``env_id`` is not a userlm-env id.
        ValueError: ``rows`` is below 1, or the env has no intents.
    """
    stored: dict[str, Any] = {"env_id": env_id}
    if simulator is not None:
        stored["simulator"] = simulator
    if env_kwargs:
        _CHECKS.settings_key(env_kwargs)
        stored["env_kwargs"] = episodes.plain(env_kwargs)
    return [
        {
            "data_source": env_id,
            "agent_name": AGENT_NAME,
            "prompt": [{"role": "system", "content": system_prompt}],
            "extra_info": {"index": index, **stored, "intent_id": intent_id, "seed": row_seed},
        }
        for index, intent_id, row_seed in episode_plan(env_id, rows=rows, seed=seed, **env_kwargs)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Write verl dataset rows to a parquet file (``python -m userlm_env.integrations.verl``)."""
    parser = episodes.row_parser("userlm_env.integrations.verl", "verl's userlm_agent loop")
    parser.add_argument("--simulator", default=None, help="store a simulator name in the rows")
    args = parser.parse_args(argv)
    options = episodes.row_options(args)
    episodes.write_rows(verl_rows(args.env_id, simulator=args.simulator, **options), args.output)


# ------------------------------------------------------------------------------- the pools
#: ``shared_pool(env_id, settings)``: the process's one :class:`SessionPool` for ``env_id``
#: with ``settings`` (``simulator``, ``window_s``, ``max_batch`` and env settings), built once;
#: pools live until :func:`close_verl_pools` or the end of the process. Raises
#: :class:`VerlSettingsError` for settings that are not plain data.
shared_pool = _POOL_CACHE.get


def close_verl_pools() -> None:
    """Close every shared pool (their simulators and scorers); later loops build new ones."""
    _POOL_CACHE.close()


# --------------------------------------------------------------------------------- helpers
#: ``system_messages(prompt)``: the system messages of a dataset prompt, which may hold nothing
#: else (:class:`VerlSettingsError` otherwise).
system_messages = _CHECKS.system_messages
#: ``episode_choice(extra_info)``: ``(intent_id, seed)`` of a row's ``extra_info``; missing or
#: ``None``: draw one. Raises :class:`VerlSettingsError` for a seed that is not an integer.
episode_choice = _CHECKS.episode_choice
#: ``_plain_mapping(value, label)``: a mapping (an OmegaConf ``DictConfig`` too) as plain dicts
#: and lists; ``None``: ``{}``. Raises :class:`VerlSettingsError` for anything else.
_plain_mapping = _CHECKS.plain_mapping


def _given(extra_info: Mapping[str, Any], key: str, default: Any) -> Any:
    """The row's value for ``key`` unless missing or ``None`` (parquet fills absent keys)."""
    value = extra_info.get(key)
    return default if value is None else value


if __name__ == "__main__":
    main()
