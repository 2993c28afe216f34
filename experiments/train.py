"""Train a User LM: conversations -> filter, dedup, split -> intents -> flipped samples -> model.

    python -m experiments.train                          # smoke_cpu: a few CPU steps, offline
    python -m experiments.train train=userlm_1b          # the paper's UserLM-1b (GPU, online)
    accelerate launch --config_file experiments/conf/accelerate/fsdp.yaml \\
        -m experiments.train train=userlm_8b             # UserLM-8b on several GPUs
    python -m experiments.train train=userlm_1b train.output_dir=outputs/userlm-1b  # resumes

The trained model and tokenizer land in ``train.output_dir`` (default ``<run folder>/model``);
``make_simulator("userlm", model=<that folder>)`` simulates users with it. The data splits are
written next to it, so ``python -m experiments.perplexity`` can score the held-out test split.

Failures: a data, model or config error (:class:`~userlm_env.errors.UserLMEnvError`) prints one
``error: <message>`` line and exits 1; a ``data.``/``train.`` setting of the wrong type or an
unknown key is caught before anything loads and exits 2. Under ``accelerate launch`` (torch
elastic) each failing rank prints ``error (rank N): <message>`` and writes the message to its
error file, so the launcher's "Root Cause" shows it; other exceptions keep their traceback,
recorded in that file too (:func:`torch.distributed.elastic.multiprocessing.errors.record`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from userlm_env.errors import UserLMEnvError
from userlm_env.logs import quiet_libraries
from userlm_env.training.data import (
    PreparedData,
    Splits,
    prepare_conversations,
    write_conversations,
)

log = logging.getLogger(__name__)

#: Exit status when the data, the model or the config is wrong.
EXIT_ERROR = 1
#: Exit status when a ``data.``/``train.`` setting has the wrong type or an unknown key.
EXIT_USAGE = 2
# The config nodes built from dataclasses; their settings are checked before anything loads.
_CHECKED_NODES = ("data", "train", "intents.llm", "intents.config")


class SettingError(UserLMEnvError, ValueError):
    """A setting does not fit its config dataclass (wrong type, unknown key)."""


def log_data(prepared: PreparedData) -> None:
    """Log what loading, filtering, de-duplication and splitting did."""
    splits = prepared.splits
    log.info(
        "loaded %d conversations, %d after the language filter",
        prepared.loaded,
        prepared.after_language,
    )
    if prepared.dedup is not None:
        log.info(
            "near-duplicates removed: %d (threshold %d)",
            prepared.dedup.removed,
            prepared.dedup.threshold,
        )
        for gram, count in prepared.dedup.templates[:10]:
            log.info("  template 7-gram in %d first turns: %r", count, gram)
    log.info("splits: %d train, %d validation, %d test", *(len(s) for s in splits))


def add_intents(splits: Splits, intents_cfg: Any) -> Splits:
    """Write missing intents with the configured LLM (cached, resumable).

    Progress shows as ``[intents]`` lines (a live bar on a terminal); ``intents.progress``
    may set :class:`~userlm_env.progress.ProgressSettings` fields, e.g.
    ``+intents.progress.plain_every_items=1000``.
    """
    from userlm_env.llm import LLMClient
    from userlm_env.progress import ProgressSettings
    from userlm_env.training.intents import generate_intents

    client = LLMClient(instantiate(intents_cfg.llm))
    config = instantiate(intents_cfg.config)
    progress = ProgressSettings(**(intents_cfg.get("progress") or {}))
    done = []
    for name, part in zip(("train", "validation", "test"), splits, strict=True):
        with_intents, report = generate_intents(
            part, client, config, progress=progress, progress_unit=f"{name} conversation"
        )
        log.info("%s intents: %s", name, report)
        done.append(with_intents)
    return Splits(*done)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Prepare the data, train, and return a summary of the run."""
    from userlm_env.training.train import train_userlm

    prepared = prepare_conversations(instantiate(cfg.data, _convert_="all"))
    log_data(prepared)
    splits = add_intents(prepared.splits, cfg.intents) if cfg.intents else prepared.splits
    if cfg.write_splits:
        for name, part in zip(("train", "validation", "test"), splits, strict=True):
            write_conversations(part, out_dir / "splits" / f"{name}.jsonl")
    config = instantiate(cfg.train, _convert_="all")
    config.output_dir = config.output_dir or str(out_dir / "model")
    result = train_userlm(config, splits.train, splits.validation)
    return {
        "output_dir": result.output_dir,
        "steps": result.global_step,
        "samples": result.samples,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "eval_loss": result.eval_loss,
        "tokens_per_second": round(result.tokens_per_second, 1),
    }


def check_settings(cfg: DictConfig) -> None:
    """Check the ``data``, ``train`` and ``intents`` settings against their dataclasses (types,
    field names, the dataclass's own checks) before anything loads.

    Raises:
        SettingError: A setting has the wrong type or is not a field of its dataclass.
    """
    for name in _CHECKED_NODES:
        node = OmegaConf.select(cfg, name, default=None)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        schema = get_class(str(node._target_))
        if not dataclasses.is_dataclass(schema):
            continue
        given = OmegaConf.to_container(node, resolve=True)
        assert isinstance(given, dict)
        # null means "the default" for several fields typed without None (output_dir)
        fields = {k: v for k, v in given.items() if not str(k).startswith("_") and v is not None}
        try:
            OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), fields))
        except OmegaConfBaseException as error:
            reason = str(getattr(error, "msg", error)).splitlines()[0]
            key = getattr(error, "full_key", None)
            raise SettingError(f"{name}.{key}: {reason}" if key else f"{name}: {reason}") from None
        except ValueError as error:  # the dataclass's own checks (__post_init__)
            raise SettingError(f"{name}: {error}") from None


def _rank() -> int | None:
    """This process's global rank under a distributed launcher (torch elastic), else None."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and "WORLD_SIZE" in os.environ else None


def fail(error: BaseException, status: int) -> NoReturn:
    """Report an expected error in one line and exit with ``status``.

    The line is ``error: <message>`` (``error (rank N): <message>`` under a distributed
    launcher); under torch elastic the message also goes to the rank's error file
    (``TORCHELASTIC_ERROR_FILE``), which the launcher prints as the root cause.
    """
    rank = _rank()
    message = " ".join(str(error).split()) or type(error).__name__  # one line
    prefix = "error" if rank is None else f"error (rank {rank})"
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        record = {"message": f"{type(error).__name__}: {message}", "timestamp": int(time.time())}
        Path(error_file).write_text(json.dumps(record), encoding="utf-8")
    sys.exit(status)


def train_job(cfg: DictConfig) -> None:
    """Check the settings, prepare the data, train; write and print the summary."""
    quiet_libraries(verbose=bool(cfg.get("verbose", False) or HydraConfig.get().verbose))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        check_settings(cfg)
        summary = run(cfg, out_dir)
    except SettingError as error:
        fail(error, EXIT_USAGE)
    except InstantiationException as error:  # a config object that did not build
        cause = error.__cause__
        if isinstance(cause, UserLMEnvError):
            fail(cause, EXIT_ERROR)
        if isinstance(cause, TypeError | ValueError):
            fail(SettingError(str(error)), EXIT_USAGE)
        raise
    except UserLMEnvError as error:
        fail(error, EXIT_ERROR)
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


def _recorded(job: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """``job`` under torch elastic's ``@record``: an unexpected exception's traceback goes to the
    rank's error file (a no-op outside torch elastic). torch is imported only when it runs, so
    ``--help`` stays quick."""

    def recorded(cfg: DictConfig) -> None:
        from torch.distributed.elastic.multiprocessing.errors import record

        record(job)(cfg)

    return recorded


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    _recorded(train_job)(cfg)


if __name__ == "__main__":
    main()
