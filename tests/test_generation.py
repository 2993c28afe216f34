"""Tests of the batched generation helper (userlm_env.generation) and the pad token set at load.

Fast tests use stand-ins; slow ones generate a few tokens with the embedded SmolLM2-135M model
(loaded once per session) and check the machinery: per-row ids, left padding by call argument,
no change to the shared tokenizer, per-row seeds that ignore the batch, no global RNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from userlm_env import models
from userlm_env.generation import Sampling, generate_rows
from userlm_env.models import EMBEDDED_MODEL, LoadedModel, load_model, load_tokenizer

QUESTIONS = (
    "What is the capital of France? Answer in one word, please, and nothing else at all.",
    "Say hi.",
    "Name a color.",
)


def _config(max_new_tokens: int, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,  # every row as long: rows compare position by position
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )


def _prompts(tokenizer: Any, questions: tuple[str, ...] | list[str]) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]


# --- fast -------------------------------------------------------------------------------------


class _Tokenizer:
    """A tokenizer stand-in without a padding token."""

    def __init__(self) -> None:
        self.pad_token: str | None = None
        self.eos_token = "</s>"

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else 0


def test_load_tokenizer_gives_a_missing_pad_token_the_eos_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "_tokenizer_from", lambda *args, **kwargs: _Tokenizer())
    tokenizer = load_tokenizer(str(tmp_path))  # an existing folder: a local checkpoint
    assert tokenizer.pad_token == "</s>"


def test_generate_rows_checks_its_inputs() -> None:
    loaded = LoadedModel("stub", _Tokenizer(), None, "stub", None)
    with pytest.raises(ValueError, match="no padding token"):
        generate_rows(loaded, ["x"], generation_config=None)
    loaded.tokenizer.pad_token = "</s>"
    with pytest.raises(ValueError, match="batch_size"):
        generate_rows(loaded, ["x"], generation_config=None, batch_size=0)
    with pytest.raises(ValueError, match="1 seeds for 2 prompts"):
        generate_rows(loaded, ["x", "y"], generation_config=None, sampling=Sampling([1]))
    assert generate_rows(loaded, [], generation_config=None) == []


# --- with the embedded model (slow) -----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm() -> LoadedModel:
    return load_model(EMBEDDED_MODEL)


@pytest.mark.slow
def test_pad_token_is_set_at_load(smollm: LoadedModel) -> None:
    assert smollm.tokenizer.pad_token_id is not None
    assert load_tokenizer(EMBEDDED_MODEL).pad_token_id is not None


@pytest.mark.slow
def test_rows_are_new_ids_in_prompt_order_and_the_tokenizer_is_untouched(
    smollm: LoadedModel,
) -> None:
    tokenizer = smollm.tokenizer
    before = (tokenizer.padding_side, tokenizer.pad_token, tokenizer.truncation_side)
    prompts = _prompts(tokenizer, QUESTIONS)
    config = _config(4, tokenizer)
    rows = generate_rows(smollm, prompts, generation_config=config, batch_size=2)
    assert (tokenizer.padding_side, tokenizer.pad_token, tokenizer.truncation_side) == before
    assert [len(row) for row in rows] == [4, 4, 4]
    alone = [generate_rows(smollm, [p], generation_config=config)[0] for p in prompts]
    assert rows == alone  # left padding: a padded row continues its own prompt


@pytest.mark.slow
def test_seeded_rows_ignore_their_batch_neighbours_and_the_global_rng(
    smollm: LoadedModel,
) -> None:
    prompts = _prompts(smollm.tokenizer, QUESTIONS)
    config = _config(6, smollm.tokenizer)

    def sample(rows: list[int], seeds: list[int]) -> list[list[int]]:
        sampling = Sampling(seeds, temperature=1.0, top_p=0.95)
        chosen = [prompts[i] for i in rows]
        return generate_rows(smollm, chosen, generation_config=config, sampling=sampling)

    rng = torch.get_rng_state()
    first = sample([0, 1], [7, 8])[0]
    assert sample([0, 2], [7, 9])[0] == first  # another neighbour
    assert sample([2, 0], [9, 7])[1] == first  # another position in the batch
    assert sample([0], [7])[0] == first  # no neighbour
    assert sample([0, 0, 0], [7, 11, 12])[1:] != [first, first]  # other seeds, other rows
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator never moved


@pytest.mark.slow
def test_hf_assistant_samples_per_row_seed_without_global_seeding(smollm: LoadedModel) -> None:
    from assistants.hf import HFAssistant

    assistant = HFAssistant(temperature=1.0, max_new_tokens=8)
    prompts = _prompts(assistant.loaded.tokenizer, list(QUESTIONS[:2]))
    rng = torch.get_rng_state()
    replies = assistant._generate(prompts, [3, 4])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert assistant._generate(prompts[:1], [3]) == replies[:1]
    assert torch.equal(torch.get_rng_state(), rng)
