#!/usr/bin/env bash
# The main job on the built-in demo data: install, then train a tiny Qwen2.5-VL with the plugin on CPU through stock
# `python -m verl.trainer.main_ppo` on the synthetic image dataset (2 steps, checkpoint in outputs/smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
"${VENV:-.venv}/bin/verl-difficulty" smoke --workdir outputs/smoke "$@"
