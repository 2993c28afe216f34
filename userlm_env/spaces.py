"""Gymnasium spaces for conversation text.

Gymnasium's :class:`~gymnasium.spaces.Text` only admits characters of its charset (letters and
digits by default), so a real user turn ("héllo, 25%?") would not be a member of the space.
:class:`UnicodeText` admits any ``str`` within its length bounds and samples printable ASCII.
"""

from __future__ import annotations

import string
from typing import Any

from gymnasium import spaces

__all__ = ["UnicodeText"]

_SAMPLE_CHARSET = string.ascii_letters + string.digits + " .,?!'-"


class UnicodeText(spaces.Text):
    """A text space whose members are all strings of ``min_length..max_length`` characters."""

    def __init__(self, max_length: int, *, min_length: int = 0, seed: int | None = None) -> None:
        super().__init__(
            max_length=max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed
        )

    def contains(self, x: Any) -> bool:
        """Any ``str`` whose length is within bounds, whatever its characters."""
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UnicodeText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )

    __hash__ = None  # type: ignore[assignment]
