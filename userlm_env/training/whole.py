"""One pass per conversation: a whole conversation as one training sequence with every target.

Flipping (:mod:`userlm_env.training.flip`) turns a conversation with K user turns into K+1
samples, each re-encoding the whole prefix, so an epoch processes O(K^2) tokens per
conversation. A causal LM's loss on user turn k depends only on the tokens before it, so one
sequence holding the whole conversation gives every user turn the loss it has in the flipped
sample that ends at that turn, for O(K) tokens:

* the intent is the system message (none with ``use_intent=False``, as in flipping);
* every user turn, and the end marker after the last assistant turn (``include_end``), is a
  target: labels equal the ids on the turn and on its end-of-turn text;
* assistant turns and the template's role headers are context: labels are -100.

The sequence is cut from the very prompts the simulator renders
(:func:`userlm_env.chat_format.render_user_prompt`): its text is the prompt of turn 1, then
target 1 and its end-of-turn text, then the rest of the prompt of turn 2, and so on, and each
piece is tokenized as flipping tokenizes it. The loss on turn k equals the flipped sample's when
the tokens before turn k are exactly the tokens of the flipped prompt of turn k. Two checks make
sure of it, per conversation:

1. *text*: the template renders earlier turns unchanged as later turns are added (the prompt of
   turn k+1 starts with the prompt of turn k, target k and its end-of-turn text). Templates
   that rewrite history (drop earlier reasoning, move the system message into the last user
   turn) fail it;
2. *tokens*: tokenizing the whole text at once gives the same ids as tokenizing it piece by
   piece, i.e. the tokenizer never merges across a piece boundary. SmolLM2's tokenizer with its
   ChatML template passes, and so does Llama-3's (special header tokens, newline runs kept
   whole by its pre-tokenizer) with the presets' Llama-3 template, except when a user
   turn starts with whitespace other than one space: after ``"<|im_start|>user\\n"``, a turn
   ``"\\n\\nx"`` is tokenized with the header's newline as ``"\\n\\n"``, ``"\\n"`` in later
   prompts but as ``"\\n"`` then ``"\\n"``, ``"\\n"`` in its own flipped sample. (Flipping is
   then itself inconsistent: the simulator reads that turn as other tokens than it was trained
   to write.) A GPT-2-style pre-tokenizer with a header ending in ``"\\n\\n"`` (SmolLM2's
   tokenizer with the Llama-3 template) fails for every conversation: a prompt alone ends in one
   ``"\\n\\n"`` token, which the next turn's text splits into ``"\\n"``, ``"\\n"``.

A conversation failing either check is trained as its flipped samples instead (counted in
:attr:`WholeResult.fallback`, and logged once per call with the first reason), so the objective
stays the paper's.

Length: a conversation longer than ``max_length`` is cut after the last target that fits (a turn
boundary; :attr:`WholeResult.truncated`, :attr:`WholeResult.dropped_turns`). When not even the
first target fits, its tail is cut as flipping does; when the first prompt alone does not fit,
the conversation gives no sample (:attr:`WholeResult.dropped_too_long`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from userlm_env.chat_format import render_user_prompt, user_turn_suffix
from userlm_env.errors import DataError
from userlm_env.training.data import Conversation
from userlm_env.training.flip import (
    IGNORE_INDEX,
    FlipConfig,
    FlipSample,
    flip_conversation,
    tokenize_flip,
)
from userlm_env.types import END_MARKER

__all__ = [
    "NotPrefixStable",
    "Piece",
    "WholeResult",
    "WholeSample",
    "fit_length",
    "render_pieces",
    "tokenize_whole",
    "whole_conversations",
]

_log = logging.getLogger(__name__)


class NotPrefixStable(DataError):
    """A conversation's rendering or tokenization is not a prefix of its later turns' prompts."""


@dataclass(frozen=True)
class Piece:
    """A run of text in a whole-conversation rendering, tokenized on its own.

    Attributes:
        text: The text.
        target: Its tokens carry a loss (a user turn, the end marker, or their end-of-turn text).
        turn: 1-based target turn it belongs to (K+1 for the end marker); 0 for context.
    """

    text: str
    target: bool
    turn: int = 0


@dataclass(frozen=True)
class WholeSample:
    """One conversation as one tokenized sequence.

    Attributes:
        conversation_id: The conversation it comes from.
        input_ids: Token ids of the whole rendering (cut after the last target that fits).
        labels: The ids on targets and their end-of-turn text, ``IGNORE_INDEX`` elsewhere.
        spans: ``(start, end)`` token positions of each kept target (turn text + end-of-turn).
        turns: The 1-based turn of each kept target (K+1 is the end marker).
        is_end: The end-marker target is kept.
        truncated: The conversation was cut to fit ``max_length``.
        dropped_turns: Targets lost to the cut.
    """

    conversation_id: str
    input_ids: list[int]
    labels: list[int]
    spans: tuple[tuple[int, int], ...]
    turns: tuple[int, ...]
    is_end: bool
    truncated: bool = False
    dropped_turns: int = 0

    @property
    def target_tokens(self) -> int:
        """How many ids carry a loss."""
        return sum(end - start for start, end in self.spans)


@dataclass(frozen=True)
class WholeResult:
    """The sequences of :func:`whole_conversations` and what was left out or done otherwise.

    Attributes:
        samples: One :class:`WholeSample` per conversation, or the
            :class:`~userlm_env.training.flip.FlipSample` s of a fallback conversation.
        conversations: Conversations used.
        skipped_no_intent: Conversations skipped because they had no intent.
        dropped_too_long: Conversations whose first prompt alone exceeds ``max_length``.
        truncated: Conversations cut to fit ``max_length``.
        dropped_turns: Targets lost to cutting or dropping.
        fallback: Conversations trained as flipped samples (not prefix-stable, see module doc).
    """

    samples: list[WholeSample | FlipSample]
    conversations: int
    skipped_no_intent: int
    dropped_too_long: int
    truncated: int
    dropped_turns: int
    fallback: int


def render_pieces(
    tokenizer: Any, conversation: Conversation, *, use_intent: bool = True, include_end: bool = True
) -> list[Piece]:
    """The whole conversation as context and target pieces, cut from the simulator's prompts.

    The pieces end with the last target (a trailing assistant turn is kept only as the end
    marker's context). Joined, they are the template's rendering of the conversation.

    Raises:
        DataError: ``use_intent`` and the conversation has no intent.
        NotPrefixStable: The template renders earlier turns differently as turns are added.
    """
    texts = flip_conversation(conversation, use_intent=use_intent, include_end=include_end)
    suffix = user_turn_suffix(tokenizer)
    pieces: list[Piece] = []
    rendered = ""  # the text of the pieces so far
    for text in texts:
        prompt = render_user_prompt(tokenizer, text.intent_text, list(text.history))
        if not prompt.startswith(rendered):
            raise NotPrefixStable(
                f"conversation {conversation.conversation_id!r}: the chat template renders the "
                f"turns before user turn {text.turn} differently once later turns are added"
            )
        pieces.append(Piece(prompt[len(rendered) :], target=False))
        pieces.append(Piece(text.target, target=True, turn=text.turn))
        pieces.append(Piece(suffix, target=True, turn=text.turn))
        rendered = prompt + text.target + suffix
    return pieces


def tokenize_whole(tokenizer: Any, pieces: Sequence[Piece], conversation_id: str) -> WholeSample:
    """Tokenize the pieces of one conversation (no length limit; see :func:`fit_length`).

    Raises:
        NotPrefixStable: Tokenizing the whole text differs from tokenizing it piece by piece.
    """
    ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    turns: list[int] = []
    for piece in pieces:
        piece_ids = _encode(tokenizer, piece.text)
        if piece.target and turns and turns[-1] == piece.turn:
            spans[-1] = (spans[-1][0], len(ids) + len(piece_ids))
        elif piece.target:
            spans.append((len(ids), len(ids) + len(piece_ids)))
            turns.append(piece.turn)
        ids += piece_ids
        labels += piece_ids if piece.target else [IGNORE_INDEX] * len(piece_ids)
    if _encode(tokenizer, "".join(p.text for p in pieces)) != ids:
        raise NotPrefixStable(
            f"conversation {conversation_id!r}: the tokenizer merges tokens across a turn "
            "boundary (a user turn starting with whitespace?), so a prompt is not a token "
            "prefix of the whole conversation"
        )
    is_end = len(pieces) >= 2 and pieces[-2].text == END_MARKER
    return WholeSample(conversation_id, ids, labels, tuple(spans), tuple(turns), is_end)


def fit_length(sample: WholeSample, max_length: int) -> WholeSample | None:
    """Cut ``sample`` after its last target that ends within ``max_length`` tokens.

    When no target fits whole, the first one keeps its head (as flipping cuts a target); when
    its prompt alone takes ``max_length`` tokens or more, the result is ``None``.
    """
    if len(sample.input_ids) <= max_length:
        return sample
    kept = sum(end <= max_length for _, end in sample.spans)
    if kept:
        cut = sample.spans[kept - 1][1]
        spans = sample.spans[:kept]
    elif sample.spans[0][0] < max_length:
        kept, cut = 1, max_length
        spans = ((sample.spans[0][0], max_length),)
    else:
        return None
    return WholeSample(
        conversation_id=sample.conversation_id,
        input_ids=sample.input_ids[:cut],
        labels=sample.labels[:cut],
        spans=spans,
        turns=sample.turns[:kept],
        is_end=sample.is_end and kept == len(sample.spans),
        truncated=True,
        dropped_turns=len(sample.spans) - kept,
    )


def whole_conversations(
    conversations: Sequence[Conversation], tokenizer: Any, config: FlipConfig | None = None
) -> WholeResult:
    """One sequence per conversation (see the module doc for the checks and the length policy).

    ``config`` is the flipping configuration: intent use, end sample, ``max_length`` and what
    to do with conversations lacking an intent mean the same here.
    """
    config = config or FlipConfig()
    samples: list[WholeSample | FlipSample] = []
    used = skipped = dropped = truncated = lost = 0
    fallback: list[str] = []  # why each fallback conversation is not prefix-stable
    for conversation in conversations:
        if config.use_intent and conversation.intent is None and config.missing_intent == "skip":
            skipped += 1
            continue
        used += 1
        try:
            pieces = render_pieces(
                tokenizer,
                conversation,
                use_intent=config.use_intent,
                include_end=config.include_end,
            )
            whole = tokenize_whole(tokenizer, pieces, conversation.conversation_id)
        except NotPrefixStable as error:
            fallback.append(str(error))
            _log.debug("%s: trained as flipped samples instead", error)
            flipped, cut, missing = _flipped(conversation, tokenizer, config)
            samples += flipped
            truncated, lost = truncated + cut, lost + missing
            continue
        fitted = fit_length(whole, config.max_length)
        if fitted is None:
            dropped, lost = dropped + 1, lost + len(whole.spans)
            continue
        truncated += fitted.truncated
        lost += fitted.dropped_turns
        samples.append(fitted)
    if fallback:
        _log.warning(
            "%d of %d conversations are trained as flipped samples, as they are not "
            "prefix-stable; the first: %s",
            len(fallback), used, fallback[0],
        )  # fmt: skip
    return WholeResult(samples, used, skipped, dropped, truncated, lost, len(fallback))


def _flipped(
    conversation: Conversation, tokenizer: Any, config: FlipConfig
) -> tuple[list[FlipSample], int, int]:
    """The flipped samples of one conversation, whether any was cut, and how many were lost."""
    texts = flip_conversation(
        conversation, use_intent=config.use_intent, include_end=config.include_end
    )
    samples = [tokenize_flip(tokenizer, text, config.max_length) for text in texts]
    kept = [s for s in samples if s is not None]
    cut = any(s.truncated for s in kept) or len(kept) < len(samples)
    return kept, int(cut), len(samples) - len(kept)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
