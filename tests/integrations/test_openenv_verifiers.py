"""verifiers' ``openenv`` taskset drives the userlm-env OpenEnv server.

The server is the real ``python -m userlm_env.serve`` command; the eval is the real ``vf-eval``
CLI, its model the scripted OpenAI-compatible fault server. verifiers' taskset sends the model
each observation as JSON (``{"observation": ..., "action_schema": ...}``) and turns the model's
reply into an action: a JSON object is the action itself, any other text (or JSON value) fills
the schema's one required field, ``reply``.

Two verifiers 0.4.0 details shape the command: ``vf-eval openenv --env.taskset.base-url URL``
alone fails (its CLI builds a default ``OpenEnvConfig`` with neither ``env`` nor ``base_url``
before reading the flags), so the taskset is named in a ``@ file.toml``; and its default
harness and runtime need a Prime sandbox or ``uv``, so the assistant runs userlm-env's plain
chat harness in the eval process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from pydantic import ValidationError
from verifiers.v1.tasksets.openenv.taskset import parse_action

from tests.fault_server import FaultServer, Reply
from userlm_env.integrations.openenv import INFO_KEYS, ReplyAction

ENV_ID = "userlm_env/GSMSymbolic-v0"
SETTINGS: dict[str, Any] = {
    "sources": [{"name": "gsm_symbolic", "n": 6, "seed": 3}],
    "max_replies": 3,
}
STARTUP_TIMEOUT_S = 120.0
EVAL_TIMEOUT_S = 240.0
ACTION_SCHEMA = ReplyAction.model_json_schema()
SYSTEM_PROMPT = "Each message is JSON: answer its observation's user_turn in plain text."

# Episode 0: a question, then the bare answer (JSON-decoded to a number by verifiers).
# Episode 1: three non-answers, as a JSON action, a fenced JSON action and plain text.
SOLVED_INTENT = "gsm_symbolic/3-1"
RESETS: list[dict[str, Any]] = [{"seed": 4, "intent_id": SOLVED_INTENT}, {"seed": 5}]
MODEL_OUTPUTS: list[list[str]] = [
    ["Which numbers are involved?", "574"],
    ['{"reply": "Tell me more, please."}', '```json\n{"reply": "What else?"}\n```', "Go on."],
]
REPLIES: list[list[str]] = [
    ["Which numbers are involved?", "574"],
    ["Tell me more, please.", "What else?", "Go on."],
]


# ---------------------------------------------------------------------------- helpers
def _completion(text: str) -> Reply:
    """A scripted chat completion saying ``text``."""
    message = {"role": "assistant", "content": text}
    body = {
        "id": "scripted",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return Reply(body=json.dumps(body).encode())


def _play_in_process(reset: dict[str, Any], replies: Sequence[str]) -> dict[str, Any]:
    """The episode ``gym.make`` plays from the same reset with the same replies."""
    env = gym.make(ENV_ID, simulator="sharded", **SETTINGS)
    intent_id = reset.get("intent_id")
    observation, info = env.reset(
        seed=reset["seed"], options={"intent_id": intent_id} if intent_id else None
    )
    turns, rewards = [observation], []
    for reply in replies:
        observation, reward, terminated, truncated, info = env.step(reply)
        rewards.append(float(reward))
        if terminated or truncated:
            break
        turns.append(observation)
    env.close()
    return {
        "intent_id": info["intent_id"],
        "turns": turns,  # the user turns the assistant answers (not the closing one)
        "rewards": rewards,
        "termination_reason": info["termination_reason"],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server_url() -> Iterator[str]:
    """``python -m userlm_env.serve`` on a free loopback port, until the test ends."""
    port = _free_port()
    command = [
        sys.executable, "-m", "userlm_env.serve", "--env", "GSMSymbolic-v0",
        "--simulator", "sharded", "--port", str(port), "--env-kwargs", json.dumps(SETTINGS),
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"the server exited with {process.returncode}: {output}")
            try:
                with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for the server to start")
            time.sleep(0.05)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _toml_inline(reset: dict[str, Any]) -> str:
    """A reset's arguments as a TOML inline table (JSON strings are valid TOML strings)."""
    return "{" + ", ".join(f"{key} = {json.dumps(value)}" for key, value in reset.items()) + "}"


def _run_vf_eval(base_url: str, model_url: str, out: Path) -> subprocess.CompletedProcess[str]:
    prompt = out / "system_prompt.txt"  # verifiers reads the taskset's system prompt from a file
    prompt.write_text(SYSTEM_PROMPT)
    config = out / "openenv.toml"
    config.write_text(
        "[env.taskset]\n"
        'id = "openenv"\n'
        f"resets = [{', '.join(_toml_inline(reset) for reset in RESETS)}]\n"
        f"system_prompt = {json.dumps(str(prompt))}\n"
    )
    command = [
        str(Path(sys.executable).with_name("vf-eval")), "@", str(config),
        "--env.taskset.base-url", base_url,
        "--env.player.harness.id", "userlm-env-verifiers",
        "--env.player.runtime.type", "subprocess",
        "--model", "scripted", "--client.base-url", model_url,
        "-n", str(len(RESETS)), "-r", "1", "-c", "1",  # one episode at a time, in task order
        "--no-push", "--no-rich", "-o", str(out), "--run.name", "openenv",
    ]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=EVAL_TIMEOUT_S, env=dict(os.environ)
    )


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("model_output", "reply"),
    [
        ("574", "574"),
        ("2.50", "2.5"),
        ("The answer is 574.", "The answer is 574."),
        ('{"reply": "Go on."}', "Go on."),
        ('```json\n{"reply": "Go on."}\n```', "Go on."),
        ('"quoted"', "quoted"),
    ],
)
def test_verifiers_actions_of_model_outputs_are_valid_replies(
    model_output: str, reply: str
) -> None:
    action = parse_action(model_output, ACTION_SCHEMA)
    assert ReplyAction.model_validate(action).reply == reply


@pytest.mark.parametrize("model_output", ["true", "null", "[574]", '{"answer": 574}'])
def test_model_outputs_that_are_no_reply_are_refused(model_output: str) -> None:
    with pytest.raises(ValidationError, match="reply"):
        ReplyAction.model_validate(parse_action(model_output, ACTION_SCHEMA))


@pytest.mark.slow
def test_vf_eval_openenv_taskset_plays_the_served_env(
    server_url: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    fault_server.push([_completion(text) for outputs in MODEL_OUTPUTS for text in outputs])
    done = _run_vf_eval(server_url, fault_server.api_base, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    lines = (tmp_path / "openenv" / "traces.jsonl").read_text().splitlines()
    episodes = sorted((json.loads(line) for line in lines), key=lambda e: e["task"]["data"]["idx"])
    assert len(episodes) == len(RESETS)
    expected = [_play_in_process(r, p) for r, p in zip(RESETS, REPLIES, strict=True)]
    assert [e["rewards"] for e in expected] == [[0.0, 1.0], [0.0, 0.0, 0.0]]
    assert [e["termination_reason"] for e in expected] == ["solved", "max_replies"]

    sent_payloads: list[dict[str, Any]] = []
    for episode, reset, outputs, played in zip(
        episodes, RESETS, MODEL_OUTPUTS, expected, strict=True
    ):
        assert episode["ok"], episode["errors"]
        (trace,) = episode["traces"]
        assert trace["task"]["data"]["reset"] == reset
        # verifiers records the sum of the per-step rewards, which are the env's.
        assert trace["rewards"]["openenv_reward"]["score"] == sum(played["rewards"])
        system, *messages = [node["message"] for node in trace["nodes"]]
        assert (system["role"], system["content"]) == ("system", SYSTEM_PROMPT)
        assert [m["role"] for m in messages] == ["user", "assistant"] * len(outputs)
        assert [m["content"] for m in messages[1::2]] == outputs
        payloads = [json.loads(m["content"]) for m in messages[0::2]]
        sent_payloads.extend(payloads)
        # The model saw the user turns the in-process env speaks for the same seed and replies.
        assert [p["observation"]["user_turn"] for p in payloads] == played["turns"]
        for position, payload in enumerate(payloads):
            info = payload["observation"]["info"]
            assert set(info) <= set(INFO_KEYS)  # no intent text, shards or reference
            assert info["intent_id"] == played["intent_id"]
            assert info["replies"] == position and info["termination_reason"] is None
            assert payload["action_schema"]["required"] == ["reply"]
    assert episodes[0]["traces"][0]["rewards"]["openenv_reward"]["score"] == 1.0

    # Every model call reached the scripted server, ending with the observation above.
    requests = [request.body["messages"] for request in fault_server.requests]
    assert len(requests) == sum(len(outputs) for outputs in MODEL_OUTPUTS)
    assert [json.loads(sent[-1]["content"]) for sent in requests] == sent_payloads
    assert all(sent[0] == {"role": "system", "content": SYSTEM_PROMPT} for sent in requests)
