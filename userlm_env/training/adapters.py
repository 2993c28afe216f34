"""LoRA adapters for the UserLM trainer: set them up, save what was trained, load it back.

:func:`apply_adapters` wraps a causal LM in a PEFT LoRA model: low-rank updates on the linear
layers (``target_modules``, by default every linear layer except the output head) and, for the
tokens named in ``trainable_tokens``, their rows of the input embedding and of the output head
(the same rows when the two are tied). Those rows matter: the end-of-conversation marker is a
token the trainer adds, so its rows start untrained, and a base model's chat-template tokens
(Llama 3's ``<|start_header_id|>`` ...) may be untrained as well; LoRA alone cannot give them
useful vectors. Everything else stays frozen. Trainable parameters are kept in float32 when the
frozen weights are in bf16/fp16 (``float32_trainable``; DeepSpeed ZeRO-3 cannot mix dtypes, so
turn it off there).

:func:`save_trained` writes a run's result in one of two forms:

* ``save="merged"`` (the default): the adapters folded into the weights
  (``merge_and_unload``) and saved as a plain checkpoint; it loads anywhere a full fine-tuning
  checkpoint loads, including ``make_simulator("userlm", model=<folder>)``.
* ``save="adapter"``: the PEFT adapter folder (``adapter_config.json``,
  ``adapter_model.safetensors``) and the tokenizer (with the end marker). The adapter config names
  the base model (``base_model`` or where the model was loaded from); the trained token rows are
  stored in the adapter, and when tokens were added that are not trained their full embedding
  matrices are stored too, so the folder rebuilds the trained model exactly.
  :func:`load_adapter_model` loads such a folder (base model, vocabulary resized to the
  tokenizer, adapter merged) and :func:`merge_adapter_folder` turns it into a merged checkpoint.

The settings come from the ``adapters:`` block of a training preset (a mapping that
:func:`adapter_config` turns into an :class:`AdapterConfig`; ``null`` means full fine-tuning).

Why transformers' ``Trainer`` and not TRL's ``SFTTrainer`` (checked with TRL 1.16): SFTTrainer
takes pre-tokenized ``input_ids`` and ``labels`` and uses our -100 masks as given (its first loss
equalled our masked loss exactly, padded, padding-free and packed), and its own
``completion_only_loss`` / ``assistant_only_loss`` cannot express several user-turn targets with
assistant turns as context anyway. But it always patches a fused LM head that reads
``lm_head.weight`` and ``lm_head.bias`` directly, which fails on PEFT's trainable-token wrapper
around the head (``'TrainableTokensWrapper' object has no attribute 'bias'``), and would skip the
trained end-marker row if patched. TRL's workaround, ``modules_to_save=["lm_head"]``, trains a
full copy of the head (~263M parameters for a 1B Llama, more than the LoRA). Padding-free
packing is available here through transformers' ``DataCollatorWithFlattening``
(:class:`~userlm_env.training.flip.PackedCollator`), so nothing is lost by staying.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from userlm_env.errors import ModelUnavailableError, UserLMEnvError
from userlm_env.types import END_MARKER

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "AdapterConfig",
    "AdapterError",
    "adapter_config",
    "apply_adapters",
    "is_adapter_folder",
    "load_adapter_model",
    "merge_adapter_folder",
    "save_trained",
    "trainable_parameter_counts",
]

_log = logging.getLogger(__name__)

#: The file that marks a PEFT adapter folder.
ADAPTER_CONFIG_FILE = "adapter_config.json"
_ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_METHODS = ("lora",)
_SAVE_FORMS = ("merged", "adapter")


class AdapterError(UserLMEnvError, ValueError):
    """Adapter settings are invalid, or a trained adapter cannot be saved in the asked form."""


@dataclass(frozen=True)
class AdapterConfig:
    """Parameter-efficient fine-tuning settings (the ``adapters:`` block of a training preset).

    Attributes:
        method: The adapter kind; only ``"lora"``.
        r: LoRA rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: Dropout on the LoRA input during training.
        target_modules: Module names (or name suffixes) that get LoRA, or ``"all-linear"`` for
            every linear layer but the output head.
        trainable_tokens: Tokens whose embedding and output-head rows are trained in full (each
            must be one token of the tokenizer); the end marker by default.
        save: ``"merged"`` (a plain checkpoint) or ``"adapter"`` (a PEFT adapter folder).
        float32_trainable: Keep the trainable parameters in float32 under bf16/fp16 frozen
            weights; ``False`` keeps them in the weights' dtype (needed by DeepSpeed ZeRO-3).
    """

    method: str = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    trainable_tokens: list[str] = field(default_factory=lambda: [END_MARKER])
    save: str = "merged"
    float32_trainable: bool = True

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise AdapterError(f"adapter method must be one of {_METHODS}, got {self.method!r}")
        if self.save not in _SAVE_FORMS:
            raise AdapterError(f"adapter save must be one of {_SAVE_FORMS}, got {self.save!r}")
        if self.r < 1 or self.alpha <= 0:
            raise AdapterError(
                f"LoRA needs r >= 1 and alpha > 0, got r={self.r}, alpha={self.alpha}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"adapter dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise AdapterError("adapter target_modules is empty: name modules or use 'all-linear'")
        if isinstance(self.trainable_tokens, str):
            raise AdapterError(
                "trainable_tokens must be a list of tokens, got the string "
                f"{self.trainable_tokens!r}"
            )


def adapter_config(value: AdapterConfig | Mapping[str, Any] | None) -> AdapterConfig | None:
    """An :class:`AdapterConfig` from a preset's ``adapters:`` mapping (``None`` stays ``None``).

    Raises:
        AdapterError: The mapping has keys that are not ``AdapterConfig`` fields, or bad values.
    """
    if value is None or isinstance(value, AdapterConfig):
        return value
    known = {f.name for f in fields(AdapterConfig)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise AdapterError(f"unknown adapter settings {unknown}; known: {sorted(known)}")
    settings = dict(value)
    for name in ("target_modules", "trainable_tokens"):  # Hydra gives ListConfig-like sequences
        if name in settings and not isinstance(settings[name], str):
            settings[name] = list(settings[name])
    return AdapterConfig(**settings)


# --- set-up ----------------------------------------------------------------------------------


def apply_adapters(model: Any, config: AdapterConfig | None, tokenizer: Any = None) -> Any:
    """Wrap ``model`` for adapter training; ``config=None`` returns ``model`` unchanged.

    Args:
        model: A transformers causal LM (its vocabulary already holding the end marker).
        config: The adapter settings, or ``None`` for full fine-tuning.
        tokenizer: Resolves ``config.trainable_tokens`` to ids; needed when that list is not
            empty.

    Returns:
        A ``peft.PeftModelForCausalLM`` whose only trainable parameters are the LoRA matrices
        and the trainable token rows, or ``model`` itself for ``config=None``.

    Raises:
        AdapterError: A trainable token is not one token of ``tokenizer`` or lies outside the
            embedding matrix, or no tokenizer was given for them.
    """
    if config is None:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        trainable_token_indices=_token_rows(model, tokenizer, config.trainable_tokens),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=config.float32_trainable)
    if config.float32_trainable:
        _upcast_trainable(peft_model)
    trainable, total = trainable_parameter_counts(peft_model)
    _log.info(
        "LoRA r=%d alpha=%g on %s, %d trained token rows: %d of %d parameters trainable (%.3f%%)",
        config.r, config.alpha, config.target_modules, len(config.trainable_tokens),
        trainable, total, 100.0 * trainable / max(total, 1),
    )  # fmt: skip
    return peft_model


def trainable_parameter_counts(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` (a tied tensor counts once)."""
    trainable = total = 0
    for parameter in model.parameters():  # yields each shared tensor once
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


def _token_rows(model: Any, tokenizer: Any, tokens: list[str]) -> dict[str, list[int]] | None:
    """PEFT's ``trainable_token_indices``: the token ids, for the input and output embeddings."""
    if not tokens:
        return None
    if tokenizer is None:
        raise AdapterError(
            f"apply_adapters needs the tokenizer to find the trainable tokens {tokens}"
        )
    vocab = tokenizer.get_vocab()
    rows = model.get_input_embeddings().weight.shape[0]
    ids = []
    for token in tokens:
        if token not in vocab:
            raise AdapterError(
                f"trainable token {token!r} is not one token of the tokenizer (add it first, "
                "e.g. userlm_env.training.flip.add_end_token for the end marker)"
            )
        if vocab[token] >= rows:
            raise AdapterError(
                f"trainable token {token!r} has id {vocab[token]} but the model has {rows} "
                "embedding rows: resize the embeddings to the tokenizer first"
            )
        ids.append(int(vocab[token]))
    names = {module: name for name, module in model.named_modules()}
    layers = {names[model.get_input_embeddings()]: ids}
    output = model.get_output_embeddings()
    if output is not None:  # tied heads are recognised by PEFT and share the rows' values
        layers[names[output]] = ids
    return layers


def _upcast_trainable(model: Any) -> None:
    import torch

    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.float()


# --- saving ----------------------------------------------------------------------------------


def save_trained(
    model: Any,
    tokenizer: Any,
    output_dir: str | Path,
    config: AdapterConfig,
    *,
    base_model: str | None = None,
) -> Path:
    """Save an adapter-trained model and its tokenizer in ``output_dir`` (see module docstring).

    ``save="merged"`` folds the adapters into ``model`` in place (it is no longer a PEFT model
    afterwards) and removes adapter files left in ``output_dir`` by an earlier save, which would
    otherwise make transformers apply an adapter on top of the merged weights. For one process
    only: with FSDP or DeepSpeed, save the adapter with ``Trainer.save_model`` and call
    :func:`merge_adapter_folder` on the main process.

    Args:
        model: The ``PeftModel`` returned by :func:`apply_adapters`, after training.
        tokenizer: Its tokenizer (with the end marker).
        output_dir: Folder to write.
        config: The adapter settings (``config.save`` picks the form).
        base_model: The base model's name to record in the adapter config (a hub id, local path,
            or embedded model name); default: where the model was loaded from.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        AdapterError: ``model`` is not a PEFT model, or ``save="adapter"`` for a model that was
            not loaded from a checkpoint (randomly initialised: there is no base to name).
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise AdapterError(
            f"save_trained expects the PeftModel from apply_adapters, got {type(model).__name__}"
        )
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if config.save == "merged":
        _remove_adapter_files(folder)
        merged = model.merge_and_unload()
        merged.save_pretrained(folder)
    else:
        peft_config = model.peft_config[model.active_adapter]
        base = base_model or peft_config.base_model_name_or_path
        if not base:
            raise AdapterError(
                "save='adapter' needs a base checkpoint, but this model was not loaded from one "
                "(random initialisation?): save it with save='merged'"
            )
        peft_config.base_model_name_or_path = base
        model.save_pretrained(str(folder), save_embedding_layers=_must_save_embeddings(model, base))
    tokenizer.save_pretrained(folder)
    _log.info("saved the %s model in %s", config.save, folder)
    return folder


def _must_save_embeddings(model: Any, base: str) -> bool:
    """Whether the adapter must carry whole embedding matrices to rebuild the trained model.

    Rows added after the base (the end marker...) are re-created at random when the base is
    loaded and resized; the adapter rebuilds them only if they are trained token rows.
    """
    from transformers import AutoConfig

    from userlm_env.models import pretrained_location

    try:
        base_rows = int(AutoConfig.from_pretrained(pretrained_location(base)).vocab_size)
    except (OSError, ValueError) as error:
        _log.warning(
            "cannot read the config of base model %r (%s): storing the whole embedding "
            "matrices in the adapter to be safe",
            base, error,
        )  # fmt: skip
        return True
    rows = int(model.get_input_embeddings().weight.shape[0])
    indices = model.peft_config[model.active_adapter].trainable_token_indices or {}
    trained = {
        i for ids in (indices.values() if isinstance(indices, dict) else [indices]) for i in ids
    }
    missing = sorted(set(range(base_rows, rows)) - trained)
    if missing:
        _log.info(
            "rows %s were added after the base and are not trained token rows: storing the "
            "whole embedding matrices in the adapter", missing[:5],
        )  # fmt: skip
    return bool(missing)


def _remove_adapter_files(folder: Path) -> None:
    for name in (ADAPTER_CONFIG_FILE, *_ADAPTER_WEIGHT_FILES):
        stale = folder / name
        if stale.is_file():
            _log.warning("removing %s: a merged checkpoint must not carry adapter files", stale)
            stale.unlink()


# --- loading ---------------------------------------------------------------------------------


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a PEFT adapter (``adapter_config.json``)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG_FILE).is_file()


def load_adapter_model(folder: str | Path, tokenizer: Any = None) -> Any:
    """The model an adapter folder describes: its base, resized to the tokenizer, adapter merged.

    Args:
        folder: A folder written by ``save_trained(..., save="adapter")`` (or any PEFT LoRA
            adapter of a causal LM with a tokenizer beside it).
        tokenizer: The folder's tokenizer when already loaded (its length sets the vocabulary).

    Returns:
        A plain transformers causal LM (float32, CPU, eval mode) with the adapter merged.

    Raises:
        ModelUnavailableError: The folder or its base model cannot be loaded (offline, the base
            is not in the local cache, the base path is gone).
    """
    import torch
    from huggingface_hub.constants import is_offline_mode
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from userlm_env.models import pretrained_location

    path = str(Path(folder).expanduser())
    try:
        peft_config = PeftConfig.from_pretrained(path)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(f"cannot read the adapter folder {path!r} ({error})") from error
    model: Any
    base = peft_config.base_model_name_or_path
    if not base:
        raise ModelUnavailableError(f"the adapter in {path!r} does not name its base model")
    try:
        location = pretrained_location(base)
        local_only = is_offline_mode() or Path(location).is_dir()
        model = AutoModelForCausalLM.from_pretrained(location, local_files_only=local_only)
    except (OSError, ValueError) as error:  # ValueError: a gone path read as a bad hub id
        raise ModelUnavailableError(
            f"the adapter in {path!r} needs its base model {base!r}, which cannot be loaded "
            f"({error}); offline, a hub id must be in the local Hugging Face cache"
        ) from error
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        with torch.random.fork_rng(devices=[]):  # the adapter restores the new rows
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    merged = PeftModel.from_pretrained(model, path).merge_and_unload()
    return merged.eval()


def merge_adapter_folder(adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Write the merged checkpoint (and tokenizer) of an adapter folder into ``output_dir``.

    Raises:
        AdapterError: ``output_dir`` is ``adapter_dir`` (the adapter files would shadow it).
        ModelUnavailableError: The adapter or its base model cannot be loaded.
    """
    from transformers import AutoTokenizer

    source, target = Path(adapter_dir).expanduser(), Path(output_dir).expanduser()
    if target.resolve() == source.resolve():
        raise AdapterError(f"merge into a folder other than the adapter's own ({source})")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = load_adapter_model(source, tokenizer)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
