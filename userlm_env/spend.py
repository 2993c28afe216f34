"""What a run has spent on LLM calls, live and across resumed runs.

* :class:`Spend`: USD over priced calls, and how many calls could not be priced.
* :func:`llm_clients`: the :class:`~userlm_env.llm.LLMClient` objects of components that call
  hosted models (assistants, simulators, judges expose them through ``llm_clients()``; local
  models spend nothing and expose none).
* :class:`SpendMeter`: the spend of earlier runs (read from a run folder's ledger) plus what this
  run's clients have spent so far; :func:`write_ledger` / :func:`read_ledger` keep the ledger.
* :func:`unpriced_models`: the models a spending cap cannot account for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from userlm_env.errors import DataError
from userlm_env.pricing import model_price

if TYPE_CHECKING:
    from userlm_env.llm import LLMClient

__all__ = [
    "LEDGER",
    "Spend",
    "SpendMeter",
    "SpendsOnLLMs",
    "llm_clients",
    "read_ledger",
    "unpriced_models",
    "write_ledger",
]

#: The file in a run folder that carries the spend of earlier runs into a resumed one.
LEDGER = "spend.json"


@dataclass(frozen=True)
class Spend:
    """USD spent on priced calls and the number of calls whose cost is unknown."""

    known_usd: float = 0.0
    unknown_calls: int = 0

    @property
    def unknown(self) -> bool:
        """Whether some calls could not be priced (the true total is then higher)."""
        return self.unknown_calls > 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.known_usd + other.known_usd, self.unknown_calls + other.unknown_calls)

    def __str__(self) -> str:
        if self.unknown and self.known_usd == 0:
            return "unknown"
        money = f"${self.known_usd:.4f}"
        return f"{money} + unknown" if self.unknown else money


@runtime_checkable
class SpendsOnLLMs(Protocol):
    """A component that calls LLMs through :class:`~userlm_env.llm.LLMClient`."""

    def llm_clients(self) -> Sequence[LLMClient]: ...


def llm_clients(*components: object) -> list[LLMClient]:
    """The LLM clients of ``components`` (those without ``llm_clients()`` have none)."""
    found: list[LLMClient] = []
    for component in components:
        if isinstance(component, SpendsOnLLMs):
            found.extend(c for c in component.llm_clients() if all(c is not f for f in found))
    return found


def unpriced_models(clients: Iterable[LLMClient]) -> list[str]:
    """The models of ``clients`` with neither a configured price nor one in LiteLLM's map."""
    missing = []
    for client in clients:
        cfg = client.config
        if model_price(cfg.model, cfg.input_usd_per_mtok, cfg.output_usd_per_mtok) is None:
            missing.append(cfg.model)
    return missing


class SpendMeter:
    """The spend of earlier runs plus what ``clients`` have spent since they were built.

    Calling the meter returns the current :class:`Spend` (thread-safe: it reads the clients'
    stats snapshots).
    """

    def __init__(self, clients: Iterable[LLMClient], earlier: Spend | None = None) -> None:
        self.clients = list(clients)
        self.earlier = earlier or Spend()

    def this_run(self) -> Spend:
        """What the clients have spent (cache hits cost nothing)."""
        total = Spend()
        for client in self.clients:
            stats = client.stats
            total = total + Spend(stats.cost_known, stats.cost_unknown_calls)
        return total

    def __call__(self) -> Spend:
        return self.earlier + self.this_run()


def read_ledger(run_dir: Path) -> Spend:
    """The spend recorded in ``run_dir``'s ledger (nothing spent when there is none).

    Raises:
        DataError: The ledger exists but is not a spend record.
    """
    path = Path(run_dir) / LEDGER
    if not path.exists():
        return Spend()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Spend(float(data["known_usd"]), int(data["unknown_calls"]))
    except (ValueError, KeyError, TypeError) as error:
        message = f"{path} is not a spend ledger ({error}); delete it to start over"
        raise DataError(message) from error


def write_ledger(run_dir: Path, spend: Spend, **extra: object) -> Path:
    """Write ``spend`` (and ``extra`` facts) to ``run_dir``'s ledger, atomically."""
    path = Path(run_dir) / LEDGER
    record: Mapping[str, object] = {
        "known_usd": spend.known_usd,
        "unknown_calls": spend.unknown_calls,
        **extra,
    }
    tmp = path.with_name(f".{LEDGER}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
