"""A minimal REINFORCE loop: the embedded assistant model learns from the vector env's rewards.

    python -m experiments.rl_example                          # 20 updates, 4 envs, CPU
    python -m experiments.rl_example num_envs=2 updates=2 max_new_tokens=16

The policy is a trainable copy of SmolLM2-135M-Instruct (``load_model``). Each update collects
``steps_per_update`` steps of ``gym.make_vec("userlm_env/GSMSymbolic-v0", ...)`` with the
rule-based ``"sharded"`` user, sampling one reply per conversation; the return of a reply is the
sum of the env rewards from that step to the end of its episode (within the window), and the loss
is ``-(return - baseline) * sum(log p(reply tokens))`` averaged over replies, where only the
generated reply tokens (up to and including the first end-of-turn token) count, never the prompt
or padding. The baseline is an exponential moving average of returns. Logs one line per update.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from transformers import LogitsProcessorList

import userlm_env  # noqa: F401  (registers the env ids)
from userlm_env.generation import SeededSampler
from userlm_env.models import EMBEDDED_MODEL, load_model
from userlm_env.training.rl import policy_loss, reply_mask, returns_to_go

log = logging.getLogger(__name__)


@dataclass
class RLConfig:
    """Settings of the REINFORCE example."""

    env_id: str = "userlm_env/GSMSymbolic-v0"  # any registered userlm_env id
    num_envs: int = 4  # conversations sampled in parallel
    max_replies: int = 3  # assistant replies per episode
    updates: int = 20  # policy-gradient updates
    steps_per_update: int = 2  # vector-env steps collected per update
    max_new_tokens: int = 96  # longest reply, in tokens
    temperature: float = 1.0  # sampling temperature (the loss uses the same distribution)
    learning_rate: float = 1e-6  # AdamW learning rate
    baseline_momentum: float = 0.9  # EMA factor of the return baseline
    attempt_bonus: float = 0.0  # optional shaping: added when a reply attempts an answer
    system_prompt: str = "Solve the user's math problem. End with the final number."
    seed: int = 0  # env and sampling seed
    device: str | None = None  # torch device (None: cuda when available, else cpu)


ConfigStore.instance().store(name="rl_example", node=RLConfig)


def act(
    policy: Any, tokenizer: Any, conversations: Any, seeds: list[int], cfg: RLConfig
) -> dict[str, Any]:
    """Sample one reply per conversation (row ``i`` from ``seeds[i]``, no global random
    generator); keep what the loss needs."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": cfg.system_prompt}, *messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        for messages in conversations
    ]
    inputs = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(policy.device)
    with torch.no_grad():
        sampler = SeededSampler(seeds, cfg.temperature, top_p=1.0)
        sequences = policy.generate(
            **inputs, do_sample=False, logits_processor=LogitsProcessorList([sampler]),
            max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    width = inputs["input_ids"].shape[1]
    mask = reply_mask(sequences, width, tokenizer.eos_token_id)
    attention = torch.cat([inputs["attention_mask"], mask[:, width:].long()], dim=1)
    texts = tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)
    return {"sequences": sequences, "mask": mask, "attention_mask": attention, "texts": texts}


def _attempted(info: dict[str, Any]) -> Any:
    """Whether each reply attempted an answer (ended episodes report it in ``final_info``)."""
    ended = info.get("_final_info", np.zeros(len(info["attempted"]), dtype=bool))
    final = info.get("final_info", {}).get("attempted", info["attempted"])
    return np.where(ended, final, info["attempted"])


def collect(
    env: Any, observations: Any, policy: Any, tokenizer: Any, cfg: RLConfig, update: int
) -> tuple:
    """Play ``steps_per_update`` env steps from ``observations`` (each the conversation so
    far): the steps, env rewards, shaped rewards, ends and the last observations."""
    steps, rewards, shaped, dones = [], [], [], []
    for index in range(cfg.steps_per_update):
        seeds = np.random.SeedSequence([cfg.seed, update, index]).generate_state(cfg.num_envs)
        chats = [list(chat) for chat in observations]
        step = act(policy, tokenizer, chats, [int(s) for s in seeds], cfg)
        observations, reward, terminated, truncated, info = env.step(step["texts"])
        steps.append(step)
        rewards.append(reward.tolist())
        shaped.append((reward + cfg.attempt_bonus * _attempted(info)).tolist())
        dones.append((terminated | truncated).tolist())
    return steps, rewards, shaped, dones, observations


def train(cfg: RLConfig) -> list[dict[str, float]]:
    """Run the loop; return one record per update (mean env reward, loss, baseline)."""
    loaded = load_model(EMBEDDED_MODEL, device=cfg.device)
    # A private copy (the loaded one is shared process-wide). It stays in eval mode: SmolLM2 has
    # no dropout, so sampling and the loss see exactly the same distribution.
    tokenizer, policy = loaded.tokenizer, copy.deepcopy(loaded.model)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, fused=True)
    env = gym.make_vec(
        cfg.env_id, num_envs=cfg.num_envs, vectorization_mode="vector_entry_point",
        simulator="sharded", max_replies=cfg.max_replies, observation_mode="conversation",
    )  # fmt: skip
    observations, _ = env.reset(seed=cfg.seed)
    baseline, history = 0.0, []
    for update in range(cfg.updates):
        steps, rewards, shaped, dones, observations = collect(
            env, observations, policy, tokenizer, cfg, update
        )
        returns = torch.tensor(returns_to_go(shaped, dones), device=policy.device)
        loss = policy_loss(policy, steps, returns, baseline, cfg.temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean = returns.mean().item()
        baseline = cfg.baseline_momentum * baseline + (1 - cfg.baseline_momentum) * mean
        reward = float(torch.tensor(rewards).mean())
        history.append(
            {"update": update, "mean_reward": reward, "loss": loss.item(), "baseline": baseline}
        )
        log.info("update %d  mean reward %.3f  loss %.4f", update, reward, loss.item())
    env.close()
    return history


@hydra.main(version_base="1.3", config_path=None, config_name="rl_example")
def main(cfg: RLConfig) -> None:
    """Hydra entry point."""
    train(cfg)


if __name__ == "__main__":
    main()
