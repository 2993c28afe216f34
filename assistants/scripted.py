"""Scripted assistants for tests, smoke runs and reward sanity checks.

* :class:`OracleAssistant` asks a short clarifying question until every required shard is
  revealed, then answers with the reference (the gold number in a sentence, or the canonical
  solution in a fenced Python block).
* :class:`WrongAssistant` answers confidently and wrongly (off-by-one number, or a function
  with the right name that returns a constant): no reward may ever reach it.

Both read the intent's reference from the state, which a real assistant must never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from userlm_env.types import ConversationState, Intent

__all__ = ["OracleAssistant", "WrongAssistant"]

_QUESTION = "Could you tell me a bit more about what you need before I answer?"


def _all_required_revealed(state: ConversationState) -> bool:
    return state.intent.required_ids <= state.revealed_ids


def _code_answer(intent: Intent, body: str) -> str:
    source = intent.reference["prompt"] + body
    return f"Here is the function:\n\n```python\n{source.rstrip()}\n```\n"


class OracleAssistant:
    """Answers with the reference once all required shards are revealed."""

    def respond(self, states: Sequence[ConversationState]) -> list[str]:
        """One reply per state."""
        return [self._reply(s) for s in states]

    def _reply(self, state: ConversationState) -> str:
        if not _all_required_revealed(state):
            return _QUESTION
        intent = state.intent
        if intent.task == "humaneval":
            return _code_answer(intent, intent.reference["canonical_solution"])
        return f"Putting it all together, the answer is {intent.reference['answer']}."


class WrongAssistant:
    """Answers every turn with a plausible but wrong answer."""

    def respond(self, states: Sequence[ConversationState]) -> list[str]:
        """One wrong reply per state."""
        return [self._reply(s.intent) for s in states]

    @staticmethod
    def _reply(intent: Intent) -> str:
        if intent.task == "humaneval":
            return _code_answer(intent, "    return None\n")
        wrong = Fraction(str(intent.reference["answer"]).replace(",", "")) + 1
        shown = str(wrong.numerator) if wrong.denominator == 1 else str(float(wrong))
        return f"The answer is {shown}."
