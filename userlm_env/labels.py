"""Labels for assistant turns: answer attempt, clarification, discussion or other.

The label of every reply goes into the step ``info`` (``reply_label``) and the episode logs, so
a run can tell an assistant that never tries from one that tries and fails.

* :class:`HeuristicLabeler` (default, offline): the task's own ``Score.attempted`` decides
  "answer_attempt"; otherwise a reply that asks something is a "clarification", a substantive
  one is "discussion", and an empty or trivial one is "other".
* :class:`LLMJudgeLabeler`: asks an LLM through :mod:`userlm_env.llm` with a prompt of our own,
  and falls back to the heuristic when the judge's answer is not one of the labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from userlm_env.types import Score

__all__ = [
    "LABELS",
    "HeuristicLabeler",
    "LLMJudgeLabeler",
    "ReplyLabeler",
    "heuristic_label",
]

ANSWER_ATTEMPT = "answer_attempt"
CLARIFICATION = "clarification"
DISCUSSION = "discussion"
OTHER = "other"
#: Every label, in the order the judge prompt lists them.
LABELS = (ANSWER_ATTEMPT, CLARIFICATION, DISCUSSION, OTHER)

_QUESTION = re.compile(
    r"\?\s*($|\n)|^(could|can|would|do|does|did|what|which|how|should)\b", re.I | re.M
)
_MIN_DISCUSSION_WORDS = 4


@runtime_checkable
class ReplyLabeler(Protocol):
    """Labels a batch of assistant replies given their scores."""

    def label_many(self, replies: Sequence[str], scores: Sequence[Score]) -> list[str]:
        """One label from :data:`LABELS` per reply."""
        ...


def heuristic_label(reply: str, score: Score) -> str:
    """The offline label of one reply."""
    if score.attempted:
        return ANSWER_ATTEMPT
    text = reply.strip()
    if _QUESTION.search(text):
        return CLARIFICATION
    if len(text.split()) >= _MIN_DISCUSSION_WORDS:
        return DISCUSSION
    return OTHER


class HeuristicLabeler:
    """Labels replies with :func:`heuristic_label`."""

    def label_many(self, replies: Sequence[str], scores: Sequence[Score]) -> list[str]:
        """One label per reply."""
        return [heuristic_label(r, s) for r, s in zip(replies, scores, strict=True)]


_JUDGE_PROMPT = """You sort the turns of a chat assistant into four kinds.
- answer_attempt: the turn gives a final result for the user's task (a number, a finished function).
- clarification: the turn mainly asks the user for missing details.
- discussion: the turn explains, plans or comments without a final result or a question.
- other: anything else (greetings, refusals, empty or off-topic turns).

Assistant turn:
<<<
{reply}
>>>

Reply with exactly one word: answer_attempt, clarification, discussion or other."""


class LLMJudgeLabeler:
    """Labels replies by asking an LLM; unparseable verdicts fall back to the heuristic.

    Args:
        client: An :class:`userlm_env.llm.LLMClient` (its config picks the judge model).
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def label_many(self, replies: Sequence[str], scores: Sequence[Score]) -> list[str]:
        """One label per reply (one concurrent batch of judge calls)."""
        prompts = [[{"role": "user", "content": _JUDGE_PROMPT.format(reply=r)}] for r in replies]
        results = self.client.chat_many(prompts, temperature=0.0)
        return [
            _parse_verdict(result.text) or heuristic_label(reply, score)
            for result, reply, score in zip(results, replies, scores, strict=True)
        ]


def _parse_verdict(text: str) -> str | None:
    words = re.findall(r"[a-z_]+", text.lower())
    return next((w for w in words if w in LABELS), None)
