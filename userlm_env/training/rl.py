"""The pieces of a REINFORCE update on an assistant LM: which tokens are the reply, their
log-probabilities, returns-to-go, and the policy-gradient loss with a baseline.

Used by ``experiments/rl_example.py``; kept here so the entry script stays short and the math is
tested on its own.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["policy_loss", "reply_logprobs", "reply_mask", "returns_to_go"]


def reply_mask(sequences: torch.Tensor, prompt_length: int, stop_id: int) -> torch.Tensor:
    """True on generated tokens up to and including the first ``stop_id`` of each row."""
    generated = torch.zeros_like(sequences, dtype=torch.bool)
    generated[:, prompt_length:] = True
    stops = (sequences == stop_id) & generated
    after_stop = (stops.cumsum(dim=1) - stops.long()) > 0  # strictly after the first stop
    return generated & ~after_stop


def reply_logprobs(model: Any, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Sum of log-probabilities of the masked (reply) tokens of each row, with gradients.

    Positions count only attended tokens, as ``generate`` does for left-padded prompts.
    """
    attention = batch["attention_mask"]
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=batch["sequences"], attention_mask=attention, position_ids=positions
    ).logits
    logprobs = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    picked = logprobs.gather(-1, batch["sequences"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (picked * batch["mask"][:, 1:]).sum(dim=1)


def returns_to_go(rewards: list[list[float]], dones: list[list[bool]]) -> list[list[float]]:
    """Per step and env: rewards summed from that step to the end of its episode (or window)."""
    out = [[0.0] * len(row) for row in rewards]
    following = [0.0] * len(rewards[0])
    for t in reversed(range(len(rewards))):
        for i, (reward, done) in enumerate(zip(rewards[t], dones[t], strict=True)):
            following[i] = reward + (0.0 if done else following[i])
            out[t][i] = following[i]
    return out


def policy_loss(
    policy: Any,
    steps: list[dict[str, Any]],
    returns: torch.Tensor,
    baseline: float,
    temperature: float,
) -> torch.Tensor:
    """REINFORCE with a baseline: ``-(G - b) * log p(reply)``, averaged over replies."""
    per_step = [
        -((returns[t] - baseline) * reply_logprobs(policy, step, temperature)).mean()
        for t, step in enumerate(steps)
    ]
    return torch.stack(per_step).mean()
