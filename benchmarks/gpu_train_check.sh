#!/usr/bin/env bash
# GPU check of the bundled trainer: trains the embedded SmolLM2-135M for a few hundred steps in
# bf16, once with one pass per conversation and once with the paper's flipped samples, and prints
# tokens/s, MFU and peak GPU memory (each run's last line is a JSON object).
#
#   benchmarks/gpu_train_check.sh                  # 300 steps per run, pretrained weights
#   STEPS=200 INIT=random benchmarks/gpu_train_check.sh --tokenizer <folder>
#
# INIT=random builds the same architecture (same FLOPs) when the embedded GGUF is not installed;
# pass --tokenizer with a saved SmolLM2 tokenizer folder then. Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_train_check: no CUDA GPU: torch.cuda.is_available() is False for $PYTHON." >&2
  echo "Run it on a GPU machine; on a CPU use: $PYTHON benchmarks/train_throughput.py" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
STEPS=${STEPS:-300}
INIT=${INIT:-pretrained}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for mode in conversation flipped; do
  echo "== sample_mode=$mode, $STEPS steps, init=$INIT"
  "$PYTHON" benchmarks/train_throughput.py --gpu --steps "$STEPS" --init "$INIT" \
    --sample-mode "$mode" "$@"
done
