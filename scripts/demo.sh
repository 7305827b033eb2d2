#!/usr/bin/env bash
# The main job on the built-in demo data, on a CPU: install, then `verl-difficulty demo` (synthetic data with known
# difficulty -> tiny Qwen2.5-VL warmed up -> every scorer -> P1/P2/P4 selections -> GRPO steps through stock verl
# main_ppo, Durian + difficulty sampler vs plain GRPO -> report). About 9 minutes on 2 cores after the install.
# Extra arguments go to the demo (e.g. `bash scripts/demo.sh --quick`, `-o DIR`, `--force train`; see --help).
# A second run reuses the finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
"${VENV:-.venv}/bin/verl-difficulty" demo -o "${DEMO_DIR:-outputs/demo}" "$@"
