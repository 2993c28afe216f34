"""High-level user intents for training conversations, written by an LLM (paper section 2.2).

Each conversation gets one sentence that states the user's goal without its specifics, phrased
"You are a user chatting with an assistant language model to ...": the system message a User LM
is trained and prompted with. The LLM sees a short instruction, three hand-written demonstrations
(:data:`FEW_SHOT`) and the conversation, as chat turns.

:func:`generate_intents` sends the conversations that lack an intent through
:meth:`userlm_env.llm.LLMClient.chat_many` in batches (concurrent within a batch). Every answer is
appended to a JSONL cache as soon as its batch returns, keyed by the prompt version, the model and
the conversation text, so an interrupted run resumes where it stopped and a repeated run makes no
call. Conversations that already carry an intent are left alone. Given
``progress=ProgressSettings()`` it shows its progress as ``[intents]``
(:mod:`userlm_env.progress`: conversations with an intent of the total, preset and cached ones
counted as done before the run, failed requests and the client's spend), after every batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from userlm_env.errors import LLMCallError
from userlm_env.progress import Progress, ProgressSettings, client_spend
from userlm_env.training.data import Conversation, with_intent
from userlm_env.types import Message

__all__ = [
    "FEW_SHOT",
    "INSTRUCTION",
    "INTENT_PREFIX",
    "PROMPT_VERSION",
    "IntentCache",
    "IntentConfig",
    "IntentReport",
    "cache_key",
    "generate_intents",
    "intent_messages",
    "normalise_intent",
    "render_conversation",
]

_log = logging.getLogger(__name__)

#: Every intent starts with this phrase (the paper's intent format).
INTENT_PREFIX = "You are a user chatting with an assistant language model to"
#: Bump when the instruction or demonstrations change, so cached intents are not reused.
PROMPT_VERSION = "intent-v1"

INSTRUCTION = (
    "You will read a conversation between a person and an AI assistant. Describe in one "
    "sentence what the person was trying to get done. Keep it high level: leave out names, "
    "numbers, quoted text, code and other specifics, so the sentence would fit any conversation "
    f'with the same aim. Begin the sentence with exactly "{INTENT_PREFIX}". Answer with that '
    "single sentence and nothing else."
)

#: Three demonstrations written for this project: (conversation, intent).
FEW_SHOT: tuple[tuple[tuple[Message, ...], str], ...] = (
    (
        (
            Message(role="user", content="whats a good swap for buttermilk in pancakes"),
            Message(
                role="assistant",
                content="Stir a tablespoon of lemon juice into a cup of milk and wait five "
                "minutes; it thickens like buttermilk.",
            ),
            Message(role="user", content="does that work with oat milk"),
            Message(
                role="assistant",
                content="Yes, oat milk curdles less but still gives fluffy pancakes.",
            ),
        ),
        f"{INTENT_PREFIX} find ingredient substitutions for a breakfast recipe.",
    ),
    (
        (
            Message(
                role="user",
                content="my landlord kept my whole deposit for normal wear, is that legal",
            ),
            Message(
                role="assistant",
                content="In many places ordinary wear and tear cannot be deducted from a "
                "deposit; check your local tenancy rules.",
            ),
            Message(role="user", content="how would i ask for it back in writing"),
            Message(
                role="assistant",
                content="A short, polite letter works: state the dates, the amount, and "
                "a deadline for the refund.",
            ),
        ),
        f"{INTENT_PREFIX} understand their rights as a tenant and draft a request "
        "to recover money.",
    ),
    (
        (
            Message(role="user", content="sql to get top 3 customers by number of orders"),
            Message(
                role="assistant",
                content="SELECT customer_id, COUNT(*) AS n FROM orders GROUP BY customer_id "
                "ORDER BY n DESC LIMIT 3;",
            ),
            Message(role="user", content="now it says name must appear in group by"),
            Message(
                role="assistant",
                content="Add name to the GROUP BY clause, or join the customers table after "
                "grouping.",
            ),
        ),
        f"{INTENT_PREFIX} write and fix a database query for a small report.",
    ),
)

_LABEL = re.compile(r"^(intent( summary)?|summary|answer)\s*:\s*", re.IGNORECASE)
_LEAD_IN = re.compile(
    r"^(the |this )?(user|person)( is| was)?\s+(wants|wanted|would like|is trying|was trying|"
    r"tries|needs|needed|asks|asked|is looking|was looking|aims|wishes)( for)?( to)?\s+",
    re.IGNORECASE,
)


@dataclass
class IntentConfig:
    """How intents are requested from the LLM."""

    batch_size: int = 64  # conversations per chat_many call (cached after each batch)
    max_message_chars: int = 600  # each message is cut to this many characters in the prompt
    max_conversation_chars: int = 4000  # later messages are dropped beyond this many characters
    max_tokens: int = 80  # longest intent, in tokens
    temperature: float = 0.0  # sampling temperature (0: deterministic)
    seed: int = 0  # request seed, for servers that honour it
    cache_path: str | None = None  # JSONL cache of generated intents (None: no cache)
    skip_failed: bool = False  # leave failed conversations without intent instead of raising


@dataclass(frozen=True)
class IntentReport:
    """Counts of one :func:`generate_intents` run."""

    preset: int  # conversations that already carried an intent
    cached: int  # intents read from the cache
    generated: int  # intents written by the LLM in this run
    failed: tuple[str, ...]  # ids of conversations whose request failed or came back empty


class IntentCache:
    """An append-only JSONL file of ``{"key", "conversation_id", "intent"}`` records."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._intents: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def get(self, key: str) -> str | None:
        """The cached intent under ``key``, if any."""
        return self._intents.get(key)

    def add(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """Store ``(key, conversation_id, intent)`` entries and append them to the file."""
        for key, _, intent in entries:
            self._intents[key] = intent
        if self.path is None or not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for key, conversation_id, intent in entries:
                record = {"key": key, "conversation_id": conversation_id, "intent": intent}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _load(self, path: Path) -> None:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                self._intents[record["key"]] = record["intent"]
            except (json.JSONDecodeError, KeyError, TypeError):
                _log.warning(
                    "%s:%d: unreadable cache line skipped (interrupted write?)", path, number
                )


def render_conversation(messages: Sequence[Message], config: IntentConfig) -> str:
    """The conversation as ``USER: ...`` / ``ASSISTANT: ...`` lines, cut to the size limits."""
    lines: list[str] = []
    used = 0
    for index, message in enumerate(messages):
        line = f"{message['role'].upper()}: {_clip(message['content'], config.max_message_chars)}"
        if lines and used + len(line) > config.max_conversation_chars:
            lines.append(f"[... {len(messages) - index} more messages]")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def intent_messages(conversation: Conversation, config: IntentConfig) -> list[Message]:
    """The chat prompt asking for ``conversation``'s intent (instruction, 3 shots, the query)."""
    messages = [Message(role="system", content=INSTRUCTION)]
    for shot, intent in FEW_SHOT:
        messages.append(_query(render_conversation(shot, config)))
        messages.append(Message(role="assistant", content=intent))
    messages.append(_query(render_conversation(conversation.messages, config)))
    return messages


def _query(rendered: str) -> Message:
    return Message(role="user", content=f"Conversation:\n{rendered}\n\nIntent:")


def normalise_intent(text: str) -> str:
    """Make a raw answer one sentence that starts with :data:`INTENT_PREFIX`.

    Takes the first non-empty line, drops labels ("Intent:") and quotes, and when the answer
    does not already start with the phrase, rewrites lead-ins such as "The user wants to".

    Raises:
        ValueError: Nothing usable is left.
    """
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = _LABEL.sub("", line).strip().strip("\"'*` ").strip()
    if line.casefold().startswith(INTENT_PREFIX.casefold()):
        rest = line[len(INTENT_PREFIX) :].strip()
    else:
        rest = _LEAD_IN.sub("", line)
        rest = re.sub(r"^to\s+", "", rest, flags=re.IGNORECASE)
        rest = _lower_first(rest)
    if not rest.strip(" ."):
        raise ValueError(f"no intent in the answer {text!r}")
    return f"{INTENT_PREFIX} {rest}"


def _lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def cache_key(conversation: Conversation, model: str, config: IntentConfig) -> str:
    """What identifies a generated intent: prompt version, model and the rendered conversation."""
    rendered = render_conversation(conversation.messages, config)
    payload = json.dumps([PROMPT_VERSION, model, rendered], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def generate_intents(
    conversations: Sequence[Conversation],
    client: Any,
    config: IntentConfig | None = None,
    *,
    progress: ProgressSettings | None = None,
    progress_unit: str = "conversation",
) -> tuple[list[Conversation], IntentReport]:
    """Give every conversation an intent: kept, cached, or generated (see module doc).

    Args:
        conversations: The conversations, in order; returned in the same order.
        client: An :class:`~userlm_env.llm.LLMClient`.
        config: Batch size, prompt limits, sampling and the cache file.
        progress: Show the progress as ``[intents]`` with these settings (``None``: silent).
        progress_unit: What the progress counts, singular (e.g. ``"train conversation"``).

    Raises:
        LLMCallError: Some requests failed or came back empty and ``skip_failed`` is false;
            the successful ones are cached first, so a rerun only retries the failures.
    """
    config = config or IntentConfig()
    cache = IntentCache(config.cache_path)
    model = client.config.model
    result = list(conversations)
    keys = {i: cache_key(c, model, config) for i, c in enumerate(result) if c.intent is None}
    cached = 0
    for index, key in keys.items():
        if (intent := cache.get(key)) is not None:
            result[index], cached = with_intent(result[index], intent), cached + 1
    todo = [i for i in keys if result[i].intent is None]
    failed: list[str] = []
    shown = _progress(progress, len(result), len(result) - len(todo), progress_unit, client)
    with shown as bar:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            batch_failed = _run_batch(batch, result, keys, client, cache, config)
            failed += batch_failed
            if bar is not None:
                bar.advance(len(batch), failed=len(batch_failed))
    report = IntentReport(len(result) - len(keys), cached, len(todo) - len(failed), tuple(failed))
    if failed and not config.skip_failed:
        raise LLMCallError(f"no intent for {len(failed)} conversations: {failed[:10]}")
    return result, report


def _progress(
    settings: ProgressSettings | None, total: int, done_before: int, unit: str, client: Any
) -> AbstractContextManager[Progress | None]:
    """The ``[intents]`` progress of one :func:`generate_intents` call (nothing when off)."""
    if settings is None:
        return nullcontext()
    return Progress(
        total,
        label="intents",
        unit=unit,
        done_before=done_before,
        spend=client_spend(client),
        settings=settings,
    )


def _run_batch(
    batch: list[int],
    result: list[Conversation],
    keys: dict[int, str],
    client: Any,
    cache: IntentCache,
    config: IntentConfig,
) -> list[str]:
    prompts = [intent_messages(result[i], config) for i in batch]
    answers = client.chat_many(
        prompts,
        seeds=[config.seed] * len(batch),
        return_exceptions=True,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
    )
    fresh, failed = [], []
    for index, answer in zip(batch, answers, strict=True):
        intent = _intent_or_none(answer, result[index].conversation_id)
        if intent is None:
            failed.append(result[index].conversation_id)
            continue
        result[index] = with_intent(result[index], intent)
        fresh.append((keys[index], result[index].conversation_id, intent))
    cache.add(fresh)
    return failed


def _intent_or_none(answer: Any, conversation_id: str) -> str | None:
    if isinstance(answer, BaseException):
        _log.warning("intent request for %s failed: %s", conversation_id, answer)
        return None
    try:
        return normalise_intent(answer.text)
    except ValueError:
        _log.warning("empty intent for %s: %r", conversation_id, answer.text)
        return None
