"""Benchmark: training throughput of the bundled UserLM trainer (tokens per epoch, tokens/s, MFU).

Claims:

1. One pass per conversation (``sample_mode="conversation"``) processes at least 1.5x fewer
   tokens per epoch than the paper's flipped samples on conversations with 3+ user turns, for
   the same targets, and an epoch takes correspondingly less time (``--mode compare``).
2. Padding-free packing (``packing=True``) processes no padding tokens, where padded batches do
   even when length-grouped (``--mode compare``).
3. On a GPU, the trainer reports tokens/s, model FLOPs utilisation and peak memory for the 135M
   embedded model in bf16 (``--gpu``; run by ``benchmarks/gpu_train_check.sh``).

Method (compare): ``--conversations`` GSM-Symbolic episodes with the rule-based sharded user
(3 to 6 user turns each, the env's intent as the system message, assistant replies from a fixed
list) are trained for exactly one epoch on the CPU with the ``smoke_cpu`` tiny random Llama in
four set-ups: {flipped, conversation} x {padded (length-grouped), packed}, 8 sequences per step.
Per set-up: real tokens per epoch (no padding), processed tokens (padding included, as counted by
the Trainer), target tokens, and the seconds of ``trainer.train()``; tokens/s = real tokens per
second. A short untimed warm-up run goes first. CPU timings on a shared machine are noisy; the
token counts are exact.

Method (gpu): the same kind of episodes train the embedded SmolLM2-135M (``--init pretrained``:
its converted GGUF weights; ``--init random``: the same architecture, same FLOPs, when the GGUF
is not at hand) for ``--steps`` optimiser steps in bf16 mixed precision. Tokens/s counts
non-padding input tokens per second of ``trainer.train()`` (warm-up steps included); MFU is
``6 * parameters * tokens/s / peak bf16 FLOP/s`` (attention FLOPs left out); peak memory is
``torch.cuda.max_memory_allocated()``.

Method (preset): a ``conf/train`` preset is composed with Hydra, its step count set by
``--steps``, and trained as configured.

Run::

    python benchmarks/train_throughput.py                      # compare on CPU (~2 minutes)
    python benchmarks/train_throughput.py --gpu --steps 300    # on a GPU machine
    python benchmarks/train_throughput.py --mode preset --preset smoke_cpu --steps 10

The last line printed is a JSON object (compare: per set-up figures and the ratios).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
for _name, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("OMP_WAIT_POLICY", "PASSIVE"),
):
    os.environ.setdefault(_name, _value)

#: Dense bf16 tensor-core peaks (FLOP/s) by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12}
#: The smoke_cpu preset's tiny Llama (CPU comparisons).
TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
#: SmolLM2-135M's architecture (the embedded model's config), for ``--gpu --init random``.
SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
}
#: Assistant replies of the generated episodes (picked by episode and turn).
REPLIES = (
    "Could you tell me more about the problem?",
    "Thanks, that helps. Before I solve it, is there any other quantity or condition I should "
    "know about?",
    "Let me make sure I have it right so far. Could you restate the numbers involved and what "
    "exactly you want me to compute?",
    "Understood. I am keeping track of everything you said; please go on.",
)


# --- data ------------------------------------------------------------------------------------


def episodes(count: int, min_turns: int = 3, max_turns: int = 6) -> list[Any]:
    """``count`` GSM-Symbolic conversations with the rule-based user, as trainer conversations.

    Episode i has ``min_turns + i % (max_turns - min_turns + 1)`` user turns and ends with an
    assistant reply; its intent is the env's system prompt.
    """
    import gymnasium as gym

    from userlm_env import ConversationEnv  # importing userlm_env registers the env ids
    from userlm_env.training.data import Conversation

    conversations = []
    spread = max_turns - min_turns + 1
    for index in range(count):
        turns = min_turns + index % spread
        env = gym.make("userlm_env/GSMSymbolic-v0", simulator="sharded", max_replies=turns)
        _, info = env.reset(seed=index)
        done, step = False, 0
        while not done:
            reply = REPLIES[(index + step) % len(REPLIES)]
            _, _, terminated, truncated, info = env.step(reply)
            done, step = terminated or truncated, step + 1
        state = cast(ConversationEnv, env.unwrapped).state
        assert state is not None  # set by reset
        conversations.append(
            Conversation(
                conversation_id=f"gsm-{index}",
                user_id=f"user-{index}",
                country="none",
                language="English",
                messages=tuple(info["messages"]),
                intent=state.intent.system_prompt,
            )
        )
        env.close()
    return conversations


# --- compare ---------------------------------------------------------------------------------


def _compare_config(folder: str, sample_mode: str, packing: bool, batch: int) -> Any:
    from userlm_env.models import EMBEDDED_MODEL
    from userlm_env.training.train import TrainConfig

    return TrainConfig(
        model=EMBEDDED_MODEL,
        init="random",
        architecture=dict(TINY),
        sample_mode=sample_mode,
        packing=packing,
        max_length=1024,
        output_dir=folder,
        learning_rate=1e-3,
        effective_batch_size=batch,
        per_device_batch_size=batch,
        num_epochs=1.0,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        gradient_checkpointing=False,
        logging_steps=1000,
        save_steps=100_000,
        use_cpu=True,
        disable_tqdm=True,
        extra_args={"include_num_input_tokens_seen": "all"},  # padding included
    )


def _one_epoch(conversations: list[Any], sample_mode: str, packing: bool, batch: int) -> dict:
    from userlm_env.training.train import train_userlm

    with tempfile.TemporaryDirectory() as folder:
        result = train_userlm(_compare_config(folder, sample_mode, packing, batch), conversations)
    seconds = result.train_seconds
    return {
        "sequences": result.samples,
        "steps": result.global_step,
        "tokens": result.tokens,
        "processed_tokens": result.tokens_seen,
        "padding_fraction": round(1 - result.tokens / result.tokens_seen, 4),
        "target_tokens": result.target_tokens,
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(result.tokens / seconds, 1),
        "target_tokens_per_second": round(result.target_tokens / seconds, 1),
    }


def compare(count: int, batch: int) -> dict[str, Any]:
    """One epoch in each of the four set-ups on the same conversations."""
    conversations = episodes(count)
    turns = [c.user_turns for c in conversations]
    _one_epoch(conversations[: 2 * batch], "conversation", False, batch)  # warm-up, untimed
    runs = {
        f"{mode}_{'packed' if packing else 'padded'}": _one_epoch(
            conversations, mode, packing, batch
        )
        for mode in ("flipped", "conversation")
        for packing in (False, True)
    }
    flipped, one = runs["flipped_padded"], runs["conversation_padded"]
    ratios = {
        "tokens_flipped_over_conversation": round(flipped["tokens"] / one["tokens"], 3),
        "processed_tokens_flipped_over_conversation": round(
            flipped["processed_tokens"] / one["processed_tokens"], 3
        ),
        "epoch_speedup_conversation_over_flipped": round(
            flipped["train_seconds"] / one["train_seconds"], 3
        ),
        "target_tokens_equal": flipped["target_tokens"] == one["target_tokens"],
    }
    for mode in ("flipped", "conversation"):
        padded, packed = runs[f"{mode}_padded"], runs[f"{mode}_packed"]
        ratios[f"{mode}_processed_tokens_padded_over_packed"] = round(
            padded["processed_tokens"] / packed["processed_tokens"], 3
        )
        ratios[f"{mode}_epoch_speedup_packed_over_padded"] = round(
            padded["train_seconds"] / packed["train_seconds"], 3
        )
    return {
        "mode": "compare",
        "device": "cpu",
        "torch_threads": _threads(),
        "conversations": len(conversations),
        "user_turns": {"min": min(turns), "mean": sum(turns) / len(turns), "max": max(turns)},
        "batch": batch,
        "runs": runs,
        "ratios": ratios,
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


# --- gpu -------------------------------------------------------------------------------------


def peak_flops(explicit_tflops: float | None) -> tuple[str, float | None]:
    """The device name and its peak bf16 FLOP/s (``None`` on CPU or an unknown GPU)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    if explicit_tflops:
        return name, explicit_tflops * 1e12
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def gpu(args: argparse.Namespace) -> dict[str, Any]:
    """Train the 135M model in bf16 for ``args.steps`` steps; tokens/s, MFU, peak memory."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "train_throughput --gpu needs a CUDA GPU, and torch.cuda.is_available() is False "
            f"here (torch {torch.__version__}); run it on a GPU machine, or use --mode compare"
        )
    from userlm_env.models import EMBEDDED_MODEL
    from userlm_env.training.train import TrainConfig, train_userlm

    conversations = episodes(args.conversations)
    device, peak = peak_flops(args.peak_tflops)
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(
            model=EMBEDDED_MODEL,
            tokenizer=args.tokenizer,
            init=args.init,
            architecture=dict(SMOLLM2_135M) if args.init == "random" else {},
            attn_implementation=args.attn,
            sample_mode=args.sample_mode,
            packing=args.packing,
            max_length=2048,
            output_dir=folder,
            learning_rate=5e-5,
            effective_batch_size=args.batch,
            per_device_batch_size=args.batch,
            max_steps=args.steps,
            num_epochs=1000.0,
            warmup_ratio=0.03,
            bf16=True,
            gradient_checkpointing=False,
            logging_steps=max(1, args.steps // 10),
            save_steps=args.steps + 1,
            disable_tqdm=True,
        )
        start = time.perf_counter()
        result = train_userlm(config, conversations)
        total = time.perf_counter() - start
    flops = 6 * result.parameters * result.tokens_per_second
    return {
        "mode": "gpu",
        "device": device,
        "init": args.init,
        "sample_mode": args.sample_mode,
        "packing": args.packing,
        "attn_implementation": args.attn,
        "conversations": len(conversations),
        "sequences": result.samples,
        "batch": args.batch,
        "steps": result.global_step,
        "parameters": result.parameters,
        "tokens_seen": result.tokens_seen,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "model_tflops": round(flops / 1e12, 3),
        "mfu": round(flops / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "first_loss": round(result.first_loss, 4),
        "last_loss": round(result.last_loss, 4),
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(total, 2),
    }


# --- preset ----------------------------------------------------------------------------------


def compose(preset: str, overrides: list[str]) -> Any:
    """The ``data`` and ``train`` sections of ``conf/train.yaml`` with ``preset``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "experiments" / "conf")):
        return hydra_compose(config_name="train", overrides=[f"train={preset}", *overrides])


def measure(name: str, steps: int, overrides: list[str], tflops: float | None) -> dict[str, Any]:
    """Train a preset for ``steps`` optimiser steps and return the throughput figures."""
    from hydra.utils import instantiate

    from userlm_env.training.data import prepare_conversations
    from userlm_env.training.train import train_userlm

    cfg = compose(name, overrides)
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
        "mode": "preset",
        "preset": name,
        "device": device,
        "sample_mode": result.sample_mode,
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


# --- command line ----------------------------------------------------------------------------


def _print_compare(report: dict[str, Any]) -> None:
    print(f"{report['conversations']} conversations, user turns {report['user_turns']}")
    for name, run in report["runs"].items():
        print(
            f"  {name:22s} {run['sequences']:4d} seqs  {run['tokens']:7d} tokens  "
            f"{run['processed_tokens']:7d} processed  {run['train_seconds']:7.2f} s  "
            f"{run['tokens_per_second']:9.1f} tok/s"
        )
    for name, value in report["ratios"].items():
        print(f"  {name}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["compare", "gpu", "preset"], default="compare")
    parser.add_argument("--gpu", action="store_true", help="same as --mode gpu")
    parser.add_argument("--conversations", type=int, help="episodes to train on")
    parser.add_argument("--batch", type=int, help="sequences per step (compare 8, gpu 16)")
    parser.add_argument("--steps", type=int, help="optimiser steps (gpu 300, preset 10)")
    parser.add_argument(
        "--sample-mode", choices=["conversation", "flipped"], default="conversation"
    )
    parser.add_argument("--packing", action="store_true", help="padding-free batches (gpu)")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (gpu)")
    parser.add_argument("--init", choices=["random", "pretrained"], help="weights (gpu, preset)")
    parser.add_argument("--tokenizer", help="tokenizer folder when not the embedded model's (gpu)")
    parser.add_argument("--preset", default="smoke_cpu", help="conf/train preset (preset mode)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the GPU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    mode = "gpu" if args.gpu else args.mode
    if mode == "compare":
        report = compare(args.conversations or 32, args.batch or 8)
        _print_compare(report)
    elif mode == "gpu":
        args.conversations, args.batch = args.conversations or 512, args.batch or 16
        args.init, args.steps = args.init or "pretrained", args.steps or 300
        report = gpu(args)
        print(f"{report['device']}: {report['tokens_per_second']} tokens/s, MFU {report['mfu']}, "
              f"peak {report['peak_memory_gib']} GiB")  # fmt: skip
    else:
        overrides = [f"train.init={args.init}"] if args.init else []
        report = measure(args.preset, args.steps or 10, overrides, args.peak_tflops)
        print(f"{report['device']}: {report['tokens_per_second']} tokens/s, MFU {report['mfu']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
