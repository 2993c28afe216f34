"""What the User LM simulators share, without torch: settings, the verdict, seeds, retries.

Both User LM simulators (in-process :mod:`simulators.userlm`, server-backed
:mod:`simulators.userlm_server`) run the same loop and differ only in how they generate text:

* :class:`UserLMBaseConfig` holds the sampling settings and the guardrails (paper appendix D.1);
  :class:`UserLMConfig` adds the in-process fields (``batch_size``, ``dtype``, ``device``), and
  the server config adds its connection fields to the base.
* :func:`vet` turns one raw generation into a :class:`Candidate`: an end of the conversation,
  or a text turn with the first guardrail it breaks (or none). The user may never end an empty
  conversation (``first_turn=True``): such an end is ``"end_forbidden"`` whatever ``allow_end``
  says, and the backends ban the end marker's tokens for those rows too.
* :func:`row_seed` gives each conversation and try its own sampling seed.
* :func:`respond_with_retries` is the retry loop: generate for every row, vet, and generate
  again for the rejected rows only, up to ``config.tries`` generations per row (paper D.1:
  generate again *until* a turn passes; ``max_tries`` bounds that, and its default of 16 was
  chosen from ``benchmarks/guardrail_violations.py``).

A row stops early when a try gives back, character for character, a generation an earlier try
of the row was rejected for: its samples have stopped varying (with ``top_p`` below 1 a model
that copies the intent or an earlier turn puts every token in a nucleus of one), and the rest
of ``max_tries`` would only produce it again. The kept turn says so with
``metadata["stopped_early"]=True``.

A row that never passes keeps its *best* rejected candidate (``fallback="best"``), ranked by
:meth:`simulators.guardrails.TurnChecks.fallback_quality`: first an over-long turn cut back at
its last sentence end within ``max_words`` that then passes every check (kept unflagged, with
``metadata["cut_to_sentence"]=True``), then length violations (closest to the bounds first),
then a banned first word, then a verbatim repeat; the latest wins among equals. An over-long
turn with a sentence end within the limit is always cut there, never kept whole (the cut is
vetted like any turn); one without stays as generated. A kept turn that breaks a rule carries
``metadata["guardrail_failed"]`` naming it. ``fallback="last"`` keeps the latest rejected
candidate, uncut: the behaviour before best-candidate fallbacks, kept for comparisons. A row
whose every candidate was empty (or a forbidden end) raises
:class:`~userlm_env.errors.LLMCallError`.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from simulators.guardrails import TurnChecks, cut_to_sentence, earlier_texts
from userlm_env.errors import LLMCallError
from userlm_env.resample import Outcome, Verdict, resample
from userlm_env.types import END_MARKER, ConversationState, UserTurn

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "FALLBACKS",
    "Candidate",
    "Generate",
    "Generation",
    "UserLMBaseConfig",
    "UserLMConfig",
    "cut_back",
    "in_turn_groups",
    "respond_with_retries",
    "row_seed",
    "vet",
    "with_overrides",
]

_Config = TypeVar("_Config", bound="DataclassInstance")  # any dataclass config

#: What a row that never passes keeps: its best-ranked rejected candidate, or its latest.
FALLBACKS = ("best", "last")


@dataclass
class UserLMBaseConfig:
    """Sampling settings and guardrails shared by every User LM backend.

    Sampling defaults are UserLM-8b's generation config; guardrails follow paper appendix D.1.
    The in-process simulator starts the embedded model from its own defaults
    (:func:`simulators.userlm.default_config`).
    """

    temperature: float = 0.6  # softmax temperature when sampling
    top_p: float = 0.9  # nucleus sampling: smallest token set with this probability mass
    max_new_tokens: int = 60  # longest generation per user turn, in tokens
    do_sample: bool = True  # sample (seeded per row); False decodes greedily
    end_marker: str = END_MARKER  # text that ends the conversation (a token in UserLM-8b)
    ban_first_words: tuple[str, ...] = ("I", "You", "Here")  # forbidden opening words; () = off
    allow_end: bool = True  # let the user end the conversation; False forbids the end marker
    min_words: int | None = 3  # shortest accepted turn in words; None = no lower bound
    max_words: int | None = 25  # longest accepted turn in words; None = no upper bound
    reject_repeats: bool = True  # resample verbatim repeats of earlier user turns or the intent
    max_tries: int = 16  # generations per row before keeping a fallback candidate (1 if greedy)
    fallback: str = "best"  # kept when no try passes: "best" ranked, or "last" (old, uncut)
    logit_bias: dict[str, float] | None = None  # text -> additive bias on its tokens (test hook)

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.max_new_tokens < 1:
            raise ValueError("max_tries and max_new_tokens must be at least 1")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")
        lo, hi = self.min_words, self.max_words
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_words ({lo}) exceeds max_words ({hi})")
        if not self.end_marker:
            raise ValueError("end_marker must be a non-empty string")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")

    @property
    def checks(self) -> TurnChecks:
        """The text guardrails these settings switch on."""
        return TurnChecks(self.min_words, self.max_words, self.reject_repeats, self.ban_first_words)

    @property
    def tries(self) -> int:
        """Generations allowed per row: ``max_tries``, or 1 when greedy (it cannot vary)."""
        return self.max_tries if self.do_sample else 1


@dataclass
class UserLMConfig(UserLMBaseConfig):
    """Settings of the in-process :class:`simulators.userlm.UserLMSimulator`."""

    batch_size: int = 16  # rows per generate call
    dtype: str | None = None  # model dtype name; None = float32 on CPU, bfloat16 on GPU
    device: str | None = None  # torch device; None = cuda when available, else cpu

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@dataclass(frozen=True)
class Candidate:
    """One generated user turn and the verdict of the guardrails on it."""

    raw: str  # the decoded generation
    text: str  # what the user says (the end marker when ended)
    ended: bool  # the generation ends the conversation
    reason: str | None  # the guardrail it breaks, or None when accepted
    end_marker_cut: bool = False  # text followed by the end marker; the marker was dropped
    truncated: bool = False  # generation hit max_new_tokens before its end of turn
    cut_to_sentence: bool = False  # an over-long text cut back at its last sentence end

    def turn(self, tries: int, **extra: Any) -> UserTurn:
        """The :class:`UserTurn` for this candidate after ``tries`` generations."""
        meta = {"tries": tries, "raw": self.raw, "truncated": self.truncated, **extra}
        if self.end_marker_cut:
            meta["end_marker_cut"] = True
        if self.cut_to_sentence:
            meta["cut_to_sentence"] = True
        return UserTurn(
            text=END_MARKER if self.ended else self.text, ended=self.ended, metadata=meta
        )


def vet(
    raw: str,
    earlier: Sequence[str],
    config: UserLMBaseConfig,
    *,
    truncated: bool = False,
    first_turn: bool = False,
) -> Candidate:
    """Turn a raw generation into a :class:`Candidate`, applying the text guardrails.

    A generation that starts with the end marker (after whitespace) ends the conversation,
    which is forbidden (``"end_forbidden"``) on a ``first_turn`` or when ``allow_end`` is off;
    text before a later marker is kept as an ordinary turn and the marker is dropped.
    """
    text, marker = raw.strip(), config.end_marker
    head, found, _ = text.partition(marker)
    head = head.strip()
    if found and not head:
        reason = None if config.allow_end and not first_turn else "end_forbidden"
        return Candidate(raw, marker, True, reason, truncated=truncated)
    reason = config.checks.reason(head, earlier)
    return Candidate(raw, head, False, reason, end_marker_cut=bool(found), truncated=truncated)


def cut_back(candidate: Candidate, earlier: Sequence[str], config: UserLMBaseConfig) -> Candidate:
    """An over-long ``candidate`` cut at its last sentence end within ``max_words``, vetted again.

    Any other candidate, or one with no sentence end within the limit, comes back unchanged.
    """
    limit = config.max_words
    if candidate.reason != "too_long" or limit is None:
        return candidate
    head = cut_to_sentence(candidate.text, limit)
    if head is None:
        return candidate
    reason = config.checks.reason(head, earlier)
    return dataclasses.replace(candidate, text=head, reason=reason, cut_to_sentence=True)


def row_seed(state: ConversationState, attempt: int) -> int:
    """Seed of one row's sample: mixes the conversation's turn seed with the try index."""
    return int(np.random.SeedSequence([state.turn_seed(), attempt]).generate_state(1)[0])


@dataclass(frozen=True)
class Generation:
    """One backend generation before the guardrails see it."""

    text: str  # the decoded text (may hold or start with the end marker)
    truncated: bool = False  # it hit the token limit before its end of turn


#: A backend: ``(states, attempt) -> one Generation per state``, in order.
Generate = Callable[[list[ConversationState], int], Sequence[Generation]]


@dataclass(frozen=True)
class _Row:
    """One state to generate a user turn for, what that turn may not repeat, and the
    generations its tries were rejected for."""

    state: ConversationState
    earlier: list[str]
    rejected: set[str] = field(default_factory=set)

    def seen_before(self, generation: Generation) -> bool:
        """Whether ``generation`` was rejected before; it is remembered from now on."""
        again = generation.text in self.rejected
        self.rejected.add(generation.text)
        return again

    @property
    def first_turn(self) -> bool:
        """The conversation is empty: the user must speak, not end it."""
        return not self.state.messages


def respond_with_retries(
    states: Sequence[ConversationState],
    generate: Generate,
    config: UserLMBaseConfig,
    *,
    source: str = "the user LM",
) -> list[UserTurn]:
    """Next user turn of each state, regenerating rejected rows only (see module docstring).

    Runs the shared loop of :func:`userlm_env.resample.resample`.

    Args:
        states: The conversations, each ending with an assistant message or empty.
        generate: The backend; it is called once per try with the rows still pending.
        config: Guardrails (through :func:`vet`) and ``tries``.
        source: Who generates, for the error message.

    Raises:
        LLMCallError: Every candidate of a row was empty or a forbidden end.
    """

    def generate_rows(rows: list[_Row], attempt: int) -> Sequence[Generation]:
        return generate([row.state for row in rows], attempt)

    def vet_row(row: _Row, generation: Generation) -> Verdict[Candidate]:
        candidate = vet(
            generation.text,
            row.earlier,
            config,
            truncated=generation.truncated,
            first_turn=row.first_turn,
        )
        if candidate.reason is None:
            return Verdict.accept(candidate)
        return _rejected(candidate, row.earlier, config, final=row.seen_before(generation))

    rows = [_Row(state, earlier_texts(state)) for state in states]
    outcomes = resample(rows, generate_rows, vet_row, tries=config.tries)
    return [_turn(row, outcome, source) for row, outcome in zip(rows, outcomes, strict=True)]


def _rejected(
    candidate: Candidate, earlier: Sequence[str], config: UserLMBaseConfig, *, final: bool
) -> Verdict[Candidate]:
    """The rejection of ``candidate``, with its fallback ranked (see the module docstring);
    ``final`` ends the row's tries."""
    reason = str(candidate.reason)
    if candidate.ended or not candidate.text:
        return Verdict.reject(reason, final=final)
    if config.fallback == "last":  # equal quality: the latest fallback is kept
        return Verdict.reject(reason, fallback=candidate, final=final)
    kept = cut_back(candidate, earlier, config)
    quality = config.checks.fallback_quality(kept.text, earlier)
    return Verdict.reject(reason, fallback=kept, quality=quality, final=final)


def _turn(row: _Row, outcome: Outcome[Candidate], source: str) -> UserTurn:
    """The accepted turn, else the fallback (flagged with the rule it breaks), else an error."""
    if outcome.value is not None:
        return outcome.value.turn(outcome.tries)
    fallback = outcome.fallback
    early = {"stopped_early": True} if outcome.stopped else {}
    if fallback is None:
        raise LLMCallError(
            f"{source} produced no usable text for {row.state.intent.intent_id!r} in "
            f"{outcome.tries} tries (every candidate was empty or a forbidden end marker)",
            attempts=outcome.tries,
        )
    if fallback.reason is None:  # a sentence cut that passes every check
        return fallback.turn(outcome.tries, **early)
    return fallback.turn(outcome.tries, guardrail_failed=fallback.reason, **early)


#: Generates one group of rows: ``(states, attempt, first_turn) -> one Generation per state``.
GenerateGroup = Callable[[list[ConversationState], int, bool], Sequence[Generation]]


def in_turn_groups(
    states: Sequence[ConversationState], attempt: int, generate_group: GenerateGroup
) -> list[Generation]:
    """Generate first turns and later turns as two groups (a first turn may never end the
    conversation, so its generation settings differ); results in the order of ``states``."""
    generations: dict[int, Generation] = {}
    for first_turn in (True, False):
        indices = [i for i, s in enumerate(states) if (not s.messages) == first_turn]
        if indices:
            group = generate_group([states[i] for i in indices], attempt, first_turn)
            generations.update(zip(indices, group, strict=True))
    return [generations[i] for i in range(len(states))]


def with_overrides(config: _Config, overrides: Mapping[str, Any]) -> _Config:
    """A copy of ``config`` with ``overrides``; unknown field names raise ``TypeError``."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {type(config).__name__} fields {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **overrides)
