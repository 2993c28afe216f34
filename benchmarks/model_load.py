"""Benchmark: loading the embedded model from the conversion cache vs converting its GGUF file.

Claim: after the first load has de-quantized the GGUF file and cached the result, a later load
in a fresh process is at least 5x faster.

Method: a temporary, empty cache directory is created; a fresh Python process loads the
embedded model (converting and writing the cache), then a second fresh process loads it again
(from the cache). Each child imports torch and transformers' model machinery before starting
its clock, so ``*_load_s`` time the load itself (the same library import cost is in both);
the whole-process wall times, imports included, are reported as ``*_process_s``.

Run: ``python benchmarks/model_load.py [--model NAME]``. The last line printed is a JSON object
``{"first_load_s", "cached_load_s", "speedup", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import torch, transformers.modeling_utils  # library imports happen before the clock starts
from userlm_env.models import load_model
start = time.perf_counter()
loaded = load_model(sys.argv[1], cache_dir=sys.argv[2])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "from_cache": loaded.from_cache}))
"""


def load_in_fresh_process(model: str, cache_dir: str) -> dict[str, float | bool]:
    """Load ``model`` in a new interpreter; return its load time, cache use and wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, cache_dir],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"loading {model!r} failed:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {**report, "process_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name to load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="userlm-env-model-cache-") as cache_dir:
        first = load_in_fresh_process(args.model, cache_dir)
        cached = load_in_fresh_process(args.model, cache_dir)
    if first["from_cache"] or not cached["from_cache"]:
        raise RuntimeError(f"unexpected cache use: first={first}, second={cached}")
    result = {
        "first_load_s": round(first["seconds"], 3),
        "cached_load_s": round(cached["seconds"], 3),
        "speedup": round(first["seconds"] / cached["seconds"], 2),
        "first_process_s": round(first["process_s"], 3),
        "cached_process_s": round(cached["process_s"], 3),
        "process_speedup": round(first["process_s"] / cached["process_s"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
