"""Benchmark: user turns per second of 16 concurrent episodes through the async session API.

Claim: episodes played one per coroutine through :class:`userlm_env.sessions.SessionPool`,
whose batcher gathers concurrent requests into one simulator call, simulate user turns at least
0.8x as fast as the 16-env vector env (the lock-stepped batch) and at least 3x as fast as the
same 16 episodes without batching (the pool with ``max_batch=1``: one simulator call per
request, as a server that calls the env per session would make). With ``--openenv`` the same
episodes also run through ``python -m userlm_env.serve`` (OpenEnv's WebSocket sessions) on
127.0.0.1.

Workload: that of ``benchmarks/simulator_throughput.py`` (16 conversations x 4 user turns on 16
GSM8k intents, the embedded model in-process, resampling guardrails off and the end not allowed
so every variant generates exactly 64 turns); conversation ``i`` is reset with seed
``1234 + i``, so every variant plays the same intents with the same sampling seeds.

* ``vector``: :class:`userlm_env.vector.ConversationVectorEnv` of 16 envs: ``reset`` + 3 steps.
* ``sessions``: 16 coroutines, each ``await session.reset(seed=1234 + i)`` + 3
  ``await session.step(reply)``, on one pool (default window).
* ``unbatched``: the same coroutines on a pool with ``max_batch=1``.
* ``openenv`` (``--openenv``): OpenEnv's app (:func:`userlm_env.integrations.openenv.make_app`,
  what ``python -m userlm_env.serve`` runs) under uvicorn on 127.0.0.1 in this process, over the
  same simulator object, and 16 concurrent WebSocket clients
  (:class:`~userlm_env.integrations.openenv.UserLMEnvClient`): the same episodes, plus
  serialisation and the network stack.

Model loading and one warm-up call are outside the clock; the variants alternate for
``--rounds`` rounds and the median rate counts. Run: ``python benchmarks/concurrent_sessions.py
[--rounds 1] [--max-new-tokens 40] [--openenv]``. The last line printed is a JSON object with
each variant's turns/s, ``sessions_vs_vector`` (target >= 0.8), ``sessions_vs_unbatched``
(target >= 3) and, with ``--openenv``, ``openenv_vs_vector`` and ``openenv_vs_unbatched``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

# The workload and the shared setup are those of simulator_throughput.py (which also sets the
# offline and OpenMP environment variables and puts the repo root on the path).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulator_throughput import (
    CONVERSATIONS,
    REPLY,
    SEED,
    USER_TURNS,
    Setup,
    build_setup,
    report,
    run_vector,
    timed,
    turn_tokens,
)

from userlm_env.sessions import SessionPool


def run_sessions(setup: Setup, *, max_batch: int) -> int:
    """16 concurrent episodes through one pool; returns the user turns' length in tokens."""
    with SessionPool(None, setup.simulator, intents=setup.intents, max_batch=max_batch) as pool:

        async def episode(index: int) -> list[str]:
            session = pool.open()
            observation, _ = await session.reset(seed=SEED + index)
            turns = [observation]
            for _ in range(USER_TURNS - 1):
                observation, _, terminated, truncated, _ = await session.step(REPLY)
                if terminated or truncated:
                    raise RuntimeError("an episode ended early: the workload would change")
                turns.append(observation)
            session.close()
            return turns

        async def everyone() -> list[list[str]]:
            return await asyncio.gather(*(episode(i) for i in range(CONVERSATIONS)))

        played = asyncio.run(everyone())
    return sum(turn_tokens(setup, turns) for turns in played)


@contextmanager
def serving(setup: Setup) -> Iterator[str]:
    """OpenEnv's app over the shared simulator, served on 127.0.0.1; yields its base URL."""
    import uvicorn

    from userlm_env.integrations.openenv import make_app

    app = make_app(None, setup.simulator, intents=setup.intents, max_sessions=CONVERSATIONS)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="benchmark-openenv", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the OpenEnv server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def run_openenv(setup: Setup, base_url: str) -> int:
    """16 concurrent WebSocket episodes; returns the user turns' length in tokens."""
    from userlm_env.integrations.openenv import UserLMEnvClient

    async def episode(index: int) -> list[str]:
        async with UserLMEnvClient(base_url=base_url) as env:
            result = await env.reset(seed=SEED + index)
            turns = [result.observation.user_turn]
            for _ in range(USER_TURNS - 1):
                result = await env.step(REPLY)
                if result.done:
                    raise RuntimeError("an episode ended early: the workload would change")
                turns.append(result.observation.user_turn)
            return turns

    async def everyone() -> list[list[str]]:
        return await asyncio.gather(*(episode(i) for i in range(CONVERSATIONS)))

    return sum(turn_tokens(setup, turns) for turns in asyncio.run(everyone()))


def alternate(setup: Setup, rounds: int, base_url: str | None) -> dict[str, float]:
    """Median turns/s of each variant over ``rounds`` alternations."""
    runs: dict[str, Callable[[], int]] = {
        "vector": partial(run_vector, setup),
        "sessions": partial(run_sessions, setup, max_batch=64),
        "unbatched": partial(run_sessions, setup, max_batch=1),
    }
    if base_url is not None:
        runs["openenv"] = partial(run_openenv, setup, base_url)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(rounds):
        for name, run in runs.items():
            took, size = timed(run)
            seconds[name].append(took)
            report(index + 1, name, took, size)
    total = CONVERSATIONS * USER_TURNS
    return {name: statistics.median(total / t for t in times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the variants")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="tokens per user turn")
    parser.add_argument("--openenv", action="store_true", help="also through the OpenEnv server")
    args = parser.parse_args()
    setup = build_setup(args.max_new_tokens)
    if args.openenv:
        with serving(setup) as base_url:
            rates = alternate(setup, args.rounds, base_url)
    else:
        rates = alternate(setup, args.rounds, None)
    result = {f"{name}_turns_per_s": round(rate, 3) for name, rate in rates.items()}
    for name in ("sessions", "openenv"):
        if name in rates:
            result[f"{name}_vs_vector"] = round(rates[name] / rates["vector"], 3)
            result[f"{name}_vs_unbatched"] = round(rates[name] / rates["unbatched"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
