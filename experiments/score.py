"""Score an assistant against simulated users; resumable, robust to API failures.

    python -m experiments.score assistant.model=openai/gpt-4o-mini simulator=userlm_embedded \\
        intents=humaneval n_per_intent=10 hydra.run.dir=runs/gpt4o-mini

Each finished episode is appended to ``results.jsonl`` at once (flushed and fsynced). Re-running
with the same ``hydra.run.dir`` skips finished episodes and re-runs failed ones. The report gives,
per task and overall, the Assistant Score with a 95% bootstrap interval, mean user turns, mean
coverage, answer attempts per episode, cost and failed episodes. The exit status is 0 when no
episode failed, else 3 (and the most common error is printed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.episodes import EXIT_FAILURES, common_error, report_run, run_missing_episodes
from experiments.run_info import write_run_info

__all__ = ["EXIT_FAILURES", "common_error", "main", "score"]


def score(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Run the missing episodes and return the report rows."""
    results = out_dir / cfg.results_file
    run_missing_episodes(cfg, results)
    return report_run(results, out_dir / "report.md")


@hydra.main(version_base="1.3", config_path="conf", config_name="score")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; exits with status 3 when episodes failed."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_run_info(out_dir)
    score(cfg, out_dir)


if __name__ == "__main__":
    main()
