"""What the SkyRL and verl adapter tests share: a scripted policy and the reference episode.

Both tests play the same episodes through their trainer's call sequence and compare them with
:func:`gym_episode`, the same episode played in the in-process Gymnasium env.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

ENV_ID = "userlm_env/GSMSymbolic-v0"
MAX_REPLIES = 4
#: The scripted policies: one that solves, one that only asks, one that guesses wrong.
STYLES = ("solve", "ask", "wrong")


def policy(style: str, k: int, answer: str) -> str:
    """The scripted reply number ``k`` of a policy that solves, only asks, or guesses wrong."""
    if style == "solve":
        return "Which numbers are involved?" if k == 0 else f"The answer is {answer}."
    if style == "ask":
        return "Please go on."
    return "Please go on." if k % 2 == 0 else "The answer is -1."


@dataclass
class Episode:
    """What an episode showed: the user turns, each reply's reward and whether it ended it, and
    the final ``termination_reason`` and ``coverage``."""

    user_turns: list[str]
    rewards: list[float]
    dones: list[bool]
    termination_reason: str | None
    coverage: float


def gym_episode(intent_id: str, seed: int, style: str, answer: str) -> Episode:
    """The reference: the episode of ``intent_id`` and ``seed`` in the in-process Gymnasium env
    (the ``sharded`` user, ``MAX_REPLIES`` replies), the policy playing ``style``."""
    env = gym.make(ENV_ID, simulator="sharded", max_replies=MAX_REPLIES)
    observation, info = env.reset(seed=seed, options={"intent_id": intent_id})
    episode = Episode([observation], [], [], None, 0.0)
    k = 0
    while True:
        observation, reward, terminated, truncated, info = env.step(policy(style, k, answer))
        k += 1
        episode.rewards.append(float(reward))
        episode.dones.append(terminated or truncated)
        if terminated or truncated:
            break
        episode.user_turns.append(observation)
    episode.termination_reason, episode.coverage = info["termination_reason"], info["coverage"]
    env.close()
    return episode
