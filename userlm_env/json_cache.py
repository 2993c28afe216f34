"""The one JSON disk cache of userlm-env.

:class:`JsonCache` keeps JSON values in ``<folder>/<key[:2]>/<key>.json``; the LLM client, the
LLM judges and the LLM sharder all cache their results through it, keyed by :func:`cache_key`
(the SHA-256 of everything that shapes a result). Writes are atomic (a temporary file in the
same folder, then ``os.replace``): a reader sees the old entry or the whole new one.

Corruption policy (the same for every user): an entry that cannot be read, is not valid JSON,
or that the caller's ``decode`` rejects is *corrupt*. It is logged as a warning once (naming
the file and the error), counted in :attr:`JsonCache.corrupt_entries` and treated as a miss, so
the caller computes the value again and its :meth:`JsonCache.put` overwrites the bad entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

__all__ = ["JsonCache", "cache_key"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
#: What a failed read or decode raises (DataError is a ValueError; JSON errors are too).
_CORRUPT_ERRORS = (OSError, ValueError, TypeError, KeyError)


def cache_key(*parts: Any) -> str:
    """The SHA-256 hex digest of the JSON encoding of ``parts``.

    Mappings are encoded with sorted keys and anything JSON cannot encode by its ``repr``, so
    equal parts always give the same key.

    Args:
        *parts: Everything that identifies one cached value.

    Returns:
        A 64-character hex string.
    """
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JsonCache:
    """JSON values on disk, one file per key, with one policy for corrupt entries.

    Args:
        folder: Where entries live (created on the first write); ``None`` disables the cache:
            every :meth:`get` misses and :meth:`put` does nothing.

    Attributes:
        folder: The cache folder, or ``None`` when disabled.
        corrupt_entries: How many corrupt entries were met (each counted once until rewritten).
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.corrupt_entries = 0
        self._reported: set[Path] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the cache reads and writes at all."""
        return self.folder is not None

    def path(self, key: str) -> Path:
        """The file of ``key`` (``<folder>/<key[:2]>/<key>.json``).

        Raises:
            ValueError: The cache is disabled.
        """
        if self.folder is None:
            raise ValueError("the cache is disabled (folder=None)")
        return self.folder / key[:2] / f"{key}.json"

    @overload
    def get(self, key: str) -> Any | None: ...

    @overload
    def get(self, key: str, decode: Callable[[Any], _T]) -> _T | None: ...

    def get(self, key: str, decode: Callable[[Any], Any] | None = None) -> Any | None:
        """The value stored under ``key``, or ``None`` on a miss.

        Args:
            key: The entry's key (see :func:`cache_key`).
            decode: Turns the stored JSON into the caller's value; an error it raises
                (``ValueError``, ``TypeError``, ``KeyError``) marks the entry corrupt.

        Returns:
            The (decoded) value; ``None`` when the cache is disabled, the entry is absent or
            the entry is corrupt (see the module's corruption policy).
        """
        if self.folder is None:
            return None
        path = self.path(key)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            return decode(value) if decode is not None else value
        except FileNotFoundError:
            return None
        except _CORRUPT_ERRORS as error:
            self._report_corrupt(path, error)
            return None

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` atomically, replacing any entry (a corrupt one too).

        Args:
            key: The entry's key (see :func:`cache_key`).
            value: Anything :func:`json.dump` can encode.
        """
        if self.folder is None:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, value)
        with self._lock:
            self._reported.discard(path)

    def _report_corrupt(self, path: Path, error: BaseException) -> None:
        """Warn about and count ``path`` the first time it is found corrupt."""
        with self._lock:
            if path in self._reported:
                return
            self._reported.add(path)
            self.corrupt_entries += 1
        _log.warning("ignoring corrupt cache entry %s (%s: %s)", path, type(error).__name__, error)


def _write_atomically(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to a temporary file beside ``path``, then move it into place."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:8]}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as sink:
            json.dump(value, sink, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
