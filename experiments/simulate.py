"""Main job: simulate conversations (simulator x assistant x intents) and print the score table.

    python -m experiments.simulate                                   # offline defaults
    python -m experiments.simulate simulator=userlm_embedded intents=humaneval n_per_intent=4
    python -m experiments.simulate -m simulator=sharded,userlm_embedded \\
        intents=gsm_symbolic,humaneval

Every finished conversation is appended to ``<run dir>/results.jsonl`` as it completes; re-running
into the same folder runs only the missing and failed ones (:mod:`experiments.episodes`). The
exit status is 3 when episodes failed, and the most common error is printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.episodes import report_run, run_missing_episodes
from experiments.run_info import write_run_info


def simulate(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Run the configured episodes still missing from the results file; return the table rows."""
    results = out_dir / cfg.results_file
    run_missing_episodes(cfg, results)
    return report_run(results, out_dir / "summary.md")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; exits with status 3 when episodes failed."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_run_info(out_dir)
    simulate(cfg, out_dir)


if __name__ == "__main__":
    main()
