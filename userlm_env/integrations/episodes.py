"""Episodes for trainer adapters: the parts the SkyRL and verl adapters share.

A trainer plays one userlm-env episode per dataset row. This module holds what both adapters do
the same way, and imports no trainer package, so that each adapter can use it without the
other's trainer installed:

* :func:`episode_plan`: which intent and seed each dataset row plays;
* :func:`row_parser`, :func:`row_options` and :func:`write_rows`: the command that writes the
  rows to a parquet file;
* :class:`Checks`: what a row's prompt and fields ask for, and settings as plain data (a
  trainer's OmegaConf config too), each check raising the adapter's own error class
  (``SkyRLSettingsError``, ``VerlSettingsError``...);
* :class:`PoolCache`: the process's one :class:`~userlm_env.sessions.SessionPool` per env id
  and settings, so that concurrent episodes' simulator calls are batched.
"""

from __future__ import annotations

import argparse
import atexit
import json
import numbers
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from userlm_env.env import env_settings, load_env_intents
from userlm_env.errors import UserLMEnvError
from userlm_env.sessions import SessionPool

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "Checks",
    "PoolCache",
    "episode_plan",
    "plain",
    "row_options",
    "row_parser",
    "write_rows",
]


#: The system message of dataset rows unless one is given.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


# ------------------------------------------------------------------------------ dataset rows
def episode_plan(
    env_id: str, *, rows: int | None = None, seed: int = 0, **env_kwargs: Any
) -> list[tuple[int, str, int]]:
    """``(index, intent_id, seed)`` of each row: the env's intents in order (cycled to ``rows``
    when given), seeds counting up from ``seed``.

    Args:
        env_id: A userlm-env id (``"userlm_env/GSMSymbolic-v0"``...).
        rows: How many rows; default one per intent.
        seed: The first row's episode seed.
        **env_kwargs: Settings that choose the intents (``data_path``, ``sources``...).

    Raises:
        UnknownNameError: ``env_id`` is not a userlm-env id.
        ValueError: ``rows`` is below 1, or the env has no intents.
    """
    settings = env_settings(env_id, **env_kwargs)
    intents = settings.get("intents")
    if intents is None:
        intents = load_env_intents(settings.get("sources", ()), settings.get("data_path"))
    ids = [intent.intent_id for intent in intents]
    if not ids:
        raise ValueError(f"{env_id} has no intents with these settings")
    count = len(ids) if rows is None else rows
    if count < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    return [(i, ids[i % len(ids)], seed + i) for i in range(count)]


def row_parser(module: str, trainer: str) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>``, the command that writes ``trainer``'s dataset rows,
    with the options every such command takes: ``--env-id``, ``--output``, ``--rows``,
    ``--seed``, ``--system-prompt`` (default :data:`DEFAULT_SYSTEM_PROMPT`) and ``--data-path``
    (read by :func:`row_options`)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=f"Write a parquet dataset of userlm-env episodes for {trainer}.",
    )
    parser.add_argument("--env-id", required=True, help="e.g. userlm_env/GSMSymbolic-v0")
    parser.add_argument("--output", required=True, type=Path, help="the .parquet file to write")
    parser.add_argument("--rows", type=int, default=None, help="default: one per intent")
    parser.add_argument("--seed", type=int, default=0, help="the first row's episode seed")
    parser.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT)
    parser.add_argument("--data-path", default=None, help="intents file (GSM8k .jsonl...)")
    return parser


def row_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a row builder from :func:`row_parser`'s options: ``rows``,
    ``seed``, ``system_prompt`` and ``data_path`` when one was given."""
    options: dict[str, Any] = {
        "rows": args.rows,
        "seed": args.seed,
        "system_prompt": args.system_prompt,
    }
    if args.data_path:
        options["data_path"] = args.data_path
    return options


def write_rows(rows: Sequence[Mapping[str, Any]], output: Path) -> None:
    """Write dataset rows to the parquet file ``output`` (its folder made if missing) and say
    how many were written. Needs the ``datasets`` package."""
    import datasets

    output.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list([dict(row) for row in rows]).to_parquet(str(output))
    print(f"wrote {len(rows)} rows to {output}")


# ------------------------------------------------------------------------------------ checks
def plain(value: Any) -> Any:
    """``value`` with every mapping made a ``dict`` (``str`` keys) and every non-text sequence
    a ``list``, recursively; anything else as it is."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Checks:
    """The checks an adapter makes of its dataset rows and settings, raising its own error.

    Args:
        error: The adapter's error class (``SkyRLSettingsError``...), raised by every check.
        subject: What the adapter's settings are called in the message of :meth:`settings_key`
            (``"SkyRL env settings"``...).
    """

    error: type[UserLMEnvError]
    subject: str

    def system_messages(self, prompt: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The system messages of a dataset prompt (as new dicts), which may hold nothing else.

        Raises:
            error: A message that is not a ``system`` message (the simulator speaks every user
                turn).
        """
        kept: list[dict[str, Any]] = []
        for message in prompt:
            if message.get("role") != "system":
                raise self.error(
                    "a userlm-env row's prompt holds only system messages (the simulator "
                    f"speaks every user turn); got a {message.get('role')!r} message"
                )
            kept.append(dict(message))
        return kept

    def episode_choice(self, fields: Mapping[str, Any]) -> tuple[str | None, int | None]:
        """``(intent_id, seed)`` from a row's ``fields``; a missing or ``None`` value means
        "draw one" (the intent drawn with the seed; an unseeded episode).

        Raises:
            error: The seed is not an integer (``bool`` included).
        """
        intent_id = fields.get("intent_id")
        seed = fields.get("seed")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise self.error(f"a row's seed must be an integer, got {seed!r}")
            seed = int(seed)
        return (str(intent_id) if intent_id is not None else None), seed

    def plain_mapping(self, value: Any, label: str) -> dict[str, Any]:
        """A mapping (an OmegaConf ``DictConfig`` too) as plain dicts and lists (see
        :func:`plain`); ``None``: ``{}``.

        Raises:
            error: ``value`` is neither a mapping nor ``None`` (the message names ``label``).
        """
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(f"{label} must be a mapping, got {type(value).__name__}")
        return {str(k): plain(v) for k, v in value.items()}

    def settings_key(self, settings: Mapping[str, Any]) -> str:
        """The settings as sorted JSON: the same text for equal settings.

        Raises:
            error: A setting that JSON cannot hold.
        """
        try:
            return json.dumps(plain(settings), sort_keys=True)
        except (TypeError, ValueError) as reason:
            raise self.error(
                f"{self.subject} must be plain data (names, numbers, lists, dicts): {reason}"
            ) from reason


# ------------------------------------------------------------------------------------ pools
class PoolCache:
    """One :class:`SessionPool` per env id and settings, built on first use, shared by the
    threads of a process.

    Each adapter keeps its own cache, so closing one adapter's pools leaves the other's open.
    The pools live until :meth:`close` (registered with ``atexit`` whenever the cache fills
    from empty); a later :meth:`get` builds new ones.

    Args:
        checks: The adapter's checks; settings that are not plain data raise its error.

    Attributes:
        pools: The open pools by their settings' key (the same ``dict`` for the cache's life).
    """

    def __init__(self, checks: Checks) -> None:
        self.checks = checks
        self.pools: dict[str, SessionPool] = {}
        self._lock = threading.Lock()

    def get(self, env_id: str, settings: Mapping[str, Any]) -> SessionPool:
        """The process's one pool for ``env_id`` with ``settings`` (built once): ``simulator``
        (default ``"userlm"``), ``window_s``, ``max_batch`` and env settings, as for
        :class:`SessionPool`.

        Raises:
            error: The checks' error class: a setting is not plain JSON-ready data.
            UnknownNameError: ``env_id`` is not a userlm-env id.
        """
        key = self.checks.settings_key({"env_id": env_id, **settings})
        with self._lock:
            pool = self.pools.get(key)
            if pool is None:
                options = dict(settings)
                simulator = options.pop("simulator", "userlm")
                if not self.pools:
                    atexit.register(self.close)
                pool = self.pools[key] = SessionPool(env_id, simulator, **options)
            return pool

    def close(self) -> None:
        """Close every pool (their simulators and scorers) and forget them."""
        with self._lock:
            pools = list(self.pools.values())
            self.pools.clear()
        for pool in pools:
            pool.close()
