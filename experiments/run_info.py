"""The ``run_info.json`` each experiment run writes beside its results, for reports to merge.

It records which config-group options made the run (``simulator=userlm_embedded``,
``task=humaneval``...), so a sweep's runs can be told apart without parsing folder names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

__all__ = ["RUN_INFO", "read_run_info", "write_run_info"]

RUN_INFO = "run_info.json"


def write_run_info(out_dir: Path, **extra: Any) -> dict[str, Any]:
    """Write the current Hydra run's group choices (and ``extra``) to ``out_dir/run_info.json``."""
    choices = {
        k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")
    }
    info = {**choices, **extra}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUN_INFO).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    return info


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The run info of a run folder (empty when the run wrote none)."""
    path = run_dir / RUN_INFO
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
