"""The one prompt format of a User LM, shared by the in-process simulator and the trainer.

A User LM reads the user's intent as the *system* message, then the conversation so far, and
writes the next message under the *user* role (paper section 2.1). Most chat templates can only
open an *assistant* turn (``add_generation_prompt``), so the user-turn opening is derived from the
template itself: the conversation is rendered with one extra user message whose content is a
sentinel string, and everything before the sentinel is the prompt. The text after the sentinel is
the template's end-of-turn text for a user message (``<|im_end|>\\n`` for ChatML).

Because the prompt is cut out of a full rendering, a training sample satisfies
``prompt + target + user_turn_suffix(tokenizer) == <template rendering with the target as the
last user message>``, and the simulator conditions on exactly the prompt the trainer trained on.

No intent (``intent_text=None``): no system message is passed. Some templates (SmolLM2's ChatML)
then insert a default system message ("You are a helpful AI assistant ..."), which would condition
the user on assistant text. When the template does that, an *empty* system message is passed
instead: the prompt keeps an empty system block but carries no intent or default text. Templates
that always emit a fixed system block (Llama 3.1's date header) keep it, as it holds no intent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from userlm_env.errors import UserLMEnvError
from userlm_env.types import Message

__all__ = [
    "ChatTemplateError",
    "end_of_turn_token_ids",
    "injects_default_system",
    "render_training_sample",
    "render_user_prompt",
    "user_turn_suffix",
]

# Markers that no real conversation contains; templates copy message content verbatim.
_USER_SENTINEL = "USERLMENVUSERSENTINEL7F3A9C"
_SYSTEM_SENTINEL = "USERLMENVSYSTEMSENTINEL4B2D1E"
_ROLES = frozenset({"user", "assistant"})


class ChatTemplateError(UserLMEnvError, ValueError):
    """A tokenizer has no usable chat template, or the conversation cannot be rendered."""


def render_user_prompt(tokenizer: Any, intent_text: str | None, messages: Sequence[Message]) -> str:
    """Render the prompt from which a User LM writes the next user message.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        intent_text: The user's intent, placed as the system message; ``None`` for no intent.
        messages: The conversation so far: user and assistant messages only.

    Returns:
        The template's text up to where the next user message's content begins.
    """
    _check_messages(messages)
    probe = [*_system_messages(tokenizer, intent_text), *messages, _user(_USER_SENTINEL)]
    text = _render(tokenizer, probe)
    return text[: _locate(text, _USER_SENTINEL, tokenizer)]


def user_turn_suffix(tokenizer: Any) -> str:
    """The text the template puts after a user message's content (``"<|im_end|>\\n"``)."""
    text = _render(tokenizer, [_user(_USER_SENTINEL)])
    return text[_locate(text, _USER_SENTINEL, tokenizer) + len(_USER_SENTINEL) :]


def render_training_sample(
    tokenizer: Any, intent_text: str | None, history: Sequence[Message], target: str
) -> tuple[str, str]:
    """Split one flipped-dialogue sample into ``(prompt, completion)``.

    ``prompt`` equals :func:`render_user_prompt` for the same intent and history, so training and
    simulation see the same text; ``completion`` is the target user message followed by the
    template's end-of-turn text (the end marker alone as ``target`` teaches ending).
    """
    if not target:
        raise ValueError("the target user message of a training sample must not be empty")
    prompt = render_user_prompt(tokenizer, intent_text, history)
    return prompt, target + user_turn_suffix(tokenizer)


def injects_default_system(tokenizer: Any) -> bool:
    """Whether the template adds a non-empty system message when none is given."""
    bare = _render(tokenizer, [_user(_USER_SENTINEL)])
    with_system = _render(tokenizer, [_system(_SYSTEM_SENTINEL), _user(_USER_SENTINEL)])
    before, _, after = with_system.partition(_SYSTEM_SENTINEL)
    if not (bare.startswith(before) and bare.endswith(after)):
        return False
    default = bare[len(before) : len(bare) - len(after)]
    return bool(default.strip())


def end_of_turn_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a generated user message: EOS and the special token closing a turn."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    suffix_ids = tokenizer.encode(user_turn_suffix(tokenizer), add_special_tokens=False)
    if suffix_ids and _is_special(tokenizer, suffix_ids[0]):
        ids.append(suffix_ids[0])
    return sorted(set(ids))


def _is_special(tokenizer: Any, token_id: int) -> bool:
    token = tokenizer.convert_ids_to_tokens(token_id)
    return token_id in tokenizer.all_special_ids or token in tokenizer.get_added_vocab()


def _system_messages(tokenizer: Any, intent_text: str | None) -> list[Message]:
    if intent_text is not None:
        return [_system(intent_text)]
    return [_system("")] if injects_default_system(tokenizer) else []


def _render(tokenizer: Any, conversation: list[Message]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "assign one to tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)


def _locate(text: str, sentinel: str, tokenizer: Any) -> int:
    position = text.rfind(sentinel)
    if position < 0:
        raise ChatTemplateError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} alters message "
            "content, so the user-turn prefix cannot be derived from it"
        )
    return position


def _check_messages(messages: Sequence[Message]) -> None:
    for index, message in enumerate(messages):
        if message.get("role") not in _ROLES or not isinstance(message.get("content"), str):
            raise ChatTemplateError(
                f"message {index} must be a user or assistant message with string content, "
                f"got {message!r} (the intent goes in intent_text, not as a system message)"
            )


def _user(content: str) -> Message:
    return {"role": "user", "content": content}


def _system(content: str) -> Message:
    return {"role": "system", "content": content}
