"""Scripted assistants for tests, smoke runs and reward sanity checks.

* :class:`OracleAssistant` asks a short clarifying question until every required shard has come
  up in the user's messages, then answers with the reference (the gold number in a sentence, or
  the canonical solution in a fenced Python block).
* :class:`WrongAssistant` answers confidently and wrongly (off-by-one number, or a function
  with the right name that returns a constant): no reward may ever reach it.

Like every assistant they read only the conversation's messages. The answer key is what sets
them apart: they are given the intents up front (``OracleAssistant(env.unwrapped.intents)``, or
:meth:`ScriptedAssistant.learn` later) and look each conversation's intent up by the intent id
the env publishes in ``info["intent_id"]``. A real assistant never has that key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

from userlm_env.errors import UnknownNameError
from userlm_env.estimate import CallBudget
from userlm_env.metrics.shards import LexicalShardMatcher
from userlm_env.protocols import Conversations, IntentIds, Seeds
from userlm_env.types import AssistantReply, Intent, Message

__all__ = ["OracleAssistant", "ScriptedAssistant", "WrongAssistant"]

_QUESTION = "Could you tell me a bit more about what you need before I answer?"


def _code_answer(intent: Intent, body: str) -> str:
    source = intent.reference["prompt"] + body
    return f"Here is the function:\n\n```python\n{source.rstrip()}\n```\n"


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


class ScriptedAssistant:
    """An assistant with an answer key: intents by id. Subclasses write :meth:`reply`.

    Args:
        intents: The intents whose conversations it will answer (more with :meth:`learn`).
    """

    def __init__(self, intents: Iterable[Intent] = ()) -> None:
        self.intents: dict[str, Intent] = {}
        self.learn(intents)

    def learn(self, intents: Iterable[Intent]) -> None:
        """Add ``intents`` to the answer key."""
        self.intents.update((intent.intent_id, intent) for intent in intents)

    def respond(
        self, conversations: Conversations, *, intent_ids: IntentIds = None, seeds: Seeds = None
    ) -> list[AssistantReply]:
        """One reply per conversation, from the answer key (``seeds`` are not used).

        Raises:
            ValueError: ``intent_ids`` is missing or of the wrong length.
            UnknownNameError: An intent id is not in the answer key.
        """
        if intent_ids is None or len(intent_ids) != len(conversations):
            raise ValueError("a scripted assistant needs the intent id of every conversation")
        return [
            AssistantReply(self.reply(messages, self._intent(intent_id)))
            for messages, intent_id in zip(conversations, intent_ids, strict=True)
        ]

    def reply(self, messages: Sequence[Message], intent: Intent) -> str:
        """The reply to ``messages`` in a conversation about ``intent``."""
        raise NotImplementedError

    def call_budget(self) -> CallBudget:
        """No model is called (:mod:`userlm_env.estimate`); subclasses bound their replies
        with ``rule_turns``."""
        return CallBudget.without_model("scripted")

    def _intent(self, intent_id: str) -> Intent:
        try:
            return self.intents[intent_id]
        except KeyError:
            raise UnknownNameError(
                f"intent {intent_id!r} is not in this assistant's answer key "
                f"({len(self.intents)} intents); pass the env's intents when building it"
            ) from None


class OracleAssistant(ScriptedAssistant):
    """Answers with the reference once every required shard has come up."""

    def __init__(self, intents: Iterable[Intent] = ()) -> None:
        super().__init__(intents)
        self.matcher = LexicalShardMatcher()

    def reply(self, messages: Sequence[Message], intent: Intent) -> str:
        """A clarifying question, or the reference answer once all required shards are out."""
        if not intent.required_ids <= self._revealed(messages, intent):
            return _QUESTION
        return self._answer(intent)

    def rule_turns(self, intent: Intent) -> list[str]:
        """Its two replies for ``intent``: the question and the answer."""
        return [_QUESTION, self._answer(intent)]

    @staticmethod
    def _answer(intent: Intent) -> str:
        if intent.task == "humaneval":
            return _code_answer(intent, intent.reference["canonical_solution"])
        return f"Putting it all together, the answer is {intent.reference['answer']}."

    def _revealed(self, messages: Sequence[Message], intent: Intent) -> set[int]:
        """Shards the user's messages carry: said word for word, or found by the matcher."""
        said = [m["content"] for m in messages if m["role"] == "user"]
        spoken = _normalized("\n".join(said))
        revealed = {s.id for s in intent.shards if _normalized(s.text) in spoken}
        for text in said:
            revealed.update(self.matcher.match(text, intent))
        return revealed


class WrongAssistant(ScriptedAssistant):
    """Answers every turn with a plausible but wrong answer."""

    def reply(self, messages: Sequence[Message], intent: Intent) -> str:
        """A confident wrong answer."""
        if intent.task == "humaneval":
            return _code_answer(intent, "    return None\n")
        wrong = Fraction(str(intent.reference["answer"]).replace(",", "")) + 1
        shown = str(wrong.numerator) if wrong.denominator == 1 else str(float(wrong))
        return f"The answer is {shown}."

    def rule_turns(self, intent: Intent) -> list[str]:
        """Its one reply for ``intent`` (it does not depend on the conversation)."""
        return [self.reply([], intent)]
