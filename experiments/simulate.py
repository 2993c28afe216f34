"""Main job: simulate conversations (simulator x assistant x task) and print a summary table.

    python -m experiments.simulate                                   # offline defaults
    python -m experiments.simulate simulator=userlm_embedded task=humaneval n_per_intent=4
    python -m experiments.simulate -m simulator=sharded,userlm_embedded task=gsm_symbolic,humaneval

Every finished conversation is appended to ``<run dir>/results.jsonl`` as it completes; re-running
into the same folder runs only the missing and failed ones (:mod:`experiments.episodes`).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.episodes import run_missing_episodes
from experiments.run_info import write_run_info
from userlm_env.rollout import read_records
from userlm_env.summary import format_table, latest_by_key, summarize


def simulate(cfg: DictConfig, out_dir: Path) -> str:
    """Run the configured episodes still missing from the results file; return the table."""
    results = out_dir / cfg.results_file
    run_missing_episodes(cfg, results)
    table = format_table(summarize(latest_by_key(read_records(results))))
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
