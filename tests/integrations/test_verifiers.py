"""userlm-env as a verifiers 0.4 environment: the taskset, the env with a scripted assistant,
and the real ``vf-eval`` CLI against the llama.cpp server.

verifiers imports plugins by top-level module name: the install maps ``userlm_env_verifiers``
(:mod:`userlm_env.integrations.verifiers` under that name) into place, so ``vf-eval
userlm-env-verifiers`` finds it as a user's would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import verifiers.v1 as vf
from verifiers.v1.env import RunSlot
from verifiers.v1.runtimes import make_runtime

from tests.fault_server import FaultServer, Reply
from tests.server_fixtures import MODEL_ALIAS, LlamaServer
from userlm_env.integrations.verifiers import (
    EPISODE_INFO_KEY,
    PlainChatHarness,
    PlainChatHarnessConfig,
    UserLMEnv,
    UserLMEnvConfig,
    UserLMTaskData,
    UserLMTaskset,
    UserLMTasksetConfig,
    VerifiersIntegrationError,
)
from userlm_env.types import END_MARKER, Intent

PLUGIN_ID = "userlm-env-verifiers"
ENV_ID = "userlm_env/GSMSymbolic-v0"
END_REASONS = {"solved", "user_ended", "max_replies"}


def _taskset(**settings: Any) -> UserLMTaskset:
    return UserLMTaskset(UserLMTasksetConfig(id=PLUGIN_ID, **settings))


def _completion(text: str) -> Reply:
    """A scripted chat completion saying ``text``."""
    body = {
        "id": "scripted",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return Reply(body=json.dumps(body).encode())


def _conversation(trace: dict[str, Any]) -> list[dict[str, str]]:
    """A trace's messages (wire JSON) as plain role/content pairs."""
    return [
        {"role": node["message"]["role"], "content": node["message"]["content"]}
        for node in trace["nodes"]
    ]


def _replay(intent_id: str, seed: int | None, replies: list[str], max_replies: int) -> list[str]:
    """The user turns an in-process env speaks when given ``replies`` from the same seed."""
    env = gym.make(ENV_ID, simulator="sharded", max_replies=max_replies)
    observation, _ = env.reset(seed=seed, options={"intent_id": intent_id})
    turns = [observation]
    for reply in replies:
        observation, _, terminated, truncated, _ = env.step(reply)
        if terminated or truncated:
            break
        turns.append(observation)
    env.close()
    return turns


def _check_plain_chat(messages: list[dict[str, str]]) -> None:
    roles = [message["role"] for message in messages]
    assert roles == ["user", "assistant"] * (len(roles) // 2), roles
    for message in messages:
        assert not message["content"].lstrip().startswith("{"), message  # no JSON observation
        assert END_MARKER not in message["content"]


# --------------------------------------------------------------------------- taskset
def test_taskset_has_one_task_per_intent_without_the_answer() -> None:
    taskset = _taskset(limit=4, seed=10)
    tasks = list(taskset)
    intents: list[Intent] = gym.make(ENV_ID, simulator="sharded").unwrapped.intents[:4]
    assert [t.data.intent_id for t in tasks] == [i.intent_id for i in intents]
    assert [t.data.seed for t in tasks] == [10, 11, 12, 13]
    assert [t.data.idx for t in tasks] == [0, 1, 2, 3]
    assert len({t.key for t in tasks}) == 4
    # A task names its intent and seed; the problem, its shards and answer stay in the env.
    assert set(UserLMTaskData.model_fields) - set(vf.TaskData.model_fields) == {
        "intent_id",
        "env_id",
        "seed",
    }
    for task, intent in zip(tasks, intents, strict=True):
        data = task.data
        assert isinstance(data, UserLMTaskData)
        assert data.prompt is None and data.system_prompt is None  # the user opens
        assert data.description is None
        assert intent.instruction not in json.dumps(data.model_dump(mode="json"))
    assert len(list(_taskset(seed=None))) == 100
    assert all(t.data.seed is None for t in _taskset(limit=2, seed=None))


def test_taskset_settings_replace_the_env_ids_sources() -> None:
    both = [t.data.intent_id for t in _taskset(env_id="userlm_env/Mixed-v0", limit=2)]
    assert both[:2] == ["gsm_symbolic/0-0", "gsm_symbolic/0-1"]
    assert both[2:] == ["HumanEval/0", "HumanEval/1"]
    own = _taskset(sources=[{"name": "gsm_symbolic", "n": 3, "seed": 5}])
    assert [t.data.intent_id for t in own] == [f"gsm_symbolic/5-{i}" for i in range(3)]


# --------------------------------------------------------------------------- env, scripted
async def _play(env: UserLMEnv, tasks: list[vf.Task], ctx: vf.ModelContext) -> list[vf.Episode]:
    async with env.serving():
        return [await env.run_slot(RunSlot(task), ctx) for task in tasks]


def test_env_plays_episodes_with_plain_messages_and_records_the_env_reward(
    fault_server: FaultServer,
) -> None:
    max_replies = 3
    config = UserLMEnvConfig(
        taskset=UserLMTasksetConfig(id=PLUGIN_ID, limit=2, max_replies=max_replies, seed=7)
    )
    env = UserLMEnv(config)
    tasks = list(env.taskset)
    answer = env.userlm_taskset.intents()[0].reference["answer"]
    # Task 0: one question, then the answer (solved). Task 1: three non-answers (budget spent).
    fault_server.push(
        [
            _completion("Which numbers are involved?"),
            _completion(f"The answer is {answer}."),
            *(_completion(f"Tell me more, please ({n}).") for n in range(max_replies)),
        ]
    )
    ctx = vf.ModelContext(
        client=vf.EvalClientConfig(base_url=fault_server.api_base), model="scripted"
    )
    episodes = asyncio.run(_play(env, tasks, ctx))

    expected = {0: ("solved", 1.0, 2), 1: ("max_replies", 0.0, max_replies)}
    for index, episode in enumerate(episodes):
        assert episode.ok, episode.errors
        (trace,) = episode.traces
        assert trace.agent is not None and trace.agent.name == "assistant"
        reason, reward, replies = expected[index]
        assert trace.rewards["solved"] is not None
        assert trace.rewards["solved"].score == reward
        assert trace.reward == reward
        assert trace.metrics["replies"] == replies
        assert trace.metrics[f"ended_{reason}"] == 1.0
        assert 0.0 < trace.metrics["coverage"] <= 1.0
        facts = trace.info[EPISODE_INFO_KEY]
        assert facts["termination_reason"] == reason
        assert facts["intent_id"] == tasks[index].data.intent_id and facts["seed"] == 7 + index

        wire = json.loads(trace.model_dump_json())
        messages = _conversation(wire)
        _check_plain_chat(messages)
        users = [m["content"] for m in messages if m["role"] == "user"]
        assistants = [m["content"] for m in messages if m["role"] == "assistant"]
        assert len(assistants) == replies
        data = tasks[index].data
        assert users == _replay(data.intent_id, data.seed, assistants, max_replies)

    # What the model was sent: the plain conversation so far, never the hidden intent.
    requests = [r.body["messages"] for r in fault_server.requests]
    assert len(requests) == 2 + max_replies
    solved_messages = _conversation(json.loads(episodes[0].traces[0].model_dump_json()))
    assert requests[1] == solved_messages[:3]
    instructions = [intent.instruction for intent in env.userlm_taskset.intents()]
    for sent in requests:
        assert all(m["role"] in ("user", "assistant") for m in sent)
        assert not any(text in m["content"] for m in sent for text in instructions)


def test_concurrent_rollouts_share_simulator_calls(fault_server: FaultServer) -> None:
    # Two rollouts started together, each replying twice the same way (so the order in which
    # the scripted server answers does not matter); a batch waits for every open session.
    config = UserLMEnvConfig(
        taskset=UserLMTasksetConfig(id=PLUGIN_ID, limit=2, max_replies=2), window_s=5.0
    )
    env = UserLMEnv(config)
    tasks = list(env.taskset)
    fault_server.push([_completion("Could you tell me more?") for _ in range(4)])
    ctx = vf.ModelContext(
        client=vf.EvalClientConfig(base_url=fault_server.api_base), model="scripted"
    )

    async def play_together() -> tuple[list[vf.Episode], Any]:
        async with env.serving():
            slots = [slot for task in tasks for slot in env.slots(task)]
            episodes = await asyncio.gather(*(env.run_slot(slot, ctx) for slot in slots))
            return list(episodes), env.pool.batcher.stats

    episodes, stats = asyncio.run(play_together())
    for task, episode in zip(tasks, episodes, strict=True):
        assert episode.ok, episode.errors
        (trace,) = episode.traces
        assert trace.rewards["solved"] is not None
        messages = _conversation(json.loads(trace.model_dump_json()))
        _check_plain_chat(messages)
        assistants = [m["content"] for m in messages if m["role"] == "assistant"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert assistants == ["Could you tell me more?"] * 2
        assert users == _replay(task.data.intent_id, task.data.seed, assistants, 2)
        assert trace.info[EPISODE_INFO_KEY]["termination_reason"] == "max_replies"
    # Every reset and step went through the pool, the two rollouts' together: one start call
    # and one advance call per reply for both.
    assert (stats.start_calls, stats.advance_calls) == (1, 2)
    assert stats.batch_sizes == [2, 2, 2]


def test_env_outside_serving_and_harness_in_a_box_fail_loudly() -> None:
    env = UserLMEnv(UserLMEnvConfig(taskset=UserLMTasksetConfig(id=PLUGIN_ID, limit=1)))
    with pytest.raises(VerifiersIntegrationError, match="not serving"):
        _ = env.pool
    harness = PlainChatHarness(PlainChatHarnessConfig(id=PLUGIN_ID))
    asyncio.run(harness.setup(make_runtime(vf.SubprocessConfig(), name="host")))
    with pytest.raises(VerifiersIntegrationError, match="subprocess runtime"):
        asyncio.run(harness.setup(make_runtime(vf.DockerConfig(), name="box")))


# --------------------------------------------------------------------------- vf-eval, llama.cpp
@pytest.mark.server
@pytest.mark.slow
def test_vf_eval_runs_userlm_env_against_the_llama_server(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    num_tasks, max_replies = 3, 2
    command = [
        str(Path(sys.executable).with_name("vf-eval")),
        PLUGIN_ID,
        *("--model", MODEL_ALIAS, "--client.base-url", llama_server.api_base),
        *("-n", str(num_tasks), "-r", "1"),
        *("--env.taskset.max-replies", str(max_replies)),
        *("--sampling.max-tokens", "24", "--sampling.temperature", "0"),
        *("--no-push", "--no-rich", "-o", str(tmp_path), "--run.name", "smoke"),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    lines = (tmp_path / "smoke" / "traces.jsonl").read_text().splitlines()
    episodes = [json.loads(line) for line in lines]
    assert len(episodes) == num_tasks
    seen = set()
    for episode in episodes:
        assert episode["ok"], episode["errors"]
        (trace,) = episode["traces"]
        data = trace["task"]["data"]
        seen.add(data["intent_id"])
        assert trace["agent"]["name"] == "assistant"
        assert trace["rewards"]["solved"]["score"] in (0.0, 1.0)
        facts = trace["info"][EPISODE_INFO_KEY]
        assert facts["termination_reason"] in END_REASONS
        assert trace["metrics"][f"ended_{facts['termination_reason']}"] == 1.0
        messages = _conversation(trace)
        _check_plain_chat(messages)
        users = [m["content"] for m in messages if m["role"] == "user"]
        assistants = [m["content"] for m in messages if m["role"] == "assistant"]
        assert 1 <= len(assistants) <= max_replies
        # The user turns are the simulator's: the same seed and replies replay them in-process.
        assert users == _replay(data["intent_id"], data["seed"], assistants, max_replies)
    assert seen == {f"gsm_symbolic/0-{i}" for i in range(num_tasks)}
