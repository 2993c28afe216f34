"""The OpenEnv server: WebSocket episodes equal in-process ones, batched, robust to bad clients.

Servers run for real on 127.0.0.1: :func:`make_app` under uvicorn in a thread (so a test can
read the shared pool), and the ``python -m userlm_env.serve`` command line in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import pytest
import uvicorn
from fastapi import FastAPI
from openenv import GenericEnvClient
from websockets.sync.client import connect

import userlm_env  # noqa: F401  (registers the ids)
from simulators.sharded import ShardedSimulator
from userlm_env.integrations.openenv import ReplyAction, ServerError, UserLMEnvClient, make_app
from userlm_env.types import ConversationState, UserTurn

ENV_ID = "userlm_env/GSMSymbolic-v0"
SOURCES = [{"name": "gsm_symbolic", "n": 6, "seed": 3}]
SETTINGS: dict[str, Any] = {"sources": SOURCES, "max_replies": 4, "max_reply_chars": 200}
ASKING = ("Could you say more?", "What else should I know?", "Anything else?", "Go on.")
GOOD_REPLIES = ("What is it about?", "And then?", "Anything else?", "Go on.")
STARTUP_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------- helpers
def _row(user_turn: str, reward: float | None, done: bool, info: dict[str, Any]) -> tuple[Any, ...]:
    return (
        user_turn,
        reward,
        done,
        info["termination_reason"],
        info["intent_id"],
        info["coverage"],
        info["replies"],
    )


def _play_in_process(seed: int, intent_id: str | None, replies: Sequence[str]) -> list[Any]:
    """The rows of the same episode played by ``gym.make`` in this process."""
    env = gym.make(ENV_ID, simulator="sharded", **SETTINGS)
    observation, info = env.reset(
        seed=seed, options={"intent_id": intent_id} if intent_id else None
    )
    rows = [_row(observation, None, False, info)]
    for reply in replies:
        observation, reward, terminated, truncated, info = env.step(reply)
        rows.append(_row(observation, reward, terminated or truncated, info))
        if terminated or truncated:
            break
    env.close()
    return rows


def _remote_row(result: Any) -> tuple[Any, ...]:
    """The row of a GenericEnvClient result (its observation is a dict)."""
    return _row(
        result.observation["user_turn"], result.reward, result.done, result.observation["info"]
    )


async def _play_remote(
    client: GenericEnvClient, seed: int, intent_id: str | None, replies: Sequence[str]
) -> list[Any]:
    """The rows of an episode played over ``client``'s WebSocket session."""
    result = await client.reset(seed=seed, **({"intent_id": intent_id} if intent_id else {}))
    rows = [_remote_row(result)]
    for reply in replies:
        result = await client.step({"reply": reply})
        rows.append(_remote_row(result))
        if result.done:
            break
    return rows


def _answer(intent_id: str) -> str:
    env = gym.make(ENV_ID, simulator="sharded", **SETTINGS)
    by_id = {intent.intent_id: intent for intent in env.unwrapped.intents}  # type: ignore[attr-defined]
    env.close()
    return f"The answer is {by_id[intent_id].reference['answer']}."


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextmanager
def _serving(simulator: Any = "sharded", **options: Any) -> Iterator[tuple[str, FastAPI]]:
    """``make_app`` served by uvicorn in a thread on a free port: its base URL and the app."""
    app = make_app(ENV_ID, simulator, **options, **SETTINGS)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="openenv-test-server", daemon=True)
    thread.start()
    _wait_until(lambda: server.started or not thread.is_alive(), "the server to start")
    assert server.started, "the server thread died while starting"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, FastAPI]]:
    with _serving(max_sessions=4, window_s=0.05) as running:
        yield running


# ---------------------------------------------------------------------------- episodes
@pytest.mark.slow
def test_four_concurrent_websocket_episodes_equal_in_process_envs_in_shared_batches() -> None:
    plan = [
        (0, None, ASKING),
        (1, None, ASKING),
        (7, "gsm_symbolic/3-2", ("What do you need?", _answer("gsm_symbolic/3-2"))),
        (7, None, ASKING),
    ]
    with _serving(max_sessions=4, window_s=0.5) as (base_url, app):
        pool = app.state.pool

        async def play_all() -> list[list[Any]]:
            clients = [GenericEnvClient(base_url=base_url) for _ in plan]
            try:
                await asyncio.gather(*(client.connect() for client in clients))
                await asyncio.to_thread(
                    _wait_until, lambda: pool.open_sessions() == 4, "four open sessions"
                )
                return await asyncio.gather(
                    *(_play_remote(c, s, i, r) for c, (s, i, r) in zip(clients, plan, strict=True))
                )
            finally:
                await asyncio.gather(*(client.close() for client in clients))

        played = asyncio.run(play_all())
        assert played == [_play_in_process(s, i, r) for s, i, r in plan]
        assert played[2][-1][1:4] == (1.0, True, "solved")
        assert all(rows[-1][2] for rows in played)  # every episode ended
        # The four resets were one simulator call: the sessions share one pool and batcher.
        assert pool.batcher.stats.batch_sizes[0] == 4
        assert pool.batcher.stats.largest_batch == 4
        _wait_until(lambda: pool.open_sessions() == 0, "the closed sessions to leave the pool")


class _GatedSimulator(ShardedSimulator):
    """The rule-based user, which can be told to hold its next call until released."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.entered = threading.Event()
        self.released = threading.Event()

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        if self.hold:
            self.entered.set()
            self.released.wait(timeout=60)
        return super().respond(states)


def _drop(socket_: Any) -> None:
    """Cut a client's connection: no close message, no closing handshake."""
    socket_.socket.close()


@pytest.mark.slow
def test_a_client_that_disconnects_mid_episode_frees_its_session() -> None:
    simulator = _GatedSimulator()
    with _serving(simulator=simulator, max_sessions=2) as (base_url, app):
        pool = app.state.pool
        ws_url = base_url.replace("http://", "ws://") + "/ws"
        # Dropped while its step is in the simulator: the step finishes, its answer has nowhere
        # to go, and the session is freed.
        socket_ = connect(ws_url)
        socket_.send(json.dumps({"type": "reset", "data": {"seed": 3}}))
        assert json.loads(socket_.recv())["type"] == "observation"
        simulator.hold = True
        socket_.send(json.dumps({"type": "step", "data": {"reply": "Tell me more."}}))
        assert simulator.entered.wait(timeout=30), "the step never reached the simulator"
        _drop(socket_)
        simulator.hold = False
        simulator.released.set()
        _wait_until(lambda: pool.open_sessions() == 0, "the dropped session to be freed")
        # Dropped between steps, more times than the server has session slots.
        for seed in range(3):
            with connect(ws_url) as socket_:
                socket_.send(json.dumps({"type": "reset", "data": {"seed": seed}}))
                assert json.loads(socket_.recv())["type"] == "observation"
                _drop(socket_)
            _wait_until(lambda: pool.open_sessions() == 0, "the dropped session to be freed")

        async def play() -> list[Any]:
            async with GenericEnvClient(base_url=base_url) as client:
                return await _play_remote(client, 3, None, ASKING)

        assert asyncio.run(play()) == _play_in_process(3, None, ASKING)


@pytest.mark.slow
def test_malformed_actions_get_clear_errors_and_other_sessions_go_on(
    served: tuple[str, FastAPI],
) -> None:
    base_url, _ = served

    async def scenario() -> tuple[list[Any], list[str], str]:
        async with (
            GenericEnvClient(base_url=base_url) as good,
            UserLMEnvClient(base_url=base_url) as bad,
            GenericEnvClient(base_url=base_url) as generic,
        ):
            messages: list[str] = []

            async def refused(call: Any, code: str) -> None:
                with pytest.raises(ServerError) as caught:
                    await call
                assert caught.value.code == code
                messages.append(str(caught.value))

            result = await good.reset(seed=5)
            good_rows = [_remote_row(result)]
            await refused(bad.step("Hello?"), "EXECUTION_ERROR")  # before reset
            await refused(bad.reset(seed=-1), "EXECUTION_ERROR")
            await refused(bad.reset(intent_id="no-such-intent"), "EXECUTION_ERROR")
            await bad.reset(seed=6)
            for payload in ({"reply": True}, {}, {"reply": "Hi.", "tone": "warm"}):
                await refused(
                    bad._send_and_receive({"type": "step", "data": payload}), "VALIDATION_ERROR"
                )
                if not good_rows[-1][2]:
                    result = await good.step({"reply": GOOD_REPLIES[len(good_rows) - 1]})
                    good_rows.append(_remote_row(result))
            await refused(bad.step("x" * 201), "EXECUTION_ERROR")
            # The refused actions changed nothing: the bad client's episode goes on from reply 0.
            stepped = await bad.step(ReplyAction(reply="Tell me more."))
            assert stepped.observation.info["replies"] == 1
            while not stepped.done:
                stepped = await bad.step("And?")
            await refused(bad.step("Still there?"), "EXECUTION_ERROR")  # after the end
            while not good_rows[-1][2]:
                result = await good.step({"reply": GOOD_REPLIES[len(good_rows) - 1]})
                good_rows.append(_remote_row(result))
            # OpenEnv's own client reports the same refusal by its code.
            await generic.reset(seed=0)
            with pytest.raises(RuntimeError, match="VALIDATION_ERROR") as generic_error:
                await generic.step({"reply": True})
            return good_rows, messages, str(generic_error.value)

    good_rows, messages, generic_message = asyncio.run(scenario())
    assert good_rows == _play_in_process(5, None, GOOD_REPLIES)
    before_reset, bad_seed, bad_intent, wrong_type, missing, extra, too_long, after_end = messages
    assert "before reset" in before_reset
    assert "seed must be an integer >= 0" in bad_seed
    assert "no-such-intent" in bad_intent
    assert "reply: Input should be a valid string" in wrong_type
    assert "reply: Field required" in missing
    assert "tone: Extra inputs are not permitted" in extra
    assert "201 characters exceeds the limit of 200" in too_long
    assert "already ended" in after_end
    assert "Server error" in generic_message


@pytest.mark.slow
def test_http_routes_describe_the_env_and_refuse_a_stateless_step(
    served: tuple[str, FastAPI],
) -> None:
    base_url, _ = served
    with urllib.request.urlopen(f"{base_url}/schema", timeout=10) as response:
        schema = json.load(response)
    assert schema["action"]["required"] == ["reply"]
    assert {"user_turn", "info"} <= set(schema["observation"]["properties"])
    request = urllib.request.Request(
        f"{base_url}/step",
        data=json.dumps({"action": {"reply": "Hi."}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 409
    assert "/ws WebSocket" in json.load(refused.value)["detail"]


# ---------------------------------------------------------------------------- command line
def _serve_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "userlm_env.serve", *arguments]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_the_command_line_serves_episodes_over_websocket() -> None:
    port = _free_port()
    command = _serve_command(
        "--env", "GSMSymbolic-v0", "--simulator", "sharded", "--port", str(port),
        "--env-kwargs", json.dumps(SETTINGS), "--log-level", "warning",
    )  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
    )
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stdout.read()}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        _wait_until(healthy, "the command-line server", timeout_s=STARTUP_TIMEOUT_S)
        replies = ("Which numbers?", _answer("gsm_symbolic/3-1"))
        with UserLMEnvClient(base_url=base_url).sync() as client:
            result = client.reset(seed=2, intent_id="gsm_symbolic/3-1")
            rows = [_row(result.observation.user_turn, None, False, result.observation.info)]
            for reply in replies:
                result = client.step(reply)
                rows.append(
                    _row(
                        result.observation.user_turn,
                        result.reward,
                        result.done,
                        result.observation.info,
                    )
                )
            state = client.state()
        assert rows == _play_in_process(2, "gsm_symbolic/3-1", replies)
        assert state.termination_reason == "solved"
        assert [m["role"] for m in state.messages] == ["user", "assistant", "user", "assistant"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_help_says_what_it_serves() -> None:
    done = subprocess.run(_serve_command("--help"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "WebSocket" in done.stdout
    assert "--max-sessions" in done.stdout and "--env-kwargs" in done.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--env", "NoSuchEnv-v0"), "unknown env id 'userlm_env/NoSuchEnv-v0'"),
        (
            ("--env", "GSMSymbolic-v0", "--env-kwargs", "{not json"),
            "--env-kwargs is not valid JSON",
        ),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_clear_line(
    arguments: tuple[str, ...], message: str
) -> None:
    done = subprocess.run(_serve_command(*arguments), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
