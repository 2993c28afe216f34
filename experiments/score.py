"""Score an assistant against simulated users; resumable, robust to API failures.

    python -m experiments.score assistant.model=openai/gpt-4o-mini simulator=userlm_embedded \\
        intents=humaneval n_per_intent=10 hydra.run.dir=runs/gpt4o-mini

Each finished episode is appended to ``results.jsonl`` at once (flushed and fsynced). Re-running
with the same ``hydra.run.dir`` skips finished episodes and re-runs failed ones. The report
(printed, and written to ``report.md``) gives, per task and overall, the Assistant Score with a
95% bootstrap interval, mean user turns, mean coverage, answer attempts per episode, cost and
failed episodes.

Before the first episode a preflight (:mod:`userlm_env.preflight`; ``++preflight=false`` turns it
off) checks the model's key (hosted providers, offline), its ``api_base`` (one ``GET /models``
request, no retry), local models (offline, nothing loaded) and required settings. Exit status:
0 when no episode failed; 3 when some failed (the most common error is printed); 2 with one
``error:`` line naming the variable, URL, setting or model to fix when the run cannot start; 4
when the spending cap stopped the run. Authentication errors are never retried.
"""

from __future__ import annotations

from experiments.episodes import EXIT_FAILURES, common_error, entry_point, run_and_report

__all__ = ["EXIT_FAILURES", "common_error", "main", "run_and_report"]

main = entry_point("score", "report.md")

if __name__ == "__main__":
    main()
