"""TRL GRPO with simulated users: the policy plays whole conversations and learns from the env.

    python -m experiments.rl_grpo                        # SmolLM2-135M vs the sharded user, CPU
    python -m experiments.rl_grpo steps=4 max_new_tokens=48 simulator=sharded_recap
    python -m experiments.rl_grpo random_init=true steps=1   # a tiny random policy: seconds

The policy is a trainable copy of the embedded SmolLM2-135M-Instruct (``model`` names any model
:mod:`userlm_env.models` loads: the embedded name, a local checkpoint, a hub id). The train set
is the env's first ``num_intents`` intents (:func:`~userlm_env.integrations.trl.intent_dataset`);
each GRPO step plays ``prompts_per_step`` x ``num_generations`` conversations with
:func:`~userlm_env.integrations.trl.make_rollout_func` (one simulator call per turn for all of
them; the user's turns are ``user`` messages, masked out of the loss) and rewards each with the
env's episode reward (:func:`~userlm_env.integrations.trl.env_reward`). It prints one line per
step (GRPO reward, env reward, the policy's tokens per conversation) and a final line; the
trained policy is saved in the run folder (``save_model=false`` skips it).

GPU recipe (not run here). 1. Serve the user: UserLM-8b, or a User LM trained with
``experiments.train``, behind vLLM's OpenAI-compatible server::

    CUDA_VISIBLE_DEVICES=0 python -m vllm.entrypoints.openai.api_server \\
        --model microsoft/UserLM-8b --port 8000

2. Serve the policy, a 1B+ instruct model, with TRL's vLLM server (weights synced each step)::

    CUDA_VISIBLE_DEVICES=1 trl vllm-serve --model Qwen/Qwen2.5-1.5B-Instruct --port 8001

3. Train on the other GPUs, the user reached through the ``userlm_server`` simulator::

    CUDA_VISIBLE_DEVICES=2,3 accelerate launch -m experiments.rl_grpo \\
        simulator=userlm_server simulator.api_base=http://127.0.0.1:8000/v1 \\
        model=Qwen/Qwen2.5-1.5B-Instruct use_vllm=true \\
        vllm_server_base_url=http://127.0.0.1:8001 num_intents=null max_replies=6 \\
        max_new_tokens=256 prompts_per_step=8 num_generations=8 steps=500 learning_rate=1e-6

With vLLM every process plays its conversations' rounds in step with the others (the
generation is collective). A bigger policy may need ``env_id=userlm_env/Mixed-v0`` and more
replies; ``beta`` adds the KL penalty to the reference policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import PrinterCallback, TrainerCallback

import userlm_env  # noqa: F401  (registers the env ids)
from userlm_env.models import EMBEDDED_MODEL

#: The policy of ``random_init=true``: a 2-layer, 64-wide Llama on the named model's tokenizer.
TINY_POLICY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
#: Tokens allowed per user turn when sizing ``max_completion_length``.
USER_TURN_TOKENS = 256


@dataclass
class GRPORunConfig:
    """Settings of a GRPO run (the schema of ``conf/rl_grpo.yaml``)."""

    env_id: str = "userlm_env/GSMSymbolic-v0"  # any registered userlm_env id
    simulator: Any = None  # a simulator config (the `simulator` group); built with instantiate
    num_intents: int | None = 4  # train prompts: the env's first N intents (None: all)
    max_replies: int = 2  # policy replies per conversation
    model: str = EMBEDDED_MODEL  # the policy: embedded name, local checkpoint or hub id
    random_init: bool = False  # a tiny random Llama on `model`'s tokenizer (smoke runs)
    system_prompt: str | None = "Solve the user's math problem. End with the final number."
    max_new_tokens: int = 32  # longest reply, in tokens
    num_generations: int = 2  # conversations per prompt (the GRPO group)
    prompts_per_step: int = 2  # prompts per optimiser step
    steps: int = 2  # optimiser steps
    learning_rate: float = 1e-6  # AdamW learning rate
    temperature: float = 1.0  # sampling temperature
    beta: float = 0.0  # KL coefficient (0: no reference model)
    use_vllm: bool = False  # generate with TRL's vLLM backend (GPU)
    vllm_mode: str = "server"  # "server" (trl vllm-serve) or "colocate"
    vllm_server_base_url: str | None = None  # the trl vllm-serve address in server mode
    seed: int = 0  # seed of the trainer, the init and the episodes
    output_dir: str | None = None  # where checkpoints and the policy go (None: the run folder)
    save_model: bool = True  # save the trained policy and tokenizer at the end


ConfigStore.instance().store(name="rl_grpo_schema", node=GRPORunConfig)


def load_policy(cfg: Any) -> tuple[Any, Any]:
    """The trainable policy and its tokenizer (a private copy, float32)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from userlm_env.models import load_tokenizer, pretrained_location

    tokenizer = load_tokenizer(cfg.model)
    if cfg.random_init:
        config = LlamaConfig(vocab_size=len(tokenizer), **TINY_POLICY)
        with torch.random.fork_rng(devices=[]):  # seeds the init without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            return LlamaForCausalLM(config), tokenizer
    location = pretrained_location(cfg.model)
    return AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32), tokenizer


class StepPrinter(TrainerCallback):
    """A trainer callback that prints one line per logged step and keeps the records."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.records: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        """Print the step's GRPO reward, env reward and policy tokens per conversation."""
        if not logs or "reward" not in logs:
            return
        record = {
            "step": float(state.global_step),
            "reward": float(logs["reward"]),
            "env_reward": float(logs["rewards/env_reward/mean"]),
            "policy_tokens": float(logs["completions/mean_length"]),
            "grad_norm": float(logs.get("grad_norm", float("nan"))),
        }
        self.records.append(record)
        print(
            f"step {state.global_step}/{self.steps}  reward {record['reward']:.3f}  "
            f"env reward {record['env_reward']:.3f}  "
            f"policy tokens/conversation {record['policy_tokens']:.1f}",
            flush=True,
        )


def run(cfg: Any, output_dir: Path) -> list[dict[str, float]]:
    """Train; return one record per step (``step``, ``reward``, ``env_reward``,
    ``policy_tokens``, ``grad_norm``)."""
    import torch
    from trl import GRPOConfig

    from userlm_env.integrations.trl import intent_dataset, make_rollout_func

    settings = {"simulator": instantiate(cfg.simulator), "max_replies": cfg.max_replies}
    dataset = intent_dataset(cfg.env_id, max_replies=cfg.max_replies)
    if cfg.num_intents is not None:
        dataset = dataset.select(range(min(cfg.num_intents, len(dataset))))
    rollout = make_rollout_func(
        cfg.env_id,
        max_new_tokens=cfg.max_new_tokens,
        system_prompt=cfg.system_prompt,
        **settings,
    )
    model, tokenizer = load_policy(cfg)
    on_gpu = torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_steps=cfg.steps,
        max_completion_length=cfg.max_replies * (cfg.max_new_tokens + USER_TURN_TOKENS),
        learning_rate=cfg.learning_rate,
        temperature=cfg.temperature,
        beta=cfg.beta,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_server_base_url=cfg.vllm_server_base_url,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
    )
    printer = StepPrinter(cfg.steps)
    trainer = train_grpo(model, tokenizer, dataset, rollout, args, printer)
    if cfg.save_model:
        trainer.save_model(str(output_dir))
    records = printer.records
    mean_env = sum(r["env_reward"] for r in records) / len(records) if records else float("nan")
    saved = f"; policy saved to {output_dir}" if cfg.save_model else ""
    print(
        f"rl_grpo: {trainer.state.global_step} GRPO steps on {cfg.env_id}, "
        f"mean env reward {mean_env:.3f}{saved}",
        flush=True,
    )
    return records


def train_grpo(
    model: Any, tokenizer: Any, dataset: Any, rollout: Any, args: Any, callback: TrainerCallback
) -> Any:
    """Train GRPO on whole conversations: the env's reward, ``callback``'s step lines in place of
    TRL's raw log dicts, and the rollout's envs closed afterwards (``rollout.close()``, also on
    failure). Returns the trainer."""
    from trl import GRPOTrainer

    from userlm_env.integrations.trl import env_reward

    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=env_reward,
        args=args,
        train_dataset=dataset,
        rollout_func=rollout,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
    finally:
        rollout.close()
    return trainer


@hydra.main(version_base="1.3", config_path="conf", config_name="rl_grpo")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is TRL-experimental
    output_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    run(cfg, output_dir)


if __name__ == "__main__":
    main()
