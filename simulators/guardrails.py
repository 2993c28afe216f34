"""Generation guardrails for User LM simulators (paper appendix D.1).

Three kinds of pieces live here:

* Pure text checks, reusable by any backend (in-process or behind a server): word counting,
  verbatim-repeat detection, banned first words, and :class:`TurnChecks`, which combines them
  and names the first rule a candidate turn breaks.
* Token choices from a tokenizer: :func:`first_token_ids` (what to ban so a word cannot open a
  turn) and :func:`end_ban_token_ids` (what to ban so the end marker cannot start), used by the
  in-process and the server simulators alike. In process, the bans are transformers' own
  ``GenerationConfig(begin_suppress_tokens=..., suppress_tokens=...)``.
* The hooks for Hugging Face ``generate`` that transformers has no equivalent of: the logits
  processor :class:`TokenSequenceBias` (a text -> bias hook that can spell out a multi-token
  text) and the stopping criterion :class:`WordLimitStop`, which stops a row as soon as it is
  sure to be too long. They are plain callables, which ``LogitsProcessorList`` and
  ``StoppingCriteriaList`` accept, so importing this module does not import torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from userlm_env.types import ConversationState

if TYPE_CHECKING:
    import torch

__all__ = [
    "TokenSequenceBias",
    "TurnChecks",
    "WordLimitStop",
    "count_words",
    "earlier_texts",
    "end_ban_token_ids",
    "first_token_ids",
    "is_verbatim_repeat",
    "normalize",
    "starts_with_word",
    "word_variants",
]

_WORD = re.compile(r"\w", re.UNICODE)
_LEADING_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def count_words(text: str) -> int:
    """Number of whitespace-separated pieces that contain a letter or digit."""
    return sum(1 for piece in text.split() if _WORD.search(piece))


def normalize(text: str) -> str:
    """Lower-case ``text`` and collapse runs of whitespace, for verbatim comparison."""
    return " ".join(text.lower().split())


def is_verbatim_repeat(text: str, earlier: Iterable[str]) -> bool:
    """Whether ``text`` equals one of ``earlier`` up to case and whitespace."""
    key = normalize(text)
    return any(key == normalize(previous) for previous in earlier)


def starts_with_word(text: str, words: Iterable[str]) -> bool:
    """Whether the first word of ``text`` (its leading letters) is one of ``words``, any case."""
    match = _LEADING_WORD.match(text.lstrip())
    return match is not None and match.group(0).lower() in {w.lower() for w in words}


def earlier_texts(state: ConversationState) -> list[str]:
    """What a new user turn must not repeat verbatim: earlier user turns and the intent."""
    users = [m["content"] for m in state.messages if m["role"] == "user"]
    return [*users, state.intent.instruction, state.intent.system_prompt]


@dataclass(frozen=True)
class TurnChecks:
    """The text guardrails a candidate user turn must pass; each can be switched off."""

    min_words: int | None = 3  # fewest words accepted (None: no lower bound)
    max_words: int | None = 25  # most words accepted (None: no upper bound)
    reject_repeats: bool = True  # reject verbatim repeats of earlier user turns or the intent
    banned_first_words: tuple[str, ...] = ("I", "You", "Here")  # words a turn may not open with

    def reason(self, text: str, earlier: Sequence[str] = ()) -> str | None:
        """The first rule ``text`` breaks (``"empty"``, ``"too_short"``, ...), or ``None``."""
        words = count_words(text)
        if not text.strip():
            return "empty"
        if self.min_words is not None and words < self.min_words:
            return "too_short"
        if self.max_words is not None and words > self.max_words:
            return "too_long"
        if self.banned_first_words and starts_with_word(text, self.banned_first_words):
            return "banned_first_word"
        if self.reject_repeats and is_verbatim_repeat(text, earlier):
            return "repeat"
        return None


# --- token choices ----------------------------------------------------------------------------


def word_variants(words: Iterable[str]) -> list[str]:
    """Each word lower-cased and capitalized, with and without a leading space."""
    forms = {form for w in words for form in (w.lower(), w[:1].upper() + w[1:].lower())}
    return sorted(forms | {" " + form for form in forms})


def first_token_ids(tokenizer: Any, texts: Iterable[str]) -> list[int]:
    """The first token of each text's tokenization, skipping whitespace-only tokens."""
    ids: set[int] = set()
    for text in texts:
        tokens = tokenizer.encode(text, add_special_tokens=False)
        first = next((t for t in tokens if tokenizer.decode([t]).strip()), None)
        if first is not None:
            ids.add(first)
    return sorted(ids)


def end_ban_token_ids(tokenizer: Any, end_marker: str) -> list[int]:
    """Tokens to ban so that ``end_marker`` cannot start.

    That is the marker's own id when the tokenizer has it as one token (UserLM-8b), else the
    first token of its spelling both alone and after a space (``<`` and `` <`` for SmolLM2).
    """
    single = tokenizer.get_vocab().get(end_marker)
    if single is not None:
        return [single]
    return first_token_ids(tokenizer, [end_marker, " " + end_marker])


# --- generate hooks transformers lacks --------------------------------------------------------


class TokenSequenceBias:
    """Add a bias to the next token of a biased token sequence.

    For each ``(token_ids, bias)`` pair, the longest prefix of ``token_ids`` that ends the input
    so far is found (the empty prefix always matches) and ``bias`` is added to the token that
    follows it. A large positive bias thus spells out a multi-token text such as an end marker
    that is not a single token; a negative bias discourages its first token.

    Kept instead of transformers' ``sequence_bias``, which biases only the last token of a
    sequence once all the tokens before it were generated, so it cannot start a multi-token text.
    """

    def __init__(self, sequences: Sequence[tuple[Sequence[int], float]]) -> None:
        self.sequences = [(list(ids), bias) for ids, bias in sequences if ids]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row in range(input_ids.shape[0]):
            tail = input_ids[row].tolist()
            for ids, bias in self.sequences:
                scores[row, ids[_matched_prefix(tail, ids)]] += bias
        return scores


def _matched_prefix(tail: list[int], ids: list[int]) -> int:
    """Length of the longest proper prefix of ``ids`` that ``tail`` ends with."""
    for length in range(len(ids) - 1, 0, -1):
        if tail[-length:] == ids[:length]:
            return length
    return 0


class WordLimitStop:
    """Stopping criterion: a row is done once its generated text has more than ``max_words``.

    Appending tokens never lowers :func:`count_words`, so such a row would be rejected as too
    long whatever followed; stopping it early lets the batch finish sooner. Transformers limits
    tokens (``max_new_tokens``), not words, hence this criterion.
    """

    def __init__(self, tokenizer: Any, prompt_length: int, max_words: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.max_words = max_words

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_length :], skip_special_tokens=True
        )
        done = [count_words(text) > self.max_words for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
