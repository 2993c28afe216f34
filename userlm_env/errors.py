"""Typed errors raised by userlm-env.

Every error the library raises on bad input derives from :class:`UserLMEnvError`, so callers can
catch the family at once, and each also derives from the matching builtin (``ValueError``,
``RuntimeError``...) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "EpisodeStateError",
    "LLMCallError",
    "ModelUnavailableError",
    "ReplyTooLongError",
    "SandboxUnavailableError",
    "UnknownNameError",
    "UserLMEnvError",
]


class UserLMEnvError(Exception):
    """Base class of every error raised by userlm-env."""


class EpisodeStateError(UserLMEnvError, RuntimeError):
    """``step`` was called before ``reset`` or after the episode ended."""


class ReplyTooLongError(UserLMEnvError, ValueError):
    """An assistant reply exceeds the env's documented size limit."""


class DataError(UserLMEnvError, ValueError):
    """A data file or record is malformed (the message names the file and record)."""


class UnknownNameError(UserLMEnvError, KeyError):
    """A registry lookup (simulator, assistant, task, source) used an unknown name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelUnavailableError(UserLMEnvError, OSError):
    """A model could not be loaded (offline, missing files); the message names alternatives."""


class LLMCallError(UserLMEnvError, RuntimeError):
    """An LLM call failed after its retries.

    Attributes:
        attempts: How many requests were made.
        last_error: The underlying error of the last attempt.
    """

    def __init__(
        self, message: str, *, attempts: int = 0, last_error: BaseException | None = None
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


class SandboxUnavailableError(UserLMEnvError, RuntimeError):
    """No isolation mechanism is available and unisolated execution was not opted into."""


class SpendCapError(UserLMEnvError, ValueError):
    """A spending cap cannot be enforced (a model has no known price); the message says how
    to give one."""
