"""``HFAssistant``: a local transformers chat model as the assistant, batched.

The embedded SmolLM2-135M-Instruct is the default, so it runs offline on a CPU; any chat model
name or checkpoint that :func:`userlm_env.models.load_model` resolves works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from assistants.litellm import DEFAULT_SYSTEM_PROMPT, conversation_for_assistant
from userlm_env.models import EMBEDDED_MODEL, load_model
from userlm_env.types import ConversationState

__all__ = ["HFAssistant", "HFAssistantConfig"]


@dataclass(frozen=True)
class HFAssistantConfig:
    """Generation settings of :class:`HFAssistant`."""

    max_new_tokens: int = 192  # longest reply, in tokens
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 0.95  # nucleus sampling mass when temperature > 0
    batch_size: int = 16  # conversations per generate call
    max_prompt_tokens: int = 1536  # older turns are cut from the left beyond this


class HFAssistant:
    """Replies with a local causal LM, one left-padded ``generate`` call per batch.

    Args:
        model: A name for :func:`userlm_env.models.load_model`.
        system_prompt: The assistant's system message (``None`` for the template's default).
        config: Generation settings.
    """

    def __init__(
        self,
        model: str = EMBEDDED_MODEL,
        *,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        config: HFAssistantConfig | None = None,
        **overrides: Any,
    ) -> None:
        base = config or HFAssistantConfig()
        self.config = HFAssistantConfig(**{**base.__dict__, **overrides})
        self.system_prompt = system_prompt
        self.loaded = load_model(model)

    def respond(self, states: Sequence[ConversationState]) -> list[str]:
        """One reply per state."""
        replies: list[str] = []
        for start in range(0, len(states), self.config.batch_size):
            replies += self._generate(states[start : start + self.config.batch_size])
        return replies

    def _generate(self, states: Sequence[ConversationState]) -> list[str]:
        import torch

        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        prompts = [self._prompt(s) for s in states]
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(model.device)
        sampling = self.config.temperature > 0
        if sampling:
            torch.manual_seed(hash(tuple(s.turn_seed() for s in states)) % (2**31))
        with torch.no_grad():
            output = model.generate(
                **batch,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=sampling,
                temperature=self.config.temperature if sampling else None,
                top_p=self.config.top_p if sampling else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _prompt(self, state: ConversationState) -> str:
        tokenizer = self.loaded.tokenizer
        messages = conversation_for_assistant(state, self.system_prompt)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) > self.config.max_prompt_tokens:
            prompt = tokenizer.decode(ids[-self.config.max_prompt_tokens :])
        return prompt
