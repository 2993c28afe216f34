"""Tests of flipping conversations into next-user-turn samples (userlm_env.training.flip):
K+1 samples, prompts identical to the UserLM simulator's, exact label masks, the end token."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from userlm_env.chat_format import render_user_prompt, user_turn_suffix
from userlm_env.errors import DataError
from userlm_env.training.data import Conversation
from userlm_env.training.flip import (
    IGNORE_INDEX,
    FlipCollator,
    FlipConfig,
    FlipDataset,
    add_end_token,
    flip_conversation,
    flip_conversations,
    tokenize_flip,
)
from userlm_env.types import END_MARKER, ConversationState, Intent, Shard


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_k_user_turns_give_k_plus_one_samples(conversations: list[Conversation]) -> None:
    garden = conversations[1]  # 3 user turns, ends with the assistant
    samples = flip_conversation(garden)
    assert [(s.turn, s.is_end) for s in samples] == [(1, False), (2, False), (3, False), (4, True)]
    assert [len(s.history) for s in samples] == [0, 2, 4, 6]
    assert [s.target for s in samples[:3]] == [m["content"] for m in garden.messages[::2]]
    assert samples[3].target == END_MARKER and samples[3].history == garden.messages
    assert {s.intent_text for s in samples} == {garden.intent}
    for conversation in conversations:
        if conversation.intent:
            assert len(flip_conversation(conversation)) == conversation.user_turns + 1


def test_no_end_sample_without_final_assistant_turn(conversations: list[Conversation]) -> None:
    cut = replace(conversations[1], messages=conversations[1].messages[:-1])
    assert [s.is_end for s in flip_conversation(cut)] == [False, False, False]
    assert len(flip_conversation(conversations[1], include_end=False)) == 3


def test_without_intent_ablation(conversations: list[Conversation]) -> None:
    samples = flip_conversation(conversations[6], use_intent=False)  # syn-007 has no intent
    assert len(samples) == 3 and {s.intent_text for s in samples} == {None}
    with pytest.raises(DataError, match="no intent"):
        flip_conversation(conversations[6])


def test_prompts_equal_the_simulator_prompt(
    tokenizer: Any, conversations: list[Conversation]
) -> None:
    add_end_token(tokenizer)
    for use_intent in (True, False):
        for conversation in conversations[:6]:
            for text in flip_conversation(conversation, use_intent=use_intent):
                sample = tokenize_flip(tokenizer, text, 2048)
                assert sample is not None
                prompt = render_user_prompt(tokenizer, text.intent_text, list(text.history))
                assert sample.input_ids[: sample.prompt_tokens] == _ids(tokenizer, prompt)
                assert tokenizer.decode(sample.input_ids[: sample.prompt_tokens]) == prompt


def test_prompt_matches_an_env_state(tokenizer: Any, conversations: list[Conversation]) -> None:
    """A conversation whose intent is an env Intent's system prompt flips into exactly the text
    the simulator renders for that state (``state.intent.system_prompt`` + messages)."""
    intent = Intent("gsm8k", "toy/1", "Add 2 and 3.", (Shard(1, "Add 2 and 3."),))
    conversation = replace(conversations[0], intent=intent.system_prompt)
    text = flip_conversation(conversation)[1]
    state = ConversationState(intent=intent, seed=0, messages=list(text.history))
    expected = render_user_prompt(tokenizer, state.intent.system_prompt, state.messages)
    sample = tokenize_flip(tokenizer, text, 2048)
    assert (
        sample is not None
        and tokenizer.decode(sample.input_ids[: sample.prompt_tokens]) == expected
    )


def test_labels_cover_exactly_the_target_turn(
    tokenizer: Any, conversations: list[Conversation]
) -> None:
    suffix = _ids(tokenizer, user_turn_suffix(tokenizer))
    for text in flip_conversation(conversations[0], include_end=False):
        sample = tokenize_flip(tokenizer, text, 2048)
        assert sample is not None and len(sample.labels) == len(sample.input_ids)
        target = _ids(tokenizer, text.target) + suffix
        assert sample.labels == [IGNORE_INDEX] * sample.prompt_tokens + target
        assert sample.input_ids[sample.prompt_tokens :] == target
        assert sample.target_tokens == len(target) and not sample.truncated


def test_end_token_is_one_special_token(tokenizer: Any, tiny_model: Any) -> None:
    before = len(tokenizer)
    rows = tiny_model.get_input_embeddings().weight.shape[0]
    end_id = add_end_token(tokenizer, tiny_model)
    assert end_id == before and len(tokenizer) == before + 1
    assert tiny_model.get_input_embeddings().weight.shape[0] == rows + 1
    assert tiny_model.get_output_embeddings().weight.shape[0] == rows + 1
    assert add_end_token(tokenizer, tiny_model) == end_id and len(tokenizer) == before + 1
    assert _ids(tokenizer, f"ok{END_MARKER}") == [*_ids(tokenizer, "ok"), end_id]
    assert tokenizer.decode([end_id]) == END_MARKER


def test_end_sample_labels(tokenizer: Any, conversations: list[Conversation]) -> None:
    end_id = add_end_token(tokenizer)
    end = flip_conversation(conversations[0])[-1]
    sample = tokenize_flip(tokenizer, end, 2048)
    assert sample is not None and sample.is_end and sample.turn == 3
    suffix = _ids(tokenizer, user_turn_suffix(tokenizer))
    assert sample.labels[sample.prompt_tokens :] == [end_id, *suffix]
    assert set(sample.labels[: sample.prompt_tokens]) == {IGNORE_INDEX}


def test_length_policy_truncates_targets_and_drops_long_prompts(
    tokenizer: Any, conversations: list[Conversation]
) -> None:
    garden = conversations[1]
    texts = flip_conversation(garden)
    first_prompt = len(_ids(tokenizer, render_user_prompt(tokenizer, garden.intent, [])))
    limit = first_prompt + 3
    sample = tokenize_flip(tokenizer, texts[0], limit)
    assert sample is not None and sample.truncated and len(sample.input_ids) == limit
    assert sample.labels[-3:] == sample.input_ids[-3:]
    result = flip_conversations([garden], tokenizer, FlipConfig(max_length=limit))
    assert (result.dropped_too_long, result.truncated, len(result.samples)) == (3, 1, 1)


def test_missing_intents_skip_or_fail(tokenizer: Any, conversations: list[Conversation]) -> None:
    english = [c for c in conversations if c.language == "English"]
    with pytest.raises(DataError, match="syn-007"):
        flip_conversations(english, tokenizer)
    result = flip_conversations(english, tokenizer, FlipConfig(missing_intent="skip"))
    assert result.skipped_no_intent == 1 and result.conversations == 10
    expected = sum(c.user_turns + 1 for c in english if c.intent)
    assert len(result.samples) == expected
    ablation = flip_conversations(english, tokenizer, FlipConfig(use_intent=False))
    assert ablation.skipped_no_intent == 0 and len(ablation.samples) == expected + 3
    with pytest.raises(ValueError, match="missing_intent"):
        FlipConfig(missing_intent="ignore")


def test_collator_pads_right_and_keeps_masks(
    tokenizer: Any, conversations: list[Conversation]
) -> None:
    samples = flip_conversations(conversations[:1], tokenizer).samples
    dataset = FlipDataset(samples)
    batch = FlipCollator(pad_token_id=7, pad_to_multiple_of=8)([dataset[0], dataset[2]])
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= len(samples[2].input_ids)
    for row, sample in enumerate((samples[0], samples[2])):
        n = len(sample.input_ids)
        assert batch["input_ids"][row, :n].tolist() == sample.input_ids
        assert batch["labels"][row, :n].tolist() == sample.labels
        assert set(batch["input_ids"][row, n:].tolist()) <= {7}
        assert set(batch["labels"][row, n:].tolist()) <= {IGNORE_INDEX}
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert batch["input_ids"].dtype == torch.long
    assert dataset.tokens == sum(len(s.input_ids) for s in samples)
    assert dataset.target_tokens == sum(s.target_tokens for s in samples)
    with pytest.raises(DataError, match="no training samples"):
        FlipDataset([])
