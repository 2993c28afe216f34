"""The paper's baseline user simulator: an assistant chat model prompted to role-play the user.

:class:`PromptedSimulator` (``"prompted"``) sends a chat model one user message asking it to act
as a person pursuing the intent's instruction (paper section 3.2, appendix E; our own wording):
terse, lazy messages with the odd typo, details spread over turns without overdoing it, never
the assistant's part, and only ``<|endconversation|>`` once the goal is met. Later turns render
the chat so far *into the prompt* as a ``You:`` / ``AI system:`` transcript, as the paper's
baseline does; a role-flipped history was not chosen, as it puts the user's words in the model's
own assistant turns, which chat models continue in assistant style.

Backends: ``"litellm"``, any LiteLLM model through :meth:`userlm_env.llm.LLMClient.chat_many`;
``"hf"``, a local model (e.g. the embedded ``smollm2-135m-instruct``) with batched, left-padded
``generate`` under its template's normal *assistant* generation prompt, loaded at the first
``respond`` (building the simulator loads nothing). Both seed every row
(:func:`simulators.sampling.row_seed`); how far a server reproduces seeded rows is set out in
:mod:`simulators.userlm_server`.

:func:`clean_output`: an end marker, or a loose spelling (``endconversation``), anywhere ends the
conversation (``metadata["raw"]`` keeps the output); otherwise role labels (``User:``), wrapping
quotes and any part written as the assistant are removed. A user never ends a conversation
before speaking: the first-turn prompt has no end instruction, and an end there is forbidden
like every end when ``allow_end=False``. Empty turns and forbidden ends are resampled up to
``max_tries`` times, then :class:`~userlm_env.core.SimulatorError` is raised.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulators.chat_backends import ChatModelConfig, make_backend
from simulators.sampling import row_seed
from userlm_env.core import SimulatorError
from userlm_env.estimate import CallBudget
from userlm_env.resample import Outcome, Verdict, resample
from userlm_env.spend import llm_clients
from userlm_env.types import END_MARKER, ConversationState, Intent, Message, UserTurn

if TYPE_CHECKING:  # torch-free at import: the HF backend imports its pieces at first use
    pass

__all__ = ["PromptedConfig", "PromptedSimulator", "clean_output", "role_play_prompt"]

_PERSONA = """\
You are role-playing a human who is chatting with an AI system. What you want from it: {goal}

Write the way real people type to chatbots. Typing is a chore, so messages are short and a bit \
lazy: lowercase starts, missing punctuation and the odd typo are all fine. People also rarely \
spell out everything up front; they give the main ask and add details in later messages as they \
come up. Do some of this, but stay believable: do not overdo the typos, and do not hold back so \
much that the AI cannot help.

You are only ever the human. Never answer your own request, never solve the task, and never \
write the AI's side of the chat."""

_FIRST_TURN = "\n\nWrite the first message you would send to the AI system. Reply with it only."

_LATER_TURN = """

The chat so far:

{transcript}

{end_rule}Write the next message you would send to get closer to your goal. Reply with it only."""

_END_RULE = (
    "If the AI's last message already gives you what you wanted, reply with {marker} and "
    "nothing else. If not: "
)

_LABELS = {"user": "You", "assistant": "AI system"}
_LOOSE_END = re.compile(r"(?i)[<|]\s*\|?\s*end[\s_-]?conversation|\bend[_-]?conversation\b")
_ROLE_LABEL = re.compile(
    r"(?i)^[*_#\s]*(?:user|human|you|me|(?:my\s+)?(?:next\s+|first\s+)?(?:message|prompt|reply))"
    r"[*_\s]*:[*_\s]*"
)
_ASSISTANT_PART = re.compile(r"\n\s*[*_]*(?:ai(?:\s+system)?|assistant|chatbot)[*_\s]*:", re.I)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`"}


@dataclass
class PromptedConfig(ChatModelConfig):
    """Settings of :class:`PromptedSimulator`: the chat model's, and the end of the chat."""

    allow_end: bool = True  # False: no end instruction, ends resampled (always on a 1st turn)
    end_marker: str = END_MARKER  # what the model is told to reply with to end the chat


class PromptedSimulator:
    """A chat model prompted to play the user, for a batch of conversation states.

    Args:
        model: A LiteLLM model string (``"gpt-4o-mini"``, ``"openai/<name>"`` with
            ``api_base``) for the ``litellm`` backend; a name for
            :func:`userlm_env.models.load_model` for the ``hf`` backend.
        config: Settings; ``overrides`` replace single fields (e.g. ``backend="hf"``).
    """

    def __init__(
        self, model: str = "gpt-4o-mini", config: PromptedConfig | None = None, **overrides: Any
    ) -> None:
        known = {f.name for f in dataclasses.fields(PromptedConfig)}
        if unknown := sorted(set(overrides) - known):
            raise TypeError(f"unknown PromptedConfig fields {unknown}; known: {sorted(known)}")
        self.config = dataclasses.replace(config or PromptedConfig(), **overrides)
        self.model = model
        self.backend = make_backend(model, self.config)

    def llm_clients(self) -> list[Any]:
        """The LLM clients of the backend (none for a local model): see :mod:`userlm_env.spend`."""
        return llm_clients(self.backend)

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Return the next user turn of each state; see the module docstring.

        Runs the shared loop of :func:`userlm_env.resample.resample`.
        """

        def generate(rows: list[_Row], attempt: int) -> list[str]:
            conversations = [self.conversation(row.state) for row in rows]
            seeds = [row_seed(row.state, attempt) for row in rows]
            return self.backend.generate(conversations, seeds)

        rows = [_Row(state) for state in states]
        outcomes = resample(rows, generate, self._vet, tries=self.config.max_tries)
        return [self._finish(row, outcome) for row, outcome in zip(rows, outcomes, strict=True)]

    def call_budget(self) -> CallBudget:
        """Up to ``max_tries`` generations of ``max_tokens`` per user turn, through the backend
        (:mod:`userlm_env.estimate`; loads nothing)."""
        return self.backend.call_budget(self.config.max_tries)

    def prompt_texts(self, intent: Intent) -> list[str]:
        """The longest prompt besides the transcript: the later-turn one with an empty chat
        (the first-turn one is shorter)."""
        cfg = self.config
        later = _LATER_TURN.format(
            transcript="", end_rule=_END_RULE.format(marker=cfg.end_marker) if cfg.allow_end else ""
        )
        persona = _PERSONA.format(goal=intent.instruction)
        return [persona + max(later, _FIRST_TURN, key=len)]

    def conversation(self, state: ConversationState) -> list[Message]:
        """The chat sent to the model for ``state``: one user message holding the prompt."""
        prompt = role_play_prompt(state, self.config.end_marker, allow_end=self.config.allow_end)
        return [{"role": "user", "content": prompt}]

    def _vet(self, row: _Row, raw: str) -> Verdict[UserTurn]:
        """A usable turn (text, or an allowed end) from one raw output."""
        row.raw = raw
        text, ended = clean_output(raw, self.config.end_marker)
        if ended and not (self.config.allow_end and row.state.messages):
            return Verdict.reject("end_forbidden")
        if not text.strip():
            return Verdict.reject("empty")
        return Verdict.accept(UserTurn(END_MARKER if ended else text, ended=ended))

    def _finish(self, row: _Row, outcome: Outcome[UserTurn]) -> UserTurn:
        if outcome.value is not None:
            meta = {"tries": outcome.tries, "raw": row.raw}
            return dataclasses.replace(outcome.value, metadata=meta)
        raise SimulatorError(
            f"prompted simulator {self.model!r} gave no usable user turn for "
            f"{row.state.intent.intent_id!r} in {outcome.tries} tries "
            f"(last output: {row.raw!r:.200})"
        )


def role_play_prompt(
    state: ConversationState, end_marker: str = END_MARKER, *, allow_end: bool = True
) -> str:
    """The role-play instruction: the first-turn variant, or the later-turn one with history.

    Only the later-turn variant tells the model how to end the chat (when ``allow_end``): the
    user never ends a conversation before speaking.
    """
    persona = _PERSONA.format(goal=state.intent.instruction)
    if not state.messages:
        return persona + _FIRST_TURN
    end_rule = _END_RULE.format(marker=end_marker) if allow_end else ""
    return persona + _LATER_TURN.format(
        transcript=_render_transcript(state.messages), end_rule=end_rule
    )


def _render_transcript(messages: Sequence[Message]) -> str:
    """The conversation as labelled blocks: ``You: ...`` and ``AI system: ...``."""
    return "\n\n".join(f"{_LABELS[m['role']]}: {m['content'].strip()}" for m in messages)


def clean_output(raw: str, end_marker: str = END_MARKER) -> tuple[str, bool]:
    """Turn a model's output into ``(user text, ended)``; the text may come back empty."""
    text = raw.strip()
    if end_marker in text or _LOOSE_END.search(text):
        return end_marker, True
    text = _ASSISTANT_PART.split(text, maxsplit=1)[0].strip()
    previous = None
    while previous != text:
        previous = text
        text = _unquote(_ROLE_LABEL.sub("", text, count=1).strip())
    return text, False


def _unquote(text: str) -> str:
    closing = _QUOTES.get(text[:1])
    inner = text[1:-1]
    if closing and len(text) >= 2 and text.endswith(closing) and closing not in inner:
        return inner.strip()
    return text


@dataclass
class _Row:
    """One state to generate for, and its latest raw output (for the error message)."""

    state: ConversationState
    raw: str = ""
