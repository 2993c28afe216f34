"""Flipping the dialogue: a conversation becomes next-user-turn training samples (paper 2.1).

A conversation with K user turns gives K+1 samples: for each user turn k, the prompt is the
intent (system message) and the messages before turn k, and the target is turn k; after the last
assistant turn the target is :data:`~userlm_env.types.END_MARKER`, which teaches the model to end
the conversation. (A conversation whose last message is a user turn has no end sample.)

Prompts are rendered by :func:`userlm_env.chat_format.render_training_sample`, the same code the
UserLM simulator prompts with at inference, and tokenized the same way (no added special tokens).
A sample's token ids are ``ids(prompt) + ids(target) + ids(end-of-turn text)``; labels are -100 on
the prompt and equal to the ids on the target and its end-of-turn text, so the loss (and the
perplexity in :mod:`userlm_env.metrics.perplexity`) covers exactly the user turn.

Samples longer than ``max_length`` keep their prompt and lose the tail of their target
(``truncated``); samples whose prompt alone leaves no room for a target token are dropped. Both
are counted in :class:`FlipResult`.

This is the paper's exact recipe; :mod:`userlm_env.training.whole` gives every user turn the same
loss from one sequence per conversation, for O(K) instead of O(K^2) tokens. Both kinds of sample
go through :class:`FlipDataset` and either collator: :class:`FlipCollator` pads,
:class:`PackedCollator` concatenates a batch into one padding-free row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from userlm_env.chat_format import render_training_sample
from userlm_env.errors import DataError
from userlm_env.training.data import Conversation
from userlm_env.types import END_MARKER, Message

__all__ = [
    "IGNORE_INDEX",
    "FlipCollator",
    "FlipConfig",
    "FlipDataset",
    "FlipResult",
    "FlipSample",
    "FlipText",
    "PackedCollator",
    "TokenSample",
    "add_end_token",
    "flip_conversation",
    "flip_conversations",
    "tokenize_flip",
]

#: Label value that the loss ignores (PyTorch's cross-entropy default).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class FlipText:
    """One flipped sample before tokenization.

    Attributes:
        conversation_id: The conversation it comes from.
        turn: 1-based index of the target user turn; K+1 for the end sample.
        is_end: The target is the end marker.
        intent_text: The system message (the intent), or ``None`` when trained without intent.
        history: The messages before the target.
        target: The user turn to predict (or the end marker).
    """

    conversation_id: str
    turn: int
    is_end: bool
    intent_text: str | None
    history: tuple[Message, ...]
    target: str


@dataclass(frozen=True)
class FlipSample:
    """One tokenized sample: ``input_ids`` and ``labels`` of the same length."""

    conversation_id: str
    turn: int  # 1-based target user turn; K+1 for the end sample
    is_end: bool  # the target is the end marker
    input_ids: list[int]  # prompt, target and end-of-turn ids
    labels: list[int]  # IGNORE_INDEX on the prompt, the ids on the target
    prompt_tokens: int  # how many leading ids belong to the prompt
    truncated: bool = False  # the target was cut to fit max_length

    @property
    def target_tokens(self) -> int:
        """How many ids carry a loss."""
        return len(self.input_ids) - self.prompt_tokens


@dataclass
class FlipConfig:
    """How conversations become samples."""

    use_intent: bool = True  # condition on the intent; False is the paper's no-intent ablation
    include_end: bool = True  # add the end-of-conversation sample after the last assistant turn
    max_length: int = 2048  # longest sample in tokens (targets are cut, prompts never)
    missing_intent: str = "error"  # conversations without intent: "error" or "skip"

    def __post_init__(self) -> None:
        if self.missing_intent not in ("error", "skip"):
            raise ValueError(f"missing_intent must be 'error' or 'skip': {self.missing_intent!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")


@dataclass(frozen=True)
class FlipResult:
    """The samples of :func:`flip_conversations` and what was left out."""

    samples: list[FlipSample]
    conversations: int  # conversations flipped
    skipped_no_intent: int  # conversations skipped because they had no intent
    dropped_too_long: int  # samples whose prompt alone exceeded max_length
    truncated: int  # samples whose target was cut


def add_end_token(tokenizer: Any, model: Any = None) -> int:
    """Add :data:`END_MARKER` to ``tokenizer`` as one special token; grow ``model``'s embeddings.

    Returns the marker's token id. Safe to call twice (nothing changes the second time).
    """
    from tokenizers import AddedToken

    if END_MARKER not in tokenizer.get_vocab():
        marker = AddedToken(END_MARKER, special=True, normalized=False)
        tokenizer.add_tokens([marker], special_tokens=True)
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return int(tokenizer.convert_tokens_to_ids(END_MARKER))


def flip_conversation(
    conversation: Conversation, *, use_intent: bool = True, include_end: bool = True
) -> list[FlipText]:
    """The K (+1 end) samples of one conversation, in turn order."""
    if use_intent and conversation.intent is None:
        raise DataError(
            f"conversation {conversation.conversation_id!r} has no intent: generate intents "
            "first (userlm_env.training.intents) or train with use_intent=False"
        )
    intent = conversation.intent if use_intent else None
    messages = conversation.messages
    samples: list[FlipText] = []
    for index, message in enumerate(messages):
        if message["role"] == "user":
            turn = len(samples) + 1
            samples.append(_text(conversation, turn, intent, messages[:index], message["content"]))
    if include_end and messages[-1]["role"] == "assistant":
        samples.append(_text(conversation, len(samples) + 1, intent, messages, END_MARKER))
    return samples


def _text(
    conversation: Conversation,
    turn: int,
    intent: str | None,
    history: Sequence[Message],
    target: str,
) -> FlipText:
    is_end = target == END_MARKER
    return FlipText(conversation.conversation_id, turn, is_end, intent, tuple(history), target)


def tokenize_flip(tokenizer: Any, flip: FlipText, max_length: int) -> FlipSample | None:
    """Tokenize one sample (``None`` when its prompt leaves no room for a target token)."""
    prompt, completion = render_training_sample(
        tokenizer, flip.intent_text, list(flip.history), flip.target
    )
    suffix = completion[len(flip.target) :]
    prompt_ids = _encode(tokenizer, prompt)
    if len(prompt_ids) >= max_length:
        return None
    target_ids = _encode(tokenizer, flip.target) + _encode(tokenizer, suffix)
    kept = target_ids[: max_length - len(prompt_ids)]
    return FlipSample(
        conversation_id=flip.conversation_id,
        turn=flip.turn,
        is_end=flip.is_end,
        input_ids=prompt_ids + kept,
        labels=[IGNORE_INDEX] * len(prompt_ids) + kept,
        prompt_tokens=len(prompt_ids),
        truncated=len(kept) < len(target_ids),
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def flip_conversations(
    conversations: Sequence[Conversation], tokenizer: Any, config: FlipConfig | None = None
) -> FlipResult:
    """Flip and tokenize many conversations (see the module doc for the length policy)."""
    config = config or FlipConfig()
    samples: list[FlipSample] = []
    skipped = dropped = flipped = 0
    for conversation in conversations:
        if config.use_intent and conversation.intent is None and config.missing_intent == "skip":
            skipped += 1
            continue
        flipped += 1
        texts = flip_conversation(
            conversation, use_intent=config.use_intent, include_end=config.include_end
        )
        for text in texts:
            sample = tokenize_flip(tokenizer, text, config.max_length)
            if sample is None:
                dropped += 1
            else:
                samples.append(sample)
    truncated = sum(s.truncated for s in samples)
    return FlipResult(samples, flipped, skipped, dropped, truncated)


class TokenSample(Protocol):
    """A tokenized training sample: flipped (:class:`FlipSample`) or whole-conversation."""

    @property
    def input_ids(self) -> list[int]: ...  # the prompt and target ids

    @property
    def labels(self) -> list[int]: ...  # IGNORE_INDEX where no loss


class FlipDataset:
    """A map-style dataset of samples, as dicts of ``input_ids`` and ``labels`` lists.

    It has ``__len__`` and ``__getitem__``, which is all ``transformers.Trainer`` (and its
    length-grouped sampler, which reads ``input_ids``) needs. The samples may be flipped ones
    or whole conversations (:class:`userlm_env.training.whole.WholeSample`).
    """

    def __init__(self, samples: Sequence[TokenSample]) -> None:
        if not samples:
            raise DataError("no training samples: the conversations produced none")
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        sample = self.samples[index]
        return {"input_ids": sample.input_ids, "labels": sample.labels}

    @property
    def tokens(self) -> int:
        """Total tokens over all samples (prompt and target)."""
        return sum(len(s.input_ids) for s in self.samples)

    @property
    def target_tokens(self) -> int:
        """Tokens that carry a loss over all samples."""
        return sum(sum(label != IGNORE_INDEX for label in s.labels) for s in self.samples)


@dataclass
class FlipCollator:
    """Pads a batch on the right: ``pad_token_id`` in ids, 0 in the mask, -100 in labels."""

    pad_token_id: int  # id used for padding the inputs (never trained on)
    pad_to_multiple_of: int | None = None  # round the padded length up (8 helps tensor cores)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, mask, labels = [], [], []
        for feature in features:
            pad = width - len(feature["input_ids"])
            ids.append(list(feature["input_ids"]) + [self.pad_token_id] * pad)
            mask.append([1] * len(feature["input_ids"]) + [0] * pad)
            labels.append(list(feature["labels"]) + [IGNORE_INDEX] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


class PackedCollator:
    """Concatenates a batch into one row without padding (``position_ids`` restart per sample).

    It is transformers' ``DataCollatorWithFlattening``: ``input_ids``, ``labels`` and
    ``position_ids`` of shape ``(1, total tokens)`` and no attention mask. Models built on
    transformers' mask utilities (Llama, Qwen, SmolLM...) read the restarting positions as
    sample boundaries, so no token attends across samples: sdpa and eager attention get a
    block-diagonal mask (quadratic in the row length, so keep batches moderate), FlashAttention
    2 runs variable-length kernels. They do so only without a KV cache (``use_cache=False``, as
    the Trainer sets it). The first label of each sample is -100 (never a target).
    """

    def __init__(self) -> None:
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self._flatten(list(features), return_tensors="pt")
        return batch
