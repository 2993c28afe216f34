"""OpenEnv server and client for userlm-env: conversations with a simulated user over WebSocket.

:func:`make_app` wraps a :class:`~userlm_env.sessions.SessionPool` in OpenEnv's ``create_app``
(``python -m userlm_env.serve`` runs it under uvicorn). Each OpenEnv WebSocket session is one
:class:`UserLMEnvironment`, which holds one :class:`~userlm_env.sessions.Session` of the one
shared pool, so the simulator calls of concurrent sessions are batched into one. OpenEnv awaits
the environment's ``reset_async``/``step_async`` on its event loop, which await the pool's
batched calls without blocking it.

Play over the WebSocket (``/ws``) with OpenEnv's ``GenericEnvClient`` or the typed
:class:`UserLMEnvClient`: OpenEnv's HTTP ``/reset`` and ``/step`` build a fresh environment per
request, so an episode cannot span two HTTP calls.

Wire format (what a client sends and receives):

* reset: ``{"seed": int >= 0, "intent_id": str, "episode_id": str}``, all optional.
* action (:class:`ReplyAction`): ``{"reply": str}``, the assistant's reply to the latest user turn
  (a bare number is taken as its text).
* observation (:class:`UserTurnObservation`): ``{"user_turn": str, "info": {...}}`` with the
  result's ``reward`` and ``done``; ``info`` holds the episode facts listed in :data:`INFO_KEYS`.
* state (:class:`UserLMState`): the episode id, replies so far (``step_count``), intent id, task,
  termination reason and the whole conversation (``messages``).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, EnvironmentMetadata, Observation, State
from pydantic import Field, field_validator
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from userlm_env.errors import EpisodeStateError, UserLMEnvError
from userlm_env.protocols import Simulator
from userlm_env.sessions import Session, SessionPool
from userlm_env.sessions import StepResult as SessionStep

__all__ = [
    "ENV_NAME",
    "INFO_KEYS",
    "OpenEnvRequestError",
    "ReplyAction",
    "ServerError",
    "UserLMEnvClient",
    "UserLMEnvironment",
    "UserLMState",
    "UserTurnObservation",
    "make_app",
]

#: The name the server gives OpenEnv (``/metadata``, the optional web interface).
ENV_NAME = "userlm_env"

#: The keys of the env's ``info`` an observation carries: all JSON-safe, none revealing the
#: intent's text, shards or reference (``score_detail`` can quote the expected answer, and the
#: conversation is in the state, not repeated in every observation).
INFO_KEYS: tuple[str, ...] = (
    "intent_id",
    "task",
    "episode_index",
    "user_turns",
    "replies",
    "attempted",
    "solved",
    "solved_any",
    "reply_label",
    "termination_reason",
    "coverage",
    "user_ended",
    "diversity",
    "episode_metrics",
)

_RESET_ARGUMENTS = "seed, intent_id and episode_id"
_HTTP_HINT = "over HTTP each /step gets a fresh environment: play episodes over the /ws WebSocket"


class OpenEnvRequestError(UserLMEnvError, ValueError):
    """A reset or step request to the OpenEnv environment has a bad argument."""


class ServerError(UserLMEnvError, RuntimeError):
    """The server answered a client's message with an error.

    Attributes:
        code: OpenEnv's error code (``"VALIDATION_ERROR"`` for a malformed action,
            ``"EXECUTION_ERROR"`` for one the env refused, ``"CAPACITY_REACHED"``...).
        errors: The validation errors (``loc``, ``msg``...) of a malformed message.
    """

    def __init__(self, message: str, *, code: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.code = code
        self.errors = errors

    @classmethod
    def from_response(cls, data: Mapping[str, Any]) -> ServerError:
        """The error an OpenEnv error response's ``data`` reports."""
        code = str(data.get("code", "UNKNOWN"))
        errors = [e for e in data.get("errors", []) if isinstance(e, dict)]
        if errors:
            details = "; ".join(
                f"{'.'.join(str(part) for part in e.get('loc', ())) or 'message'}: {e.get('msg')}"
                for e in errors
            )
            message = f"invalid message: {details}"
        else:
            message = str(data.get("message", "unknown error"))
        return cls(f"{message} ({code})", code=code, errors=errors)


class ReplyAction(Action):
    """The assistant's reply to the user's latest turn: any text up to the server's
    max_reply_chars (32,768 by default); an empty reply attempts nothing.

    A bare number is taken as its text (``{"reply": 29}`` is the reply ``"29"``): clients that
    JSON-decode a model's output before wrapping it, as verifiers' ``openenv`` taskset does, turn
    the reply ``29`` into a number. Other non-text values (booleans, null, lists, objects) are
    refused.
    """

    reply: str = Field(description="The assistant's reply to the user's latest turn.")

    @field_validator("reply", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        """An int or float (not a bool) as ``str(value)``: 29 -> "29", 2.50 -> "2.5"."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value


class UserTurnObservation(Observation):
    """The simulated user's newest turn and facts about the episode.

    reward is None at reset, then the reward of the reply just given (1.0 for the first reply
    that solves the task, else 0.0). done is true once the episode ended; info's
    termination_reason says how (solved, user_ended, or max_replies: the reply budget ran out).
    metadata holds the same dict as info; clients read info, which every OpenEnv version sends
    (0.3 drops metadata from the wire, 0.4 sends it too).
    """

    user_turn: str = Field(
        default="",
        description="The user's newest turn; '<|endconversation|>' once the episode is over.",
    )
    info: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Episode facts: {', '.join(INFO_KEYS)} (see ConversationEnv's info).",
    )


class UserLMState(State):
    """The current episode: its id, the replies so far (step_count), the intent, how the
    episode ended and the whole conversation in OpenAI chat format."""

    intent_id: str | None = Field(default=None, description="The intent being played.")
    task: str | None = Field(default=None, description="The intent's task (gsm8k, humaneval...).")
    termination_reason: str | None = Field(
        default=None, description="None while running, else solved, user_ended or max_replies."
    )
    done: bool = Field(default=False, description="Whether the episode has ended.")
    messages: list[dict[str, str]] = Field(
        default_factory=list, description="The conversation so far, in OpenAI chat format."
    )


class UserLMEnvironment(Environment[ReplyAction, UserTurnObservation, UserLMState]):
    """One OpenEnv session: episodes of a :class:`ConversationEnv` served by a shared pool.

    ## Description
    The user simulator pursues a hidden intent and reveals it turn by turn; the client is the
    assistant. Episodes, observations, rewards and ends are exactly those of
    ``gym.make(env_id, ...)`` with the same seed and intent (see
    :class:`userlm_env.ConversationEnv`).

    ## Action
    :class:`ReplyAction`, ``{"reply": str}``. A reply that is too long, a step before reset or
    after the episode ended is refused with an error and changes nothing.

    ## Observation
    :class:`UserTurnObservation`: ``user_turn``, ``reward``, ``done`` and ``info``.

    ## Reset
    ``reset(seed=None, intent_id=None, episode_id=None)``: ``seed`` (an int >= 0) makes the
    episode reproducible, ``intent_id`` picks the intent (else one is drawn), ``episode_id``
    names the episode in the state (else a random id).

    Args:
        pool: The pool whose session this environment holds until :meth:`close`.
    """

    SUPPORTS_CONCURRENT_SESSIONS: ClassVar[bool] = True

    def __init__(self, pool: SessionPool) -> None:
        super().__init__()
        self._pool = pool
        self._session: Session = pool.open()
        self._episode_id: str | None = None

    # ------------------------------------------------------------------ OpenEnv API
    async def reset_async(
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        intent_id: str | None = None,
        **kwargs: Any,
    ) -> UserTurnObservation:
        """Start an episode (awaits the pool's batched simulator call)."""
        options = _reset_options(seed, episode_id, intent_id, kwargs)
        observation, info = await self._session.reset(seed=seed, options=options)
        return self._started(episode_id, observation, info)

    async def step_async(
        self, action: ReplyAction, timeout_s: float | None = None, **kwargs: Any
    ) -> UserTurnObservation:
        """Reply to the user (awaits the pool's batched scoring and simulator calls)."""
        reply = self._check_step(action, timeout_s, kwargs)
        return _stepped(await self._session.step(reply))

    def reset(
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        intent_id: str | None = None,
        **kwargs: Any,
    ) -> UserTurnObservation:
        """:meth:`reset_async` for threaded callers (blocks until the batch ran)."""
        options = _reset_options(seed, episode_id, intent_id, kwargs)
        observation, info = self._session.reset_blocking(seed=seed, options=options)
        return self._started(episode_id, observation, info)

    def step(
        self, action: ReplyAction, timeout_s: float | None = None, **kwargs: Any
    ) -> UserTurnObservation:
        """:meth:`step_async` for threaded callers (blocks until the batch ran)."""
        reply = self._check_step(action, timeout_s, kwargs)
        return _stepped(self._session.step_blocking(reply))

    @property
    def state(self) -> UserLMState:
        """The current episode (empty before the first reset)."""
        state = self._session.state
        if state is None:
            return UserLMState()
        return UserLMState(
            episode_id=self._episode_id,
            step_count=len(state.scores),
            intent_id=state.intent.intent_id,
            task=state.intent.task,
            termination_reason=state.termination_reason,
            done=state.over,
            messages=[{"role": m["role"], "content": m["content"]} for m in state.messages],
        )

    def get_metadata(self) -> EnvironmentMetadata:
        """The env id and what an episode is."""
        return EnvironmentMetadata(
            name=ENV_NAME,
            description=(
                f"{self._pool.env_id or 'userlm-env'}: a multi-turn conversation with a simulated "
                "user who reveals a hidden task turn by turn; act with {'reply': str}, observe "
                "the user's next turn; reward 1.0 for the reply that solves the task."
            ),
        )

    def close(self) -> None:
        """Give the session back to the pool (the pool keeps serving the others)."""
        self._session.close()

    # ------------------------------------------------------------------ internals
    def _started(
        self, episode_id: str | None, observation: Any, info: dict[str, Any]
    ) -> UserTurnObservation:
        self._episode_id = episode_id if episode_id is not None else uuid.uuid4().hex
        state = self._session.state
        return _observation(observation, None, state is not None and state.over, info)

    def _check_step(self, action: object, timeout_s: float | None, extra: Mapping[str, Any]) -> str:
        if extra:
            raise OpenEnvRequestError(f"unknown step argument(s): {', '.join(sorted(extra))}")
        if timeout_s is not None:
            raise OpenEnvRequestError("timeout_s is not supported: a step runs to completion")
        if not isinstance(action, ReplyAction):
            raise OpenEnvRequestError(
                f"the action must be a ReplyAction ({{'reply': str}}), got {type(action).__name__}"
            )
        if self._session.state is None:
            raise EpisodeStateError(f"step() called before reset(): reset first ({_HTTP_HINT})")
        return action.reply


def _reset_options(
    seed: object, episode_id: object, intent_id: object, extra: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The env's reset ``options`` after checking the reset arguments."""
    if extra:
        raise OpenEnvRequestError(
            f"unknown reset argument(s): {', '.join(sorted(extra))}; reset takes {_RESET_ARGUMENTS}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise OpenEnvRequestError(f"seed must be an integer >= 0, got {seed!r}")
    if episode_id is not None and not isinstance(episode_id, str):
        raise OpenEnvRequestError(f"episode_id must be a string, got {episode_id!r}")
    if intent_id is None:
        return None
    if not isinstance(intent_id, str):
        raise OpenEnvRequestError(f"intent_id must be a string, got {intent_id!r}")
    return {"intent_id": intent_id}


def _stepped(result: SessionStep) -> UserTurnObservation:
    """The OpenEnv observation of a session step's result."""
    observation, reward, terminated, truncated, info = result
    return _observation(observation, float(reward), terminated or truncated, info)


def _observation(
    user_turn: str, reward: float | None, done: bool, info: Mapping[str, Any]
) -> UserTurnObservation:
    """An observation carrying ``info``'s public keys; a ``None`` reward marks a reset."""
    public = {key: info[key] for key in INFO_KEYS if key in info}
    return UserTurnObservation(
        user_turn=user_turn, reward=reward, done=done, info=public, metadata=dict(public)
    )


def make_app(
    env_id: str | None,
    simulator: str | Simulator = "userlm",
    *,
    simulator_kwargs: Mapping[str, Any] | None = None,
    max_sessions: int = 64,
    window_s: float = 0.02,
    max_batch: int = 64,
    **env_kwargs: Any,
) -> FastAPI:
    """OpenEnv's FastAPI app serving ``env_id``'s conversations, one shared pool for all sessions.

    Args:
        env_id: A registered id (``"userlm_env/GSMSymbolic-v0"``...); ``None``: only
            ``env_kwargs``.
        simulator: A registered simulator name or a simulator object.
        simulator_kwargs: Keyword arguments for a simulator given by name.
        max_sessions: The most WebSocket sessions open at once (more are refused with
            OpenEnv's ``CAPACITY_REACHED`` error).
        window_s: The longest a request waits for other sessions' requests to join its batch.
        max_batch: The most conversations in one simulator call.
        **env_kwargs: The env's other settings (``sources``, ``max_replies``,
            ``max_reply_chars``...), as for ``gym.make``.

    Returns:
        The app; ``app.state.pool`` is the pool, closed when the app shuts down.

    Raises:
        ValueError: ``max_sessions`` < 1, or an ``observation_mode`` other than ``"turn"``
            (the whole conversation is in the state).
        UnknownNameError, TypeError, ValueError, OSError: As the pool raises for bad settings.
    """
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
    mode = env_kwargs.get("observation_mode", "turn")
    if mode != "turn":
        raise ValueError(
            f"the OpenEnv server observes the user's turn (observation_mode='turn'), got {mode!r};"
            " the whole conversation is in the state's messages"
        )
    pool = SessionPool(
        env_id,
        simulator,
        window_s=window_s,
        max_batch=max_batch,
        simulator_kwargs=simulator_kwargs,
        **env_kwargs,
    )
    try:
        # A partial of the class lets OpenEnv read SUPPORTS_CONCURRENT_SESSIONS without
        # building a throwaway environment.
        app = create_app(
            functools.partial(UserLMEnvironment, pool),
            ReplyAction,
            UserTurnObservation,
            env_name=ENV_NAME,
            max_concurrent_envs=max_sessions,
        )
    except BaseException:
        pool.close()
        raise
    app.state.pool = pool
    app.router.on_shutdown.append(pool.close)
    app.add_middleware(_ClosedByClient)
    # OpenEnv's HTTP /reset and /step let env errors through as a bare 500; say what was wrong.
    app.add_exception_handler(UserLMEnvError, _http_error)
    return app


logger = logging.getLogger(__name__)


class _ClosedByClient:
    """ASGI middleware: a WebSocket the client already closed is not a server error.

    When a client closes its socket, OpenEnv's session handler still closes it from its side,
    and Starlette raises ``WebSocketDisconnect`` for that second close, which uvicorn logs as
    "Exception in ASGI application" with a traceback after every normal episode. The session is
    already released by then; this logs one debug line instead. Any other error passes through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except WebSocketDisconnect as closed:
            logger.debug("WebSocket closed by the client first (code %s)", closed.code)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    """An env error on an HTTP route as a JSON answer: 409 for a step out of turn, else 400."""
    status = 409 if isinstance(error, EpisodeStateError) else 400
    return JSONResponse(status_code=status, content={"detail": str(error)})


class UserLMEnvClient(EnvClient[ReplyAction | str, UserTurnObservation, UserLMState]):
    """A typed OpenEnv client of the userlm-env server (async; ``.sync()`` for blocking use).

    ``step`` takes a :class:`ReplyAction` or a plain ``str``; results hold a
    :class:`UserTurnObservation`; ``state()`` returns a :class:`UserLMState`. An error answer
    raises :class:`ServerError` naming what was wrong (GenericEnvClient only says "Invalid
    message" for a malformed action)::

        with UserLMEnvClient(base_url="http://127.0.0.1:8000").sync() as env:
            result = env.reset(seed=0)
            while not result.done:
                result = env.step(ReplyAction(reply=my_policy(result.observation.user_turn)))
    """

    def _step_payload(self, action: ReplyAction | str) -> dict[str, Any]:
        if isinstance(action, str):
            return {"reply": action}
        if isinstance(action, ReplyAction):
            return action.model_dump()
        raise TypeError(f"step takes a ReplyAction or a str, got {type(action).__name__}")

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[UserTurnObservation]:
        reward, done = payload.get("reward"), bool(payload.get("done", False))
        fields = dict(payload.get("observation", {}))
        fields.setdefault("metadata", dict(fields.get("info", {})))
        observation = UserTurnObservation(**fields, reward=reward, done=done)
        return StepResult(observation=observation, reward=reward, done=done)

    def _parse_state(self, payload: dict[str, Any]) -> UserLMState:
        return UserLMState.model_validate(payload)

    async def _send_and_receive(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._send(message)
        response: dict[str, Any] = await self._receive()
        if response.get("type") == "error":
            raise ServerError.from_response(response.get("data", {}))
        return response
