#!/usr/bin/env bash
# Installs everything, then runs the main job: a small offline simulation sweep with a results table.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/python -m experiments.simulate "$@"
