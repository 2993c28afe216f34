"""SkyRL-gym adapter: one userlm-env conversation as a SkyRL ``BaseTextEnv``.

SkyRL's trainer (``SkyRLGymGenerator`` in skyrl-train) plays one trajectory per dataset row. For
each it calls ``skyrl_gym.make(row["env_class"], env_config=..., extras=...)``, where ``extras``
holds the row's other columns (``extra_info``, ``reward_spec``...) plus the generator's
``max_turns``; then ``env.init(row["prompt"])``, ``env.step(reply)`` after every generation until
``done``, ``env.get_metrics()`` and ``env.close()``. Trajectories run concurrently as asyncio
tasks, and with ``environment.skyrl_gym.max_env_workers > 0`` (the default, 32) ``init``,
``step`` and ``close`` run in a thread pool. So the env here plays its episode through a
:class:`~userlm_env.sessions.Session` with the *blocking* API, and every env of one
configuration in the process shares one :class:`~userlm_env.sessions.SessionPool`: the
simulator calls of trajectories that step at the same time are made as one batched call.

Usage (inside SkyRL's entrypoint task, where it registers its own custom envs)::

    from userlm_env.integrations.skyrl import register_skyrl_envs

    register_skyrl_envs(
        simulator="userlm_server",  # the UserLM behind a vLLM server; "sharded" needs none
        simulator_kwargs={"api_base": "http://127.0.0.1:8001/v1"},
        max_replies=8,
    )

and dataset rows from :func:`skyrl_rows` (``env_class`` is the env id, ``extra_info`` holds the
intent and the episode seed), or ``python -m userlm_env.integrations.skyrl --help``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import skyrl_gym
from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput

from userlm_env import ENV_IDS
from userlm_env.errors import EpisodeStateError, UserLMEnvError
from userlm_env.integrations import episodes
from userlm_env.integrations.episodes import episode_plan
from userlm_env.sessions import Session, SessionPool

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "SKYRL_ENV_IDS",
    "SkyRLSettingsError",
    "UserLMTextEnv",
    "close_skyrl_pools",
    "main",
    "register_skyrl_envs",
    "skyrl_rows",
]

#: The SkyRL ids: the same as the Gymnasium ids (``env_class`` in SkyRL dataset rows).
SKYRL_ENV_IDS: tuple[str, ...] = tuple(ENV_IDS)
#: The system message of dataset rows built by :func:`skyrl_rows` unless one is given.
DEFAULT_SYSTEM_PROMPT = episodes.DEFAULT_SYSTEM_PROMPT
_ENTRY_POINT = "userlm_env.integrations.skyrl:UserLMTextEnv"
_TERMINATIONS = ("solved", "user_ended", "max_replies")


class SkyRLSettingsError(UserLMEnvError, ValueError):
    """Settings, a dataset row or a prompt that the SkyRL adapter cannot use."""


#: This adapter's checks of rows and settings (raising :class:`SkyRLSettingsError`) and its pools.
_CHECKS = episodes.Checks(SkyRLSettingsError, "SkyRL env settings")
_POOL_CACHE = episodes.PoolCache(_CHECKS)
#: The open pools by their settings' key (the cache's own dict, never rebound).
_POOLS: dict[str, SessionPool] = _POOL_CACHE.pools


# ---------------------------------------------------------------------------------- the env
class UserLMTextEnv(BaseTextEnv):
    """One userlm-env episode, driven by SkyRL's generator.

    ## Observations
    ``init(prompt)`` returns the chat the policy starts from: the system messages of the row's
    ``prompt`` followed by the simulated user's first turn as a ``user`` message. ``step``
    returns ``observations=[{"role": "user", "content": <next user turn>}]``, or ``[]`` once
    the episode is over.

    ## Actions
    ``step(action)``: ``action`` is the policy's reply (the assistant message), a ``str`` of at
    most ``max_reply_chars`` characters (a longer one raises
    :class:`~userlm_env.errors.ReplyTooLongError`).

    ## Rewards
    The env's verifiable reward for that reply: 1.0 for the first reply that solves the task,
    else 0.0 (SkyRL places each step's reward at the end of that reply's tokens).

    ## Episode end
    ``done`` is True when the reply solved the task, the user ended the conversation or the
    ``max_replies`` budget (the env's, default 8) was spent. SkyRL's ``generator.max_turns``
    (copied into ``extras["max_turns"]``, default 1) is not used: the reply budget is the
    env's own, set by :func:`register_skyrl_envs` (``max_replies=...``).

    ## Metadata
    ``init`` and ``step`` return ``intent_id``, ``coverage`` (share of the intent's shards
    revealed), ``termination_reason`` (``None`` while running), ``solved`` (any reply so far),
    ``user_ended`` and ``replies``. :meth:`get_metrics` reports the episode's numbers.

    ## Arguments
    * ``env_config``: SkyRL's per-env config section (``environment.skyrl_gym.<env_class>``),
      a mapping of settings that override the registered ones; usually empty.
    * ``extras``: the row's other columns. The episode is chosen by ``extra_info.intent_id``
      (default: drawn with the seed) and ``extra_info.seed`` (default: unseeded); the same keys
      at the top level of the row are read too.
    * ``env_id`` (registered with the id): the userlm-env id whose intents and settings apply.
    * ``simulator``, ``window_s``, ``max_batch`` and ``**env_kwargs`` (registered by
      :func:`register_skyrl_envs`): as for :class:`~userlm_env.sessions.SessionPool`.
    """

    def __init__(
        self,
        env_config: Mapping[str, Any] | None = None,
        extras: Mapping[str, Any] | None = None,
        *,
        env_id: str,
        **settings: Any,
    ) -> None:
        super().__init__()
        merged = {
            **settings,
            **_CHECKS.plain_mapping(env_config, "env_config"),
        }
        self.env_id = env_id
        self.extras: dict[str, Any] = dict(extras or {})
        self.pool = shared_pool(env_id, merged)
        self.max_turns = self.pool.parts.core.max_replies
        self.session: Session | None = None
        self.info: dict[str, Any] | None = None
        self.rewards: list[float] = []

    def init(
        self, prompt: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Start the episode; returns the system messages of ``prompt`` plus the first user
        turn, and the metadata.

        Raises:
            SkyRLSettingsError: ``prompt`` holds a message that is not a system message (the
                simulator speaks every user turn), or the row's seed is not an integer.
            UnknownNameError: ``extra_info.intent_id`` names no intent of this env.
        """
        system = system_messages(prompt)
        intent_id, seed = episode_choice(self.extras)
        if self.session is None:
            self.session = self.pool.open()
        options = {"intent_id": intent_id} if intent_id is not None else None
        observation, info = self.session.reset_blocking(seed=seed, options=options)
        self.info, self.rewards, self.turns = info, [], 0
        return [*system, {"role": "user", "content": observation}], step_metadata(info)

    def step(self, action: str) -> BaseTextEnvStepOutput:
        """Score the reply ``action``; returns the next user turn, reward, done and metadata.

        Raises:
            EpisodeStateError: Before ``init``, after the episode ended, or after ``close``.
            TypeError, ReplyTooLongError: A reply that is not a ``str``, or too long.
        """
        if self.session is None:
            raise EpisodeStateError(
                "step() needs an episode: call init(prompt) first (a closed env stays closed)"
            )
        observation, reward, terminated, truncated, info = self.session.step_blocking(action)
        self.turns += 1
        self.info = info
        self.rewards.append(float(reward))
        done = bool(terminated or truncated)
        observations = [] if done else [{"role": "user", "content": observation}]
        return BaseTextEnvStepOutput(
            observations=observations,
            reward=float(reward),
            done=done,
            metadata=step_metadata(info),
        )

    def get_metrics(self) -> dict[str, float]:
        """The episode's numbers (all floats, averaged by SkyRL's default aggregation).

        ``replies``, ``user_turns``, ``coverage``, ``solved``, ``user_ended``, ``return`` (sum
        of rewards), ``ended`` (1.0 once the episode is over; SkyRL may stop a trajectory at its
        length limit first), ``termination/<reason>`` (1.0 for the reason it ended) and, once
        it ended, the numeric episode metrics as ``episode/<name>`` (see
        :mod:`userlm_env.metrics.episode`). Empty before ``init``.
        """
        if self.info is None:
            return {}
        return episode_numbers(self.info, self.rewards)

    def close(self) -> None:
        """Leave the shared pool (which keeps serving the other envs). Safe to call twice."""
        if self.session is not None:
            self.session.close()
            self.session = None


# ----------------------------------------------------------------------------- registration
def register_skyrl_envs(
    simulator: str = "userlm",
    *,
    window_s: float = 0.02,
    max_batch: int = 32,
    **env_kwargs: Any,
) -> tuple[str, ...]:
    """Register every userlm-env id in ``skyrl_gym`` with these settings; returns the ids.

    Call it in the process that runs SkyRL's generator (its entrypoint task), as SkyRL's own
    examples register custom envs. Calling it again is safe: the ids are registered anew with
    the latest settings (envs already made keep theirs).

    Args:
        simulator: A registered simulator name (``"userlm"``, ``"sharded"``...).
        window_s: The longest a simulator call waits for other trajectories to join it.
        max_batch: The most conversations in one simulator call. A call is sent as soon as it
            holds this many, so match it to SkyRL's ``environment.skyrl_gym.max_env_workers``
            (default 32: at most that many env calls run at once); with
            ``max_env_workers=0`` the env calls run one at a time and each waits ``window_s``,
            so set ``window_s=0`` there.
        **env_kwargs: Other env settings (``simulator_kwargs``, ``max_replies``,
            ``data_path``...), plain data only (SkyRL deep-copies them for every env).

    Raises:
        SkyRLSettingsError: A setting is not plain JSON-ready data.
    """
    settings = {"simulator": simulator, "window_s": window_s, "max_batch": max_batch, **env_kwargs}
    # Plain data, or a clear error now rather than at the first make.
    _CHECKS.settings_key(settings)
    for env_id in SKYRL_ENV_IDS:
        if env_id in skyrl_gym.registry:
            skyrl_gym.envs.registration.deregister(env_id)
        skyrl_gym.register(
            id=env_id, entry_point=_ENTRY_POINT, kwargs={"env_id": env_id, **settings}
        )
    return SKYRL_ENV_IDS


# ------------------------------------------------------------------------------ dataset rows
def skyrl_rows(
    env_id: str,
    *,
    rows: int | None = None,
    seed: int = 0,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    **env_kwargs: Any,
) -> list[dict[str, Any]]:
    """Dataset rows for SkyRL (``datasets.Dataset.from_list(rows).to_parquet(path)``).

    Row ``i``: ``prompt`` = ``[{"role": "system", "content": system_prompt}]`` (the simulator
    speaks the user's turns), ``env_class`` = ``env_id``, ``data_source`` = ``env_id`` and
    ``extra_info`` = ``{"index": i, "intent_id": ..., "seed": seed + i}``. The rows go through
    the env's intents in order, one each when ``rows`` is ``None``, else cycling to ``rows``.

    Args:
        env_id: A userlm-env id (``"userlm_env/GSMSymbolic-v0"``...).
        rows: How many rows; default one per intent.
        seed: The first row's episode seed.
        system_prompt: The system message every conversation starts with.
        **env_kwargs: Settings that choose the intents (``data_path``, ``sources``...).
    """
    return [
        {
            "data_source": env_id,
            "prompt": [{"role": "system", "content": system_prompt}],
            "env_class": env_id,
            "extra_info": {"index": index, "intent_id": intent_id, "seed": row_seed},
        }
        for index, intent_id, row_seed in episode_plan(env_id, rows=rows, seed=seed, **env_kwargs)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Write SkyRL dataset rows to a parquet file (``python -m userlm_env.integrations.skyrl``)."""
    parser = episodes.row_parser("userlm_env.integrations.skyrl", "SkyRL")
    args = parser.parse_args(argv)
    episodes.write_rows(skyrl_rows(args.env_id, **episodes.row_options(args)), args.output)


# ------------------------------------------------------------------------------- the pools
#: ``shared_pool(env_id, settings)``: the process's one :class:`SessionPool` for ``env_id``
#: with ``settings`` (``simulator``, ``window_s``, ``max_batch`` and env settings), built once;
#: pools live until :func:`close_skyrl_pools` or the end of the process. Raises
#: :class:`SkyRLSettingsError` for settings that are not plain data.
shared_pool = _POOL_CACHE.get


def close_skyrl_pools() -> None:
    """Close every shared pool (their simulators and scorers); later envs build new ones."""
    _POOL_CACHE.close()


# --------------------------------------------------------------------------------- helpers
#: ``system_messages(prompt)``: the system messages of a dataset prompt, which may hold nothing
#: else (:class:`SkyRLSettingsError` otherwise).
system_messages = _CHECKS.system_messages


def episode_choice(row: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """``(intent_id, seed)`` of a row: from ``extra_info``, else the row's top level; a missing
    or ``None`` value means "draw one".

    Raises:
        SkyRLSettingsError: The seed is not an integer.
    """
    extra = row.get("extra_info") or {}
    return _CHECKS.episode_choice({**row, **extra})


def step_metadata(info: Mapping[str, Any]) -> dict[str, Any]:
    """The light part of a step's ``info`` (no transcript)."""
    return {
        "intent_id": info["intent_id"],
        "coverage": info["coverage"],
        "termination_reason": info["termination_reason"],
        "solved": info["solved_any"],
        "user_ended": info["user_ended"],
        "replies": info["replies"],
    }


def episode_numbers(info: Mapping[str, Any], rewards: Sequence[float]) -> dict[str, float]:
    """The episode's numbers from its latest ``info`` and its rewards (see ``get_metrics``)."""
    reason = info["termination_reason"]
    numbers = {
        "replies": float(info["replies"]),
        "user_turns": float(info["user_turns"]),
        "coverage": float(info["coverage"]),
        "solved": float(info["solved_any"]),
        "user_ended": float(info["user_ended"]),
        "return": float(sum(rewards)),
        "ended": float(reason is not None),
    }
    for name in _TERMINATIONS:
        numbers[f"termination/{name}"] = float(reason == name)
    for name, value in (info.get("episode_metrics") or {}).items():
        if isinstance(value, bool | int | float):
            numbers[f"episode/{name}"] = float(value)
    return numbers


if __name__ == "__main__":
    main()
