#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install verl-difficulty with its test extras, on a fresh machine.
# torch 2.11.0 / torchvision 0.26.0 come from the package registry (CUDA builds, which also run on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
start=$(date +%s)
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q -c constraints-cpu.txt torch torchvision
"$PY" -m pip install -q -c constraints-cpu.txt -e ".[test]"
echo "install: $(( $(date +%s) - start ))s into $VENV"
