"""A minimal REINFORCE loop: the embedded assistant model learns from the vector env's rewards.

    python -m experiments.rl_example                  # 8 updates of 8 replies: ~1.5 min on 2 CPUs
    python -m experiments.rl_example updates=40 num_envs=8 steps_per_update=2 train_layers=null
    python -m experiments.rl_example complete_bonus=0 number_bonus=0  # the env reward alone

The policy is a trainable copy of SmolLM2-135M-Instruct (``load_model``). Each update collects
``steps_per_update`` steps of ``gym.make_vec("userlm_env/GSMSymbolic-v0", ...)`` with the
rule-based ``"sharded"`` user, sampling one reply per conversation.

Reward: the env's (1.0 for the reply that solves the problem, else 0.0) plus shaping terms,
because a 135M model solves next to nothing and an all-zero reward leaves every update at zero:
``complete_bonus`` for a reply that ends within its token budget, ``number_bonus`` for such a
reply that ends with a number, as the system prompt asks (both on by default), and
``attempt_bonus`` for a reply the scorer counts as an answer attempt.
The return of a reply is the sum of the shaped rewards from that step to the end of its episode
(within the window); the loss is ``-(return - baseline) * sum(log p(reply tokens))`` averaged
over replies, where only the generated reply tokens (up to and including the first end-of-turn
token) count, never the prompt or padding. The baseline is an exponential moving average of
returns.

Output: one log line per update (env reward, shaped reward, share of replies ending with a
number, loss); in the run folder (``output_dir``) ``history.jsonl`` with the same numbers and,
unless ``save_model=false``, the trained policy and its tokenizer in ``policy/``, loadable with
``userlm_env.models.load_model("<run folder>/policy")`` or transformers' ``from_pretrained``.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from transformers import LogitsProcessorList

import userlm_env  # noqa: F401  (registers the env ids)
from userlm_env.generation import SeededSampler
from userlm_env.models import EMBEDDED_MODEL, load_model
from userlm_env.training.rl import policy_loss, reply_mask, returns_to_go

log = logging.getLogger(__name__)

#: A reply whose last letter or digit is a digit ("... so the answer is 42." ends with a number).
_ENDS_WITH_NUMBER = re.compile(r"\d[^A-Za-z0-9]*\Z")
POLICY_DIR = "policy"
HISTORY_FILE = "history.jsonl"


@dataclass
class RLConfig:
    """Settings of the REINFORCE example."""

    env_id: str = "userlm_env/GSMSymbolic-v0"  # any registered userlm_env id
    num_envs: int = 8  # conversations sampled in parallel
    max_replies: int = 3  # assistant replies per episode
    updates: int = 8  # policy-gradient updates
    steps_per_update: int = 1  # vector-env steps collected per update
    max_new_tokens: int = 32  # longest reply, in tokens
    temperature: float = 1.0  # sampling temperature (the loss uses the same distribution)
    learning_rate: float = 5e-5  # AdamW learning rate
    train_layers: int | None = 4  # train the last N decoder layers and the final norm (None: all)
    baseline_momentum: float = 0.9  # EMA factor of the return baseline
    complete_bonus: float = 0.25  # shaping: a reply that ends within max_new_tokens
    number_bonus: float = 0.25  # shaping: a complete reply whose last word is a number
    attempt_bonus: float = 0.0  # shaping: a reply the scorer counts as an answer attempt
    system_prompt: str = "Solve the user's math problem. End with the final number."
    seed: int = 0  # env and sampling seed
    device: str | None = None  # torch device (None: cuda when available, else cpu)
    output_dir: str | None = None  # history and policy folder (None: the Hydra run folder)
    save_model: bool = True  # save the trained policy and tokenizer in <output_dir>/policy


ConfigStore.instance().store(name="rl_example", node=RLConfig)


def ends_with_number(reply: str) -> bool:
    """Whether the last letter or digit of ``reply`` is a digit (the format the prompt asks)."""
    return bool(_ENDS_WITH_NUMBER.search(reply.strip()))


def trainable_parameters(model: Any, train_layers: int | None) -> list[torch.nn.Parameter]:
    """Freeze all but the last ``train_layers`` decoder layers and the final norm (``None``:
    train everything); return the parameters left trainable.

    The embeddings stay frozen (SmolLM2 ties them to the output head), so the backward pass
    stops at the first trained layer: on a CPU that makes an update several times cheaper.
    """
    if train_layers is None:
        return [p for p in model.parameters() if p.requires_grad]
    layers = model.model.layers
    if not 1 <= train_layers <= len(layers):
        raise ValueError(f"train_layers must be in 1..{len(layers)} or None, got {train_layers}")
    model.requires_grad_(False)
    for module in [*layers[len(layers) - train_layers :], model.model.norm]:
        module.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


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
    complete = (sequences[:, width:] == tokenizer.eos_token_id).any(dim=1).tolist()
    return {
        "sequences": sequences,
        "mask": mask,
        "attention_mask": attention,
        "texts": texts,
        "complete": complete,
    }


def _attempted(info: dict[str, Any]) -> Any:
    """Whether each reply attempted an answer (ended episodes report it in ``final_info``)."""
    ended = info.get("_final_info", np.zeros(len(info["attempted"]), dtype=bool))
    final = info.get("final_info", {}).get("attempted", info["attempted"])
    return np.where(ended, final, info["attempted"])


def formatted(step: dict[str, Any]) -> list[bool]:
    """Which replies of a step are complete and end with a number, as the prompt asks."""
    pairs = zip(step["texts"], step["complete"], strict=True)
    return [bool(done) and ends_with_number(text) for text, done in pairs]


def shape(reward: Any, step: dict[str, Any], attempted: Any, cfg: RLConfig) -> list[float]:
    """The env rewards plus the shaping bonuses each reply of ``step`` earned."""
    bonus = (
        cfg.complete_bonus * np.asarray(step["complete"], dtype=float)
        + cfg.number_bonus * np.asarray(formatted(step), dtype=float)
        + cfg.attempt_bonus * np.asarray(attempted, dtype=float)
    )
    return (np.asarray(reward, dtype=float) + bonus).tolist()


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
        shaped.append(shape(reward, step, _attempted(info), cfg))
        dones.append((terminated | truncated).tolist())
    return steps, rewards, shaped, dones, observations


def train(cfg: RLConfig) -> list[dict[str, float]]:
    """Run the loop; return one record per update (mean env and shaped reward, share of
    replies ending with a number, loss, baseline). Writes ``history.jsonl`` and, when
    ``save_model``, the policy to ``output_dir`` (which must be set)."""
    if cfg.output_dir is None:
        raise ValueError("RLConfig.output_dir is not set: where should history and policy go?")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / HISTORY_FILE).write_text("", encoding="utf-8")
    loaded = load_model(EMBEDDED_MODEL, device=cfg.device)
    # A private copy (the loaded one is shared process-wide). It stays in eval mode: SmolLM2 has
    # no dropout, so sampling and the loss see exactly the same distribution.
    tokenizer, policy = loaded.tokenizer, copy.deepcopy(loaded.model)
    trained = trainable_parameters(policy, cfg.train_layers)
    optimizer = torch.optim.AdamW(trained, lr=cfg.learning_rate, fused=True)
    env = gym.make_vec(
        cfg.env_id, num_envs=cfg.num_envs, vectorization_mode="vector_entry_point",
        simulator="sharded", max_replies=cfg.max_replies, observation_mode="conversation",
    )  # fmt: skip
    observations, _ = env.reset(seed=cfg.seed)
    baseline, history = 0.0, []
    try:
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
            record = {
                "update": update,
                "mean_reward": float(np.mean(rewards)),
                "mean_shaped_reward": float(np.mean(shaped)),
                "complete": float(np.mean([step["complete"] for step in steps])),
                "ends_with_number": float(np.mean([formatted(step) for step in steps])),
                "loss": loss.item(),
                "baseline": baseline,
            }
            history.append(record)
            with (out / HISTORY_FILE).open("a", encoding="utf-8") as sink:
                sink.write(json.dumps(record) + "\n")
            log.info(
                "update %d  env reward %.3f  shaped reward %.3f  complete %.2f  "
                "ending with a number %.2f  loss %.4f",
                update, record["mean_reward"], record["mean_shaped_reward"],
                record["complete"], record["ends_with_number"], record["loss"],
            )  # fmt: skip
    finally:
        env.close()
    if cfg.save_model:
        policy.save_pretrained(out / POLICY_DIR)
        tokenizer.save_pretrained(out / POLICY_DIR)
        log.info("policy saved to %s", out / POLICY_DIR)
    return history


@hydra.main(version_base="1.3", config_path=None, config_name="rl_example")
def main(cfg: Any) -> None:
    """Hydra entry point: the run folder holds the history and the policy by default."""
    settings: RLConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if settings.output_dir is None:
        settings.output_dir = HydraConfig.get().runtime.output_dir
    train(settings)


if __name__ == "__main__":
    main()
