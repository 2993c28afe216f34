"""Wire formats of the sandbox: message framing and the plain-value codec.

Standard library only: this module also runs *inside* the sandbox (the worker imports it by
file), so it must not import anything from ``userlm_env``.

* Framing: every message is a 4-byte big-endian length followed by that many bytes of UTF-8
  JSON. Readers refuse messages longer than a cap, so a hostile writer cannot make them allocate
  without bound.
* Plain values: function arguments and return values cross between the checker and the candidate
  process as tagged JSON. :func:`decode_value` is the trust boundary: whatever bytes the
  candidate sends, it builds only ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``,
  ``bytes`` and ``list``/``tuple``/``dict``/``set``/``frozenset`` of those - never an object
  with custom methods - so a returned value cannot cheat an ``==`` in the tests.
* Exceptions travel as their class name, nearest builtin class and message
  (:func:`describe_error`).
"""

from __future__ import annotations

import builtins
import json
import os
import select
import struct
import time
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "PlainValueError",
    "decode_value",
    "describe_error",
    "encode_value",
    "frame_message",
    "read_exact",
    "read_message",
    "write_message",
]

#: Deepest nesting of containers a plain value may have.
MAX_DEPTH = 200
_HEADER = struct.Struct(">I")
_SCALARS = (type(None), bool, int, float, str)
_TAGS = ("tuple", "set", "frozenset", "dict", "bytes", "complex", "int")
_JSON_INT_LIMIT = 2**63  # larger ints travel as hex: decimal conversion of huge ints is capped


class PlainValueError(ValueError):
    """A value is not plain data (or its encoding is malformed)."""


def encode_value(value: Any, depth: int = 0) -> Any:
    """Turn a plain Python value into JSON-ready data; exact builtin types only.

    Raises:
        PlainValueError: ``value`` holds an object of another type (subclasses included) or
            nests deeper than :data:`MAX_DEPTH`.
    """
    if depth > MAX_DEPTH:
        raise PlainValueError("value nests too deeply")
    kind = type(value)
    if kind is int and abs(value) >= _JSON_INT_LIMIT:
        return {"int": hex(value)}
    if kind in _SCALARS:
        return value
    if kind is list:
        return [encode_value(v, depth + 1) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode_value(v, depth + 1) for v in value]}
    if kind is dict:
        items = [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in value.items()]
        return {"dict": items}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise PlainValueError(f"not plain data: {kind.__name__}")


def decode_value(data: Any, depth: int = 0) -> Any:
    """Rebuild a value encoded by :func:`encode_value`; anything unexpected raises.

    Raises:
        PlainValueError: ``data`` is not a well-formed encoding (or nests too deeply).
    """
    if depth > MAX_DEPTH:
        raise PlainValueError("value nests too deeply")
    kind = type(data)
    if kind in _SCALARS:
        return data
    if kind is list:
        return [decode_value(v, depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise PlainValueError(f"malformed value of type {kind.__name__}")
    ((tag, body),) = data.items()
    if tag not in _TAGS:
        raise PlainValueError(f"unknown tag {tag!r}")
    return _decode_tagged(tag, body, depth)


def _decode_tagged(tag: str, body: Any, depth: int) -> Any:
    try:
        if tag == "bytes":
            return bytes.fromhex(_exact(body, str))
        if tag == "int":
            return int(_exact(body, str), 16)
        if tag == "complex":
            real, imag = _exact(body, list)
            return complex(_exact(real, float), _exact(imag, float))
        items = [decode_value(v, depth + 1) for v in _exact(body, list)]
        if tag == "dict":
            return {_pair(item)[0]: _pair(item)[1] for item in items}
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    except (TypeError, ValueError) as error:
        raise PlainValueError(f"malformed {tag}: {error}") from None


def _exact(value: Any, kind: type) -> Any:
    if type(value) is not kind:
        raise PlainValueError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _pair(item: Any) -> list[Any]:
    if type(item) is not list or len(item) != 2:
        raise PlainValueError("malformed dict item")
    return item


def _wait_readable(fd: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise TimeoutError(f"no data on fd {fd} before the deadline")


def read_exact(fd: int, size: int, deadline: float | None = None) -> bytes | None:
    """Read exactly ``size`` bytes from ``fd``; ``None`` if it closes first.

    Raises:
        TimeoutError: ``deadline`` (a ``time.monotonic()`` value) passed first.
    """
    chunks, remaining = [], size
    while remaining:
        if deadline is not None:
            _wait_readable(fd, deadline)
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, limit: int, deadline: float | None = None) -> Any:
    """Read one framed JSON message; ``None`` at end of stream.

    Raises:
        PlainValueError: the message is longer than ``limit`` bytes or is not JSON.
        TimeoutError: ``deadline`` passed first.
    """
    header = read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise PlainValueError(f"message of {size} bytes exceeds the {limit}-byte limit")
    body = read_exact(fd, size, deadline)
    if body is None:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise PlainValueError(f"malformed message: {error}") from None


def frame_message(message: Any) -> bytes:
    """The framed bytes of one JSON message."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def write_message(fd: int, message: Any) -> None:
    """Write one framed JSON message (the whole of it) to ``fd``."""
    view = memoryview(frame_message(message))
    while view:
        view = view[os.write(fd, view) :]


def describe_error(error: BaseException) -> dict[str, str]:
    """Name an exception: its class and the builtin exception class it derives from."""
    base = next((k for k in type(error).__mro__ if getattr(builtins, k.__name__, None) is k), None)
    try:
        message = str(error)[:300]
    except BaseException:
        message = ""
    base_name = getattr(base, "__name__", "")
    return {"name": type(error).__name__, "builtin": base_name, "message": message}
