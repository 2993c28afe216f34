"""Score an assistant against simulated users; resumable, robust to API failures.

    python -m experiments.score assistant.model=openai/gpt-4o-mini simulator=userlm_embedded \\
        intents=humaneval n_per_intent=10 hydra.run.dir=runs/gpt4o-mini

Each finished episode is appended to ``results.jsonl`` at once (flushed and fsynced). Re-running
with the same ``hydra.run.dir`` skips finished episodes and re-runs failed ones. The report
(printed, and written to ``report.md``) gives, per task and overall, the Assistant Score with a
95% bootstrap interval, mean user turns, mean coverage, answer attempts per episode, cost and
failed episodes. The exit status is 0 when no episode failed, else 3 (and the most common error
is printed).
"""

from __future__ import annotations

from experiments.episodes import EXIT_FAILURES, common_error, entry_point, run_and_report

__all__ = ["EXIT_FAILURES", "common_error", "main", "run_and_report"]

main = entry_point("score", "report.md")

if __name__ == "__main__":
    main()
