"""The Lost-in-Conversation user: an LLM that reveals an intent's shards one at a time.

:class:`LiCSimulator` (``"lic"``) plays the sharded user of "Lost in Conversation" with a model
instead of a rule. Each turn it picks at most one unrevealed shard and says it in its own words:

* ``shard_policy="llm"``: the model sees the chat, the shards already revealed and the others,
  and replies with one JSON object ``{"shard_id": <id or null>, "message": "..."}`` (the prompt
  is :func:`simulators.lic_prompts.choose_prompt`): which shard it reveals, if any, and what it
  says. Questions no shard answers are declined ("no preference", "I don't know").
* ``shard_policy="rule"``: the shard is chosen by rule (shard 1 first, then the next unrevealed
  one, required shards before the others) and the model only rephrases that shard into a short
  message (:func:`simulators.lic_prompts.rephrase_prompt`), which even a 135M model can do.

On the first turn the user reveals shard 1, the goal. Once every shard is out no model is
called: the user ends the conversation after an answer attempt (``state.scores[-1].attempted``)
and otherwise asks for the final answer (``config.nudge``), as :mod:`simulators.sharded` does.

Every reply is vetted (:func:`problem`); a rejected row is generated again, in batch, on the
shared loop of :func:`userlm_env.resample.resample`, with a new seed per try
(:func:`simulators.sampling.row_seed`). A reply is rejected when:

* it is malformed (``llm``: not one JSON object with a string ``message`` and a ``shard_id``
  that is a whole number or null, read with :func:`userlm_env.metrics.judge.parse_json_object`),
* the message is empty, or holds the end marker (``rule``: also a loosely spelled one),
* the shard id does not exist in the intent, was already revealed, or the first message does not
  reveal shard 1,
* the message is a verbatim copy of a shard (:func:`is_verbatim`: the same words after
  normalising case, punctuation and spacing, or a word-sequence similarity of at least
  ``max_copy_similarity``, 0.85 by default),
* it states a number of another unrevealed shard that neither the revealed shards nor the shard
  it reveals contain (a second shard leaking out).

A row still rejected after ``max_tries`` replies raises
:class:`~userlm_env.core.SimulatorError` naming the intent, the tries and the last reason.

The turn's ``shard_ids`` are the user's own (the shard it said it reveals, or none), and are
cross-checked with a shard matcher (:class:`~userlm_env.metrics.shards.LexicalShardMatcher` by
default); when the two disagree, ``metadata["matcher_disagrees"]`` holds ``{"said": [...],
"matched": [...]}``. The metadata also records ``tries``, the reasons of the rejected replies
(``rejected``), the ``raw`` reply and the ``shard_policy``.

Backends are those of :mod:`simulators.prompted`: ``"litellm"``, any LiteLLM model through
:meth:`userlm_env.llm.LLMClient.chat_many`; ``"hf"``, a local model in-process (e.g. the
embedded ``smollm2-135m-instruct``) through :func:`userlm_env.generation.generate_rows`, loaded
at the first ``respond``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal, get_args

from simulators.chat_backends import ChatModelConfig, make_backend
from simulators.lic_prompts import choose_prompt, rephrase_prompt
from simulators.prompted import clean_output
from simulators.sampling import row_seed, with_overrides
from userlm_env.core import SimulatorError
from userlm_env.errors import DataError, UnknownNameError
from userlm_env.estimate import CallBudget
from userlm_env.metrics.judge import parse_json_object
from userlm_env.metrics.shards import LexicalShardMatcher, ShardMatcher
from userlm_env.metrics.text import is_number, tokens
from userlm_env.resample import Outcome, Verdict, resample
from userlm_env.spend import llm_clients
from userlm_env.types import END_MARKER, ConversationState, Intent, Message, Shard, UserTurn

__all__ = [
    "LiCConfig",
    "LiCSimulator",
    "ShardPolicy",
    "Statement",
    "closing_turn",
    "is_verbatim",
    "next_shard",
    "problem",
]

ShardPolicy = Literal["llm", "rule"]
_GOAL = 1  # the id of the shard that states the goal (the first turn reveals it)


@dataclass
class LiCConfig(ChatModelConfig):
    """Settings of :class:`LiCSimulator`: the chat model's (backend, sampling, connection), and
    how the user picks and words its shards."""

    max_tries: int = 6  # replies per row before SimulatorError
    shard_policy: ShardPolicy = "llm"  # "llm": the model picks the shard; "rule": a rule does
    max_copy_similarity: float = 0.85  # word-sequence similarity from which a message copies
    nudge: str = "That is all I know. Could you give me your final answer now?"  # no answer yet

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_name("shard_policy", self.shard_policy, get_args(ShardPolicy))
        if not 0 < self.max_copy_similarity <= 1:
            raise ValueError("max_copy_similarity must be in (0, 1]")
        if not self.nudge.strip():
            raise ValueError("nudge must be non-empty text")


def _check_name(name: str, value: str, known: Sequence[str]) -> None:
    if value not in known:
        raise UnknownNameError(f"unknown LiC-simulator {name} {value!r}; known: {sorted(known)}")


@dataclass(frozen=True)
class Statement:
    """What one reply says: the message and the shard it reveals (``None``: no shard)."""

    message: str
    shard_id: int | None


@dataclass
class _Row:
    """One state to generate for, the shard the rule chose (``None``: the model chooses) and
    the latest raw reply."""

    state: ConversationState
    shard: Shard | None
    raw: str = ""


class LiCSimulator:
    """An LLM user that reveals one shard per turn in its own words (see the module docstring).

    Args:
        model: A LiteLLM model string (``"gpt-4o-mini"``, ``"openai/<name>"`` with
            ``api_base``) for the ``litellm`` backend; a name for
            :func:`userlm_env.models.load_model` for the ``hf`` backend.
        config: Settings; ``overrides`` replace single fields (e.g. ``shard_policy="rule"``).
        matcher: Cross-checks the shard each turn says it reveals (default: lexical).

    Raises:
        TypeError: An unknown override.
        UnknownNameError: An unknown backend or shard policy.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        config: LiCConfig | None = None,
        *,
        matcher: ShardMatcher | None = None,
        **overrides: Any,
    ) -> None:
        self.config = with_overrides(config or LiCConfig(), overrides)
        self.model = model
        self.matcher = matcher or LexicalShardMatcher()
        self.backend = make_backend(model, self.config)

    def llm_clients(self) -> list[Any]:
        """The LLM clients of the backend (none for a local model): see :mod:`userlm_env.spend`."""
        return llm_clients(self.backend)

    def call_budget(self) -> CallBudget:
        """Up to ``max_tries`` generations of ``max_tokens`` per user turn, through the backend
        (:mod:`userlm_env.estimate`; loads nothing). The ``rule`` policy's prompt holds one
        shard, not the chat."""
        llm_policy = self.config.shard_policy == "llm"
        return self.backend.call_budget(self.config.max_tries, sees_history=llm_policy)

    def prompt_texts(self, intent: Intent) -> list[str]:
        """The longest prompt besides the chat: the ``llm`` policy's first-turn prompt (every
        shard listed once), or the ``rule`` policy's rephrasing of the longest shard."""
        if self.config.shard_policy == "llm":
            chat = choose_prompt(ConversationState(intent=intent, seed=0))
        else:
            chat = rephrase_prompt(max(intent.shards, key=lambda s: len(s.text.encode())))
        return [message["content"] for message in chat]

    def rule_turns(self, intent: Intent) -> list[str]:
        """The turn said without the model once every shard is out: the nudge (an end adds
        no message)."""
        return [self.config.nudge]

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """The next user turn of every state: a rule once every shard is out, else the model's.

        Raises:
            SimulatorError: A row gave no valid reply in ``max_tries`` tries.
        """
        closing = [closing_turn(state, self.config.nudge) for state in states]
        pending = [i for i, turn in enumerate(closing) if turn is None]
        rule = self.config.shard_policy == "rule"
        rows = [_Row(states[i], next_shard(states[i]) if rule else None) for i in pending]
        outcomes = resample(rows, self._generate, self._vet, tries=self.config.max_tries)
        spoken = {i: self._finish(r, o) for i, r, o in zip(pending, rows, outcomes, strict=True)}
        return [turn if turn is not None else spoken[i] for i, turn in enumerate(closing)]

    def _generate(self, rows: list[_Row], attempt: int) -> list[str]:
        chats = [_chat(row) for row in rows]
        seeds = [row_seed(row.state, attempt) for row in rows]
        return self.backend.generate(chats, seeds)

    def _vet(self, row: _Row, raw: str) -> Verdict[Statement]:
        row.raw = raw
        try:
            statement = _read(raw, row.shard)
        except DataError as error:
            return Verdict.reject(f"malformed reply: {error}")
        reason = problem(row.state, statement, self.config.max_copy_similarity)
        return Verdict.reject(reason) if reason else Verdict.accept(statement)

    def _finish(self, row: _Row, outcome: Outcome[Statement]) -> UserTurn:
        if outcome.value is None:
            raise SimulatorError(
                f"LiC simulator {self.model!r} ({self.config.shard_policy} policy) gave no "
                f"valid user turn for {row.state.intent.intent_id!r} in {outcome.tries} tries "
                f"(last reason: {outcome.last_reason}; last reply: {row.raw!r:.200})"
            )
        statement = outcome.value
        said = () if statement.shard_id is None else (statement.shard_id,)
        meta: dict[str, Any] = {
            "tries": outcome.tries,
            "rejected": list(outcome.reasons),
            "raw": row.raw,
            "shard_policy": self.config.shard_policy,
        }
        matched = tuple(self.matcher.match(statement.message, row.state.intent))
        if set(matched) != set(said):
            meta["matcher_disagrees"] = {"said": list(said), "matched": list(matched)}
        return UserTurn(statement.message, shard_ids=said, metadata=meta)


def _chat(row: _Row) -> list[Message]:
    """The prompt of one row: rephrase the ruled shard, or choose one (the ``llm`` policy)."""
    return choose_prompt(row.state) if row.shard is None else rephrase_prompt(row.shard)


def closing_turn(state: ConversationState, nudge: str) -> UserTurn | None:
    """The rule turn once every shard is out (end, or ``nudge``); ``None`` while one is left.

    A conversation is never ended before the user's first turn.
    """
    if not state.user_turns or _pending(state):
        return None
    if state.scores and state.scores[-1].attempted:
        return UserTurn(END_MARKER, ended=True, shard_ids=())
    return UserTurn(nudge, shard_ids=(), metadata={"nudge": True})


def next_shard(state: ConversationState) -> Shard:
    """The shard the rule reveals next: shard 1, then required ones, then the rest, by id.

    Raises:
        ValueError: Every shard of the intent is revealed.
    """
    pending = _pending(state)
    if not pending:
        raise ValueError(f"every shard of {state.intent.intent_id!r} is already revealed")
    return min(pending, key=lambda s: (s.id != _GOAL, not s.required, s.id))


def _pending(state: ConversationState) -> list[Shard]:
    revealed = state.revealed_ids
    return [shard for shard in state.intent.shards if shard.id not in revealed]


def _read(raw: str, ruled: Shard | None) -> Statement:
    """The statement in a raw reply: the ``rule`` policy's plain text, or the ``llm`` JSON.

    Raises:
        DataError: An ``llm`` reply that is not the expected JSON object.
    """
    if ruled is not None:
        text, ended = clean_output(raw)
        return Statement(END_MARKER if ended else text, ruled.id)
    reply = parse_json_object(raw)
    message, shard_id = reply.get("message"), reply.get("shard_id")
    if not isinstance(message, str):
        raise DataError('"message" is missing or not a string')
    if "shard_id" not in reply:
        raise DataError('"shard_id" is missing (use null to reveal no shard)')
    if shard_id is not None and (isinstance(shard_id, bool) or not isinstance(shard_id, int)):
        raise DataError(f'"shard_id" must be a whole number or null, got {shard_id!r}')
    return Statement(message.strip(), shard_id)


def problem(state: ConversationState, statement: Statement, max_similarity: float) -> str | None:
    """Why ``statement`` is not a valid next user turn for ``state``; ``None`` if it is."""
    if not tokens(statement.message):
        return "empty message (no words)"
    if END_MARKER in statement.message:
        return "the message ends the conversation"
    return (
        _shard_problem(state, statement.shard_id)
        or _copy_problem(state.intent, statement.message, max_similarity)
        or _leak_problem(state, statement)
    )


def _shard_problem(state: ConversationState, shard_id: int | None) -> str | None:
    if not state.user_turns and shard_id != _GOAL:
        return f"the first message must reveal shard {_GOAL} (the goal), not {shard_id}"
    if shard_id is None:
        return None
    if shard_id not in {shard.id for shard in state.intent.shards}:
        return f"unknown shard {shard_id}"
    if shard_id in state.revealed_ids:
        return f"shard {shard_id} was already revealed"
    return None


def _copy_problem(intent: Intent, message: str, max_similarity: float) -> str | None:
    for shard in intent.shards:
        if is_verbatim(message, shard.text, max_similarity):
            return f"verbatim copy of shard {shard.id}"
    return None


def _leak_problem(state: ConversationState, statement: Statement) -> str | None:
    """A number of another unrevealed shard that the known shards do not hold."""
    said = _numbers(statement.message)
    known_ids = state.revealed_ids | {statement.shard_id}
    intent = state.intent
    known = set().union(*(_numbers(s.text) for s in intent.shards if s.id in known_ids))
    for shard in (s for s in _pending(state) if s.id != statement.shard_id):
        if leaked := sorted((said & _numbers(shard.text)) - known):
            return f"the message states {', '.join(leaked)} of unrevealed shard {shard.id}"
    return None


def _numbers(text: str) -> set[str]:
    """The numbers of ``text``, digits or number words ("seven" reads as "7")."""
    return {token for token in tokens(text) if is_number(token)}


def is_verbatim(message: str, shard_text: str, max_similarity: float = 0.85) -> bool:
    """Whether ``message`` copies ``shard_text`` rather than rephrasing it.

    Both are read as word sequences (lower case, punctuation and spacing dropped, numbers
    normalised; :func:`userlm_env.metrics.text.tokens`). A copy has the same words in the same
    order, or a similarity of at least ``max_similarity`` (:class:`difflib.SequenceMatcher`
    ratio on words: twice the words in matching runs over the words of both). With 0.85, adding
    one word to a five-word shard is still a copy (ratio 0.91), adding two is not (0.83).
    """
    said, source = tokens(message), tokens(shard_text)
    if said == source:
        return True
    return SequenceMatcher(None, said, source, autojunk=False).ratio() >= max_similarity
