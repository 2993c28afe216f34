"""Perplexity of user turns with and without the intent (paper Table 1) for any causal LM.

    python -m experiments.perplexity                                   # embedded model, fixture
    python -m experiments.perplexity model=outputs/userlm-1b \\
        conversations=outputs/train/<run>/splits/test.jsonl batch_size=8 include_end=true

Prints a table (overall and per user turn) and, as its last line, a JSON object; the same JSON is
written to ``perplexity.json`` in the run folder. Conversations without an intent are skipped, so
both columns score the same turns. The conversations are read (and checked) before the model
loads; a data or model error (:class:`~userlm_env.errors.UserLMEnvError`) prints one
``error: <message>`` line and exits 1.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from userlm_env.errors import DataError, UserLMEnvError
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


#: Exit status when the conversations or the model cannot be used.
EXIT_ERROR = 1

HELP_HEADER = """\
python -m experiments.perplexity: perplexity of user turns with and without the intent
(the paper's Table 1) for any causal LM.

Reads JSONL conversations (OpenAI {"messages": [...]} or ShareGPT records with an "intent"
field; those without one are skipped), scores every user turn given the conversation so far,
once without and once with the intent in the system prompt, and prints a table (overall and
per user turn) and a JSON line; perplexity.json in the run folder holds the same.
Exit status: 0 scored; 1 the conversations or the model cannot be used (one "error: ..." line,
or Hydra's message for an unknown or mistyped setting).
"""
HELP_TEMPLATE = """\
${hydra.help.header}
== Options (key=value) ==
  model            the embedded model name, a local checkpoint folder or a hub id
  conversations    the JSONL conversations to score (e.g. a split written by experiments.train)
  include_end      true: also score the end-of-conversation samples
  max_length       longest sample in tokens
  batch_size       samples per forward pass
  dtype            model dtype (null: float32 on CPU, bfloat16 on GPU)
  hydra.run.dir    the run folder (default outputs/<date>/<time>)

== Examples ==
  ${hydra.help.app_name}                          # the embedded model on the fixture
  ${hydra.help.app_name} model=outputs/train/RUN/model \\
      conversations=outputs/train/RUN/splits/test.jsonl batch_size=8 include_end=true

== Config (with the overrides given) ==
$CONFIG
${hydra.help.footer}
"""

ConfigStore.instance().store(name="perplexity_schema", node=PerplexityJob)
ConfigStore.instance().store(
    name="perplexity_job",
    node={
        "defaults": ["perplexity_schema", "_self_"],
        "hydra": {
            "help": {
                "app_name": "python -m experiments.perplexity",
                "header": HELP_HEADER,
                "footer": "Hydra's own flags: ${hydra.help.app_name} --hydra-help\n",
                "template": HELP_TEMPLATE,
            }
        },
    },
)


def score(job: PerplexityJob) -> dict[str, Any]:
    """Read the conversations, load the model; return both perplexity columns as plain data.

    Raises:
        DataError: The conversations file is missing or malformed, or no conversation has an
            intent.
        ModelUnavailableError: The model cannot be loaded.
    """
    from userlm_env.metrics.perplexity import PerplexityConfig, intent_comparison
    from userlm_env.models import load_model
    from userlm_env.training.data import read_conversations

    conversations = read_conversations(job.conversations)
    if not any(c.intent for c in conversations):
        raise DataError(
            f"none of the {len(conversations)} conversations in {job.conversations} has an "
            "intent; perplexity with and without the intent needs conversations that have one"
        )
    loaded = load_model(job.model, dtype=job.dtype)
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
    try:
        results = score(job)  # Hydra passes a DictConfig of this shape
    except UserLMEnvError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        sys.exit(EXIT_ERROR)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "perplexity.json").write_text(json.dumps(results, indent=1) + "\n")
    print(format_table(results))
    print(json.dumps({k: round(v["perplexity"], 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
