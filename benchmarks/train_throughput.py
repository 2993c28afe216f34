"""Benchmark: training throughput of the bundled UserLM trainer (tokens per second, MFU on GPU).

Claim: the trainer runs the paper's recipe end to end and reports its speed; on a GPU it also
reports model FLOPs utilisation, ``6 * parameters * tokens/s / peak bf16 FLOP/s``.

Method: a ``conf/train`` preset (default ``smoke_cpu``: a tiny random Llama-style model on the
synthetic fixture) is composed with Hydra, its step count set by ``--steps``, and trained with
:func:`userlm_env.training.train.train_userlm` in a temporary folder. Tokens/s counts non-padding
input tokens (prompt and target) per second of ``trainer.train()``, warm-up steps included. On a
GPU, ``--peak-tflops`` overrides the peak taken from the device name (dense bf16 figures).

Run: ``python benchmarks/train_throughput.py [--preset smoke_cpu] [--steps 10] [--init random]``.
The last line printed is a JSON object ``{"tokens_per_second", "mfu", ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
#: Dense bf16 tensor-core peaks (FLOP/s) by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12}


def compose(preset: str, overrides: list[str]) -> Any:
    """The ``data`` and ``train`` sections of ``conf/train.yaml`` with ``preset``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "experiments" / "conf")):
        return hydra_compose(config_name="train", overrides=[f"train={preset}", *overrides])


def peak_flops(explicit_tflops: float | None) -> tuple[str, float | None]:
    """The device name and its peak bf16 FLOP/s (``None`` on CPU or an unknown GPU)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    if explicit_tflops:
        return name, explicit_tflops * 1e12
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def measure(preset: str, steps: int, overrides: list[str], tflops: float | None) -> dict[str, Any]:
    """Train ``steps`` optimiser steps and return the throughput figures."""
    from hydra.utils import instantiate

    from userlm_env.training.data import prepare_conversations
    from userlm_env.training.train import train_userlm

    cfg = compose(preset, overrides)
    if cfg.data.get("path") and not Path(cfg.data.path).is_absolute():
        cfg.data.path = str(ROOT / cfg.data.path)
    prepared = prepare_conversations(instantiate(cfg.data, _convert_="all"))
    config = instantiate(cfg.train, _convert_="all")
    device, peak = peak_flops(tflops)
    with tempfile.TemporaryDirectory() as folder:
        config.output_dir, config.max_steps, config.disable_tqdm = folder, steps, True
        config.save_steps, config.resume_from_checkpoint = steps + 1, None
        result = train_userlm(config, prepared.splits.train)
    flops = 6 * result.parameters * result.tokens_per_second
    return {
        "preset": preset,
        "device": device,
        "steps": result.global_step,
        "samples_per_step": config.effective_batch_size,
        "parameters": result.parameters,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "model_tflops": round(flops / 1e12, 4),
        "mfu": round(flops / peak, 4) if peak else None,
        "first_loss": round(result.first_loss, 4),
        "last_loss": round(result.last_loss, 4),
        "train_seconds": round(result.train_seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke_cpu", help="conf/train preset to run")
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps to time")
    parser.add_argument("--init", choices=["random", "pretrained"], help="override train.init")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the GPU")
    args = parser.parse_args()
    overrides = [f"train.init={args.init}"] if args.init else []
    report = measure(args.preset, args.steps, overrides, args.peak_tflops)
    print(f"{report['device']}: {report['tokens_per_second']} tokens/s, "
          f"{report['model_tflops']} model TFLOP/s, MFU {report['mfu']}")  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
