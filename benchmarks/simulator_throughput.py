"""Benchmark: user-turn throughput of the simulation paths on one fixed workload.

Claim: the vector env, which advances all conversations with one batched simulator call per
step, simulates user turns at least 3x faster than the same number of single envs stepped one
after another, and at least 0.85x as fast as raw batched ``model.generate`` on the same prompts
(the env and simulator add at most ~15% on top of generation).

Workload (every variant): 16 conversations x 4 user turns = 64 turns, on 16 GSM8k intents from
``../shared/data/gsm8k/test.jsonl``, with the embedded model (``smollm2-135m-instruct``) on the
CPU. Conversation ``i`` uses the intent and seed a seeded env reset with ``seed + i`` draws. The
user's first turn comes from ``reset`` and turns 2-4 from three ``step`` calls, each answering
with the same fixed clarifying question (no number in it, so nothing is ever solved).

* ``raw``: batched, left-padded ``model.generate`` of the 16 prompts per turn, rendered with
  :func:`userlm_env.chat_format.render_user_prompt`; Hugging Face's own sampling with the same
  temperature, top-p, ``max_new_tokens``, stop tokens, first-word ban and end-marker ban.
* ``vector``: :class:`userlm_env.vector.ConversationVectorEnv` of 16 envs: ``reset`` + 3 steps.
* ``sequential``: 16 :class:`userlm_env.ConversationEnv` (sharing the one simulator object of
  ``vector``) stepped one after another: each ``reset`` + 3 steps. It samples exactly the
  turns ``vector`` samples (per-row seeds), one row per ``generate``.
* ``server``: the vector env with :class:`simulators.userlm_server.UserLMServerSimulator`
  against a llama.cpp server that this script starts on 127.0.0.1 with
  :func:`tests.server_fixtures.serve_embedded` (the tests' launcher, which works around a
  llama.cpp segfault and makes llama.cpp's threads wait passively); the model is the same
  GGUF file, served with 4-bit weights, so this figure compares back-ends, not like with like.

Same work in every variant: the *resampling* guardrails are off (``min_words`` /
``max_words`` = None, ``reject_repeats=False``, ``max_tries=1``), because a rejected turn is
generated again and the number of generations would then differ from run to run. The end of
the conversation is not allowed (``allow_end=False``), so every conversation lasts its 4 turns.
The first-word ban and the end-marker ban are logits processors (no extra generation) and stay
on in ``raw``, ``vector`` and ``sequential``; the server cannot ban a first word only, and with
one try it just flags such turns. Model loading, the server start and one warm-up call per
path are outside the clock.

The machine is shared and its load varies, so the variants run in alternation for
``--rounds`` rounds (default 1): each round runs ``raw`` and ``vector`` whole (their medians
count) and ``sequential`` on every ``rounds``-th conversation (it is the slowest; its rate is
all 64 turns over its summed time); ``server`` runs once, last. ``OMP_WAIT_POLICY=PASSIVE`` is
set (unless given) before torch starts: with spinning OpenMP threads, forward passes on this busy
2-core machine were 2-20x slower and erratic. Each run prints the user turns' total length in
tokens: ``vector`` and ``sequential`` sample the same turns (per-row seeds); ``raw`` and
``server`` sample their own, so their lengths differ a little.

Most generations reach ``--max-new-tokens`` (default 40, the ``userlm_embedded`` config's own
turn length; the run takes about 6 minutes on 2 cores). With 16-token turns the prompt pass
dominates and vector/sequential measured 2.55. Where the time goes (cProfile, vector
variant): the prompt pass is about 60% of it, and
batching does not speed that up (it is compute-bound, and left padding adds 15-35% more
tokens), while it makes decoding several times cheaper per token. So the vector env's lead over
sequential grows with longer turns and shrinks when other processes load the cores. Profiling
also found the simulator's seeded sampler spending ~10% of the batched time on a full-vocabulary
sort and per-row multinomial draws; it now works on the top candidates only.

Run: ``python benchmarks/simulator_throughput.py [--rounds 1] [--max-new-tokens 40]``. The last
line printed is a JSON object with each variant's turns/s, ``vector_vs_sequential`` (vector /
sequential, target >= 3.0) and ``vector_vs_raw`` (vector / raw, target >= 0.85).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Before torch starts OpenMP: spinning worker threads on a busy 2-core machine made one forward
# pass up to 20x slower (measured: 88-token prefill 7.4 s spinning vs 0.3 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from gymnasium.utils import seeding

from simulators.guardrails import end_ban_token_ids, first_token_ids, word_variants
from simulators.sampling import UserLMBaseConfig
from simulators.userlm import UserLMSimulator
from simulators.userlm_server import UserLMServerSimulator
from tests import server_fixtures
from userlm_env import ConversationEnv
from userlm_env.chat_format import end_of_turn_token_ids, render_user_prompt
from userlm_env.intents import load_gsm8k_jsonl
from userlm_env.models import EMBEDDED_MODEL, LoadedModel, load_model
from userlm_env.types import Intent, Message
from userlm_env.vector import ConversationVectorEnv

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
REPLY = "Sure, I can help with that. Which part of the problem should we work through first?"
CONVERSATIONS, USER_TURNS, SEED = 16, 4, 1234


@dataclass(frozen=True)
class Setup:
    """Everything the variants share."""

    loaded: LoadedModel  # the embedded model
    intents: list[Intent]  # the intent list the envs draw from
    settings: dict[str, Any]  # sampling and guardrail settings of both simulators
    simulator: UserLMSimulator  # the one in-process simulator of vector and sequential


def workload_settings(max_new_tokens: int) -> dict[str, Any]:
    """Simulator settings: default sampling, resampling guardrails and the end switched off."""
    return {
        "max_new_tokens": max_new_tokens,
        "min_words": None,
        "max_words": None,
        "reject_repeats": False,
        "max_tries": 1,
        "allow_end": False,
    }


# --- the variants -------------------------------------------------------------------------------


def run_raw(setup: Setup) -> int:
    """Raw batched generate, turn by turn; returns the user turns' length in tokens.

    The baseline is Hugging Face's own sampler, which draws from torch's global generator: it
    is seeded inside ``fork_rng``, so the process's generator is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return _run_raw(setup)


def _run_raw(setup: Setup) -> int:
    tokenizer, model = setup.loaded.tokenizer, setup.loaded.model
    picks = [env_draw(setup.intents, SEED + i) for i in range(CONVERSATIONS)]
    chats: list[list[Message]] = [[] for _ in picks]
    options, tokens = raw_generate_options(setup), 0
    for _ in range(USER_TURNS):
        prompts = [
            render_user_prompt(tokenizer, p.system_prompt, c)
            for p, c in zip(picks, chats, strict=True)
        ]
        batch = tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        with torch.inference_mode():
            output = model.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
        texts = [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
        tokens += turn_tokens(setup, texts)
        for chat, text in zip(chats, texts, strict=True):
            chat += [{"role": "user", "content": text}, {"role": "assistant", "content": REPLY}]
    return tokens


def raw_generate_options(setup: Setup) -> dict[str, Any]:
    """``generate`` keywords equal to the simulator's settings, with Hugging Face's sampler."""
    from transformers import GenerationConfig

    tokenizer, cfg = setup.loaded.tokenizer, UserLMBaseConfig(**setup.settings)
    stop = {*end_of_turn_token_ids(tokenizer), setup.loaded.model.generation_config.eos_token_id}
    config = GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=1,
        eos_token_id=sorted(stop - {None}),
        pad_token_id=tokenizer.pad_token_id,
        begin_suppress_tokens=first_token_ids(tokenizer, word_variants(cfg.ban_first_words)),
        suppress_tokens=end_ban_token_ids(tokenizer, cfg.end_marker),
    )
    return {"generation_config": config}


def run_vector(setup: Setup, simulator: Any = None) -> int:
    """The vector env: reset + 3 steps; returns the user turns' length in tokens."""
    env = ConversationVectorEnv(
        CONVERSATIONS, simulator=simulator or setup.simulator, intents=setup.intents
    )
    observations, _ = env.reset(seed=SEED)
    tokens = turn_tokens(setup, observations)
    for _ in range(USER_TURNS - 1):
        observations, _, terminated, truncated, _ = env.step([REPLY] * CONVERSATIONS)
        if terminated.any() or truncated.any():
            raise RuntimeError("an episode ended early: the workload would change")
        tokens += turn_tokens(setup, observations)
    env.close()
    return tokens


def run_sequential(setup: Setup, conversations: Sequence[int]) -> int:
    """Single envs, one after another: reset + 3 steps each; returns user-turn tokens."""
    tokens = 0
    for i in conversations:
        env = ConversationEnv(setup.simulator, intents=setup.intents)
        observation, _ = env.reset(seed=SEED + i)
        tokens += turn_tokens(setup, [observation])
        for _ in range(USER_TURNS - 1):
            observation, _, terminated, truncated, _ = env.step(REPLY)
            if terminated or truncated:
                raise RuntimeError("an episode ended early: the workload would change")
            tokens += turn_tokens(setup, [observation])
        env.close()
    return tokens


def env_draw(intents: list[Intent], seed: int) -> Intent:
    """The intent a single env reset with ``seed`` (or vector env ``i`` with ``seed - i``) draws."""
    rng = seeding.np_random(seed)[0]
    return intents[int(rng.integers(len(intents)))]


def turn_tokens(setup: Setup, texts: Any) -> int:
    """Total length of user turns in tokens (a check that the variants did similar work)."""
    encode = setup.loaded.tokenizer.encode
    return sum(len(encode(text, add_special_tokens=False)) for text in texts)


# --- timing -------------------------------------------------------------------------------------


def timed(run: Callable[[], int]) -> tuple[float, int]:
    """Seconds one run takes, and what it returns (the user turns' length in tokens)."""
    start = time.perf_counter()
    size = run()
    return time.perf_counter() - start, size


def alternate(setup: Setup, rounds: int) -> dict[str, float]:
    """Turns/s of raw, vector and sequential, run in turn for ``rounds`` rounds.

    ``raw`` and ``vector`` run the whole workload every round (their median counts);
    ``sequential``, by far the slowest, runs every ``rounds``-th conversation per round, so its
    rate is the whole workload's turns over the summed time.
    """
    seconds: dict[str, list[float]] = {"raw": [], "vector": [], "sequential": []}
    for index in range(rounds):
        share = range(index, CONVERSATIONS, rounds)
        runs: dict[str, Callable[[], int]] = {
            "raw": partial(run_raw, setup),
            "vector": partial(run_vector, setup),
            "sequential": partial(run_sequential, setup, share),
        }
        for name, run in runs.items():
            took, size = timed(run)
            seconds[name].append(took)
            turns = len(share) * USER_TURNS if name == "sequential" else None
            report(index + 1, name, took, size, turns)
    total = CONVERSATIONS * USER_TURNS
    rates = {
        name: statistics.median(total / t for t in seconds[name]) for name in ("raw", "vector")
    }
    return {**rates, "sequential": total / sum(seconds["sequential"])}


# --- the llama.cpp server -----------------------------------------------------------------------


def run_server(setup: Setup) -> float:
    """Turns/s of the vector env with the server simulator (one warm-up, one timed run)."""
    with server_fixtures.serve_embedded() as server:
        simulator = UserLMServerSimulator(
            server.model,
            setup.loaded.tokenizer,
            api_base=server.api_base,
            api_key=server.api_key,
            timeout_s=300.0,
            concurrency=CONVERSATIONS,
            **setup.settings,
        )
        simulator.respond(_warm_up_states(setup))
        seconds, size = timed(lambda: run_vector(setup, simulator))
    report(1, "server", seconds, size)
    return CONVERSATIONS * USER_TURNS / seconds


def report(
    round_number: int, name: str, seconds: float, tokens: int, turns: int | None = None
) -> None:
    """One line per timed run."""
    turns = turns or CONVERSATIONS * USER_TURNS
    print(
        f"round {round_number} {name:>10}: {turns} turns in {seconds:6.1f} s, "
        f"{turns / seconds:5.2f} turns/s ({tokens} user-turn tokens)",
        flush=True,
    )


# --- main ---------------------------------------------------------------------------------------


def _warm_up_states(setup: Setup) -> list[Any]:
    from userlm_env.types import ConversationState

    return [ConversationState(setup.intents[i], seed=i) for i in range(2)]


def build_setup(max_new_tokens: int) -> Setup:
    """Load the model and intents, build the shared simulator and warm it up."""
    loaded = load_model(EMBEDDED_MODEL)
    settings = workload_settings(max_new_tokens)
    simulator = UserLMSimulator(loaded, batch_size=CONVERSATIONS, **settings)
    setup = Setup(loaded, load_gsm8k_jsonl(GSM8K, limit=CONVERSATIONS), settings, simulator)
    simulator.respond(_warm_up_states(setup))
    return setup


def check_same_intents(setup: Setup) -> None:
    """The raw variant's intents must be the ones the envs drew."""
    env = ConversationVectorEnv(CONVERSATIONS, simulator="sharded", intents=setup.intents)
    env.reset(seed=SEED)
    drawn = [state.intent.intent_id for state in env.states if state is not None]
    mirrored = [env_draw(setup.intents, SEED + i).intent_id for i in range(CONVERSATIONS)]
    if drawn != mirrored:
        raise RuntimeError("the raw variant's intents differ from the env's: update env_draw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternations of raw/vector/seq")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="tokens per user turn")
    parser.add_argument("--no-server", action="store_true", help="skip the llama.cpp variant")
    args = parser.parse_args()
    setup = build_setup(args.max_new_tokens)
    check_same_intents(setup)
    print(f"torch threads: {torch.get_num_threads()}, max_new_tokens: {args.max_new_tokens}")
    rates = alternate(setup, args.rounds)
    result = {f"{name}_turns_per_s": round(rate, 3) for name, rate in rates.items()}
    if not args.no_server:
        result["server_turns_per_s"] = round(run_server(setup), 3)
    result["vector_vs_sequential"] = round(rates["vector"] / rates["sequential"], 3)
    result["vector_vs_raw"] = round(rates["vector"] / rates["raw"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
