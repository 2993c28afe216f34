"""Main job: simulate conversations (simulator x assistant x task) and print a summary table.

    python -m experiments.simulate                                   # offline defaults
    python -m experiments.simulate simulator=userlm_embedded task=humaneval n_per_intent=4
    python -m experiments.simulate -m simulator=sharded,userlm_embedded task=gsm_symbolic,humaneval

Every finished conversation is appended to ``<run dir>/results.jsonl`` as it completes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.run_info import write_run_info
from userlm_env.core import ConversationCore
from userlm_env.rollout import JsonlWriter, first_per_task, make_jobs, read_records, run_episodes
from userlm_env.summary import format_table, summarize

log = logging.getLogger(__name__)


def simulate(cfg: DictConfig, out_dir: Path) -> str:
    """Run the configured episodes (skipping ones already in the results file); return the table."""
    intents = first_per_task(instantiate(cfg.task), cfg.max_intents_per_task)
    simulator = instantiate(cfg.simulator)
    assistant = instantiate(cfg.assistant)
    results = out_dir / cfg.results_file
    done = {r["key"] for r in read_records(results)}
    jobs = [j for j in make_jobs(intents, cfg.n_per_intent, cfg.seed) if j.key not in done]
    log.info("%d intents, %d episodes to run (%d already done)", len(intents), len(jobs), len(done))
    core = ConversationCore(simulator, max_turns=cfg.max_turns)
    run_episodes(jobs, core, assistant, batch_size=cfg.batch_size, on_done=JsonlWriter(results))
    table = format_table(summarize(read_records(results)))
    (out_dir / "summary.md").write_text(table + "\n", encoding="utf-8")
    return table


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_run_info(out_dir)
    table = simulate(cfg, out_dir)
    print(table)
    print(f"\nresults: {out_dir / cfg.results_file}")


if __name__ == "__main__":
    main()
