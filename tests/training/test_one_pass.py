"""Tests of one pass per conversation (userlm_env.training.whole): on the same causal LM, every
user turn of the whole-conversation sequence has exactly the per-token losses of its flipped
sample; conversations that are not prefix-stable fall back to flipped samples; the length policy
cuts at a turn boundary; padding-free packing changes no loss; the trainer's loss is the same in
both modes."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import pytest
import torch
import yaml

from userlm_env import ConversationEnv
from userlm_env.chat_format import render_user_prompt
from userlm_env.models import EMBEDDED_MODEL
from userlm_env.training.data import Conversation
from userlm_env.training.flip import (
    IGNORE_INDEX,
    FlipCollator,
    FlipConfig,
    FlipSample,
    PackedCollator,
    add_end_token,
    flip_conversation,
    flip_conversations,
)
from userlm_env.training.train import TrainConfig, train_userlm
from userlm_env.training.whole import (
    NotPrefixStable,
    WholeSample,
    fit_length,
    render_pieces,
    tokenize_whole,
    whole_conversations,
)

from .conftest import TINY_ARCHITECTURE

#: Float tolerance of a log-probability computed in sequences of different lengths.
ATOL = 1e-5


def _env_conversation(template: Conversation, seed: int, replies: int) -> Conversation:
    """A GSM-Symbolic episode with the rule-based user: intent = the env's system prompt."""
    env = gym.make("userlm_env/GSMSymbolic-v0", simulator="sharded", max_replies=replies)
    _, info = env.reset(seed=seed)
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step("Could you tell me more about the problem?")
        done = terminated or truncated
    state = cast(ConversationEnv, env.unwrapped).state
    assert state is not None
    intent = state.intent.system_prompt
    env.close()
    return replace(
        template,
        conversation_id=f"gsm-{seed}",
        messages=tuple(info["messages"]),
        intent=intent,
    )


@pytest.fixture()
def long_conversations(conversations: list[Conversation]) -> list[Conversation]:
    """Conversations with 3 or more user turns: two from the fixture, two env episodes."""
    fixture = [c for c in conversations if c.user_turns >= 3 and c.intent]
    env = [_env_conversation(fixture[0], seed, replies) for seed, replies in ((3, 4), (5, 6))]
    chosen = fixture + env
    assert len(fixture) == 2 and [c.user_turns for c in env] == [4, 6]
    return chosen


def _token_logprobs(model: Any, input_ids: list[int]) -> torch.Tensor:
    """log p(token i | tokens < i) for i >= 1, as a float64 vector of length n - 1."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return logprobs.gather(-1, torch.tensor(input_ids[1:]).unsqueeze(-1)).squeeze(-1)


def _by_conversation(samples: list[Any]) -> dict[str, WholeSample]:
    return {s.conversation_id: s for s in samples if isinstance(s, WholeSample)}


@pytest.mark.parametrize("use_intent", [True, False])
def test_per_token_losses_equal_the_flipped_samples(
    tokenizer: Any, tiny_model: Any, long_conversations: list[Conversation], use_intent: bool
) -> None:
    add_end_token(tokenizer, tiny_model)
    config = FlipConfig(use_intent=use_intent)
    flipped = flip_conversations(long_conversations, tokenizer, config).samples
    whole = whole_conversations(long_conversations, tokenizer, config)
    assert whole.fallback == 0 and whole.truncated == 0 and len(whole.samples) == 4
    by_id = _by_conversation(whole.samples)
    whole_lps = {key: _token_logprobs(tiny_model, one.input_ids) for key, one in by_id.items()}
    assert len(flipped) == sum(c.user_turns + 1 for c in long_conversations) == 20
    compared = 0
    for sample in flipped:
        one = by_id[sample.conversation_id]
        start, end = one.spans[one.turns.index(sample.turn)]
        # the tokens up to the end of turn k are exactly the flipped sample of turn k
        assert one.input_ids[:end] == sample.input_ids and start == sample.prompt_tokens
        assert one.labels[start:end] == sample.labels[start:]
        flip_lp = _token_logprobs(tiny_model, sample.input_ids)[start - 1 :]
        whole_lp = whole_lps[sample.conversation_id][start - 1 : end - 1]
        assert torch.allclose(flip_lp, whole_lp, rtol=0.0, atol=ATOL)
        compared += len(flip_lp)
    # every labelled token of the whole sequences was compared, and nothing else is labelled
    assert compared == sum(s.target_tokens for s in by_id.values())
    for one in by_id.values():
        labelled = {i for i, label in enumerate(one.labels) if label != IGNORE_INDEX}
        assert labelled == {i for start, end in one.spans for i in range(start, end)}


def test_targets_follow_the_simulator_prompt(
    tokenizer: Any, long_conversations: list[Conversation]
) -> None:
    add_end_token(tokenizer)
    for conversation in long_conversations:
        one = _by_conversation(whole_conversations([conversation], tokenizer).samples)
        sample = one[conversation.conversation_id]
        texts = flip_conversation(conversation)
        assert sample.turns == tuple(range(1, conversation.user_turns + 2)) and sample.is_end
        for text, (start, _) in zip(texts, sample.spans, strict=True):
            prompt = render_user_prompt(tokenizer, text.intent_text, list(text.history))
            assert tokenizer.decode(sample.input_ids[:start]) == prompt
        # the sequence is the template's rendering of the whole conversation + the end marker
        assert tokenizer.decode(sample.input_ids) == "".join(
            p.text for p in render_pieces(tokenizer, conversation)
        )


def test_one_pass_needs_far_fewer_tokens(
    tokenizer: Any, long_conversations: list[Conversation]
) -> None:
    add_end_token(tokenizer)
    flipped = flip_conversations(long_conversations, tokenizer).samples
    whole = whole_conversations(long_conversations, tokenizer).samples
    flipped_tokens = sum(len(s.input_ids) for s in flipped)
    whole_tokens = sum(len(s.input_ids) for s in whole)
    assert flipped_tokens >= 1.5 * whole_tokens
    assert sum(s.target_tokens for s in flipped) == sum(s.target_tokens for s in whole)


def _equal_samples(first: list[Any], second: list[Any]) -> bool:
    return [(s.input_ids, s.labels) for s in first] == [(s.input_ids, s.labels) for s in second]


def test_whitespace_led_turn_falls_back_to_flipped_samples(
    tokenizer: Any, conversations: list[Conversation], caplog: pytest.LogCaptureFixture
) -> None:
    garden = conversations[1]
    messages = list(garden.messages)
    messages[2] = {"role": "user", "content": "\n\ngrow lamp how far above them"}
    odd = replace(garden, messages=tuple(messages))
    with pytest.raises(NotPrefixStable, match="merges tokens"):
        tokenize_whole(tokenizer, render_pieces(tokenizer, odd), odd.conversation_id)
    with caplog.at_level(logging.WARNING, logger="userlm_env.training.whole"):
        result = whole_conversations([odd, conversations[0]], tokenizer)
    assert result.fallback == 1 and "syn-002" in caplog.text
    flipped = flip_conversations([odd], tokenizer).samples
    assert _equal_samples(result.samples[:4], flipped)
    assert all(isinstance(s, FlipSample) for s in result.samples[:4])
    assert isinstance(result.samples[4], WholeSample)
    one_space = replace(
        garden, messages=(messages[0], messages[1], {**messages[2], "content": " x"})
    )
    assert whole_conversations([one_space], tokenizer).fallback == 0


#: The Llama-3 tokenizer's pre-tokenizer pattern (newline runs stay one piece).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _llama3_like(tokenizer: Any) -> Any:
    """The SmolLM2 vocabulary with Llama-3's header tokens, pre-tokenizer and the presets'
    template: what matters for prefix stability, as Llama-3's own tokenizer is not offline."""
    from tokenizers import AddedToken, Regex, pre_tokenizers

    preset = Path(__file__).resolve().parents[2] / "experiments/conf/train/userlm_1b.yaml"
    tokenizer.chat_template = yaml.safe_load(preset.read_text())["train"]["chat_template"]
    headers = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in headers], special_tokens=True
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tokenizer


def test_llama3_preset_template_is_prefix_stable(
    tokenizer: Any, long_conversations: list[Conversation], caplog: pytest.LogCaptureFixture
) -> None:
    gpt2_style = copy.deepcopy(tokenizer)  # SmolLM2's own pre-tokenizer, Llama-3 template
    llama3 = _llama3_like(tokenizer)
    add_end_token(llama3)
    whole = whole_conversations(long_conversations, llama3)
    assert whole.fallback == 0
    by_id = _by_conversation(whole.samples)
    for sample in flip_conversations(long_conversations, llama3).samples:
        one = by_id[sample.conversation_id]
        start, end = one.spans[one.turns.index(sample.turn)]
        assert one.input_ids[:end] == sample.input_ids and start == sample.prompt_tokens
    # A GPT-2-style pre-tokenizer reads a prompt's final "\n\n" as one token, but as two once
    # the turn follows: never prefix-stable with this template, so all fall back (one warning).
    gpt2_style.chat_template = llama3.chat_template
    gpt2_style.add_tokens(
        [t for t in llama3.get_added_vocab() if t not in gpt2_style.get_vocab()],
        special_tokens=True,
    )
    with caplog.at_level(logging.WARNING, logger="userlm_env.training.whole"):
        fallen = whole_conversations(long_conversations, gpt2_style)
    assert fallen.fallback == 4 and "4 of 4 conversations" in caplog.text
    assert len(caplog.records) == 1


#: A template that moves the system message next to the newest user message (as some do).
SYSTEM_LAST = (
    "{%- set system = messages | selectattr('role', 'equalto', 'system') | list -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if loop.last and system -%}[SYS]{{ system[0]['content'] }}[/SYS]{%- endif -%}"
    "[{{ message['role'] }}]{{ message['content'] }}[/{{ message['role'] }}]\n"
    "{%- endfor -%}"
)


def test_template_that_rewrites_history_falls_back(
    tokenizer: Any, conversations: list[Conversation]
) -> None:
    tokenizer.chat_template = SYSTEM_LAST
    with pytest.raises(NotPrefixStable, match="renders the turns before user turn 2"):
        render_pieces(tokenizer, conversations[0])
    result = whole_conversations(conversations[:2], tokenizer)
    assert result.fallback == 2
    assert _equal_samples(result.samples, flip_conversations(conversations[:2], tokenizer).samples)


def test_long_conversations_are_cut_at_a_turn_boundary(
    tokenizer: Any, conversations: list[Conversation]
) -> None:
    garden = conversations[1]  # 3 user turns + end
    full = tokenize_whole(tokenizer, render_pieces(tokenizer, garden), garden.conversation_id)
    spans = full.spans
    limit = spans[1][1] + 3  # turn 2 ends inside the limit, turn 3 does not
    result = whole_conversations([garden], tokenizer, FlipConfig(max_length=limit))
    (cut,) = result.samples
    assert isinstance(cut, WholeSample)
    assert (result.truncated, result.dropped_turns, cut.dropped_turns) == (1, 2, 2)
    assert cut.turns == (1, 2) and not cut.is_end and cut.truncated
    assert cut.input_ids == full.input_ids[: spans[1][1]] and cut.labels[-1] != IGNORE_INDEX
    first = fit_length(full, spans[0][0] + 2)  # not even turn 1 fits: its head is kept
    assert first is not None and first.spans == ((spans[0][0], spans[0][0] + 2),)
    assert first.dropped_turns == 3 and len(first.input_ids) == spans[0][0] + 2
    assert fit_length(full, spans[0][0]) is None
    dropped = whole_conversations([garden], tokenizer, FlipConfig(max_length=spans[0][0]))
    assert (dropped.dropped_too_long, dropped.dropped_turns, dropped.samples) == (1, 4, [])
    assert fit_length(full, len(full.input_ids)) is full


def test_packed_rows_give_the_losses_of_separate_sequences(
    tokenizer: Any, tiny_model: Any, long_conversations: list[Conversation]
) -> None:
    add_end_token(tokenizer, tiny_model)
    samples = whole_conversations(long_conversations, tokenizer).samples
    features = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    packed = PackedCollator()(features)
    total = sum(len(s.input_ids) for s in samples)
    assert packed["input_ids"].shape == (1, total) and "attention_mask" not in packed
    positions = [p for s in samples for p in range(len(s.input_ids))]
    assert packed["position_ids"][0].tolist() == positions
    with torch.no_grad():  # no KV cache, as in training: a cache hides the packing
        logits = tiny_model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits[0]
    logprobs = torch.log_softmax(logits[:-1].double(), dim=-1)
    row = packed["input_ids"][0, 1:].unsqueeze(-1)
    packed_lp = logprobs.gather(-1, row).squeeze(-1)
    offset = 0
    for sample in samples:
        n = len(sample.input_ids)
        alone = _token_logprobs(tiny_model, sample.input_ids)
        assert torch.allclose(packed_lp[offset : offset + n - 1], alone, rtol=0.0, atol=ATOL)
        offset += n
    padded = FlipCollator(tokenizer.pad_token_id)(features)
    assert padded["input_ids"].numel() > total  # padding is what packing saves


def _run(tmp_path: Path, name: str, conversations: list[Conversation], **fields: Any) -> Any:
    config = TrainConfig(
        model=EMBEDDED_MODEL,
        init="random",
        architecture=dict(TINY_ARCHITECTURE),
        output_dir=str(tmp_path / name),
        learning_rate=1e-2,
        effective_batch_size=64,
        per_device_batch_size=64,  # every sequence in one forward pass: one token-weighted mean
        max_steps=2,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        logging_steps=1,
        save_steps=10,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
        **fields,
    )
    return train_userlm(config, conversations)


@pytest.mark.slow
def test_trainer_loss_is_the_same_in_both_modes(
    tmp_path: Path, long_conversations: list[Conversation]
) -> None:
    """One batch holds every sequence, so each step's loss is the token-weighted mean over all
    targets: equal for flipped samples, whole conversations, and packed whole conversations, at
    the first step and, as the gradients are equal too, after the first update."""
    flipped = _run(tmp_path, "flipped", long_conversations, sample_mode="flipped")
    whole = _run(tmp_path, "whole", long_conversations)
    packed = _run(tmp_path, "packed", long_conversations, packing=True)
    assert (flipped.samples, whole.samples, packed.samples) == (20, 4, 4)
    assert whole.sample_mode == "conversation" and flipped.sample_mode == "flipped"
    assert flipped.target_tokens == whole.target_tokens == packed.target_tokens
    assert flipped.tokens >= 1.5 * whole.tokens
    assert whole.tokens_seen == packed.tokens_seen == 2 * whole.tokens  # 2 steps, no padding
    for run in (whole, packed):
        assert [step for step, _ in run.losses] == [1, 2]
        for (_, expected), (_, loss) in zip(flipped.losses, run.losses, strict=True):
            assert loss == pytest.approx(expected, abs=2e-4)
    assert whole.losses[1][1] < whole.losses[0][1]  # the update was a real one
