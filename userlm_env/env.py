"""``ConversationEnv``: one conversation between a simulated user and the agent (the assistant)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from userlm_env.core import DEFAULT_MAX_REPLY_CHARS, ConversationCore, Transition
from userlm_env.errors import EpisodeStateError, UnknownNameError
from userlm_env.metrics.episode import EpisodeMetricsConfig
from userlm_env.metrics.shards import ShardMatcher
from userlm_env.observation import ObservationMode, check_mode, observation_space, observe
from userlm_env.protocols import Simulator
from userlm_env.spaces import UnicodeText
from userlm_env.tracker import EpisodeTracker
from userlm_env.types import ConversationState, Intent

__all__ = [
    "ConversationEnv",
    "EnvParts",
    "SourceSpec",
    "build_env_parts",
    "build_simulator",
    "env_settings",
    "load_env_intents",
]

#: A source of intents: a registered name, or ``{"name": ..., **kwargs}``.
SourceSpec = str | Mapping[str, Any]


def load_env_intents(
    sources: Sequence[SourceSpec] = (), data_path: str | Path | None = None
) -> list[Intent]:
    """Intents from a data file (``.jsonl``: GSM8k format, ``.json``: Lost-in-Conversation) or,
    without one, from the named sources in order. A source's ``limit`` keeps its first N."""
    from userlm_env.intents import load_intents

    if data_path is not None:
        source = "gsm8k" if str(data_path).endswith(".jsonl") else "lic"
        return load_intents(source, data_path=str(data_path))
    intents: list[Intent] = []
    for spec in sources:
        name, kwargs = (spec, {}) if isinstance(spec, str) else (spec["name"], dict(spec))
        kwargs.pop("name", None)
        limit = kwargs.pop("limit", None)
        intents.extend(load_intents(name, **kwargs)[:limit])
    return intents


def env_settings(env_id: str, **overrides: Any) -> dict[str, Any]:
    """The settings ``gym.make(env_id)`` builds its env with (intent sources, ``max_replies``),
    updated by ``overrides``.

    Raises:
        UnknownNameError: ``env_id`` is not a registered userlm-env id.
    """
    from userlm_env import ENV_IDS

    if env_id not in ENV_IDS:
        raise UnknownNameError(f"unknown env id {env_id!r}; known: {', '.join(sorted(ENV_IDS))}")
    return {**gym.spec(env_id).kwargs, **overrides}


def build_simulator(
    simulator: str | Simulator, kwargs: Mapping[str, Any] | None = None
) -> Simulator:
    """A simulator object from a registered name (built with ``kwargs``) or an object as is."""
    if isinstance(simulator, str):
        from simulators import make_simulator

        return make_simulator(simulator, **dict(kwargs or {}))
    if kwargs:
        raise ValueError("simulator_kwargs only apply when simulator is given by name")
    return simulator


@dataclass(frozen=True)
class EnvParts:
    """What the single and the vector env are both built from."""

    intents: list[Intent]  # the intents episodes draw from
    simulator: Simulator  # the user simulator (the env's dynamics)
    core: ConversationCore  # the transition both envs share
    tracker: EpisodeTracker  # episode counters, cross-episode history and each step's info
    observation_mode: ObservationMode  # what the agent observes


def build_env_parts(
    simulator: str | Simulator = "userlm",
    simulator_kwargs: Mapping[str, Any] | None = None,
    *,
    sources: Sequence[SourceSpec] = ("humaneval",),
    data_path: str | Path | None = None,
    intents: Sequence[Intent] | None = None,
    max_replies: int = 8,
    max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
    matcher: ShardMatcher | None = None,
    metrics: EpisodeMetricsConfig | None = None,
    observation_mode: str = "turn",
) -> EnvParts:
    """Load the intents, build the simulator, the core and the tracker (arguments as for
    ConversationEnv).

    Raises:
        ValueError: No intent was given or loaded, an unknown observation mode, or
            ``simulator_kwargs`` came with an object.
    """
    mode = check_mode(observation_mode)
    chosen = list(intents) if intents is not None else load_env_intents(sources, data_path)
    if not chosen:
        raise ValueError("the environment needs at least one intent")
    built = build_simulator(simulator, simulator_kwargs)
    core = ConversationCore(
        built, max_replies=max_replies, matcher=matcher, max_reply_chars=max_reply_chars
    )
    return EnvParts(chosen, built, core, EpisodeTracker(metrics), mode)


class ConversationEnv(gym.Env[Any, str]):
    """A multi-turn conversation with a simulated user who pursues a hidden intent.

    ## Description
    Each episode draws an *intent* (a sharded GSM8k math problem or HumanEval coding problem).
    The environment's dynamics are a user simulator (by default a User Language Model) that
    reveals the intent gradually, in its own words, and may end the conversation. The agent is
    the assistant: it observes user turns and acts by replying.

    ## Action Space
    ``UnicodeText(max_reply_chars)``: the assistant's reply, any Unicode ``str`` of at most
    ``max_reply_chars`` characters (default 32,768). The empty string is a valid reply that
    attempts nothing. A non-``str`` raises ``TypeError``; a longer reply raises
    :class:`~userlm_env.errors.ReplyTooLongError`. Neither changes the episode.

    ## Observation Space
    Set by ``observation_mode`` (:mod:`userlm_env.observation`):

    * ``"turn"`` (default): ``UnicodeText(32768)``, the simulated user's latest turn; once the
      episode is over, ``"<|endconversation|>"``. An agent keeps the chat history itself, as
      LLM RL trainers do: it appends the observation as a ``user`` message and its own reply
      as an ``assistant`` message.
    * ``"conversation"``: ``Sequence(Dict(role=UnicodeText(16), content=UnicodeText(32768)))``,
      every message so far as a tuple of ``{"role", "content"}`` dicts, for agents that keep no
      history (Gymnasium-native; with ``AsyncVectorEnv`` pass ``shared_memory=False``).

    The intent, its shards and its reference are never observed.

    ## Rewards
    The task's verifiable reward for the reply just given: 1.0 for the first reply that solves
    the task (correct final number; code passing the unit tests in the sandbox), else 0.0.

    ## Starting State
    ``reset(seed=..., options={"intent_id": "HumanEval/0"})`` starts on that intent, or on one
    drawn uniformly with ``np_random``; the first user turn is the observation.

    ## Episode End
    Termination: the reply solves the task (``"solved"``), or the user ends the conversation
    (``"user_ended"``). Truncation: ``max_replies`` replies were given (``"max_replies"``).

    ## Information
    ``reset`` and ``step`` return ``info`` with: ``messages`` (the conversation in OpenAI chat
    format), ``user_turns`` (spoken user turns so far; the user ending the conversation is not
    a turn), ``replies`` (assistant replies so far), ``intent_id``, ``task``, ``attempted``,
    ``solved`` and ``score_detail`` (for the reply just scored), ``solved_any``,
    ``reply_label``, ``termination_reason`` (``None`` while running), ``revealed_shards`` (ids
    revealed so far), ``coverage`` (their share of the intent's shards), ``user_ended``,
    ``user_turn_metadata`` (simulator facts about what the user said last, e.g. guardrail
    tries), ``pace`` (the latest user turn's index ``user_turn``, its ``words``, the user's
    ``cumulative_words`` and the ``new_shards`` it revealed), ``diversity`` (unigram difference
    of this episode's user turns with earlier finished episodes on the intent; ``None`` for the
    first), ``episode_metrics`` once the episode ended (intent coverage, repeat required, skip
    non-required, add demands and the role-break / drift / premature-end flags; see
    :mod:`userlm_env.metrics.episode`) and ``episode_index`` (earlier episodes on this intent
    in this env since the last ``reset`` with an explicit ``seed``, which starts a fresh
    history so that the same seed always gives the same episode and ``info``).

    ## Arguments
    * ``simulator``: a name from :data:`simulators.SIMULATORS` (``"userlm"``, ``"sharded"``,
      ``"prompted"``...) or a simulator object. Default ``"userlm"`` (``microsoft/UserLM-8b``).
    * ``simulator_kwargs``: keyword arguments for a simulator given by name.
    * ``sources``: intent sources (``"humaneval"``, ``"gsm_symbolic"``, ``{"name": "gsm8k",
      "data_path": ...}``); ``data_path``: a GSM8k ``.jsonl`` or Lost-in-Conversation ``.json``
      file, used instead of ``sources``; ``intents``: a list of :class:`Intent`, used instead of
      both. The intents are public as ``env.unwrapped.intents``.
    * ``max_replies``: assistant replies allowed per episode (default 8).
    * ``max_reply_chars``: the action-size limit.
    * ``matcher``: a :class:`ShardMatcher` for simulators that do not report their shards.
    * ``metrics``: settings of the episode metrics (:class:`EpisodeMetricsConfig`).
    * ``observation_mode``: ``"turn"`` (default) or ``"conversation"``.
    * ``render_mode``: ``"ansi"`` renders the transcript as text.

    ## Version History
    * v0: initial release.
    """

    # An instance attribute in Gymnasium (so not a ClassVar); instances may replace it.
    metadata: dict[str, Any] = {"render_modes": ["ansi"]}  # noqa: RUF012

    def __init__(
        self,
        simulator: str | Simulator = "userlm",
        *,
        render_mode: str | None = None,
        **settings: Any,
    ) -> None:
        """Build the env; ``settings`` are those of :func:`build_env_parts` (see Arguments).

        Raises:
            TypeError: An unknown setting.
            ValueError: An unknown ``render_mode`` or observation mode, or no intents.
        """
        self._check_render_mode(render_mode)
        self._adopt(build_env_parts(simulator, **settings), render_mode)

    def _check_render_mode(self, render_mode: str | None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")

    def _adopt(self, parts: EnvParts, render_mode: str | None) -> None:
        self._check_render_mode(render_mode)
        self.intents, self.simulator = parts.intents, parts.simulator
        self.core, self.tracker = parts.core, parts.tracker
        self.observation_mode = parts.observation_mode
        self._by_id = {intent.intent_id: intent for intent in self.intents}
        self.render_mode = render_mode
        self.action_space = UnicodeText(self.core.max_reply_chars)
        self.observation_space = observation_space(self.observation_mode)
        self.state: ConversationState | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start a conversation; returns the first observation and ``info``."""
        state = self.prepare_reset(seed=seed, options=options)
        return self.finish_reset(state, self.core.start([state])[0])

    def step(self, action: str) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Score the assistant reply ``action`` and return the next observation."""
        state = self.prepare_step(action)
        return self.finish_step(self.core.advance([state], [action])[0])

    # The halves of reset and step around the core's transition. ``reset`` and ``step`` call
    # them with the core in between; :mod:`userlm_env.sessions` calls them around a batched core
    # call, so an episode played there is exactly the one played here.
    def prepare_reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> ConversationState:
        """Seed, pick the intent and build the fresh state of the next episode (no core call).

        Raises:
            UnknownNameError: ``options["intent_id"]`` names no intent of this env.
        """
        super().reset(seed=seed)
        if seed is not None:  # a new seed starts a new experiment: forget the episode history
            self.tracker.forget()
        intent = self._pick_intent(options or {})
        return ConversationState(
            intent=intent,
            seed=int(self.np_random.integers(2**31 - 1)),
            episode_index=self.tracker.next_index(intent.intent_id),
        )

    def finish_reset(
        self, state: ConversationState, transition: Transition
    ) -> tuple[Any, dict[str, Any]]:
        """Adopt the started ``state``: the first observation and ``info``."""
        self.tracker.started(state)
        self.state = state
        return observe(state, self.observation_mode), self.tracker.info(state, transition)

    def prepare_step(self, action: object) -> ConversationState:
        """The state ``action`` replies in, after checking both (no change to either).

        Raises:
            EpisodeStateError: Before ``reset``, or after the episode ended.
            TypeError, ReplyTooLongError: A reply that is not a ``str``, or too long.
        """
        if self.state is None:
            raise EpisodeStateError("step() called before reset(): call reset() first")
        self.core.validate(self.state, action)
        return self.state

    def finish_step(self, transition: Transition) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """The step's result once the core advanced the state by ``transition``."""
        state = self.state
        assert state is not None  # prepare_step checked it
        return (
            observe(state, self.observation_mode),
            transition.reward,
            transition.terminated,
            transition.truncated,
            self.tracker.info(state, transition),
        )

    @classmethod
    def from_parts(cls, parts: EnvParts, *, render_mode: str | None = None) -> ConversationEnv:
        """An env over already built parts (intents, simulator and core shared with others; the
        tracker its own)."""
        env = cls.__new__(cls)
        env._adopt(parts, render_mode)
        return env

    def render(self) -> str | None:
        """The transcript as text (``render_mode="ansi"``)."""
        if self.render_mode != "ansi" or self.state is None:
            return None
        return "\n".join(f"[{m['role']}] {m['content']}" for m in self.state.messages)

    def close(self) -> None:
        """Release the scorers' resources (sandbox workers)."""
        self.core.close()
        super().close()

    def _pick_intent(self, options: Mapping[str, Any]) -> Intent:
        intent_id = options.get("intent_id")
        if intent_id is None:
            return self.intents[int(self.np_random.integers(len(self.intents)))]
        try:
            return self._by_id[intent_id]
        except KeyError:
            raise UnknownNameError(f"no intent with id {intent_id!r} in this environment") from None
