"""What the ``simulate`` and ``score`` entry points share: run the episodes still missing.

A run folder's ``results.jsonl`` holds one record per finished episode, appended (and fsynced)
as each one ends. Re-running into the same folder runs only the episodes without a successful
record: finished ones are skipped, failed ones run again, and readers keep the last record of
each episode key (:func:`userlm_env.summary.latest_by_key`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from userlm_env.core import ConversationCore
from userlm_env.rollout import JsonlWriter, first_per_task, make_jobs, read_records, run_episodes
from userlm_env.summary import latest_by_key

__all__ = ["EpisodePlan", "run_missing_episodes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodePlan:
    """How many of the configured episodes this call ran, and how many were already done."""

    intents: int  # intents selected by the task config
    ran: int  # episodes run now (new ones and retries of failed ones)
    already_finished: int  # episodes with a successful record from an earlier run


def run_missing_episodes(cfg: DictConfig, results: Path) -> EpisodePlan:
    """Run the episodes of ``cfg`` that have no successful record in ``results``.

    ``cfg`` holds the ``task``, ``simulator`` and ``assistant`` configs to instantiate, and
    ``n_per_intent``, ``max_intents_per_task``, ``seed``, ``max_turns`` and ``batch_size``. The
    simulator and assistant are built only when something is left to run.
    """
    finished = {r["key"] for r in latest_by_key(read_records(results)) if not r.get("error")}
    intents = first_per_task(instantiate(cfg.task), cfg.max_intents_per_task)
    jobs = [j for j in make_jobs(intents, cfg.n_per_intent, cfg.seed) if j.key not in finished]
    log.info(
        "%d intents, %d episodes to run (%d already finished)",
        len(intents),
        len(jobs),
        len(finished),
    )
    if jobs:
        core = ConversationCore(instantiate(cfg.simulator), max_turns=cfg.max_turns)
        assistant = instantiate(cfg.assistant)
        run_episodes(jobs, core, assistant, batch_size=cfg.batch_size, on_done=JsonlWriter(results))
    return EpisodePlan(intents=len(intents), ran=len(jobs), already_finished=len(finished))
