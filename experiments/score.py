"""Score an assistant against simulated users; resumable, robust to API failures.

    python -m experiments.score assistant.model=openai/gpt-4o-mini simulator=userlm_embedded \\
        task=humaneval n_per_intent=10 hydra.run.dir=runs/gpt4o-mini

Each finished episode is appended to ``results.jsonl`` at once (flushed and fsynced). Re-running
with the same ``hydra.run.dir`` skips finished episodes and re-runs failed ones. The report gives,
per task and overall, the Assistant Score with a 95% bootstrap interval, mean turns, answer
attempts per episode, cost and failed episodes. The exit status is 0 when no episode failed,
else 3.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.episodes import run_missing_episodes
from experiments.run_info import write_run_info
from userlm_env.rollout import read_records
from userlm_env.summary import format_table, latest_by_key, score_report

#: Exit status when some episodes failed (after retries).
EXIT_FAILURES = 3


def score(cfg: DictConfig, out_dir: Path) -> list[dict]:
    """Run the missing episodes and return the report rows."""
    results = out_dir / cfg.results_file
    run_missing_episodes(cfg, results)
    rows = score_report(read_records(results))
    (out_dir / "report.md").write_text(format_table(rows) + "\n", encoding="utf-8")
    return rows


@hydra.main(version_base="1.3", config_path="conf", config_name="score")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; exits with status 3 when episodes failed."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_run_info(out_dir)
    rows = score(cfg, out_dir)
    print(format_table(rows))
    print(f"\nresults: {out_dir / cfg.results_file}")
    failed = rows[-1]["failed"] if rows else 0
    if failed:
        print(f"{failed} episode(s) failed; re-run the same command to retry them", file=sys.stderr)
        print(common_error(read_records(out_dir / cfg.results_file)), file=sys.stderr)
        sys.exit(EXIT_FAILURES)


def common_error(records: Iterable[Mapping[str, Any]], limit: int = 400) -> str:
    """The most frequent error among the episodes that failed last, with its count."""
    errors = Counter(str(r["error"]) for r in latest_by_key(records) if r.get("error"))
    if not errors:
        return "no failed episode"
    error, count = errors.most_common(1)[0]
    text = error if len(error) <= limit else error[:limit] + "..."
    return f"most common error ({count} of {sum(errors.values())}): {text}"


if __name__ == "__main__":
    main()
