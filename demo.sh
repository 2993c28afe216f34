#!/usr/bin/env bash
# Installs everything, then runs the main job: a small offline simulation sweep (the embedded
# SmolLM2 as assistant; as users the fully specified instruction (`full`, the reference of the
# Lost-in-Conversation comparison), the rule-based sharded user, and the embedded SmolLM2
# prompted as a UserLM for contrast; 2 GSM-Symbolic + 2 HumanEval intents) and prints the
# report: the assistant per setting (performance, aptitude, unreliability, degradation from
# full), then the simulator table (score, intent coverage, faithfulness flags).
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" LITELLM_LOCAL_MODEL_COST_MAP=True
sweep_dir="runs/demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/python -m experiments.simulate -m simulator=full,sharded,userlm_embedded \
  hydra.sweep.dir="$sweep_dir" "$@"
.venv/bin/python -m experiments.report "$sweep_dir"
