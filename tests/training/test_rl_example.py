"""Tests of the REINFORCE example (experiments/rl_example.py): the reply mask, returns, that the
loss holds the log-probabilities of generated reply tokens only, and a two-update CPU smoke run."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from experiments.rl_example import RLConfig, train
from userlm_env.training.rl import policy_loss, reply_logprobs, reply_mask, returns_to_go

STOP = 2


def test_reply_mask_stops_after_the_first_end_of_turn() -> None:
    sequences = torch.tensor(
        [
            [0, 5, 6, 7, 8, STOP, STOP, STOP],  # prompt of 3 (left-padded), stops at 5
            [4, 5, 6, 9, 9, 9, 9, 9],  # never stops
            [4, STOP, 6, 7, 8, STOP, STOP, 1],  # a stop inside the prompt does not count
        ]
    )
    mask = reply_mask(sequences, prompt_length=3, stop_id=STOP)
    assert mask.int().tolist() == [
        [0, 0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 0, 0],
    ]


def test_returns_sum_rewards_to_the_episode_end() -> None:
    rewards = [[0.0, 1.0], [1.0, 0.0], [0.5, 2.0]]
    dones = [[False, True], [True, False], [False, False]]
    assert returns_to_go(rewards, dones) == [[1.0, 1.0], [1.0, 2.0], [0.5, 2.0]]


def _batch(model: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    sequences = torch.randint(3, model.config.vocab_size, (2, 9))
    sequences[0, 0] = 0  # left padding of row 0
    sequences[0, 7] = STOP
    mask = reply_mask(sequences, prompt_length=4, stop_id=STOP)
    attention = torch.ones_like(sequences)
    attention[0, 0] = 0
    return {"sequences": sequences, "mask": mask, "attention_mask": attention}


def test_logprobs_cover_reply_tokens_only(tiny_model: Any) -> None:
    batch = _batch(tiny_model)
    got = reply_logprobs(tiny_model, batch, temperature=0.5)
    positions = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = tiny_model(
            input_ids=batch["sequences"],
            attention_mask=batch["attention_mask"],
            position_ids=positions,
        ).logits.double()
    for row in range(2):
        expected = sum(
            torch.log_softmax(logits[row, t - 1] / 0.5, dim=-1)[batch["sequences"][row, t]].item()
            for t in range(9)
            if batch["mask"][row, t]
        )
        assert got[row].item() == pytest.approx(expected, rel=1e-4)
    assert batch["mask"][0].sum() == 4 and batch["mask"][1].sum() == 5


def test_loss_weighs_reply_logprobs_by_advantage(tiny_model: Any) -> None:
    batch = _batch(tiny_model)
    returns = torch.tensor([[1.0, 0.0]])
    loss = policy_loss(tiny_model, [batch], returns, baseline=0.25, temperature=1.0)
    logp = reply_logprobs(tiny_model, batch, 1.0)
    expected = -(0.75 * logp[0] + (0.0 - 0.25) * logp[1]) / 2  # mean over the two replies
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    zero = policy_loss(tiny_model, [batch], torch.tensor([[0.25, 0.25]]), 0.25, 1.0)
    zero.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert all(torch.count_nonzero(g) == 0 for g in grads)  # zero advantage, zero update


@pytest.mark.slow
def test_two_updates_on_cpu() -> None:
    config = RLConfig(
        num_envs=2,
        max_replies=2,
        updates=2,
        steps_per_update=1,
        max_new_tokens=8,
        attempt_bonus=0.1,
        device="cpu",
    )
    history = train(config)
    assert [record["update"] for record in history] == [0, 1]
    for record in history:
        assert 0.0 <= record["mean_reward"] <= 1.0 and math.isfinite(record["loss"])
