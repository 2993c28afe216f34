"""Generation guardrails for User LM simulators (paper appendix D.1).

Three kinds of pieces live here:

* Pure text checks, reusable by any backend (in-process or behind a server): word counting,
  verbatim-repeat detection, banned first words, and :class:`TurnChecks`, which combines them,
  names the rules a candidate turn breaks and ranks rejected turns as fallbacks
  (:meth:`TurnChecks.fallback_quality`, order below).
* :func:`cut_to_sentence`: the longest start of a turn that ends a sentence within a word limit
  (an over-long turn is cut back there rather than kept whole).
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
    "PASSING_TIER",
    "RULE_TIERS",
    "TokenSequenceBias",
    "TurnChecks",
    "WordLimitStop",
    "count_words",
    "cut_to_sentence",
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
#: A sentence end: ``.``, ``!``, ``?`` or ``…`` (closing quotes or brackets may follow), then
#: whitespace or the end of the text; so ``3.5`` or ``x.append`` do not end a sentence.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")


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


#: Fallback tier of the worst rule a rejected turn breaks (higher ranks first). A length
#: violation (the paper's main guardrail is the word count) outranks a banned opening word
#: (a style rule), which outranks a verbatim repeat (it does not move the conversation on; a
#: copied intent gives the whole task away). A turn that breaks none (a sentence cut) ranks
#: above all of them, at :data:`PASSING_TIER`.
RULE_TIERS = {"too_short": 2, "too_long": 2, "banned_first_word": 1, "repeat": 0}
#: Fallback tier of a turn that breaks no rule (an over-long turn cut back at a sentence end).
PASSING_TIER = 3


@dataclass(frozen=True)
class TurnChecks:
    """The text guardrails a candidate user turn must pass; each can be switched off."""

    min_words: int | None = 3  # fewest words accepted (None: no lower bound)
    max_words: int | None = 25  # most words accepted (None: no upper bound)
    reject_repeats: bool = True  # reject verbatim repeats of earlier user turns or the intent
    banned_first_words: tuple[str, ...] = ("I", "You", "Here")  # words a turn may not open with

    def reason(self, text: str, earlier: Sequence[str] = ()) -> str | None:
        """The first rule ``text`` breaks (``"empty"``, ``"too_short"``, ...), or ``None``."""
        broken = self.broken(text, earlier)
        return broken[0] if broken else None

    def broken(self, text: str, earlier: Sequence[str] = ()) -> tuple[str, ...]:
        """Every rule ``text`` breaks, in the order :meth:`reason` checks them."""
        if not text.strip():
            return ("empty",)
        rules = [
            ("too_short", self.word_gap(text) < 0),
            ("too_long", self.word_gap(text) > 0),
            ("banned_first_word", starts_with_word(text, self.banned_first_words)),
            ("repeat", self.reject_repeats and is_verbatim_repeat(text, earlier)),
        ]
        return tuple(rule for rule, breaks in rules if breaks)

    def word_gap(self, text: str) -> int:
        """Words over ``max_words`` (positive), under ``min_words`` (negative), or 0."""
        words = count_words(text)
        if self.min_words is not None and words < self.min_words:
            return words - self.min_words
        if self.max_words is not None and words > self.max_words:
            return words - self.max_words
        return 0

    def fallback_quality(self, text: str, earlier: Sequence[str] = ()) -> float:
        """How good ``text`` is as a kept fallback; higher is better (see :data:`RULE_TIERS`).

        The tier of the worst rule broken, plus up to 0.5 for being close to the word bounds
        (``0.5 / (1 + |gap|)``), so within a tier the turn nearest to 3..25 words wins.
        """
        broken = self.broken(text, earlier)
        tier = min((RULE_TIERS.get(rule, -1) for rule in broken), default=PASSING_TIER)
        return tier + 0.5 / (1 + abs(self.word_gap(text)))


def cut_to_sentence(text: str, max_words: int) -> str | None:
    """The longest start of ``text`` that ends a sentence and has at most ``max_words`` words.

    Returns ``None`` when no sentence ends within the limit (or the cut would hold no word).
    """
    best = None
    for match in _SENTENCE_END.finditer(text):
        head = text[: match.end()].strip()
        if count_words(head) > max_words:
            break
        best = head if count_words(head) else best
    return best


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
