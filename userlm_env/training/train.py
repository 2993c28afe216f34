"""The bundled UserLM trainer: full fine-tuning on conversations with transformers' Trainer.

:func:`train_userlm` loads (or randomly initialises) a causal LM, adds the end-of-conversation
token, turns the conversations into training sequences, and runs the Trainer with the paper's
recipe by default (section 2.2): learning rate 2e-5, 1,024 sequences per optimiser step (reached
by gradient accumulation), sequences up to 2,048 tokens, bf16 on GPU, gradient checkpointing,
and length-grouped batches.

Sequences (``TrainConfig.sample_mode``):

* ``"conversation"`` (default): one sequence per conversation, every user turn and the end
  marker a target (:mod:`userlm_env.training.whole`). Each user turn gets exactly the loss it
  has in its flipped sample, for O(K) instead of O(K^2) tokens; a step of N sequences then
  holds about N x (mean K + 1) flipped samples' worth of targets.
* ``"flipped"``: the paper's exact recipe, K+1 samples per conversation
  (:mod:`userlm_env.training.flip`).

Batches are padded (``FlipCollator``) or, with ``packing=True``, concatenated without padding
(``PackedCollator``; best with ``attn_implementation="flash_attention_2"`` on GPU).

Checkpoints go to ``output_dir/checkpoint-*`` and a run resumes from the latest one with
``resume_from_checkpoint=True``. The final model and tokenizer (with the end token) are saved in
``output_dir`` (:func:`save_final`) and load in ``make_simulator("userlm", model=output_dir)``.

Several GPUs: launch ``experiments/train.py`` with ``accelerate launch --config_file
experiments/conf/accelerate/fsdp.yaml``; the gradient accumulation is divided by ``WORLD_SIZE``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from userlm_env.chat_format import ChatTemplateError
from userlm_env.errors import ModelUnavailableError
from userlm_env.models import load_tokenizer as load_base_tokenizer
from userlm_env.models import pretrained_location
from userlm_env.training.adapters import (
    adapter_config,
    apply_adapters,
    merge_adapter_folder,
    save_trained,
)
from userlm_env.training.data import Conversation
from userlm_env.training.flip import (
    FlipCollator,
    FlipConfig,
    FlipDataset,
    FlipResult,
    PackedCollator,
    add_end_token,
    flip_conversations,
)
from userlm_env.training.whole import WholeResult, whole_conversations

__all__ = [
    "SAMPLE_MODES",
    "LossRecorder",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_samples",
    "collator",
    "gradient_accumulation_steps",
    "load_tokenizer",
    "save_final",
    "train_userlm",
    "training_arguments",
]

_log = logging.getLogger(__name__)

#: ``TrainConfig.sample_mode``: one sequence per conversation, or the paper's flipped samples.
SAMPLE_MODES = ("conversation", "flipped")


@dataclass
class TrainConfig:
    """Everything one training run needs besides the conversations (defaults: the paper's)."""

    # --- model ---
    model: str = "meta-llama/Llama-3.2-1B"  # start: hub id, local path or embedded model name
    tokenizer: str | None = None  # tokenizer source when it differs from `model` (None: same)
    init: str = "pretrained"  # "pretrained": load `model`'s weights; "random": build `architecture`
    architecture: dict[str, Any] = field(default_factory=dict)  # config fields for init="random"
    chat_template: str | None = None  # Jinja template text or .jinja path (tokenizers lacking one)
    dtype: str | None = None  # weight dtype; None: float32 weights (bf16 autocast when bf16 is on)
    adapters: dict[str, Any] | None = None  # LoRA (AdapterConfig fields); None: full fine-tuning
    attn_implementation: str | None = None  # "sdpa", "eager", "flash_attention_2"; None: default
    # --- samples ---
    sample_mode: str = "conversation"  # "conversation": one sequence each; "flipped": the paper's
    use_intent: bool = True  # condition on intents; False is the paper's no-intent ablation
    include_end: bool = True  # train the end-of-conversation token after the last assistant turn
    max_length: int = 2048  # longest sequence in tokens (conversations are cut at a turn boundary)
    missing_intent: str = "error"  # conversations without intent: "error" or "skip"
    # --- optimisation ---
    output_dir: str = "outputs/userlm"  # checkpoints and the final model go here
    learning_rate: float = 2e-5  # peak learning rate
    effective_batch_size: int = 1024  # sequences per optimiser step, over devices and accumulation
    per_device_batch_size: int = 4  # sequences per forward pass on one device
    num_epochs: float = 1.0  # passes over the training samples (ignored when max_steps > 0)
    max_steps: int = -1  # optimiser steps to run; -1: from num_epochs
    warmup_ratio: float = 0.03  # fraction of steps with linear warm-up
    lr_scheduler: str = "cosine"  # transformers scheduler name
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    bf16: bool | None = None  # bf16 mixed precision; None: on when the GPU supports it
    gradient_checkpointing: bool = True  # recompute activations to save memory
    group_by_length: bool = True  # batch samples of similar length (less padding)
    pad_to_multiple_of: int | None = None  # round padded lengths up (8 suits tensor cores)
    packing: bool = False  # one padding-free row per batch (position_ids restart per sequence)
    # --- bookkeeping ---
    logging_steps: int = 10  # log the loss every this many optimiser steps
    save_steps: int = 500  # write a checkpoint every this many optimiser steps
    save_total_limit: int | None = 3  # keep at most this many checkpoints
    eval_steps: int | None = None  # evaluate every this many steps (None: once at the end)
    resume_from_checkpoint: str | bool | None = None  # path, or True for the latest in output_dir
    seed: int = 0  # seed of initialisation, shuffling and dropout
    report_to: str = "none"  # transformers loggers ("none", "tensorboard", "wandb"...)
    disable_tqdm: bool = False  # hide the progress bar
    dataloader_num_workers: int = 0  # data-loading worker processes
    use_cpu: bool = False  # train on the CPU even when a GPU is present
    extra_args: dict[str, Any] = field(default_factory=dict)  # more TrainingArguments fields

    def __post_init__(self) -> None:
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(f"sample_mode must be one of {SAMPLE_MODES}: {self.sample_mode!r}")

    def flip_config(self) -> FlipConfig:
        """The sample settings as a :class:`FlipConfig`."""
        return FlipConfig(self.use_intent, self.include_end, self.max_length, self.missing_intent)


@dataclass(frozen=True)
class TrainResult:
    """What a finished :func:`train_userlm` run reports."""

    output_dir: str  # where the final model and tokenizer were saved
    global_step: int  # optimiser steps taken (resumed steps included)
    losses: list[tuple[int, float]]  # (step, training loss) as logged
    eval_loss: float | None  # loss on the evaluation samples at the end, if any
    sample_mode: str  # "conversation" or "flipped"
    samples: int  # training sequences (conversations, or flipped samples)
    tokens: int  # tokens in one pass over the training sequences (no padding)
    target_tokens: int  # tokens carrying a loss in one pass (user turns and their end-of-turn)
    tokens_seen: int  # input tokens the Trainer processed (non-padding unless extra_args say)
    train_seconds: float  # wall time of trainer.train()
    tokens_per_second: float  # tokens_seen per second of trainer.train()
    parameters: int  # parameters of the trained model (embeddings included)
    prepared: FlipResult | WholeResult  # how the training conversations became sequences

    @property
    def first_loss(self) -> float:
        """The first logged training loss."""
        return self.losses[0][1]

    @property
    def last_loss(self) -> float:
        """The last logged training loss."""
        return self.losses[-1][1]


class LossRecorder(TrainerCallback):
    """A Trainer callback that keeps every logged training loss as ``(step, loss)``."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        """Record ``logs["loss"]`` when the Trainer logs it."""
        if logs and "loss" in logs:
            self.losses.append((int(state.global_step), float(logs["loss"])))


# --- model and tokenizer ---------------------------------------------------------------------


def load_tokenizer(name: str, chat_template: str | None = None) -> Any:
    """Load a tokenizer (a fresh copy) and give it ``chat_template``.

    ``name`` is resolved as by :func:`userlm_env.models.load_tokenizer` (embedded model, local
    checkpoint or hub id; offline-aware), which also gives it a pad token when it has none.
    """
    tokenizer = load_base_tokenizer(name)
    if chat_template:
        path = Path(chat_template)
        is_file = chat_template.endswith(".jinja") and path.is_file()
        tokenizer.chat_template = path.read_text(encoding="utf-8") if is_file else chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"tokenizer {name!r} has no chat template: set TrainConfig.chat_template "
            "(the userlm_1b and userlm_8b presets carry a Llama-3 one)"
        )
    return tokenizer


def _from_pretrained(auto_class: Any, name: str, **kwargs: Any) -> Any:
    try:
        return auto_class.from_pretrained(pretrained_location(name), **kwargs)
    except OSError as error:
        raise ModelUnavailableError(
            f"cannot load {name!r} ({error}); offline it must be in the local Hugging Face "
            "cache, or use a local checkpoint or the embedded model 'smollm2-135m-instruct'"
        ) from error


def build_model(config: TrainConfig, tokenizer: Any) -> Any:
    """The model to train: pretrained weights or a random ``architecture``; end token added."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, config.dtype) if config.dtype else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if config.init == "pretrained":
        model = _from_pretrained(AutoModelForCausalLM, config.model, **kwargs)
    elif config.init == "random":
        fields = {"model_type": "llama", **config.architecture}
        model_config = AutoConfig.for_model(
            fields.pop("model_type"), **_token_ids(tokenizer), **fields
        )
        with torch.random.fork_rng(devices=[]):  # seeds the init without touching the caller's RNG
            torch.manual_seed(config.seed)
            model = AutoModelForCausalLM.from_config(model_config, **kwargs)
    else:
        raise ValueError(f"init must be 'pretrained' or 'random', got {config.init!r}")
    add_end_token(tokenizer, model)
    model.config.use_cache = not config.gradient_checkpointing
    return model


def _token_ids(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# --- Trainer set-up --------------------------------------------------------------------------


def gradient_accumulation_steps(config: TrainConfig, world_size: int = 1) -> int:
    """Accumulation steps so that batch x devices x steps is close to the effective batch."""
    per_step = config.per_device_batch_size * max(world_size, 1)
    return max(1, round(config.effective_batch_size / per_step))


def _bf16(config: TrainConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    import torch

    return not config.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def training_arguments(config: TrainConfig, *, has_eval: bool = False) -> Any:
    """The ``TrainingArguments`` of a run (field names adapted to the installed transformers)."""
    from transformers import TrainingArguments

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    kwargs: dict[str, Any] = {
        "output_dir": config.output_dir,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.per_device_batch_size,
        "per_device_eval_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(config, world_size),
        "num_train_epochs": config.num_epochs,
        "max_steps": config.max_steps,
        "lr_scheduler_type": config.lr_scheduler,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "bf16": _bf16(config),
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "eval_strategy": "steps" if has_eval and config.eval_steps else "no",
        "eval_steps": config.eval_steps,
        "seed": config.seed,
        "report_to": config.report_to,
        "disable_tqdm": config.disable_tqdm,
        "dataloader_num_workers": config.dataloader_num_workers,
        "remove_unused_columns": False,
        "use_cpu": config.use_cpu,
        # packed rows hold no padding; counting ids != pad would miss EOS where pad == EOS
        "include_num_input_tokens_seen": "all" if config.packing else "non_padding",
        **_version_specific(config, TrainingArguments),
        **config.extra_args,
    }
    return TrainingArguments(**kwargs)


def _version_specific(config: TrainConfig, arguments_class: Any) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(arguments_class)}
    kwargs: dict[str, Any] = {}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else None
    kwargs[checkpointing or "gradient_checkpointing"] = config.gradient_checkpointing
    if "train_sampling_strategy" in names:
        kwargs["train_sampling_strategy"] = (
            "group_by_length" if config.group_by_length else "random"
        )
    else:
        kwargs["group_by_length"] = config.group_by_length
    if "warmup_ratio" in names:
        kwargs["warmup_ratio"] = config.warmup_ratio
    else:
        kwargs["warmup_steps"] = config.warmup_ratio
    return kwargs


def _resume_point(config: TrainConfig) -> str | None:
    if config.resume_from_checkpoint is True:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
        if last is None:
            _log.info("no checkpoint in %s yet: starting from scratch", config.output_dir)
        return last
    return config.resume_from_checkpoint or None


# --- the run ---------------------------------------------------------------------------------


def build_samples(
    config: TrainConfig, conversations: Sequence[Conversation], tokenizer: Any
) -> FlipResult | WholeResult:
    """The training sequences of ``conversations`` in ``config.sample_mode``."""
    if config.sample_mode == "flipped":
        return flip_conversations(conversations, tokenizer, config.flip_config())
    return whole_conversations(conversations, tokenizer, config.flip_config())


def collator(config: TrainConfig, tokenizer: Any) -> FlipCollator | PackedCollator:
    """The batch collator: padding-free rows with ``config.packing``, else right padding."""
    if config.packing:
        return PackedCollator()
    return FlipCollator(tokenizer.pad_token_id, config.pad_to_multiple_of)


def train_userlm(
    config: TrainConfig,
    train_conversations: Sequence[Conversation],
    eval_conversations: Sequence[Conversation] | None = None,
) -> TrainResult:
    """Fine-tune a User LM on ``train_conversations``; save it in ``config.output_dir``."""
    from transformers import Trainer

    adapters = adapter_config(config.adapters)  # bad settings fail before any loading
    tokenizer = load_tokenizer(config.tokenizer or config.model, config.chat_template)
    model = apply_adapters(build_model(config, tokenizer), adapters, tokenizer)
    prepared = build_samples(config, train_conversations, tokenizer)
    train_set = FlipDataset(prepared.samples)
    eval_set = _eval_set(eval_conversations, tokenizer, config)
    _log_prepared(config, prepared, train_set)
    recorder = LossRecorder()
    trainer = Trainer(
        model=model,
        args=training_arguments(config, has_eval=eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator(config, tokenizer),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=_resume_point(config))
    seconds = time.perf_counter() - start
    eval_loss = trainer.evaluate()["eval_loss"] if eval_set is not None else None
    save_final(trainer, tokenizer, config)
    return _result(config, trainer, recorder, prepared, train_set, seconds, eval_loss)


def save_final(trainer: Any, tokenizer: Any, config: TrainConfig) -> None:
    """Write the trained model and its tokenizer to ``config.output_dir`` (the one place): a
    full fine-tune as is; LoRA adapters merged into a plain checkpoint, or as an adapter folder
    (``adapters.save``), either of which ``make_simulator("userlm", model=...)`` loads."""
    adapters = adapter_config(config.adapters)
    if adapters is None:
        trainer.save_model(config.output_dir)
        tokenizer.save_pretrained(config.output_dir)
    elif int(os.environ.get("WORLD_SIZE", "1")) == 1:
        base = config.model if config.init == "pretrained" else None
        save_trained(trainer.model, tokenizer, config.output_dir, adapters, base_model=base)
    else:  # FSDP/DeepSpeed: the Trainer gathers the adapter; the main process merges it
        merged = adapters.save == "merged"
        adapter_dir = str(Path(config.output_dir) / "adapter") if merged else config.output_dir
        trainer.save_model(adapter_dir)
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(adapter_dir)
            if merged:
                merge_adapter_folder(adapter_dir, config.output_dir)


def _log_prepared(config: TrainConfig, prepared: FlipResult | WholeResult, data: Any) -> None:
    if isinstance(prepared, WholeResult):
        _log.info(
            "%d conversations -> %d sequences (%d tokens, %d targets); %d skipped without "
            "intent, %d too long, %d cut at a turn boundary (%d targets lost), %d trained as "
            "flipped samples (not prefix-stable)",
            prepared.conversations, len(data), data.tokens, data.target_tokens,
            prepared.skipped_no_intent, prepared.dropped_too_long, prepared.truncated,
            prepared.dropped_turns, prepared.fallback,
        )  # fmt: skip
    else:
        _log.info(
            "%d conversations -> %d flipped samples (%d tokens); %d skipped without intent, "
            "%d too long, %d cut",
            prepared.conversations, len(data), data.tokens, prepared.skipped_no_intent,
            prepared.dropped_too_long, prepared.truncated,
        )  # fmt: skip


def _eval_set(
    conversations: Sequence[Conversation] | None, tokenizer: Any, config: TrainConfig
) -> FlipDataset | None:
    if not conversations:
        return None
    samples = build_samples(config, conversations, tokenizer).samples
    return FlipDataset(samples) if samples else None


def _result(
    config: TrainConfig,
    trainer: Any,
    recorder: LossRecorder,
    prepared: FlipResult | WholeResult,
    train_set: FlipDataset,
    seconds: float,
    eval_loss: float | None,
) -> TrainResult:
    tokens_seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    return TrainResult(
        output_dir=config.output_dir,
        global_step=int(trainer.state.global_step),
        losses=list(recorder.losses),
        eval_loss=None if eval_loss is None or math.isnan(eval_loss) else float(eval_loss),
        sample_mode=config.sample_mode,
        samples=len(train_set),
        tokens=train_set.tokens,
        target_tokens=train_set.target_tokens,
        tokens_seen=tokens_seen,
        train_seconds=seconds,
        tokens_per_second=tokens_seen / seconds if seconds > 0 else 0.0,
        parameters=sum(p.numel() for p in trainer.model.parameters()),
        prepared=prepared,
    )
