"""Quiet third-party logging: other libraries' chatter off unless asked for.

Left alone, a scoring run against an LLM prints little but LiteLLM's per-call INFO line
(``LiteLLM completion() model= ...``), and prints it twice once something (Hydra,
``logging.basicConfig``) gives the root logger a handler: once by LiteLLM's own handler, on
stdout, and once by the root's.

* :func:`quiet_libraries` sets the chatty loggers to WARNING (INFO when ``verbose``), turns off
  LiteLLM's stdout prints and lets each LiteLLM record print once. Warnings and errors always
  pass. Calling it again applies the same settings again; the settings live in the
  :mod:`logging` configuration and LiteLLM's module flags only.
* :func:`import_litellm` imports LiteLLM with these settings kept (what
  :func:`~userlm_env.llm_transport.load_litellm` does), so calling :func:`quiet_libraries`
  before LiteLLM's (slow, lazy) import is enough: LiteLLM's loggers are WARNING from the start
  unless a level was set on them, and its handler steps aside if the root logger prints.

For LiteLLM's DEBUG output set ``LITELLM_LOG=DEBUG`` or the logger levels yourself.
``transformers`` is not in the list: it keeps its own handler at WARNING
(``TRANSFORMERS_VERBOSITY`` sets it).
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType
from typing import Any

__all__ = ["CHATTY_LOGGERS", "LITELLM_LOGGERS", "import_litellm", "quiet_libraries"]

#: LiteLLM's loggers: the SDK's (its per-call INFO line), the router's and the proxy's.
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
#: Loggers quietened by :func:`quiet_libraries`: LiteLLM's and those of the HTTP stack under it.
CHATTY_LOGGERS = (*LITELLM_LOGGERS, "httpx", "httpcore", "openai", "urllib3")


def quiet_libraries(verbose: bool = False) -> None:
    """Show only warnings and errors of the chatty libraries, unless ``verbose``.

    Sets the level of every logger in :data:`CHATTY_LOGGERS` to WARNING, or to INFO when
    ``verbose`` (LiteLLM's per-call line is INFO). When LiteLLM is already imported it also
    turns off its stdout prints (the "Give Feedback / Get Help" banner on every error; in quiet
    mode also ``set_verbose``) and keeps its handler only while no handler above its loggers
    would print their records too. When LiteLLM is imported later,
    :func:`import_litellm` does the same. Call it after configuring the root logger (in a
    Hydra task, at the top of the task function); calling it again is harmless.

    Args:
        verbose: Let the libraries' INFO records through.
    """
    level = logging.INFO if verbose else logging.WARNING
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        _settle_litellm(litellm, verbose)


def import_litellm() -> ModuleType:
    """Import LiteLLM, keeping the logger levels set before and quiet by default.

    LiteLLM's import sets ``httpx`` to WARNING and gives its loggers a stdout handler. Levels
    set beforehand (by :func:`quiet_libraries` or anyone) are put back; LiteLLM's loggers with
    no level of their own get WARNING. Then LiteLLM is settled as by :func:`quiet_libraries`,
    except that ``set_verbose`` is left as it is.

    Returns:
        The ``litellm`` module.
    """
    chosen = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    import litellm

    for name, level in chosen.items():
        if level != logging.NOTSET:
            logging.getLogger(name).setLevel(level)
        elif name in LITELLM_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    _settle_litellm(litellm, verbose=None)
    return litellm


def _settle_litellm(litellm: Any, verbose: bool | None) -> None:
    """Turn off LiteLLM's prints (``set_verbose`` too when ``verbose`` is False) and make each
    of its records print once."""
    litellm.suppress_debug_info = True  # else every mapped error prints a "Give Feedback" banner
    own_logging = getattr(litellm, "_logging", None)
    if verbose is False:
        litellm.set_verbose = False  # deprecated switch that prints requests with print()
        if own_logging is not None:
            own_logging.set_verbose = False
    own_handler = getattr(own_logging, "handler", None)
    if isinstance(own_handler, logging.Handler):
        for name in LITELLM_LOGGERS:
            _route_once(logging.getLogger(name), own_handler)


def _route_once(logger: logging.Logger, own_handler: logging.Handler) -> None:
    """Keep ``own_handler`` on ``logger`` only while no handler above prints its records."""
    if _printed_above(logger):
        logger.removeHandler(own_handler)
    elif own_handler not in logger.handlers:
        logger.addHandler(own_handler)


def _printed_above(logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` propagates to an ancestor that has handlers."""
    parent = logger.parent if logger.propagate else None
    while parent is not None:
        if parent.handlers:
            return True
        parent = parent.parent if parent.propagate else None
    return False
