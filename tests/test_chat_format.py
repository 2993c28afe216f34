"""Tests of the shared User LM prompt format (userlm_env.chat_format).

Fast tests use tiny word-level tokenizers built in memory with hand-written templates (a
ChatML one that injects a default system message, and a Llama-3-style one); the slow tests use
the embedded SmolLM2 tokenizer and a copy of it carrying the Llama-3-style template.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from userlm_env.chat_format import (
    ChatTemplateError,
    end_of_turn_token_ids,
    injects_default_system,
    render_training_sample,
    render_user_prompt,
    user_turn_suffix,
)
from userlm_env.types import END_MARKER, Message

# ChatML that, like SmolLM2's, adds a default system message when none is given.
CHATML_WITH_DEFAULT = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a friendly default helper.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-3 style headers; no default system message.
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

INTENT = "You are a user who wants help splitting a restaurant bill among friends."
HISTORY: list[Message] = [
    {"role": "user", "content": "how do i split a bill"},
    {"role": "assistant", "content": "Sure! How many people and what is the total?"},
]


def _tiny_tokenizer(template: str) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>"]
    specials += ["<|start_header_id|>", "<|end_header_id|>"]
    vocab = {"[UNK]": 0, **{tok: i + 1 for i, tok in enumerate(specials)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = "<|eot_id|>" if "eot_id" in template else "<|im_end|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        eos_token=eos,
        bos_token="<|begin_of_text|>",
        additional_special_tokens=specials,
    )
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def chatml() -> Any:
    return _tiny_tokenizer(CHATML_WITH_DEFAULT)


@pytest.fixture(scope="module")
def llama3() -> Any:
    return _tiny_tokenizer(LLAMA3_STYLE)


def test_chatml_prompt_has_intent_history_and_user_opening(chatml: Any) -> None:
    prompt = render_user_prompt(chatml, INTENT, HISTORY)
    assert prompt.startswith(f"<|im_start|>system\n{INTENT}<|im_end|>\n")
    assert "<|im_start|>assistant\nSure! How many people" in prompt
    assert prompt.endswith("<|im_end|>\n<|im_start|>user\n")
    assert "default helper" not in prompt


def test_no_intent_drops_the_injected_default_system_text(chatml: Any) -> None:
    assert injects_default_system(chatml)
    prompt = render_user_prompt(chatml, None, [])
    assert prompt == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"
    assert "default helper" not in render_user_prompt(chatml, None, HISTORY)


def test_llama3_style_prompt_opens_a_user_header(llama3: Any) -> None:
    prompt = render_user_prompt(llama3, INTENT, HISTORY)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert prompt.endswith("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    assert user_turn_suffix(llama3) == "<|eot_id|>"
    assert end_of_turn_token_ids(llama3) == [llama3.convert_tokens_to_ids("<|eot_id|>")]


def test_llama3_style_without_intent_has_no_system_block(llama3: Any) -> None:
    assert not injects_default_system(llama3)
    prompt = render_user_prompt(llama3, None, [])
    assert prompt == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"


@pytest.mark.parametrize("template", [CHATML_WITH_DEFAULT, LLAMA3_STYLE])
@pytest.mark.parametrize("intent", [INTENT, None])
@pytest.mark.parametrize("target", ["ok its 4 people and 120 dollars", END_MARKER])
def test_training_sample_matches_prompt_and_full_rendering(
    template: str, intent: str | None, target: str
) -> None:
    tokenizer = _tiny_tokenizer(template)
    prompt, completion = render_training_sample(tokenizer, intent, HISTORY, target)
    assert prompt == render_user_prompt(tokenizer, intent, HISTORY)
    assert completion == target + user_turn_suffix(tokenizer)
    system: list[Message] = [{"role": "system", "content": intent or ""}]
    if intent is None and not injects_default_system(tokenizer):
        system = []
    full = tokenizer.apply_chat_template(
        [*system, *HISTORY, {"role": "user", "content": target}], tokenize=False
    )
    assert prompt + completion == full


def test_system_message_in_history_is_rejected(chatml: Any) -> None:
    with pytest.raises(ChatTemplateError, match="intent goes in intent_text"):
        render_user_prompt(chatml, INTENT, [{"role": "system", "content": "x"}])


def test_missing_or_content_altering_template_is_rejected() -> None:
    no_template = _tiny_tokenizer(CHATML_WITH_DEFAULT)
    no_template.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_user_prompt(no_template, INTENT, [])
    upper = _tiny_tokenizer("{% for m in messages %}{{ m['content'] | lower }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="alters message content"):
        render_user_prompt(upper, INTENT, [])


def test_empty_training_target_is_rejected(chatml: Any) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        render_training_sample(chatml, INTENT, HISTORY, "")


# --- the embedded SmolLM2 tokenizer -----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm_tokenizer() -> Any:
    from userlm_env.models import EMBEDDED_MODEL, load_model

    return load_model(EMBEDDED_MODEL).tokenizer


@pytest.mark.slow
def test_embedded_chatml_tokenizer(smollm_tokenizer: Any) -> None:
    prompt = render_user_prompt(smollm_tokenizer, INTENT, HISTORY)
    assert prompt.startswith(f"<|im_start|>system\n{INTENT}<|im_end|>\n")
    assert prompt.endswith("<|im_start|>user\n")
    bare = render_user_prompt(smollm_tokenizer, None, [])
    assert bare == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"
    assert user_turn_suffix(smollm_tokenizer) == "<|im_end|>\n"
    assert end_of_turn_token_ids(smollm_tokenizer) == [smollm_tokenizer.eos_token_id]
    prompt, completion = render_training_sample(smollm_tokenizer, INTENT, HISTORY, "4 people")
    assert completion == "4 people<|im_end|>\n"


@pytest.mark.slow
def test_embedded_tokenizer_copy_with_llama3_template(smollm_tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(smollm_tokenizer)
    tokenizer.chat_template = LLAMA3_STYLE
    prompt = render_user_prompt(tokenizer, INTENT, HISTORY)
    assert prompt.endswith("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    assert f"system<|end_header_id|>\n\n{INTENT}<|eot_id|>" in prompt
    assert render_user_prompt(tokenizer, None, []).endswith(
        "<|start_header_id|>user<|end_header_id|>\n\n"
    )
    assert "system" not in render_user_prompt(tokenizer, None, [])
    assert smollm_tokenizer.chat_template != LLAMA3_STYLE  # the original is untouched
