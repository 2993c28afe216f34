"""Main job: simulate conversations (simulator x assistant x intents) and print the score table.

    python -m experiments.simulate                                   # offline defaults
    python -m experiments.simulate simulator=userlm_embedded intents=humaneval n_per_intent=4
    python -m experiments.simulate -m simulator=sharded,userlm_embedded \\
        intents=gsm_symbolic,humaneval

Every finished conversation is appended to ``<run dir>/results.jsonl`` as it completes; re-running
into the same folder runs only the missing and failed ones (:mod:`experiments.episodes`). The
table goes to ``summary.md`` too.

Before the first episode a preflight (:mod:`userlm_env.preflight`; ``++preflight=false`` turns it
off) checks what can be checked cheaply: the keys of hosted models, that local models and
tokenizers resolve offline, and each ``api_base`` with one request. Exit status: 0 when every
episode succeeded; 3 when episodes failed, with the most common error printed; 2 with one
``error:`` line naming what to fix when the run cannot start (a missing key, an endpoint that
does not answer, a model not available offline, a required setting left unset); 4 when the
spending cap stopped the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.episodes import entry_point, run_and_report

TABLE = "summary.md"
main = entry_point("config", TABLE)


def simulate(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Run the configured episodes still missing from the results file; return the table rows."""
    return run_and_report(cfg, out_dir, TABLE)


if __name__ == "__main__":
    main()
