"""Readable, flat folder names for the jobs of a Hydra sweep.

Hydra's ``${hydra:job.override_dirname}`` copies every override as typed, so a value holding a
slash (``assistant.api_base=http://127.0.0.1:8080/v1``, ``assistant.model=openai/gpt-4o``)
turns one job folder into nested, escaped folders. The configs name sweep folders with
``${sweep_name:${hydra:overrides.task}}`` instead:

* only the keys the sweep varies appear (``-m simulator=sharded,full intents=humaneval
  assistant=oracle`` gives ``simulator=sharded`` and ``simulator=full``), in command-line order,
  as ``key=value`` joined by ``,`` (``simulator=sharded,intents=humaneval``); with nothing swept,
  every override appears, and ``default`` names a job without overrides;
* a value keeps letters, digits and ``.``, ``-``, ``+``, ``@``, ``%``, ``~``, ``_``: a URL loses
  its scheme, list items are joined by ``+``, any other run of characters (``/``, ``:``, spaces)
  becomes ``_``, so a name never holds ``/``;
* values of secret-looking keys (``api_key``, ``token``, ``secret``, ``password``) become
  ``hidden-<digest>``, and a name longer than :data:`MAX_NAME_CHARS` is cut and ends with a
  digest of the whole, so distinct jobs keep distinct folders.

The configs list :class:`SweepNames` under ``hydra.callbacks``. Hydra instantiates callbacks
before the sweep starts and ships them with each job to remote workers (joblib, submitit, Ray),
so the ``sweep_name`` resolver is registered, and knows the swept keys, wherever a job folder is
named. Reports read each run's ``run_info.json``, never the folder names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["MAX_NAME_CHARS", "RESOLVER", "SweepNames", "register", "sweep_name", "swept_keys"]

#: The resolver's name in the configs: ``${sweep_name:${hydra:overrides.task}}``.
RESOLVER = "sweep_name"
#: Longest folder name (file systems allow 255 bytes per path component).
MAX_NAME_CHARS = 160

_SECRET_KEY = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-+@%~_]+")

# The keys the current sweep varies; set by SweepNames in each process that names job folders.
_swept: frozenset[str] = frozenset()


def _digest(text: str, chars: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:chars]


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "+".join(f"{k}-{_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "+".join(_text(v) for v in value)
    return "null" if value is None else str(value)


def _clean(key: str, value: Any) -> str:
    text = _text(value)
    if _SECRET_KEY.search(key) and text:
        return f"hidden-{_digest(text)}"
    return _UNSAFE.sub("_", _SCHEME.sub("", text.strip())).strip("_")


def _parse(overrides: list[str]) -> list[Override] | None:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None


def _item(override: Override) -> str:
    key = _UNSAFE.sub("_", override.key_or_group).strip("_")
    if override.is_delete():
        return f"~{key}"
    return f"{key}={_clean(key, override.value())}"


def sweep_name(overrides: Iterable[Any], swept: Iterable[str] | None = None) -> str:
    """The folder name of a sweep job.

    Args:
        overrides: The job's task overrides (``hydra.overrides.task``), as Hydra writes them.
        swept: The keys the sweep varies (default: the ones :class:`SweepNames` recorded);
            when empty, every override is named.

    Returns:
        ``key=value`` items joined by ``,``, never holding ``/`` (see the module docstring).
    """
    lines = [str(o) for o in overrides]
    keep = frozenset(_swept if swept is None else swept)
    parsed = _parse(lines)
    if parsed is None:  # not Hydra syntax: clean the raw text
        items = [_UNSAFE.sub("_", line.lstrip("+")).strip("_") for line in lines]
    else:
        chosen = [o for o in parsed if o.key_or_group in keep]
        items = [_item(o) for o in chosen or parsed]
    name = ",".join(item for item in items if item) or "default"
    if len(name) > MAX_NAME_CHARS:
        name = f"{name[: MAX_NAME_CHARS - 9]}-{_digest(name)}"
    return name


def swept_keys(config: DictConfig) -> frozenset[str]:
    """The keys a multirun's config varies: its sweep overrides (``a=1,2``, ``range(...)``,
    ``choice(...)``...) and the sweeper's ``params``; empty when they cannot be parsed."""
    lines = [str(line) for line in OmegaConf.select(config, "hydra.overrides.task", default=[])]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines += [f"{key}={value}" for key, value in params.items()]
    parsed = _parse(lines) or []
    return frozenset(o.key_or_group for o in parsed if o.is_sweep_override())


def register() -> None:
    """Register the ``sweep_name`` resolver (idempotent)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, sweep_name)


def _use(keys: frozenset[str]) -> None:
    global _swept
    _swept = keys


class SweepNames(Callback):
    """A Hydra callback that registers the ``sweep_name`` resolver and records the keys a
    multirun sweeps, in the launching process and in every worker a job is shipped to."""

    def __init__(self) -> None:
        self.swept: frozenset[str] = frozenset()
        register()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.swept = swept_keys(config)
        _use(self.swept)

    def __setstate__(self, state: dict[str, Any]) -> None:  # unpickled in a remote worker
        self.__dict__.update(state)
        register()
        _use(self.swept)


register()
