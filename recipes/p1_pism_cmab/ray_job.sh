#!/usr/bin/env bash
# P1 PISM + CMAB on an existing Ray cluster: submits run_qwen2_5_vl_7b.sh (its stages: prepare, score, select, train,
# the train_baseline_* runs, sft and train_after_sft) as one Ray job, so that the scoring workers, verl's trainer and
# the Ray SFT trainer use every node of the cluster.
#
# Start the cluster first; every node needs the same Python environment (verl, vLLM, verl-difficulty) and reads
# MODEL_PATH, SOURCE and WORK from shared storage:
#   head:     ray start --head --port=6379 --dashboard-host=0.0.0.0 --num-gpus=8
#   workers:  ray start --address=<head ip>:6379 --num-gpus=8
# then, from any machine that reaches the dashboard:
#   RAY_DASHBOARD=http://<head ip>:8265 NNODES=2 WORK=/shared/p1 MODEL_PATH=/shared/Qwen2.5-VL-7B-Instruct \
#     bash ray_job.sh [extra hydra overrides for main_ppo ...]
# The plugin must be installed on every node (pip install verl-difficulty), or shipped with the job:
# PLUGIN_WHEEL=/shared/verl_difficulty-<version>-py3-none-any.whl adds it to the job's runtime env (pip).
# PYTHON, when set, names the interpreter both here and in the job (it must exist on the cluster's nodes); unset,
# each side runs the python3 on its own PATH.
# A cluster with token authentication (`ray start` turns it on where ~/.ray/auth_token exists, e.g. after a local
# ray.init()) answers `ray job submit` 'Unauthorized' unless RAY_AUTH_MODE=token is exported here too, with the
# cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE=p1_pism_cmab

# ---- cluster, paths and sizes (environment overrides; passed on to run_qwen2_5_vl_7b.sh) -------------------------
RAY_DASHBOARD="${RAY_DASHBOARD:-http://127.0.0.1:8265}"
export MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}"
export SOURCE="${SOURCE:-One-RL-to-See-Them-All/Orsta-Data-47k}"
export TASK="${TASK:-vrt}"
export WORK="${WORK:-$PWD/outputs/$RECIPE}"            # must be shared storage: every node reads and writes it
export NNODES="${NNODES:-1}"
export N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
export STAGES="${STAGES:-prepare score select train}"
PLUGIN_WHEEL="${PLUGIN_WHEEL:-}"
PYTHON="${PYTHON:-python3}"
# ------------------------------------------------------------------------------------------------------------------

"$PYTHON" -m verl_difficulty.cli recipes check "$RECIPE"
WORK="$(mkdir -p "$WORK" && cd "$WORK" && pwd)"; export WORK
# the job's environment: every setting above and the optional ones the launcher reads, plus the shipped wheel
RUNTIME_ENV="$("$PYTHON" - "$PLUGIN_WHEEL" <<'PY'
import json, os, sys
keys = ["MODEL_PATH", "SOURCE", "TASK", "WORK", "NNODES", "N_GPUS_PER_NODE", "STAGES", "SCORE_WORKERS",
        "SCORE_GPUS_PER_WORKER", "SCORERS", "SCORE_BACKEND", "PISM_MODE", "BUCKET_SOURCE", "SFT_BUCKETS", "GRPO_BUCKETS",
        "SFT_TEMPLATE", "SFT_TRAINER", "SFT_MODEL_PATH", "PREPARE_ARGS", "SCORE_ARGS", "SELECT_ARGS", "TRAIN_OVERRIDES",
        "SFT_OVERRIDES", "VERL_PLATFORM", "VERL_DIFFICULTY_IGNORE_PIN"]
keys.append("PYTHON")  # when set, the job runs that interpreter, not whichever python3 the cluster's PATH finds
env = {"env_vars": {k: os.environ[k] for k in keys if k in os.environ}}
if sys.argv[1]:
    env["pip"] = [os.path.abspath(sys.argv[1])]
print(json.dumps(env))
PY
)"
echo "[$RECIPE] submitting to $RAY_DASHBOARD: stages '$STAGES', work dir $WORK"
exec ray job submit --address "$RAY_DASHBOARD" --working-dir "$HERE" --runtime-env-json "$RUNTIME_ENV" \
  -- bash run_qwen2_5_vl_7b.sh "$@"
