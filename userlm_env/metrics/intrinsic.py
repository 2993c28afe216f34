"""Intrinsic evaluation of user simulators (the paper's Table 2, sections 3.1-3.2).

Metric math (pure functions, hand-checkable):

* :func:`first_turn_diversity`: ``1 -`` mean pairwise Jaccard of the lemmatised unigram sets of
  first turns (higher: more diverse), plus the share of distinct unigrams among all unigrams.
* :func:`intent_decomposition`: mean Jaccard overlap of each user turn's content lemmas
  (stopwords removed) with the intent's (lower: the intent is spread and reworded).
* :func:`termination_scores`: precision / recall / F1 of "the user ends here" against the real
  endings of conversations.
* :func:`is_answer_attempt` / :func:`role_adherence`: after the assistant asks the user for the
  answer to the user's own multiple-choice question, a next user turn naming one or two of the
  choices (not all) is an attempt to answer; adherence is the share of turns that are not.
* :class:`IntentAdherenceJudge`: an LLM judge (through :class:`userlm_env.llm.LLMClient`) says
  whether the user kept to the original question after the assistant suggested another topic.
* :class:`NaturalnessDetector` / :func:`naturalness`: a hook for an external AI-text detector.

Running a simulator on such data (:func:`run_intrinsic`) builds
:class:`~userlm_env.types.ConversationState` prefixes and asks the simulator for the next user
turn, in batches; given ``progress=ProgressSettings()`` it shows its progress as
``[intrinsic]`` (:mod:`userlm_env.progress`: items done of the total, where an item is one user
turn asked of the simulator or one judge verdict, and the judge client's spend). Its data records
(:class:`Conversation`, :class:`MCQItem`, :class:`OpenQuestion`) live in
:mod:`userlm_env.metrics.intrinsic_data` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Protocol, runtime_checkable

from userlm_env.errors import DataError
from userlm_env.estimate import CallBudget, client_budget
from userlm_env.json_cache import JsonCache, cache_key
from userlm_env.metrics.diversity import jaccard as set_jaccard
from userlm_env.metrics.diversity import mean_pairwise_jaccard
from userlm_env.metrics.intrinsic_data import (
    Conversation,
    IntrinsicData,
    MCQItem,
    OpenQuestion,
    load_jsonl,
    load_online,
)
from userlm_env.metrics.judge import ChatClient, ask_json
from userlm_env.metrics.text import content_set, lemma, tokens, unigrams, word_count
from userlm_env.progress import Progress, ProgressSettings, client_spend
from userlm_env.types import ConversationState, Intent, Message, Shard, UserTurn

__all__ = [
    "UNSURE_REPLY",
    "Conversation",
    "IntentAdherenceJudge",
    "IntrinsicData",
    "MCQItem",
    "NaturalnessDetector",
    "OpenQuestion",
    "TerminationItem",
    "diversion_reply",
    "first_turn_diversity",
    "intent_decomposition",
    "is_answer_attempt",
    "load_jsonl",
    "load_online",
    "mcq_turn",
    "mentioned_choices",
    "naturalness",
    "next_user_turns",
    "role_adherence",
    "run_intrinsic",
    "termination_items",
    "termination_scores",
]

# --------------------------------------------------------------------------- metric math


def first_turn_diversity(texts: Sequence[str]) -> dict[str, float | None]:
    """``jaccard_diversity``: ``1 -`` mean pairwise Jaccard of the turns' unigram sets;
    ``distinct_unigrams``: distinct lemmatised unigrams / all unigram occurrences."""
    sets = [unigrams(t) for t in texts]
    overlap = mean_pairwise_jaccard(sets)
    occurrences = [lemma(t) for text in texts for t in tokens(text)]
    return {
        "jaccard_diversity": None if overlap is None else 1.0 - overlap,
        "distinct_unigrams": len(set(occurrences)) / len(occurrences) if occurrences else None,
    }


def intent_decomposition(turns: Iterable[tuple[str, str]]) -> float | None:
    """Mean over ``(user turn, intent)`` pairs of the Jaccard overlap of their content lemmas."""
    values = [set_jaccard(content_set(turn), content_set(intent)) for turn, intent in turns]
    return fmean(values) if values else None


def termination_scores(predicted: Sequence[bool], actual: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of predicted conversation endings (positive: "ends here")."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions but {len(actual)} labels")
    hits = sum(1 for p, a in zip(predicted, actual, strict=True) if p and a)
    n_pred, n_true = sum(map(bool, predicted)), sum(map(bool, actual))
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": float(n_true)}


def mentioned_choices(text: str, choices: Sequence[str]) -> list[str]:
    """The choices whose lemmatised words appear, in order and adjacent, in ``text``."""
    words = [lemma(t) for t in tokens(text)]
    found = []
    for choice in choices:
        target = [lemma(t) for t in tokens(choice)]
        span = len(target)
        if span and any(words[i : i + span] == target for i in range(len(words) - span + 1)):
            found.append(choice)
    return found


def is_answer_attempt(text: str, choices: Sequence[str], max_named: int = 2) -> bool:
    """The turn names between 1 and ``max_named`` choices, and not all of them."""
    named = len(mentioned_choices(text, choices))
    return 1 <= named <= max_named and named < len(choices)


def role_adherence(attempts: Sequence[bool]) -> float | None:
    """Share of next user turns that did *not* try to answer the user's own question."""
    return 1.0 - fmean(map(float, attempts)) if attempts else None


def mcq_turn(item: MCQItem) -> str:
    """The user's first turn: the question with its choices."""
    return f"{item.question} The choices are: {', '.join(item.choices)}."


#: The assistant's reply in the role-adherence setup: unsure, asks the user for the answer.
UNSURE_REPLY = (
    "Hmm, I can't say for sure which of those it is. Several of them seem possible to me and "
    "I would only be guessing. Do you know the answer? Could you tell me which one it is?"
)


def diversion_reply(question: str) -> str:
    """The assistant's reply in the intent-adherence setup: unsure, proposes another topic."""
    return (
        f"I'm afraid I don't know the answer to \"{question.rstrip('?')}\". If you like, we "
        "could look at something else instead: I could suggest a few fun facts about the "
        "history of board games. Would that interest you?"
    )


# --------------------------------------------------------------------------- naturalness


@runtime_checkable
class NaturalnessDetector(Protocol):
    """An external AI-text detector (none ships: plug one in, e.g. a local classifier)."""

    def human_likelihood(self, texts: Sequence[str]) -> list[float]:
        """For each text, the probability in [0, 1] that a person wrote it."""
        ...


def naturalness(
    texts: Sequence[str],
    detector: NaturalnessDetector | None,
    *,
    min_words: int = 50,
    max_words: int = 200,
) -> float | None:
    """Mean human-likelihood of the texts of ``min_words``..``max_words`` words (``None``
    without a detector or such a text)."""
    if detector is None:
        return None
    kept = [t for t in texts if min_words <= word_count(t) <= max_words]
    if not kept:
        return None
    scores = detector.human_likelihood(kept)
    if len(scores) != len(kept) or not all(0.0 <= s <= 1.0 for s in scores):
        raise ValueError("the naturalness detector must return one probability per text")
    return fmean(scores)


# --------------------------------------------------------------------------- intent judge

_ADHERENCE_SYSTEM = """\
You check simulated users. A user asked an assistant a question. The assistant did not answer \
and proposed to talk about something else. Decide whether the user's next message sticks to \
the original question (asks it again, rephrases it, insists, asks where to find the answer, \
or ends the conversation) or goes along with the assistant's new topic.

Reply with one JSON object and nothing else: {"adheres": true} or {"adheres": false}"""


class IntentAdherenceJudge:
    """Intent adherence by a chat model, validated and cached.

    Args:
        client: An :class:`~userlm_env.llm.LLMClient` (or any :class:`ChatClient`).
        cache_dir: Cache folder (keyed by model and the three texts); ``None``: off.
        max_tries: Replies asked per item before :class:`DataError`.
    """

    def __init__(
        self, client: ChatClient, *, cache_dir: str | Path | None = None, max_tries: int = 2
    ) -> None:
        self.client, self.max_tries = client, max_tries
        self.cache = JsonCache(cache_dir)

    def call_budget(self) -> CallBudget:
        """Up to ``max_tries`` requests per item (cache hits counted as calls), through the
        client (:func:`userlm_env.estimate.estimate_judging`)."""
        return client_budget(self.client.config, calls_per_turn=self.max_tries)

    def prompt_texts(self, item: tuple[str, str, str]) -> list[str]:
        """The messages of the first prompt about ``item`` (later tries append to it)."""
        return [message["content"] for message in self._messages(*item)]

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[bool]:
        """For each ``(question, assistant reply, next user turn)``: did the user adhere?"""
        keys = [cache_key("adherence", "1", self.client.config.model, *item) for item in items]
        verdicts = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            prompts = [self._messages(*items[i]) for i in todo]
            fresh = ask_json(self.client, prompts, _validate_adherence, max_tries=self.max_tries)
            for index, verdict in zip(todo, fresh, strict=True):
                verdicts[index] = verdict
                self.cache.put(keys[index], verdict)
        return [bool(v) for v in verdicts]

    @staticmethod
    def _messages(question: str, reply: str, user_turn: str) -> list[Message]:
        text = (
            f"Original question: {question}\n\nAssistant: {reply}\n\n"
            f"User's next message: {user_turn}"
        )
        return [
            Message(role="system", content=_ADHERENCE_SYSTEM),
            Message(role="user", content=text),
        ]


def _validate_adherence(_: int, reply: dict[str, Any]) -> bool:
    value = reply.get("adheres")
    if not isinstance(value, bool):
        raise DataError('"adheres" must be true or false')
    return value


# --------------------------------------------------------------------------- running a simulator


@dataclass(frozen=True)
class TerminationItem:
    """A conversation prefix that ends with an assistant reply, and whether the real user
    ended the conversation right there."""

    conversation: Conversation
    prefix: tuple[Message, ...]
    ends_here: bool


def termination_items(conversations: Iterable[Conversation]) -> list[TerminationItem]:
    """One item per assistant message; the real user ended there when it is the conversation's
    last message (a conversation that ends with a user message has no ending to predict)."""
    items = []
    for conversation in conversations:
        messages = conversation.messages
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                last = index == len(messages) - 1
                items.append(TerminationItem(conversation, messages[: index + 1], ends_here=last))
    return items


def _state(intent_id: str, intent: str, prefix: Sequence[Message], seed: int) -> ConversationState:
    """A state whose intent is ``intent`` (one shard) and whose history is ``prefix``."""
    spec = Intent(task="chat", intent_id=intent_id, instruction=intent, shards=(Shard(1, intent),))
    users = [UserTurn(text=m["content"]) for m in prefix if m["role"] == "user"]
    return ConversationState(
        intent=spec, seed=seed, messages=[Message(**m) for m in prefix],
        user_turns=users, revealed=[() for _ in users],
    )  # fmt: skip


def next_user_turns(
    simulator: Any,
    prompts: Sequence[tuple[str, str, Sequence[Message]]],
    *,
    seed: int = 0,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[UserTurn]:
    """The simulator's next user turn for each ``(id, intent, prefix)``, in batches
    (``progress`` advances by each batch's size)."""
    turns: list[UserTurn] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        states = [
            _state(pid, intent, prefix, seed + start + i)
            for i, (pid, intent, prefix) in enumerate(chunk)
        ]
        produced = list(simulator.respond(states))
        if len(produced) != len(states):
            raise RuntimeError(f"simulator returned {len(produced)} turns for {len(states)}")
        turns.extend(produced)
        if progress is not None:
            progress.advance(len(produced))
    return turns


def run_intrinsic(
    simulator: Any,
    data: IntrinsicData,
    *,
    judge: IntentAdherenceJudge | None = None,
    detector: NaturalnessDetector | None = None,
    first_turns_per_intent: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    progress: ProgressSettings | None = None,
) -> dict[str, Any]:
    """Every intrinsic metric the data allows; missing data or judges give ``None``.

    First turns are generated ``first_turns_per_intent`` times from each conversation's intent;
    intent decomposition reads every generated user turn (first turns and the turns produced
    after each real assistant reply) against its intent. ``progress`` shows the run's progress
    as ``[intrinsic]`` with these settings (``None``: silent).
    """
    with _progress(progress, data, judge, first_turns_per_intent) as shown:
        run = _Runner(simulator, seed, batch_size, shown)
        firsts = run.first_turns(data.conversations, first_turns_per_intent)
        later, termination = run.termination(data.conversations)
        role = run.role_adherence(data.mcq)
        intent = run.intent_adherence(data.questions, judge)
    diversity = first_turn_diversity([text for text, _ in firsts]) if firsts else {}
    return {
        "first_turn_diversity": diversity.get("jaccard_diversity"),
        "distinct_unigrams": diversity.get("distinct_unigrams"),
        "intent_decomposition": intent_decomposition(firsts + later),
        "termination_precision": termination.get("precision"),
        "termination_recall": termination.get("recall"),
        "termination_f1": termination.get("f1"),
        "role_adherence": role,
        "intent_adherence": intent,
        "naturalness": naturalness([text for text, _ in firsts], detector),
        "first_turns": len(firsts),
    }


def _progress(
    settings: ProgressSettings | None,
    data: IntrinsicData,
    judge: IntentAdherenceJudge | None,
    per_intent: int,
) -> AbstractContextManager[Progress | None]:
    """The ``[intrinsic]`` progress of one run: every simulator turn and judge verdict."""
    if settings is None:
        return nullcontext()
    turns = len(data.conversations) * per_intent + len(termination_items(data.conversations))
    judged = len(data.questions) if judge is not None else 0
    return Progress(
        turns + len(data.mcq) + 2 * judged,  # a judged question: one turn and one verdict
        label="intrinsic",
        unit="item",
        spend=client_spend(judge.client) if judge is not None else None,
        settings=settings,
    )


Prompt = tuple[str, str, Sequence[Message]]  # (id, intent, conversation prefix)


@dataclass
class _Runner:
    """The simulator calls behind :func:`run_intrinsic`."""

    simulator: Any
    seed: int
    batch_size: int
    progress: Progress | None = None

    def ask(self, prompts: Sequence[Prompt]) -> list[UserTurn]:
        return next_user_turns(
            self.simulator,
            prompts,
            seed=self.seed,
            batch_size=self.batch_size,
            progress=self.progress,
        )

    def first_turns(
        self, conversations: Sequence[Conversation], per_intent: int
    ) -> list[tuple[str, str]]:
        """``(first turn, intent)`` pairs (turns that ended at once are dropped)."""
        prompts = [(f"{c.id}#{k}", c.intent, ()) for c in conversations for k in range(per_intent)]
        turns = self.ask(prompts)
        return [(t.text, p[1]) for t, p in zip(turns, prompts, strict=True) if not t.ended]

    def termination(
        self, conversations: Sequence[Conversation]
    ) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """Spoken ``(turn, intent)`` pairs after real assistant replies, and ending scores."""
        items = termination_items(conversations)
        if not items:
            return [], {}
        turns = self.ask([(i.conversation.id, i.conversation.intent, i.prefix) for i in items])
        pairs = zip(turns, items, strict=True)
        spoken = [(t.text, i.conversation.intent) for t, i in pairs if not t.ended]
        return spoken, termination_scores([t.ended for t in turns], [i.ends_here for i in items])

    def role_adherence(self, mcq: Sequence[MCQItem]) -> float | None:
        prompts = [(m.id, _ask_intent(mcq_turn(m)), _setup(mcq_turn(m), UNSURE_REPLY)) for m in mcq]
        turns = self.ask(prompts)
        attempts = [is_answer_attempt(t.text, m.choices) for t, m in zip(turns, mcq, strict=True)]
        return role_adherence(attempts)

    def intent_adherence(
        self, questions: Sequence[OpenQuestion], judge: IntentAdherenceJudge | None
    ) -> float | None:
        if judge is None or not questions:
            return None
        replies = [diversion_reply(q.question) for q in questions]
        turns = self.ask(
            [
                (q.id, _ask_intent(q.question), _setup(q.question, r))
                for q, r in zip(questions, replies, strict=True)
            ]
        )
        items = [(q.question, r, t.text) for q, r, t in zip(questions, replies, turns, strict=True)]
        verdicts = judge.judge(items)
        if self.progress is not None:
            self.progress.advance(len(verdicts))
        return fmean(map(float, verdicts))


def _ask_intent(question: str) -> str:
    return f"You want an answer to this question: {question}"


def _setup(user_turn: str, assistant_reply: str) -> tuple[Message, ...]:
    return (
        Message(role="user", content=user_turn),
        Message(role="assistant", content=assistant_reply),
    )
