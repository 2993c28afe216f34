"""``ConversationVectorEnv``: N conversations advanced by one batched simulator call per step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from userlm_env.core import TerminationReason, Transition
from userlm_env.env import build_env_parts
from userlm_env.errors import EpisodeStateError, UnknownNameError
from userlm_env.observation import observation_space, observe
from userlm_env.protocols import Simulator
from userlm_env.spaces import UnicodeText
from userlm_env.types import ConversationState, Intent

__all__ = ["ConversationVectorEnv"]


class ConversationVectorEnv(VectorEnv):
    """``num_envs`` conversations stepped together; the batched face of ``ConversationEnv``.

    Build it with ``gym.make_vec("userlm_env/GSM8k-v0", num_envs=N,
    vectorization_mode="vector_entry_point", simulator=...)`` or directly. Spaces, rewards,
    episode ends and per-env ``info`` keys are those of :class:`userlm_env.ConversationEnv`
    (``info`` is batched the Gymnasium way: one array per key plus a ``_key`` mask). Every
    ``step`` makes one batched assistant-reply scoring pass per task and *one* simulator call for
    all conversations that continue.

    ## Autoreset
    ``metadata["autoreset_mode"]`` is :attr:`AutoresetMode.SAME_STEP` by default: an episode
    that ends in ``step`` is reset in that same call; the returned observation is the new
    episode's first user turn and the ended episode's last observation and info are in
    ``info["final_obs"]`` / ``info["final_info"]``. So every reply passed to ``step`` is scored
    by the episode it was written for; Gymnasium's next-step mode, which silently ignores the
    action after an episode ends, would drop an assistant reply. With
    ``autoreset_mode=AutoresetMode.DISABLED`` ended conversations stay ended: stepping them
    raises :class:`EpisodeStateError` until ``reset(options={"reset_mask": mask})``.

    ## Seeding
    ``reset(seed=s)`` seeds env ``i`` with ``s + i`` (or ``seed[i]`` for a list): the intents
    drawn and the per-conversation sampling seeds follow from it.
    """

    # An instance attribute in Gymnasium (so not a ClassVar); instances may replace it.
    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012

    def __init__(
        self,
        num_envs: int,
        simulator: str | Simulator = "userlm",
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        **env_kwargs: Any,
    ) -> None:
        """Build ``num_envs`` conversations over one simulator.

        Args:
            num_envs: Conversations stepped together.
            simulator: A registered simulator name or a simulator object, as for the single env.
            autoreset_mode: ``SAME_STEP`` (default) or ``DISABLED``; ``NEXT_STEP`` is refused.
            **env_kwargs: The single env's other settings (``simulator_kwargs``, ``sources``,
                ``data_path``, ``intents``, ``max_replies``, ``max_reply_chars``, ``matcher``,
                ``metrics``, ``observation_mode``), with its defaults; see
                :func:`userlm_env.env.build_env_parts`.

        Raises:
            ValueError: ``NEXT_STEP`` autoreset, or no intents.
            TypeError: An unknown setting.
        """
        mode = AutoresetMode(autoreset_mode)
        if mode == AutoresetMode.NEXT_STEP:
            raise ValueError("NEXT_STEP autoreset would drop a reply; use SAME_STEP or DISABLED")
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.num_envs = num_envs
        parts = build_env_parts(simulator, **env_kwargs)
        self.intents, self.simulator = parts.intents, parts.simulator
        self.core, self.tracker = parts.core, parts.tracker
        self.observation_mode = parts.observation_mode
        self.single_action_space = UnicodeText(self.core.max_reply_chars)
        self.single_observation_space = observation_space(self.observation_mode)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.states: list[ConversationState | None] = [None] * num_envs
        self._rngs = [seeding.np_random(None)[0] for _ in range(num_envs)]

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Start conversations (all, or those in ``options["reset_mask"]``).

        ``options["intent_ids"]``: one intent id (or ``None``: drawn) per env, to start env ``i``
        on that intent, as ``options["intent_id"]`` does for the single env.

        Raises:
            ValueError: ``intent_ids`` of the wrong length.
            UnknownNameError: An intent id that is not one of this env's intents.
        """
        options = dict(options or {})
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, dtype=bool)))
        chosen = self._chosen_intents(options.get("intent_ids"))
        self._seed(seed)
        indices = [i for i in range(self.num_envs) if mask[i]]
        infos: dict[str, Any] = {}
        for i, info in self._start(indices, chosen).items():
            infos = self._add_info(infos, info, i)
        return tuple(self._observe(i) for i in range(self.num_envs)), infos

    def step(
        self, actions: Sequence[str | None]
    ) -> tuple[tuple[Any, ...], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Score one reply per conversation; start new episodes where one ended (same step).

        With autoreset ``DISABLED`` an ended conversation takes ``None`` as its action and is
        left as it is (reward 0.0, its end flags repeated, no ``info`` entry), so a batch whose
        episodes end at different turns steps only those still running.

        Raises:
            EpisodeStateError: Before ``reset``; a reply for an ended conversation; ``None``
                for a running one.
        """
        if len(actions) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions, got {len(actions)}")
        states = [s for s in self.states if s is not None]
        if len(states) != self.num_envs:
            raise EpisodeStateError("step() called before reset(): call reset() first")
        stepped = [
            i for i, action in enumerate(actions) if action is not None or not states[i].over
        ]
        for i in stepped:
            if actions[i] is None:
                raise EpisodeStateError(f"conversation {i} is running: it needs a reply, not None")
        advanced = self.core.advance([states[i] for i in stepped], [actions[i] for i in stepped])
        transitions = [_repeat_end(s) for s in states]
        for i, transition in zip(stepped, advanced, strict=True):
            transitions[i] = transition
        infos_by_env = {i: self.tracker.info(states[i], transitions[i]) for i in stepped}
        observations = [observe(s, self.observation_mode) for s in states]
        ended = [i for i in stepped if transitions[i].done]
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP and ended:
            for i, info in self._start(ended).items():
                info.update(final_obs=observations[i], final_info=infos_by_env[i])
                infos_by_env[i], observations[i] = info, self._observe(i)
        infos: dict[str, Any] = {}
        for i, info in infos_by_env.items():
            infos = self._add_info(infos, info, i)
        return (tuple(observations), *_arrays(transitions), infos)

    def _seed(self, seed: int | Sequence[int] | None) -> None:
        if seed is None:
            return
        self.tracker.forget()  # a new seed starts a new experiment
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        self._rngs = [seeding.np_random(int(s))[0] for s in seeds]

    def _chosen_intents(self, intent_ids: Sequence[str | None] | None) -> list[Intent | None]:
        if intent_ids is None:
            return [None] * self.num_envs
        if len(intent_ids) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} intent ids, got {len(intent_ids)}")
        by_id = {intent.intent_id: intent for intent in self.intents}
        unknown = [i for i in intent_ids if i is not None and i not in by_id]
        if unknown:
            raise UnknownNameError(f"no intent with id {unknown[0]!r} in this environment")
        return [by_id[i] if i is not None else None for i in intent_ids]

    def _start(
        self, indices: Sequence[int], chosen: Sequence[Intent | None] | None = None
    ) -> dict[int, dict[str, Any]]:
        """Start fresh conversations at ``indices`` (on ``chosen[i]`` where given); their first
        ``info`` by index."""
        states = [self._new_state(i, chosen[i] if chosen else None) for i in indices]
        transitions = self.core.start(states)
        infos = {}
        for i, state, transition in zip(indices, states, transitions, strict=True):
            self.states[i] = state
            self.tracker.started(state)
            infos[i] = self.tracker.info(state, transition)
        return infos

    def _new_state(self, index: int, intent: Intent | None = None) -> ConversationState:
        rng = self._rngs[index]
        if intent is None:
            intent = self.intents[int(rng.integers(len(self.intents)))]
        return ConversationState(
            intent=intent,
            seed=int(rng.integers(2**31 - 1)),
            episode_index=self.tracker.next_index(intent.intent_id),
        )

    def _observe(self, index: int) -> Any:
        state = self.states[index]
        return observe(state, self.observation_mode) if state is not None else ""

    def close_extras(self, **kwargs: Any) -> None:
        """Release the scorers' resources (sandbox workers)."""
        self.core.close()


def _repeat_end(state: ConversationState) -> Transition:
    """The transition of a conversation that took no step: no reward, its end as it was."""
    reason = state.termination_reason
    return Transition(
        terminated=reason in (TerminationReason.SOLVED, TerminationReason.USER_ENDED),
        truncated=reason == TerminationReason.MAX_REPLIES,
    )


def _arrays(transitions: Sequence[Transition]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rewards, terminations and truncations as arrays."""
    rewards = np.array([t.reward for t in transitions], dtype=np.float64)
    terminated = np.array([t.terminated for t in transitions], dtype=np.bool_)
    truncated = np.array([t.truncated for t in transitions], dtype=np.bool_)
    return rewards, terminated, truncated
