"""What the ``simulate`` and ``score`` entry points share: run the episodes still missing, then
print the score table and report failures.

A run folder's ``results.jsonl`` holds one record per finished episode, appended (and fsynced)
as each one ends. Re-running into the same folder runs only the episodes without a successful
record: finished ones are skipped, failed ones run again, and readers keep the last record of
each episode key (:func:`userlm_env.records.latest_by_key`).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.run_info import write_run_info
from userlm_env.core import ConversationCore
from userlm_env.metrics.suite import format_table, score_rows
from userlm_env.records import JsonlWriter, latest_by_key, read_records
from userlm_env.rollout import first_per_task, make_jobs, run_episodes
from userlm_env.types import Intent

__all__ = [
    "EXIT_FAILURES",
    "EpisodePlan",
    "assistant_label",
    "common_error",
    "entry_point",
    "give_intents",
    "report_run",
    "run_and_report",
    "run_missing_episodes",
]

log = logging.getLogger(__name__)

#: The Hydra config folder of the entry points.
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: Exit status of ``simulate`` and ``score`` when some episodes failed (after retries).
EXIT_FAILURES = 3


@dataclass(frozen=True)
class EpisodePlan:
    """How many of the configured episodes this call ran, and how many were already done."""

    intents: int  # intents selected by the intents config
    ran: int  # episodes run now (new ones and retries of failed ones)
    already_finished: int  # episodes with a successful record from an earlier run


def run_missing_episodes(cfg: DictConfig, results: Path) -> EpisodePlan:
    """Run the episodes of ``cfg`` that have no successful record in ``results``.

    ``cfg`` holds the ``intents``, ``simulator`` and ``assistant`` configs to instantiate, and
    ``n_per_intent``, ``max_intents_per_task``, ``seed``, ``max_replies`` and ``batch_size``.
    The simulator and assistant are built only when something is left to run.
    """
    finished = {r["key"] for r in latest_by_key(read_records(results)) if not r.get("error")}
    intents = first_per_task(instantiate(cfg.intents), cfg.max_intents_per_task)
    jobs = [j for j in make_jobs(intents, cfg.n_per_intent, cfg.seed) if j.key not in finished]
    log.info("%d intents, %d episodes to run (%d finished)", len(intents), len(jobs), len(finished))
    if jobs:
        core = ConversationCore(instantiate(cfg.simulator), max_replies=cfg.max_replies)
        assistant = give_intents(instantiate(cfg.assistant), intents)
        run_episodes(jobs, core, assistant, batch_size=cfg.batch_size, on_done=JsonlWriter(results))
    return EpisodePlan(intents=len(intents), ran=len(jobs), already_finished=len(finished))


def give_intents(assistant: Any, intents: Iterable[Intent]) -> Any:
    """Hand the intents to a scripted assistant that keeps an answer key (``learn``)."""
    learn = getattr(assistant, "learn", None)
    if callable(learn):
        learn(intents)
    return assistant


def run_and_report(cfg: DictConfig, out_dir: Path, table_name: str) -> list[dict[str, Any]]:
    """Run the episodes still missing from ``out_dir``'s results, then report the run."""
    results = out_dir / cfg.results_file
    run_missing_episodes(cfg, results)
    return report_run(results, out_dir / table_name)


def entry_point(config_name: str, table_name: str) -> Callable[[], None]:
    """The Hydra ``main`` of an episode-running script: record the run's config choices, run,
    report (exit status 3 when episodes failed)."""

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        write_run_info(out_dir, **assistant_label(cfg))
        run_and_report(cfg, out_dir, table_name)

    return main


def assistant_label(cfg: DictConfig) -> dict[str, str]:
    """``{"assistant": "<config>:<model>"}`` when the assistant config names a model (so a
    sweep over models tells them apart in reports), else nothing (the config name is kept)."""
    assistant = cfg.get("assistant")
    if assistant is None or "model" not in assistant or OmegaConf.is_missing(assistant, "model"):
        return {}
    model = assistant.model
    choice = HydraConfig.get().runtime.choices.get("assistant", "assistant")
    return {"assistant": f"{choice}:{model}"}


def report_run(results: Path, table_file: Path) -> list[dict[str, Any]]:
    """Print and write the score table of ``results``; exit with :data:`EXIT_FAILURES` and
    the most common error when episodes failed."""
    records = read_records(results)
    rows = score_rows(records)
    table = format_table(rows)
    table_file.write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\nresults: {results}")
    failed = rows[-1]["failed"] if rows else 0
    if failed:
        print(f"{failed} episode(s) failed; re-run the same command to retry them", file=sys.stderr)
        print(common_error(records), file=sys.stderr)
        sys.exit(EXIT_FAILURES)
    return rows


def common_error(records: Iterable[Mapping[str, Any]], limit: int = 400) -> str:
    """The most frequent error among the episodes that failed last, with its count."""
    errors = Counter(str(r["error"]) for r in latest_by_key(records) if r.get("error"))
    if not errors:
        return "no failed episode"
    error, count = errors.most_common(1)[0]
    text = error if len(error) <= limit else error[:limit] + "..."
    return f"most common error ({count} of {sum(errors.values())}): {text}"
