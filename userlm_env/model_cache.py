"""The conversion cache of GGUF models: one folder of plain checkpoint files per GGUF file.

Transformers de-quantizes a GGUF file on every load (about 17 s for the embedded model), so
:mod:`userlm_env.models` saves the de-quantized model and its tokenizer once and reads the saved
folder afterwards. This module holds everything about that folder and nothing about loading:

* where entries live: :func:`cache_root` (``$USERLM_ENV_CACHE/models``, default
  ``~/.cache/userlm_env/models``) and :func:`cache_entry`
  (``<label>-<sha256 prefix>-<size>``, see :func:`fingerprint`);
* when an entry can be trusted: :func:`is_complete_cache` (a manifest listing every file and
  its size, written last);
* how an entry is written: :func:`write_entry` saves into a temporary sibling folder and renames
  it into place only once complete; :func:`discard` removes a broken entry.

Concurrency: :func:`entry_lock` is one ``filelock.FileLock`` per entry (``<entry>.lock``, beside
it). Whoever converts and writes an entry holds it, so two processes (or threads) never convert
the same entry at once: the second waits, then finds the first one's complete entry. Since
writers hold the lock, any temporary folder of the entry found by a lock holder was left by a
writer that died, and :func:`write_entry` deletes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

__all__ = [
    "CACHE_ENV",
    "MANIFEST",
    "cache_entry",
    "cache_root",
    "discard",
    "entry_lock",
    "fingerprint",
    "is_complete_cache",
    "remove_stale_tmp",
    "write_entry",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the root of userlm-env's caches (models go in ``models/``).
CACHE_ENV = "USERLM_ENV_CACHE"
#: The file, written last into an entry, that lists the entry's files and their sizes.
MANIFEST = "userlm_env_cache.json"
_TMP_PREFIX = ".tmp-"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding converted models (created on first write).

    Args:
        cache_dir: An explicit folder; default ``$USERLM_ENV_CACHE/models`` or
            ``~/.cache/userlm_env/models``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get(CACHE_ENV) or "~/.cache/userlm_env"
    return Path(root).expanduser() / "models"


def fingerprint(path: Path) -> str:
    """``<first 16 hex digits of the file's sha256>-<its size in bytes>``."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return f"{digest.hexdigest()[:16]}-{path.stat().st_size}"


def cache_entry(label: str, gguf: Path, root: Path) -> Path:
    """The cache folder of one GGUF file: its label, content hash prefix and size."""
    return root / f"{label}-{fingerprint(gguf)}"


def is_complete_cache(entry: Path) -> bool:
    """Whether ``entry`` is a fully written cache entry: a manifest whose files all match."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files: dict[str, int] = manifest["files"]
        return bool(files) and all(
            (entry / rel).is_file() and (entry / rel).stat().st_size == size
            for rel, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


@contextmanager
def entry_lock(entry: Path) -> Iterator[bool]:
    """Hold ``<entry>.lock`` (waiting for another holder to finish) for the ``with`` block.

    Yields:
        Whether the lock is held: ``False`` when the lock file cannot be created (a read-only
        cache); the caller then works unlocked, and its write fails and is logged.
    """
    lock = FileLock(entry.parent / f"{entry.name}.lock")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as error:
        logger.warning("cannot lock model cache %s (%s); going on unlocked", entry, error)
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def write_entry(entry: Path, save: Callable[[Path], None], *, source: str) -> bool:
    """Write ``entry`` atomically; call it while holding :func:`entry_lock`.

    ``save(folder)`` writes the files into a fresh temporary sibling folder; a manifest is added
    and the folder replaces ``entry`` by a rename (atomic on one file system).

    Args:
        entry: The entry folder to (re)write.
        save: Writes the checkpoint files into the folder it is given.
        source: Where the files came from, recorded in the manifest.

    Returns:
        Whether the entry was written; a failure (e.g. a read-only cache) is logged, and the
        next load converts again.
    """
    tmp = entry.parent / f"{_TMP_PREFIX}{entry.name}-{uuid.uuid4().hex[:8]}"
    try:
        remove_stale_tmp(entry)
        tmp.mkdir(parents=True)
        save(tmp)
        _write_manifest(tmp, source)
        discard(entry)
        tmp.rename(entry)
    except OSError as error:
        logger.warning("could not write model cache %s (%s); next load converts", entry, error)
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def discard(entry: Path) -> None:
    """Move a (possibly partial) entry aside, then delete it; call it under the entry's lock."""
    if not entry.exists():
        return
    trash = entry.parent / f"{_TMP_PREFIX}{entry.name}-trash-{uuid.uuid4().hex[:8]}"
    entry.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_tmp(entry: Path) -> None:
    """Delete the entry's temporary folders; under its lock, only dead writers leave them."""
    for tmp in entry.parent.glob(f"{_TMP_PREFIX}{entry.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _write_manifest(folder: Path, source: str) -> None:
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    manifest = {"source": source, "files": files, "created": time.time()}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
