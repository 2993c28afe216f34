"""TRL: train a policy with ``GRPOTrainer`` against simulated users.

Two ways in, the first recommended:

* :func:`make_rollout_func` gives ``GRPOTrainer(rollout_func=...)`` whole conversations. The
  simulated user speaks as real ``user`` messages; the policy writes every assistant reply; only
  the policy's tokens are trained (``env_mask``). Rows come from :func:`intent_dataset`; the
  env's reward reaches GRPO through the reward function :func:`env_reward`::

      from trl import GRPOConfig, GRPOTrainer
      from userlm_env.integrations.trl import env_reward, intent_dataset, make_rollout_func

      env_id, settings = "userlm_env/GSMSymbolic-v0", {"simulator": "sharded", "max_replies": 4}
      trainer = GRPOTrainer(
          model=model, processing_class=tokenizer, reward_funcs=env_reward,
          args=GRPOConfig(num_generations=4, max_completion_length=1024, ...),
          train_dataset=intent_dataset(env_id, **settings),
          rollout_func=make_rollout_func(env_id, max_new_tokens=256, **settings),
      )

* :func:`make_environment_factory` gives ``GRPOTrainer(environment_factory=...)`` a
  :class:`UserToolEnvironment`, for TRL's tool-calling loop; rows come from
  :func:`tool_dataset`. Second best: see the class.

Both need ``pip install "userlm-env[trl]"``.
"""

from __future__ import annotations

import copy
import inspect
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from gymnasium.vector import AutoresetMode

from userlm_env.chat_format import ChatTemplateError
from userlm_env.env import (
    ConversationEnv,
    EnvParts,
    build_env_parts,
    build_simulator,
    env_settings,
    load_env_intents,
)
from userlm_env.errors import UserLMEnvError
from userlm_env.protocols import Simulator
from userlm_env.types import Intent
from userlm_env.vector import ConversationVectorEnv

__all__ = [
    "INTENT_PROMPT_PREFIX",
    "TOOL_INSTRUCTIONS",
    "ChatTokens",
    "ConversationRollout",
    "RolloutPromptError",
    "UserToolEnvironment",
    "UserToolEnvironmentFactory",
    "env_reward",
    "episode_seed",
    "intent_dataset",
    "intent_id_of",
    "make_environment_factory",
    "make_rollout_func",
    "tool_dataset",
]

#: How a row of :func:`intent_dataset` names its intent in its (placeholder) prompt.
INTENT_PROMPT_PREFIX = "userlm-env intent: "

#: The system message of :func:`tool_dataset`: the user is only reachable through the tool.
TOOL_INSTRUCTIONS = (
    "You are an assistant talking with a user. The user's messages reach you as the results of "
    "the reply_to_user tool: send everything you want to say to the user, questions and "
    "answers alike, through reply_to_user, and keep helping until the conversation ends."
)

# A step's replies: for each conversation, the policy's new token ids and their log-probabilities.
Generated = list[tuple[list[int], list[float]]]


class RolloutPromptError(UserLMEnvError, ValueError):
    """A prompt given to the rollout names no intent (it was not built by intent_dataset)."""


# --------------------------------------------------------------------------------- datasets
def intent_dataset(env_id: str, **env_kwargs: Any) -> Dataset:
    """One row per intent of the env: ``prompt`` and ``intent_id``, for the rollout function.

    ``prompt`` is a placeholder, ``[{"role": "user", "content": "userlm-env intent: <id>"}]``:
    ``GRPOTrainer`` hands :class:`ConversationRollout` the prompts only (not the rows), so the
    prompt carries the intent id. The rollout never shows it to the policy: it starts the
    conversation on that intent and replaces the placeholder by the simulated user's real first
    turn. TRL still passes the placeholder to reward functions as ``prompts`` and logs it;
    reward functions also receive the ``intent_id`` column.

    Args:
        env_id: A registered id (``"userlm_env/GSMSymbolic-v0"``...).
        **env_kwargs: The env settings (as for ``gym.make``); only the intent sources
            (``sources``, ``data_path``, ``intents``) matter here, the others are checked.

    Raises:
        UnknownNameError: An unknown ``env_id``.
        TypeError: A setting the env does not have.
    """
    rows = [
        {"prompt": intent_prompt(intent.intent_id), "intent_id": intent.intent_id}
        for intent in _intents(env_id, env_kwargs)
    ]
    return Dataset.from_list(rows)


def tool_dataset(
    env_id: str, *, instructions: str = TOOL_INSTRUCTIONS, **env_kwargs: Any
) -> Dataset:
    """One row per intent of the env, for :class:`UserToolEnvironment`.

    ``prompt`` is ``[{"role": "system", "content": instructions}, {"role": "user", "content":
    ""}]``: TRL appends what the environment's ``reset`` returns (the user's first turn) to the
    last message, so the policy sees the instructions and the user's real first turn.
    """
    rows = [
        {
            "prompt": [
                {"role": "system", "content": instructions},
                {"role": "user", "content": ""},
            ],
            "intent_id": intent.intent_id,
        }
        for intent in _intents(env_id, env_kwargs)
    ]
    return Dataset.from_list(rows)


def intent_prompt(intent_id: str) -> list[dict[str, str]]:
    """The placeholder prompt of a row of :func:`intent_dataset`."""
    return [{"role": "user", "content": f"{INTENT_PROMPT_PREFIX}{intent_id}"}]


def intent_id_of(prompt: Any) -> str:
    """The intent id a placeholder prompt of :func:`intent_dataset` carries.

    Raises:
        RolloutPromptError: The prompt is not such a placeholder.
    """
    content = prompt[-1].get("content") if isinstance(prompt, list) and prompt else None
    if not isinstance(content, str) or not content.startswith(INTENT_PROMPT_PREFIX):
        raise RolloutPromptError(
            f"the rollout got the prompt {prompt!r}, which names no intent: build the train "
            "dataset with userlm_env.integrations.trl.intent_dataset (its prompts are "
            f"[{{'role': 'user', 'content': '{INTENT_PROMPT_PREFIX}<intent id>'}}])"
        )
    return content[len(INTENT_PROMPT_PREFIX) :]


def _intents(env_id: str, env_kwargs: Mapping[str, Any]) -> list[Intent]:
    settings = _checked_settings(env_id, env_kwargs)
    if settings.get("intents") is not None:
        return list(settings["intents"])
    return load_env_intents(settings.get("sources", ()), settings.get("data_path"))


def _checked_settings(env_id: str, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The env's settings with ``env_kwargs``; an unknown setting raises ``TypeError``."""
    settings = env_settings(env_id, **env_kwargs)
    inspect.signature(build_env_parts).bind(**settings)  # TypeError names the unknown setting
    return settings


# --------------------------------------------------------------------------------- rewards
def env_reward(
    completions: list[Any], env_reward: list[float], **kwargs: Any
) -> list[float | None]:
    """GRPO reward function: the env's reward for each conversation (its episode total).

    ``env_reward`` is the column :class:`ConversationRollout` returns; TRL passes it here.
    (Typed as TRL's reward functions are; it never returns ``None``.)
    """
    if len(env_reward) != len(completions):
        raise ValueError(f"{len(env_reward)} env rewards for {len(completions)} completions")
    return [float(reward) for reward in env_reward]


def episode_seed(base_seed: int, round_index: int, intent_id: str) -> int:
    """The seed of the episodes on ``intent_id`` in one rollout round.

    Every copy of a prompt (the ``num_generations`` rollouts of a GRPO group) gets the same
    seed, on any process, so the group shares the simulator's draws and differs only by the
    policy. A stable hash (not Python's salted ``hash``).
    """
    return zlib.crc32(f"{base_seed}|{round_index}|{intent_id}".encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------ chat tokens
class ChatTokens:
    """The token ids a multi-turn rollout is built from, rendered by the policy's chat template.

    Args:
        tokenizer: The policy's tokenizer (with a chat template).
        system_prompt: The system message of every conversation; ``None`` for none (the
            template's default, if it has one).
        end_of_turn_ids: Ids that end an assistant reply (``GRPOTrainer.eos_token_ids``).
    """

    # Stand-ins for the turn before the next user turn: the template's glue does not depend
    # on what was said.
    _EARLIER = ({"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."})

    def __init__(
        self, tokenizer: Any, system_prompt: str | None, end_of_turn_ids: Sequence[int]
    ) -> None:
        self.tokenizer = tokenizer
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.end_of_turn_ids = frozenset(end_of_turn_ids)

    def prompt_ids(self, first_user_turn: str) -> list[int]:
        """The system message and the user's first turn, with the assistant turn opened."""
        return self._render([*self.system, _message("user", first_user_turn)], True)

    def user_turn_ids(self, text: str, *, closed: bool) -> list[int]:
        """What follows a policy reply up to the next reply: the template's glue and the user
        turn ``text``, ending with the assistant turn opened.

        ``closed``: the reply ended with an end-of-turn token; otherwise (cut at the token
        limit) the template's end-of-turn token comes first.

        Raises:
            ChatTemplateError: The template does not end assistant turns with one of
                ``end_of_turn_ids``, or renders an earlier turn differently once a user turn
                follows it.
        """
        earlier = [*self.system, *self._EARLIER]
        before = self._render(earlier, False)
        after = self._render([*earlier, _message("user", text)], True)
        ends = [index for index, token in enumerate(before) if token in self.end_of_turn_ids]
        if not ends:
            raise ChatTemplateError(
                "the chat template does not end an assistant turn with an end-of-turn token "
                f"({sorted(self.end_of_turn_ids)}), so user turns cannot be appended to replies"
            )
        cut = ends[-1] + 1
        if after[:cut] != before[:cut]:
            raise ChatTemplateError(
                "the chat template renders an assistant turn differently once a user turn "
                "follows it; a multi-turn rollout needs a prefix-preserving template"
            )
        glue = after[cut:]
        return glue if closed else [before[cut - 1], *glue]

    def reply_text(self, ids: Sequence[int]) -> str:
        """The reply the env receives: the policy's tokens as text, special tokens dropped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
        )
        return [int(token) for token in ids]


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# ---------------------------------------------------------------------------------- rollout
@dataclass
class _Conversation:
    """One rollout's tokens as GRPO needs them, and its episode's outcome."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def context(self) -> list[int]:
        """Everything so far: what the policy reads to write its next reply."""
        return self.prompt_ids + self.completion_ids

    def add_reply(self, ids: list[int], logprobs: list[float]) -> None:
        """The policy's tokens: trained (``env_mask`` 1), with their sampling log-probs."""
        self.completion_ids += ids
        self.env_mask += [1] * len(ids)
        self.logprobs += logprobs

    def add_env_tokens(self, ids: list[int]) -> None:
        """Tokens the policy did not write (user turns, template glue): ``env_mask`` 0."""
        self.completion_ids += ids
        self.env_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)


class ConversationRollout:
    """``rollout_func`` for ``GRPOTrainer``: plays whole conversations with simulated users.

    Called as ``rollout(prompts, trainer)`` with the process's slice of prompts (each already
    repeated ``num_generations`` times by TRL's sampler); every prompt is a placeholder from
    :func:`intent_dataset` naming an intent. One :class:`ConversationVectorEnv` (autoreset
    disabled; one per slice size, reused) starts conversation ``i`` on prompt ``i``'s intent
    with seed :func:`episode_seed` (the copies of a prompt share it). Then, until every
    conversation ended: the policy writes one reply per running conversation (one batched
    generation), and one core step scores them all and asks the simulator, in *one* call, for
    the next user turn of those that continue. Conversations that end (solved, user ended,
    ``max_replies`` replies) stop; the others continue.

    Tokens, per conversation: ``prompt_ids`` is the chat template over the system prompt and
    the user's first turn, with the assistant turn opened; ``completion_ids`` is everything
    after it: each reply as generated (with its end-of-turn token when it stopped; ``env_mask``
    1, with its sampling log-probabilities), then the template's glue and the user's next turn
    as a real ``user`` message (``env_mask`` 0, log-prob 0.0), the last reply last. TRL trains
    and counts (``completions/mean_length``) only ``env_mask`` 1 tokens.

    Generation: with ``trainer.use_vllm``, through TRL's vLLM backend (GPU only); otherwise
    the unwrapped policy's ``generate`` with the trainer's sampling settings (``temperature``,
    ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``, ``generation_kwargs`` of
    ``GRPOConfig``) and ``max_new_tokens`` per reply; log-probs are those of the processed
    sampling distribution. Sampling draws from torch's generator, which ``GRPOTrainer`` seeds
    with ``args.seed``, as its own generation does.

    Returns per conversation, besides the three required keys and ``env_mask``:
    ``env_reward`` (the sum of the env's rewards over the episode), ``coverage`` and
    ``termination_reason`` (from the episode's last ``info``), ``episode_seed`` and
    ``messages`` (the conversation, OpenAI format). TRL hands these to every reward function
    as keyword arguments (:func:`env_reward` uses ``env_reward``).

    Set ``GRPOConfig.max_completion_length`` to at least the longest completion (replies plus
    user turns): TRL does not cut a rollout's completion, but the ``dr_grpo`` loss divides by
    it. Text-only (a tokenizer as ``processing_class``). Tested on CPU with one process.

    Args:
        env_id: A registered id (``"userlm_env/GSMSymbolic-v0"``...).
        max_new_tokens: The longest reply, in tokens.
        system_prompt: The system message of every conversation (``None``: none).
        **env_kwargs: The env settings (``simulator``, ``simulator_kwargs``, ``max_replies``,
            ``sources``...), as for ``gym.make``; use the same intent settings as for
            :func:`intent_dataset`.

    Raises:
        UnknownNameError: An unknown ``env_id`` or simulator name.
        TypeError: A setting the env does not have.
    """

    def __init__(
        self,
        env_id: str,
        *,
        max_new_tokens: int,
        system_prompt: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.simulator, self.settings = _shared_parts(env_id, env_kwargs)
        self.rounds = 0  # rollouts played: the round index of episode_seed
        self._envs: dict[int, ConversationVectorEnv] = {}

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        """Play one conversation per prompt; GRPO's inputs and the episodes' outcomes."""
        intent_ids = [intent_id_of(prompt) for prompt in prompts]
        seeds = [episode_seed(trainer.args.seed, self.rounds, i) for i in intent_ids]
        self.rounds += 1
        envs = self.vector_env(len(prompts))
        envs.reset(seed=seeds, options={"intent_ids": intent_ids})
        tokens = ChatTokens(trainer.processing_class, self.system_prompt, trainer.eos_token_ids)
        conversations = self._play(envs, tokens, trainer)
        return {
            "prompt_ids": [c.prompt_ids for c in conversations],
            "completion_ids": [c.completion_ids for c in conversations],
            "logprobs": [c.logprobs for c in conversations],
            "env_mask": [c.env_mask for c in conversations],
            "env_reward": [c.reward for c in conversations],
            "coverage": [float(c.info["coverage"]) for c in conversations],
            "termination_reason": [c.info["termination_reason"] for c in conversations],
            "episode_seed": seeds,
            "messages": [c.info["messages"] for c in conversations],
        }

    def vector_env(self, num_envs: int) -> ConversationVectorEnv:
        """The vector env for slices of ``num_envs`` prompts (built once per size; all share
        the simulator and the intents)."""
        if num_envs not in self._envs:
            self._envs[num_envs] = ConversationVectorEnv(
                num_envs, self.simulator, autoreset_mode=AutoresetMode.DISABLED, **self.settings
            )
        return self._envs[num_envs]

    def close(self) -> None:
        """Release the scorers' resources (sandbox workers) of every vector env."""
        for envs in self._envs.values():
            envs.close()
        self._envs.clear()

    def _play(
        self, envs: ConversationVectorEnv, tokens: ChatTokens, trainer: Any
    ) -> list[_Conversation]:
        states = [state for state in envs.states if state is not None]
        conversations = [_Conversation(tokens.prompt_ids(s.messages[0]["content"])) for s in states]
        generate = _vllm_generate if trainer.use_vllm else _hf_generate
        live = list(range(len(states)))
        while _any_live(trainer, live):
            generated = generate(
                trainer, [conversations[i].context for i in live], self.max_new_tokens
            )
            replies, closed = [], []
            for i, (ids, logprobs) in zip(live, generated, strict=True):
                conversations[i].add_reply(ids, logprobs)
                replies.append(tokens.reply_text(ids))
                closed.append(bool(ids) and ids[-1] in tokens.end_of_turn_ids)
            # One vector-env step: the ended conversations take no reply (autoreset is
            # disabled), the running ones share one scoring pass per task and one simulator call.
            actions: list[str | None] = [None] * len(states)
            for i, reply in zip(live, replies, strict=True):
                actions[i] = reply
            _, rewards, terminated, truncated, infos = envs.step(actions)
            still = []
            for i, ended_turn in zip(live, closed, strict=True):
                conversation = conversations[i]
                conversation.reward += float(rewards[i])
                if terminated[i] or truncated[i]:
                    conversation.info = _info_of(infos, i)
                    continue
                user_turn = states[i].messages[-1]["content"]
                conversation.add_env_tokens(tokens.user_turn_ids(user_turn, closed=ended_turn))
                still.append(i)
            live = still
        return conversations


def _info_of(infos: dict[str, Any], index: int) -> dict[str, Any]:
    """Conversation ``index``'s ``info`` out of a vector env's batched ``infos`` (Gymnasium
    batches a dict-valued key into a dict of arrays, with its masks inside)."""
    info: dict[str, Any] = {}
    for key, values in infos.items():
        if key.startswith("_"):
            continue
        if isinstance(values, dict):
            info[key] = _info_of(values, index)
        elif infos[f"_{key}"][index]:
            info[key] = values[index]
    return info


def make_rollout_func(
    env_id: str, *, max_new_tokens: int, system_prompt: str | None = None, **env_kwargs: Any
) -> ConversationRollout:
    """A ``rollout_func`` for ``GRPOTrainer`` that plays whole conversations on ``env_id``
    (see :class:`ConversationRollout`; call its ``close()`` when training is done)."""
    return ConversationRollout(
        env_id, max_new_tokens=max_new_tokens, system_prompt=system_prompt, **env_kwargs
    )


def _shared_parts(env_id: str, env_kwargs: Mapping[str, Any]) -> tuple[Simulator, dict[str, Any]]:
    """The simulator object and the other settings, intents loaded: what every vector env of a
    rollout shares."""
    settings = _checked_settings(env_id, env_kwargs)
    simulator = build_simulator(
        settings.pop("simulator", "userlm"), settings.pop("simulator_kwargs", None)
    )
    sources, data_path = settings.pop("sources", ()), settings.pop("data_path", None)
    if settings.get("intents") is None:
        settings["intents"] = load_env_intents(sources, data_path)
    return simulator, settings


def _any_live(trainer: Any, live: list[int]) -> bool:
    """Whether another round is due. vLLM's generation is collective across processes, so with
    vLLM every process plays rounds until no process has a running conversation."""
    if not trainer.use_vllm:
        return bool(live)
    count = torch.tensor([len(live)], device=trainer.accelerator.device)
    return bool(trainer.accelerator.gather(count).sum().item() > 0)


def _hf_generate(trainer: Any, contexts: list[list[int]], max_new_tokens: int) -> Generated:
    """One reply per context from the unwrapped policy: left-padded batched sampling."""
    if not contexts:
        return []
    from trl.models import unwrap_model_for_generation

    tokenizer = trainer.processing_class
    device = trainer.accelerator.device
    width = max(len(ids) for ids in contexts)
    padding = [width - len(ids) for ids in contexts]
    input_ids = torch.tensor(
        [[tokenizer.pad_token_id] * pad + ids for pad, ids in zip(padding, contexts, strict=True)],
        device=device,
    )
    attention_mask = torch.tensor(
        [[0] * pad + [1] * len(ids) for pad, ids in zip(padding, contexts, strict=True)],
        device=device,
    )
    config = copy.deepcopy(trainer.generation_config)
    config.max_new_tokens = max_new_tokens
    config.output_scores, config.return_dict_in_generate = True, True
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            generation_kwargs=trainer.generation_kwargs,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
    ):
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
    new_tokens = output.sequences[:, width:]
    scores = torch.stack(output.scores, dim=1).float().log_softmax(dim=-1)
    logprobs = scores.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
    stops = set(trainer.eos_token_ids)
    replies = []
    for row, row_logprobs in zip(new_tokens.tolist(), logprobs.tolist(), strict=True):
        end = next((k + 1 for k, token in enumerate(row) if token in stops), len(row))
        replies.append((row[:end], row_logprobs[:end]))
    return replies


def _vllm_generate(trainer: Any, contexts: list[list[int]], max_new_tokens: int) -> Generated:
    """One reply per context through TRL's vLLM backend (server or colocate mode).

    GPU only: the CPU tests never reach it. The backend caps every call at its
    ``max_completion_length``; a reply's cap is ``max_new_tokens``, so it is set for the call.
    Collective across processes: every process calls it once per round (see ``_any_live``).
    """
    backend = trainer.vllm_generation
    limit = backend.max_completion_length
    backend.max_completion_length = max_new_tokens
    try:
        _, completions, logprobs, _ = backend.generate(
            prompts=contexts, images=None, num_generations=1
        )
    finally:
        backend.max_completion_length = limit
    return [
        (list(ids), [float("nan") if lp[0] is None else float(lp[0]) for lp in token_logprobs])
        for ids, token_logprobs in zip(completions, logprobs, strict=True)
    ]


# ------------------------------------------------------------------------- tool environment
class UserToolEnvironment:
    """One conversation for TRL's tool loop (``GRPOTrainer(environment_factory=...)``).

    ``reset(**row)`` starts an episode on the row's ``intent_id`` and returns the user's first
    turn, which TRL appends to the row's last prompt message. The policy talks to the user by
    calling the tool ``reply_to_user(message)``: the message is the assistant's reply, scored
    by the env, and the tool result is the user's next turn. ``get_reward()`` (the sum of the
    env's rewards so far) is the reward TRL adds for this environment; ``info`` holds the last
    ``info`` of the episode and ``episode_seed`` its seed.

    Second best to :func:`make_rollout_func`, because:

    * the user speaks as *tool results*, not as ``user`` messages, which is not how a chat
      model meets users, so what it learns transfers less directly;
    * it needs a chat template TRL can parse tool calls from (SmolLM2's is refused) and a
      policy trained for tool calls: small models rarely call tools, so no reply reaches the
      user and every reward is 0; text the policy writes outside the tool never reaches the
      user, and TRL's loop stops at the first reply without a tool call;
    * TRL runs the tools of a batch one rollout at a time, so every simulator call serves one
      conversation (no batching across the group).

    Built by :class:`UserToolEnvironmentFactory`, which shares one simulator among instances.
    Its public methods are exactly ``reset``, ``reply_to_user`` and ``get_reward``: TRL turns
    every other public method into a tool.
    """

    def __init__(self, parts: EnvParts, seeds: _GroupSeeds) -> None:
        self._env = ConversationEnv.from_parts(parts)
        self._seeds = seeds
        self.reward = 0.0
        self.done = False
        self.info: dict[str, Any] = {}
        self.episode_seed: int | None = None

    def reset(self, intent_id: str | None = None, **row: Any) -> str:
        """Start a conversation on ``intent_id`` (drawn when ``None``); the user's first turn."""
        self.episode_seed = self._seeds.next(intent_id)
        options = {"intent_id": intent_id} if intent_id is not None else None
        observation, self.info = self._env.reset(seed=self.episode_seed, options=options)
        self.reward, self.done = 0.0, False
        return str(observation)

    def reply_to_user(self, message: str) -> str:
        """Send a message to the user and receive the user's answer.

        Args:
            message: What you say to the user: a question, an explanation or your answer.

        Returns:
            The user's next message, or a note that the conversation is over.
        """
        if self.done:
            return self._over_note()
        observation, reward, terminated, truncated, self.info = self._env.step(message)
        self.reward += float(reward)
        self.done = bool(terminated or truncated)
        return self._over_note() if self.done else str(observation)

    def get_reward(self) -> float:
        """The env's reward for the conversation so far (sum over its replies)."""
        return self.reward

    def _over_note(self) -> str:
        reason = self.info.get("termination_reason")
        return f"The conversation is over ({reason}); the user will not answer again."


class _GroupSeeds:
    """Episode seeds for the tool path: the ``group_size`` resets of an intent that follow one
    another share a seed (TRL resets a batch's rollouts in order, a group's copies together)."""

    def __init__(self, base_seed: int, group_size: int) -> None:
        if group_size < 1:
            raise ValueError(f"num_generations must be >= 1, got {group_size}")
        self.base_seed, self.group_size = base_seed, group_size
        self._resets: dict[str, int] = {}

    def next(self, intent_id: str | None) -> int:
        key = intent_id or ""
        count = self._resets.get(key, 0)
        self._resets[key] = count + 1
        return episode_seed(self.base_seed, count // self.group_size, key)


class UserToolEnvironmentFactory:
    """``environment_factory`` for ``GRPOTrainer``: each call builds a
    :class:`UserToolEnvironment`; all share one simulator, core and intent list.

    Args:
        env_id: A registered id.
        num_generations: ``GRPOConfig.num_generations``: the consecutive resets of one intent
            that share an episode seed.
        seed: Base of the episode seeds.
        **env_kwargs: The env settings (``simulator``, ``max_replies``...), as for ``gym.make``.

    Attributes:
        environments: Every environment built so far (TRL pools and reuses them).
    """

    def __init__(
        self, env_id: str, *, num_generations: int = 1, seed: int = 0, **env_kwargs: Any
    ) -> None:
        self.parts = build_env_parts(**_checked_settings(env_id, env_kwargs))
        self.seeds = _GroupSeeds(seed, num_generations)
        self.environments: list[UserToolEnvironment] = []

    def __call__(self) -> UserToolEnvironment:
        """A new environment over the shared parts."""
        environment = UserToolEnvironment(self.parts, self.seeds)
        self.environments.append(environment)
        return environment

    def close(self) -> None:
        """Release the scorers' resources (sandbox workers)."""
        self.parts.core.close()


def make_environment_factory(
    env_id: str, *, num_generations: int = 1, seed: int = 0, **env_kwargs: Any
) -> UserToolEnvironmentFactory:
    """An ``environment_factory`` for ``GRPOTrainer`` (see :class:`UserToolEnvironment`)."""
    return UserToolEnvironmentFactory(
        env_id, num_generations=num_generations, seed=seed, **env_kwargs
    )
