"""Episodes scored through ``LiteLLMAssistant`` with concurrency 8 vs 1, in one run.

Workload: 16 episodes (8 GSM-Symbolic + 8 HumanEval intents, rule-based ``"sharded"`` user,
3 assistant turns, 24-token replies), all in flight at once (``run_episodes`` batch of 16), so
each step sends 16 assistant requests through :class:`userlm_env.llm.LLMClient`.

Two servers on 127.0.0.1:
* ``llama``: the real llama.cpp OpenAI-compatible server serving the embedded SmolLM2 GGUF. It
  decodes one request at a time on this machine's 2 cores, so concurrency can only overlap the
  HTTP/LiteLLM overhead with decoding: the ratio is bounded by the server, not the client.
* ``latency``: the tests' scripted loopback server answering after a fixed 0.25 s delay (a
  stand-in for a remote API whose time is network/queueing, not local CPU): there the client's
  concurrency shows fully.

Last line: a JSON object with episodes/s for each setting and ``"ratio"`` (llama, 8 vs 1) and
``"latency_ratio"``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistants.litellm import LiteLLMAssistant
from simulators.sharded import ShardedSimulator
from tests.fault_server import running_fault_server
from tests.server_fixtures import serve_embedded
from userlm_env.core import ConversationCore
from userlm_env.env import load_env_intents
from userlm_env.rollout import make_jobs, run_episodes

EPISODES_PER_TASK = 8
MAX_REPLIES = 3
MAX_TOKENS = 24


def episodes_per_second(api_base: str, concurrency: int) -> float:
    """Run the 16-episode workload once; return episodes/s."""
    intents = load_env_intents(
        [{"name": "gsm_symbolic", "n": EPISODES_PER_TASK, "seed": 0},
         {"name": "humaneval", "limit": EPISODES_PER_TASK}]
    )  # fmt: skip
    assistant = LiteLLMAssistant(
        "openai/local", api_base=api_base, api_key="sk-bench", max_tokens=MAX_TOKENS,
        temperature=0.0, concurrency=concurrency, timeout_s=120,
    )  # fmt: skip
    core = ConversationCore(ShardedSimulator(), max_replies=MAX_REPLIES)
    jobs = make_jobs(intents, 1, seed=0)
    start = time.perf_counter()
    records = run_episodes(jobs, core, assistant, batch_size=len(jobs))
    elapsed = time.perf_counter() - start
    failed = [r for r in records if r.error]
    if failed:
        raise SystemExit(f"{len(failed)} episodes failed: {failed[0].error}")
    return len(records) / elapsed


def compare(api_base: str, label: str) -> dict[str, float]:
    """Concurrency 1 and 8, alternated twice; the better of each (noise on a shared machine)."""
    best = {1: 0.0, 8: 0.0}
    for concurrency in (8, 1, 8, 1):
        best[concurrency] = max(best[concurrency], episodes_per_second(api_base, concurrency))
    print(f"{label}: concurrency 1 {best[1]:.2f} episodes/s, concurrency 8 {best[8]:.2f}")
    return {f"{label}_c1_episodes_per_s": best[1], f"{label}_c8_episodes_per_s": best[8]}


def main() -> None:
    """Measure both servers and print the JSON summary last."""
    with serve_embedded() as server:
        llama = compare(server.api_base, "llama")
    with running_fault_server(default_delay_s=0.25) as fake:
        latency = compare(fake.api_base, "latency")
    result = {
        **{k: round(v, 3) for k, v in {**llama, **latency}.items()},
        "ratio": round(llama["llama_c8_episodes_per_s"] / llama["llama_c1_episodes_per_s"], 2),
        "latency_ratio": round(
            latency["latency_c8_episodes_per_s"] / latency["latency_c1_episodes_per_s"], 2
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
