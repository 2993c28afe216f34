"""userlm-env as a verifiers (0.4, v1 API) environment: ``vf-eval`` talks to the simulated user.

The assistant under evaluation is the verifiers agent seat ``assistant``; the simulated user
is userlm-env. Each rollout is one episode of a :class:`userlm_env.sessions.SessionPool`
session, so the simulator calls of concurrent rollouts run as one batch. The conversation the
assistant sees is plain chat: every user turn is a ``user`` message with the simulator's words,
every reply an ``assistant`` message. The intent, its shards and its reference never reach it.

Three plugins, one module (verifiers resolves each by the same id):

* :class:`UserLMTaskset`: one task per intent of a userlm-env id; a task carries the intent
  id and the episode seed, never the problem or its answer.
* :class:`UserLMEnv`: plays one episode per task (the user opens, the assistant replies,
  until the env ends the episode) and records the env's reward on the assistant's trace.
* :class:`PlainChatHarness`: the assistant's default program, one chat completion per reply
  made from the eval process itself (no tools, nothing to install). verifiers' own ``null``
  harness works too (``--env.assistant.harness.id null``; it installs its chat program with
  ``uv`` on first use).

What a trace records:

* reward ``solved``: the sum of the env's rewards over the episode, 1.0 when a reply solved
  the task, else 0.0.
* metrics ``coverage`` (share of the intent's shards the user revealed), ``replies``,
  ``user_turns`` and one indicator per way the episode ended: ``ended_solved``,
  ``ended_user_ended``, ``ended_max_replies`` (all 0.0 when the assistant's seat stopped
  first, e.g. on its ``max_turns``).
* ``info["userlm_env"]``: ``intent_id``, ``seed``, ``termination_reason`` (``None`` when the
  assistant's seat stopped first), ``revealed_shards`` and ``score_detail``.

verifiers finds plugins by a top-level module name (``vf-eval <id>`` imports ``<id>`` with
``-`` as ``_``), so the id is that of a top-level module re-exporting this module's
``__all__``; see the README for the command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, cast

import openai
import verifiers.v1 as vf
from openai.types.chat import ChatCompletionMessageParam
from pydantic import Field
from verifiers.v1.dialects.chat import message_to_wire
from verifiers.v1.errors import MODEL_TRANSPORT_ERROR_EXIT_CODE

from userlm_env.env import SourceSpec, env_settings, load_env_intents
from userlm_env.errors import UserLMEnvError
from userlm_env.sessions import Session, SessionPool
from userlm_env.types import Intent

__all__ = [
    "EPISODE_INFO_KEY",
    "PlainChatHarness",
    "PlainChatHarnessConfig",
    "UserLMEnv",
    "UserLMEnvConfig",
    "UserLMTask",
    "UserLMTaskData",
    "UserLMTaskset",
    "UserLMTasksetConfig",
    "VerifiersIntegrationError",
]

#: The key of the episode facts in ``trace.info``.
EPISODE_INFO_KEY = "userlm_env"
#: Every way a userlm-env episode ends, each recorded as an ``ended_<reason>`` metric.
END_REASONS = ("solved", "user_ended", "max_replies")


class VerifiersIntegrationError(UserLMEnvError, RuntimeError):
    """The verifiers environment was used in a way it cannot serve."""


# --------------------------------------------------------------------------- taskset
class UserLMTasksetConfig(vf.TasksetConfig):
    """Which episodes the taskset holds (``--env.taskset.*`` on the CLI, ``[env.taskset]``
    in a TOML file). Defaults run offline: GSM-Symbolic with the rule-based user."""

    env_id: str = "userlm_env/GSMSymbolic-v0"
    """A registered userlm-env id; its intent sources and reply budget are the defaults."""
    simulator: str = "sharded"
    """The simulated user, a name from ``simulators.SIMULATORS`` (``sharded``, ``userlm``...)."""
    simulator_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the simulator (``model=``, ``api_base=``...)."""
    max_replies: int | None = Field(None, ge=1)
    """Assistant replies per episode; ``None``: the env id's own (8)."""
    sources: list[str | dict[str, Any]] | None = None
    """Intent sources replacing the env id's, e.g. ``[{name = "gsm_symbolic", n = 20}]``."""
    data_path: str | None = None
    """A GSM8k ``.jsonl`` or Lost-in-Conversation ``.json`` file, used instead of sources
    (``userlm_env/GSM8k-v0`` needs one)."""
    limit: int | None = Field(None, ge=1)
    """Keep at most this many intents of each source (of the data file)."""
    seed: int | None = 0
    """The seed of the first task's episodes; task ``i`` uses ``seed + i``, so every rollout
    of a task meets the same user. ``None``: a fresh draw per rollout."""

    def env_settings(self) -> dict[str, Any]:
        """The env's settings: the id's, updated by the ones set here."""
        overrides: dict[str, Any] = {}
        if self.max_replies is not None:
            overrides["max_replies"] = self.max_replies
        if self.sources is not None:
            overrides["sources"] = tuple(self.sources)
        if self.data_path is not None:
            overrides["data_path"] = self.data_path
        return env_settings(self.env_id, **overrides)

    def load_intents(self) -> list[Intent]:
        """The intents the episodes draw from, ``limit`` applied to each source."""
        settings = self.env_settings()
        data_path = settings.get("data_path")
        if data_path is not None:
            return load_env_intents(data_path=data_path)[: self.limit]
        specs: list[SourceSpec] = list(settings.get("sources", ()))
        if self.limit is not None:
            specs = [_with_limit(spec, self.limit) for spec in specs]
        return load_env_intents(specs)


def _with_limit(spec: SourceSpec, limit: int) -> dict[str, Any]:
    named: dict[str, Any] = {"name": spec} if isinstance(spec, str) else dict(spec)
    current = named.get("limit")
    named["limit"] = limit if current is None else min(int(current), limit)
    return named


class UserLMTaskData(vf.TaskData):
    """One episode to play: the intent it pursues and the seed of its user.

    ``prompt`` stays ``None``: the simulated user opens the conversation.
    """

    intent_id: str
    """The intent's id in the env (``gsm_symbolic/0-3``, ``HumanEval/0``...)."""
    env_id: str
    """The userlm-env id the intent comes from."""
    seed: int | None = None
    """The seed of the episode's ``reset``; ``None``: a fresh draw."""


class UserLMTask(vf.Task[UserLMTaskData]):
    """A userlm-env episode. Its reward is recorded by :class:`UserLMEnv`, which plays it."""

    @property
    def key(self) -> str:
        """The intent id: stable across runs and source orders (``--resume`` matches on it)."""
        return f"{self.data.env_id}:{self.data.intent_id}"


class UserLMTaskset(vf.Taskset[UserLMTask, UserLMTasksetConfig]):
    """One task per intent of the configured userlm-env id, in the env's intent order."""

    def __init__(self, config: UserLMTasksetConfig) -> None:
        super().__init__(config)
        self._intents: list[Intent] | None = None

    def intents(self) -> list[Intent]:
        """The intents, loaded once."""
        if self._intents is None:
            self._intents = self.config.load_intents()
        return self._intents

    def load(self) -> Iterator[UserLMTask]:
        base = self.config.seed
        for position, intent in enumerate(self.intents()):
            data = UserLMTaskData(
                id=intent.intent_id,
                name=intent.intent_id,
                intent_id=intent.intent_id,
                env_id=self.config.env_id,
                seed=None if base is None else base + position,
            )
            yield UserLMTask(data, self.config.task)


# --------------------------------------------------------------------------- harness
class PlainChatHarnessConfig(vf.HarnessConfig):
    """The plain chat harness has no knobs of its own."""


class PlainChatHarness(vf.Harness[PlainChatHarnessConfig]):
    """The assistant as a bare chat model: each reply is one chat completion on the
    conversation so far (system prompt, then the user and assistant messages), no tools.

    It runs in the eval process, so it needs a runtime on this host (``subprocess``, the
    env's default); calls go through the rollout's interception endpoint, which applies
    ``--sampling.*`` and records the trace.
    """

    APPENDS_SYSTEM_PROMPT = True
    SUPPORTS_RESUME = True
    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def setup(self, runtime: vf.Runtime) -> None:
        """Refuse a remote runtime: the harness calls the model from this host."""
        if not isinstance(runtime.config, vf.SubprocessConfig):
            raise VerifiersIntegrationError(
                f"harness {self.config.id!r} runs in the eval process and needs the "
                f"subprocess runtime, not {runtime.config.type!r}; set "
                "--env.assistant.runtime.type subprocess or pick --env.assistant.harness.id null"
            )

    async def launch(
        self,
        ctx: vf.ModelContext,
        trace: vf.Trace,
        runtime: vf.Runtime,
        endpoint: str,
        secret: str,
        mcp_urls: dict[str, str],
        data: vf.TaskData,
        tool_interception_url: str | None = None,
    ) -> vf.ProgramResult:
        """One chat completion on ``data``'s conversation; a failed call is a nonzero exit
        (the rollout reads it as verifiers reads its chat program's)."""
        system_prompt, prompt = self.resolve_prompt(data)
        wire: list[dict[str, Any]] = []
        if system_prompt:
            wire.append({"role": "system", "content": system_prompt})
        if isinstance(prompt, str):
            wire.append({"role": "user", "content": prompt})
        elif prompt is not None:
            wire.extend(message_to_wire(message) for message in prompt)
        messages = cast(list[ChatCompletionMessageParam], wire)
        async with openai.AsyncOpenAI(base_url=endpoint, api_key=secret) as client:
            try:
                completion = await client.chat.completions.create(
                    model=ctx.model, messages=messages
                )
            except openai.APIConnectionError as error:
                return vf.ProgramResult(MODEL_TRANSPORT_ERROR_EXIT_CODE, "", repr(error))
            except openai.APIStatusError as error:
                return vf.ProgramResult(1, "", f"HTTP {error.status_code}: {error.message}")
        reply = completion.choices[0].message.content if completion.choices else None
        return vf.ProgramResult(0, reply or "", "")


# --------------------------------------------------------------------------- env
class UserLMEnvConfig(vf.EnvConfig):
    """The env's seats and batching (``--env.*``); the episodes' settings are the taskset's."""

    assistant: vf.AgentConfig = vf.AgentConfig(runtime=vf.SubprocessConfig())
    """The assistant under evaluation (the run's model unless ``--env.assistant.model``)."""
    window_s: float = Field(0.02, ge=0)
    """The longest a simulator request waits for concurrent rollouts to join its batch."""
    max_batch: int = Field(64, ge=1)
    """The most conversations in one simulator call."""


class UserLMEnv(vf.Env[UserLMEnvConfig]):
    """Conversations between the ``assistant`` seat and a userlm-env simulated user.

    One rollout is one episode: ``reset`` on the task's intent and seed, then the user's
    turn goes to the assistant as a ``user`` message and its reply back to ``step``, until
    the episode ends (``solved``, ``user_ended`` or ``max_replies``) or the assistant's seat
    stops. The simulator and scorers live in one :class:`SessionPool` for the whole eval
    (built in :meth:`start`, released in :meth:`stop`).
    """

    def __init__(self, config: UserLMEnvConfig) -> None:
        super().__init__(config)
        if not isinstance(self.taskset, UserLMTaskset):
            raise VerifiersIntegrationError(
                f"{type(self).__name__} plays the userlm-env taskset, not "
                f"{type(self.taskset).__name__}; pair it with its own taskset id"
            )
        self.userlm_taskset: UserLMTaskset = self.taskset
        self._pool: SessionPool | None = None

    @property
    def pool(self) -> SessionPool:
        """The session pool (between :meth:`start` and :meth:`stop`)."""
        if self._pool is None:
            raise VerifiersIntegrationError(
                f"{type(self).__name__} is not serving: run episodes inside env.serving()"
            )
        return self._pool

    async def start(self) -> None:
        """Build the simulator, the scorers and the batcher once for the eval."""
        taskset_config = self.userlm_taskset.config
        settings = taskset_config.env_settings()
        self._pool = await asyncio.to_thread(
            SessionPool,
            None,
            taskset_config.simulator,
            window_s=self.config.window_s,
            max_batch=self.config.max_batch,
            simulator_kwargs=taskset_config.simulator_kwargs,
            intents=self.userlm_taskset.intents(),
            max_replies=settings["max_replies"],
        )

    async def stop(self) -> None:
        """Release the pool (tolerates a :meth:`start` that failed before building it)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close)

    async def run(self, task: vf.Task, agents: vf.Agents) -> None:
        """Play ``task``'s episode in a session of the pool; its facts land on the trace."""
        data = task.data
        if not isinstance(data, UserLMTaskData):
            raise VerifiersIntegrationError(f"not a userlm-env task: {type(data).__name__}")
        session = self.pool.open()
        try:
            # Let the episodes started together open their sessions before any resets, so
            # the batcher (which waits for every open session) makes their first user turns
            # in one simulator call.
            await asyncio.sleep(0)
            await self._play(session, task, data, agents)
        finally:
            session.close()

    async def _play(
        self, session: Session, task: vf.Task, data: UserLMTaskData, agents: vf.Agents
    ) -> None:
        user_turn, info = await session.reset(seed=data.seed, options={"intent_id": data.intent_id})
        total = 0.0
        async with agents.assistant.interaction(task) as chat:
            while True:
                segment = await chat.turn(user_turn)
                if segment.terminated:  # the assistant's seat stopped (a limit, a failure)
                    break
                user_turn, reward, terminated, truncated, info = await session.step(
                    _reply_text(segment)
                )
                total += reward
                if terminated or truncated:
                    break
            _record(chat.trace, data, total, info)


def _reply_text(segment: vf.Segment) -> str:
    """The assistant's reply as the model wrote it (``Segment.last_reply`` strips it), so the
    env scores exactly what the trace records."""
    for message in reversed(segment.messages):
        if message.role == "assistant":
            return str(message.content or "")
    return ""


def _record(trace: vf.Trace, data: UserLMTaskData, total: float, info: dict[str, Any]) -> None:
    """The episode's reward, metrics and facts on the assistant's (still open) trace."""
    reason = info["termination_reason"]
    trace.record_reward("solved", total)
    trace.record_metrics(
        {
            "coverage": float(info["coverage"]),
            "replies": float(info["replies"]),
            "user_turns": float(info["user_turns"]),
            **{f"ended_{name}": float(reason == name) for name in END_REASONS},
        }
    )
    trace.info[EPISODE_INFO_KEY] = {
        "intent_id": data.intent_id,
        "seed": data.seed,
        "termination_reason": reason,
        "revealed_shards": list(info["revealed_shards"]),
        "score_detail": info["score_detail"],
    }
