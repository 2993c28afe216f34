"""Train a User LM: conversations -> filter, dedup, split -> intents -> flipped samples -> model.

    python -m experiments.train                          # smoke_cpu: a few CPU steps, offline
    python -m experiments.train train=userlm_1b          # the paper's UserLM-1b (GPU, online)
    accelerate launch --config_file experiments/conf/accelerate/fsdp.yaml \\
        -m experiments.train train=userlm_8b             # UserLM-8b on several GPUs
    python -m experiments.train train=userlm_1b train.output_dir=outputs/userlm-1b  # resumes

The trained model and tokenizer land in ``train.output_dir`` (default ``<run folder>/model``);
``make_simulator("userlm", model=<that folder>)`` simulates users with it. The data splits are
written next to it, so ``python -m experiments.perplexity`` can score the held-out test split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from userlm_env.training.data import (
    PreparedData,
    Splits,
    prepare_conversations,
    write_conversations,
)

log = logging.getLogger(__name__)


def log_data(prepared: PreparedData) -> None:
    """Log what loading, filtering, de-duplication and splitting did."""
    splits = prepared.splits
    log.info(
        "loaded %d conversations, %d after the language filter",
        prepared.loaded,
        prepared.after_language,
    )
    if prepared.dedup is not None:
        log.info(
            "near-duplicates removed: %d (threshold %d)",
            prepared.dedup.removed,
            prepared.dedup.threshold,
        )
        for gram, count in prepared.dedup.templates[:10]:
            log.info("  template 7-gram in %d first turns: %r", count, gram)
    log.info("splits: %d train, %d validation, %d test", *(len(s) for s in splits))


def add_intents(splits: Splits, intents_cfg: Any) -> Splits:
    """Write missing intents with the configured LLM (cached, resumable)."""
    from userlm_env.llm import LLMClient
    from userlm_env.training.intents import generate_intents

    client = LLMClient(instantiate(intents_cfg.llm))
    config = instantiate(intents_cfg.config)
    done = []
    for name, part in zip(("train", "validation", "test"), splits, strict=True):
        with_intents, report = generate_intents(part, client, config)
        log.info("%s intents: %s", name, report)
        done.append(with_intents)
    return Splits(*done)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Prepare the data, train, and return a summary of the run."""
    from userlm_env.training.train import train_userlm

    prepared = prepare_conversations(instantiate(cfg.data, _convert_="all"))
    log_data(prepared)
    splits = add_intents(prepared.splits, cfg.intents) if cfg.intents else prepared.splits
    if cfg.write_splits:
        for name, part in zip(("train", "validation", "test"), splits, strict=True):
            write_conversations(part, out_dir / "splits" / f"{name}.jsonl")
    config = instantiate(cfg.train, _convert_="all")
    config.output_dir = config.output_dir or str(out_dir / "model")
    result = train_userlm(config, splits.train, splits.validation)
    return {
        "output_dir": result.output_dir,
        "steps": result.global_step,
        "samples": result.samples,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "eval_loss": result.eval_loss,
        "tokens_per_second": round(result.tokens_per_second, 1),
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run(cfg, out_dir)
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
