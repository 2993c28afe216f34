"""What the Lost-in-Conversation user model is asked to write (:mod:`simulators.lic`).

Two prompts, one per shard policy, each sent as a single user message:

* :func:`choose_prompt` (``shard_policy="llm"``): the model plays the user. It sees the chat so
  far as a transcript, the shards it has already revealed and those it has not, and the rules
  (at most one new shard per message, in its own words; decline what no shard covers, e.g. "no
  preference", "I don't know"; never solve the task). It answers with one JSON object,
  ``{"shard_id": <id or null>, "message": "..."}``. On the first turn it is told to reveal
  shard 1, the overall goal.
* :func:`rephrase_prompt` (``shard_policy="rule"``): the shard is chosen by rule and the model
  is only asked to say that one shard as a short casual message, numbers kept, nothing added,
  a question left unanswered (what a 135M model can do). It replies with the message only.

The wording is our own.
"""

from __future__ import annotations

from collections.abc import Sequence

from userlm_env.types import ConversationState, Message, Shard

__all__ = ["NO_PREFERENCE_RULE", "choose_prompt", "render_transcript", "rephrase_prompt"]

_ROLE_PLAY = """\
You are playing a person who is chatting with an AI assistant to get a task done. You know \
everything about the task, but you do not say it all at once: what you know is split into \
numbered pieces of information, and you hand them out one at a time, as the chat goes on.

Pieces you have already shared:
{revealed}

Pieces you have not shared yet:
{pending}

The chat so far:
{transcript}

{step}

Rules for your message:
- Share at most one new piece, and say it in your own casual words, like a person typing \
quickly. Never copy the piece's wording.
- If the assistant asked something that one of your unshared pieces answers, share that piece.
- {no_preference}
- Never solve the task yourself, and never write the assistant's part of the chat.
- Keep it short: one or two sentences.

Reply with one JSON object and nothing else, in this form:
{{"shard_id": <number of the piece you share, or null if you share none>, \
"message": "<your message>"}}"""

#: The rule that keeps the user from inventing information (tests check that the prompt has it).
NO_PREFERENCE_RULE = (
    "If the assistant asks about anything your pieces do not cover (a preference, an extra "
    "detail, a generic question such as what else it can do), do not make up an answer: say "
    "you have no preference or that you do not know. Use nothing outside your pieces."
)

_FIRST_STEP = "This is your first message. Share piece 1, the overall goal, and only that piece."
_LATER_STEP = "Write your next message to the assistant."

_REPHRASE = """\
Rewrite the note below as a short chat message that a person would type to an AI assistant. \
Use your own casual words, keep every number, and add nothing else. If the note is a question, \
keep it a question and do not answer it. Reply with the message only.

Note: {shard}"""

_LABELS = {"user": "You", "assistant": "Assistant", "system": "System"}


def choose_prompt(state: ConversationState) -> list[Message]:
    """The ``llm`` policy's chat: the role play, the shards, the transcript and the rules."""
    revealed = state.revealed_ids
    shards = state.intent.shards
    prompt = _ROLE_PLAY.format(
        revealed=_listing([s for s in shards if s.id in revealed]),
        pending=_listing([s for s in shards if s.id not in revealed]),
        transcript=render_transcript(state.messages),
        step=_LATER_STEP if state.user_turns else _FIRST_STEP,
        no_preference=NO_PREFERENCE_RULE,
    )
    return [{"role": "user", "content": prompt}]


def rephrase_prompt(shard: Shard) -> list[Message]:
    """The ``rule`` policy's chat: say this one shard as a short user message."""
    return [{"role": "user", "content": _REPHRASE.format(shard=shard.text.strip())}]


def render_transcript(messages: Sequence[Message]) -> str:
    """The chat as labelled blocks (``You: ...``, ``Assistant: ...``); a note when empty."""
    if not messages:
        return "(nothing yet: you speak first)"
    return "\n\n".join(f"{_LABELS[m['role']]}: {m['content'].strip()}" for m in messages)


def _listing(shards: Sequence[Shard]) -> str:
    """One ``[id] text`` line per shard; ``(none)`` when there is none."""
    if not shards:
        return "(none)"
    return "\n".join(f"[{s.id}] {s.text.strip()}" for s in shards)
