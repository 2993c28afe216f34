"""Perplexity of user turns with and without the intent (paper Table 1) for any causal LM.

    python -m experiments.perplexity                                   # embedded model, fixture
    python -m experiments.perplexity model=outputs/userlm-1b \\
        conversations=outputs/train/<run>/splits/test.jsonl batch_size=8 include_end=true

Prints a table (overall and per user turn) and, as its last line, a JSON object; the same JSON is
written to ``perplexity.json`` in the run folder. Conversations without an intent are skipped, so
both columns score the same turns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from userlm_env.models import EMBEDDED_MODEL

log = logging.getLogger(__name__)


@dataclass
class PerplexityJob:
    """What to score."""

    model: str = EMBEDDED_MODEL  # embedded name, local checkpoint or hub id
    conversations: str = "tests/fixtures/synthetic_conversations.jsonl"  # JSONL conversations
    include_end: bool = False  # also score the end-of-conversation samples
    max_length: int = 2048  # longest sample in tokens
    batch_size: int = 4  # samples per forward pass
    dtype: str | None = None  # model dtype (None: float32 on CPU, bfloat16 on GPU)


ConfigStore.instance().store(name="perplexity_job", node=PerplexityJob)


def score(job: PerplexityJob) -> dict[str, Any]:
    """Load the model and conversations; return both perplexity columns as plain data."""
    from userlm_env.metrics.perplexity import PerplexityConfig, intent_comparison
    from userlm_env.models import load_model
    from userlm_env.training.data import read_conversations

    loaded = load_model(job.model, dtype=job.dtype)
    conversations = read_conversations(job.conversations)
    config = PerplexityConfig(
        include_end=job.include_end,
        max_length=job.max_length,
        batch_size=job.batch_size,
        missing_intent="skip",
    )
    results = intent_comparison(loaded.model, loaded.tokenizer, conversations, config)
    return {
        name: {
            "perplexity": r.perplexity,
            "tokens": r.tokens,
            "samples": r.samples,
            "per_turn": {str(k): v for k, v in r.per_turn.items()},
        }
        for name, r in results.items()
    }


def format_table(results: dict[str, Any]) -> str:
    """Rows: overall, then each turn; columns: without and with intent."""
    without, with_ = results["without_intent"], results["with_intent"]
    lines = [f"{'turn':<8}{'no intent':>12}{'intent':>12}", f"{'all':<8}"
             f"{without['perplexity']:>12.2f}{with_['perplexity']:>12.2f}"]  # fmt: skip
    for turn, value in with_["per_turn"].items():
        lines.append(f"{turn:<8}{without['per_turn'][turn]:>12.2f}{value:>12.2f}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=None, config_name="perplexity_job")
def main(job: PerplexityJob) -> None:
    """Hydra entry point."""
    results = score(job)  # type: ignore[arg-type]  # Hydra passes a DictConfig of this shape
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "perplexity.json").write_text(json.dumps(results, indent=1) + "\n")
    print(format_table(results))
    print(json.dumps({k: round(v["perplexity"], 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
