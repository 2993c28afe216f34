#!/usr/bin/env bash
# Installs everything (test tools included), then runs lint, format and type checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh --test
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
