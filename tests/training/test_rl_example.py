"""Tests of the REINFORCE example (experiments/rl_example.py): the reply mask, returns, that the
loss holds the log-probabilities of generated reply tokens only, the shaped reward, which layers
train, and a three-update CPU run whose updates move and whose saved policy loads."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from experiments.rl_example import (
    HISTORY_FILE,
    POLICY_DIR,
    RLConfig,
    ends_with_number,
    formatted,
    shape,
    train,
    trainable_parameters,
)
from userlm_env.models import EMBEDDED_MODEL, load_model
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


def test_shaping_rewards_complete_replies_that_end_with_a_number() -> None:
    assert ends_with_number("So she has 42.") and ends_with_number("The answer: **1,600**")
    assert not ends_with_number("She has 42 apples left.") and not ends_with_number("")
    step = {
        "texts": ["It is 7.", "It is 7.", "Tell me more?"],
        "complete": [True, False, True],  # the second was cut by max_new_tokens
    }
    assert formatted(step) == [True, False, False]
    config = RLConfig(complete_bonus=0.25, number_bonus=0.5, attempt_bonus=0.125)
    shaped = shape(np.array([1.0, 0.0, 0.0]), step, np.array([True, True, False]), config)
    assert shaped == [1.0 + 0.25 + 0.5 + 0.125, 0.125, 0.25]
    bare = RLConfig(complete_bonus=0.0, number_bonus=0.0)
    assert shape(np.zeros(3), step, np.ones(3, dtype=bool), bare) == [0.0, 0.0, 0.0]


def test_only_the_last_layers_train(tiny_model: Any) -> None:
    trained = trainable_parameters(tiny_model, train_layers=1)
    names = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.1.", "model.norm.")) for n in names)
    assert len(trained) == len(names) and not tiny_model.model.embed_tokens.weight.requires_grad
    with pytest.raises(ValueError, match="train_layers"):
        trainable_parameters(tiny_model, train_layers=3)
    assert len(trainable_parameters(tiny_model, None)) == len(trained)  # None changes nothing


@pytest.mark.slow
def test_updates_move_the_policy_and_the_trained_policy_is_saved(tmp_path: Path) -> None:
    config = RLConfig(updates=3, device="cpu", output_dir=str(tmp_path))
    history = train(config)
    assert [record["update"] for record in history] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) and r["mean_reward"] >= 0.0 for r in history)
    assert any(r["loss"] != 0.0 for r in history)  # issue 15: every loss used to be 0.0000
    assert len({r["mean_shaped_reward"] for r in history}) > 1  # the shaped reward varies
    lines = (tmp_path / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == history
    saved = load_model(str(tmp_path / POLICY_DIR), device="cpu")
    original = load_model(EMBEDDED_MODEL, device="cpu").model
    assert not torch.equal(_weight(saved.model, -1), _weight(original, -1))  # trained
    assert torch.equal(_weight(saved.model, 0), _weight(original, 0))  # frozen (train_layers=4)
    assert saved.tokenizer.eos_token_id == load_model(EMBEDDED_MODEL).tokenizer.eos_token_id


def _weight(model: Any, layer: int) -> torch.Tensor:
    return model.model.layers[layer].mlp.down_proj.weight.detach().float()
