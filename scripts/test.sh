#!/usr/bin/env bash
# The project's test command (README.md, .ci/run): install, check the plugin registration, run the CPU tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY="${VENV:-.venv}/bin/python"
"$PY" -m verl_difficulty.cli doctor
"$PY" -m pytest tests -m "not gpu" -p no:cacheprovider "$@"
