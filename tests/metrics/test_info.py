"""The metrics in every step's ``info`` of the single and the vector env."""

from __future__ import annotations

import numpy as np
import pytest

from userlm_env.env import ConversationEnv
from userlm_env.metrics.diversity import diversity_against
from userlm_env.metrics.text import unigrams
from userlm_env.types import Intent
from userlm_env.vector import ConversationVectorEnv

REPLY = "Hmm, could you say a bit more?"  # never an answer attempt: the episode runs to the limit


def run_episode(env: ConversationEnv, seed: int | None) -> list[dict]:
    _, info = env.reset(seed=seed)
    infos = [info]
    while infos[-1]["termination_reason"] is None:
        infos.append(env.step(REPLY)[-1])
    return infos


def test_pace_diversity_and_episode_metrics(apples_intent: Intent) -> None:
    env = ConversationEnv("sharded", intents=[apples_intent], max_replies=6)
    first = run_episode(env, seed=0)
    expected = {"user_turn": 1, "words": 7, "cumulative_words": 7, "new_shards": [1]}
    assert first[0]["pace"] == expected
    assert first[1]["pace"]["new_shards"] == [2] and first[1]["pace"]["cumulative_words"] == 12
    assert all(i["diversity"] is None for i in first)  # no earlier episode yet
    assert all("episode_metrics" not in i for i in first[:-1])
    assert first[-1]["termination_reason"] == "max_replies"
    assert first[-1]["episode_metrics"] == {
        "intent_coverage": 1.0,
        "repeat_required": False,
        "skip_non_required": False,
        "add_demands": False,  # the nudge ("... your final answer now?") adds nothing
        "demand_turns": [],
        "role_break": False,
        "role_break_turns": [],
        "drift": False,  # the nudge comes after every shard is out
        "longest_idle_run": 0,
        "premature_end": False,
        "user_turns": 6,
        "user_words": first[-1]["pace"]["cumulative_words"],
    }
    second = run_episode(env, seed=None)
    earlier = unigrams(m["content"] for m in first[-1]["messages"] if m["role"] == "user")
    now = unigrams([second[0]["messages"][0]["content"]])
    assert second[0]["diversity"] == pytest.approx(diversity_against(now, [earlier]))
    assert second[0]["diversity"] > 0.0 and second[-1]["diversity"] == 0.0  # same words
    assert run_episode(env, seed=0)[0]["diversity"] is None  # a seeded reset forgets


def test_same_seed_gives_identical_infos(apples_intent: Intent) -> None:
    env = ConversationEnv("sharded", intents=[apples_intent], max_replies=3)
    assert run_episode(env, seed=3) == run_episode(env, seed=3)


def test_vector_env_final_info_carries_episode_metrics(apples_intent: Intent) -> None:
    envs = ConversationVectorEnv(2, "sharded", intents=[apples_intent], max_replies=2)
    envs.reset(seed=0)
    envs.step([REPLY, REPLY])
    *_, truncated, infos = envs.step([REPLY, REPLY])
    assert truncated.all()
    final = infos["final_info"]
    assert list(final["episode_metrics"]["intent_coverage"]) == [pytest.approx(0.4)] * 2
    assert list(final["episode_metrics"]["skip_non_required"]) == [True, True]
    assert list(infos["pace"]["user_turn"]) == [1, 1]  # the fresh episodes' first turns
    diversity = infos["diversity"]  # the new episodes compare with the two that ended
    assert np.all(np.asarray(diversity, dtype=float) >= 0.0)
