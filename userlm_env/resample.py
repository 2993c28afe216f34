"""The one generate-vet-retry loop of userlm-env.

Everything that asks a model for something and checks the answer runs this loop: both User LM
simulators (a turn must pass the guardrails), the prompted simulator (a turn must be usable
text), the LLM judges and the LLM sharder (a reply must be valid JSON of the right shape) and
the core's first-turn retry (a user may not end a conversation before speaking).

:func:`resample` calls ``generate`` once per try for the rows still pending (a batch: one
simulator or client call serves them all), hands each row's output to ``vet``, and keeps the
accepted value of each row. A rejected output may still be kept as a *fallback* (``vet`` ranks
fallbacks with ``quality``: the best one is kept, the latest among equals), and may be
*final*: the row is not tried again (``vet`` knows another try would give the same output, say).
What a caller does with a row that was never accepted (raise, or return its fallback flagged)
is its own choice.

``vet`` may change its row (the judges append the feedback for the next try to the row's
conversation), so rows are usually small mutable objects local to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Outcome", "Verdict", "resample"]

Row = TypeVar("Row")
Output = TypeVar("Output")
Value = TypeVar("Value")


@dataclass(frozen=True)
class Verdict(Generic[Value]):
    """What ``vet`` says of one output.

    Attributes:
        value: The accepted value; ``None`` when the output is rejected.
        fallback: For a rejected output: a usable value to fall back on, or ``None``.
        reason: For a rejected output: the rule it broke.
        quality: Ranks fallbacks; the highest is kept (the latest among equals).
        final: For a rejected output: try this row no more.
    """

    value: Value | None = None
    fallback: Value | None = None
    reason: str | None = None
    quality: float = 0.0
    final: bool = False

    @classmethod
    def accept(cls, value: Value) -> Verdict[Value]:
        """The output is good: ``value`` is the row's result."""
        return cls(value=value)

    @classmethod
    def reject(
        cls,
        reason: str,
        fallback: Value | None = None,
        quality: float = 0.0,
        *,
        final: bool = False,
    ) -> Verdict[Value]:
        """The output broke ``reason``; ``fallback`` may be kept if nothing better comes;
        ``final`` stops trying the row."""
        return cls(fallback=fallback, reason=reason, quality=quality, final=final)


@dataclass
class Outcome(Generic[Value]):
    """One row's result after the loop.

    Attributes:
        value: The accepted value, or ``None`` when every try was rejected.
        fallback: The best rejected-but-usable value (``None`` when there was none).
        fallback_reason: The rule the fallback broke.
        tries: Outputs generated for this row.
        reasons: The rule each rejected output broke, in order.
        stopped: A final rejection ended the row's tries before the budget did.
    """

    value: Value | None = None
    fallback: Value | None = None
    fallback_reason: str | None = None
    tries: int = 0
    reasons: list[str] = field(default_factory=list)
    stopped: bool = False
    _fallback_quality: float = float("-inf")

    @property
    def accepted(self) -> bool:
        """Whether some output passed."""
        return self.value is not None

    @property
    def done(self) -> bool:
        """Whether the row is tried no more: accepted, or stopped by a final rejection."""
        return self.accepted or self.stopped

    @property
    def last_reason(self) -> str | None:
        """Why the latest output was rejected (``None`` if none was)."""
        return self.reasons[-1] if self.reasons else None

    def settle(self, verdict: Verdict[Value]) -> None:
        """Count one try and keep what ``verdict`` says is worth keeping."""
        self.tries += 1
        if verdict.value is not None:
            self.value = verdict.value
            return
        self.reasons.append(verdict.reason or "rejected")
        self.stopped = verdict.final
        if verdict.fallback is not None and verdict.quality >= self._fallback_quality:
            self.fallback, self._fallback_quality = verdict.fallback, verdict.quality
            self.fallback_reason = verdict.reason


def resample(
    rows: Sequence[Row],
    generate: Callable[[list[Row], int], Sequence[Output]],
    vet: Callable[[Row, Output], Verdict[Value]],
    *,
    tries: int,
) -> list[Outcome[Value]]:
    """Generate for every row, vet, and generate again for the rejected rows only (not for
    those whose rejection was final).

    Args:
        rows: What to generate for, one output each per try.
        generate: ``(pending rows, try index) -> one output per row``, in order.
        vet: ``(row, output) -> Verdict``.
        tries: Outputs generated per row at most (at least 1).

    Returns:
        One :class:`Outcome` per row, in order.

    Raises:
        ValueError: ``tries`` is below 1, or ``generate`` returned the wrong number of outputs.
    """
    if tries < 1:
        raise ValueError(f"tries must be >= 1, got {tries}")
    outcomes: list[Outcome[Value]] = [Outcome() for _ in rows]
    for attempt in range(tries):
        pending = [i for i, outcome in enumerate(outcomes) if not outcome.done]
        if not pending:
            break
        outputs = generate([rows[i] for i in pending], attempt)
        if len(outputs) != len(pending):
            raise ValueError(f"generate returned {len(outputs)} outputs for {len(pending)} rows")
        for index, output in zip(pending, outputs, strict=True):
            outcomes[index].settle(vet(rows[index], output))
    return outcomes
