#!/usr/bin/env bash
# P4 RAP (arXiv 2506.04755) on one node: MM-Eureka -> CDE + ACE scores -> RAP selection -> GRPO on the selected set.
#
#   bash run_qwen2_5_vl_7b.sh [extra hydra overrides for main_ppo ...]
#
# Stages (STAGES, in this order): prepare (MM-Eureka -> verl parquet), score (one job: CDE's M rollouts with and M
# without the image; ACE's one response per row and a teacher-forced pass reading the final layer's attention),
# select (`verl-difficulty select p4 --mode $SELECT_MODE`), train (stock verl main_ppo with grpo.yaml on the selection),
# train_full (the paper's baseline: the same grpo.yaml on the whole training set; not in the default STAGES).
# Every path and size below can be set from the environment. ray_job.sh runs this same script as a job on an existing
# Ray cluster (scoring and training then use the whole cluster); slurm.sbatch starts that cluster on a SLURM allocation.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE=p4_rap

# ---- paths and sizes (environment overrides) -------------------------------------------------------------------
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}"  # a checkpoint directory every node can read (or a hub id)
SOURCE="${SOURCE:-/data/MM-Eureka-Dataset}"              # MM-Eureka as released: dataset.jsonl + unzipped image folders
WORK="${WORK:-$PWD/outputs/$RECIPE}"                     # data/, scores/, select_*/, checkpoints/ (shared storage on a cluster)
SELECT_MODE="${SELECT_MODE:-reference_code}"             # reference_code (official select/selection.py) | paper (CDE -> ACE -> DRM)
FULL_EPOCHS="${FULL_EPOCHS:-30}"                         # train_full: epochs over the whole set (grpo.yaml's 30 = same recipe)
NNODES="${NNODES:-1}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
SCORE_WORKERS="${SCORE_WORKERS:-$((NNODES * N_GPUS_PER_NODE))}"  # Ray scoring workers (0 = in this process)
SCORE_GPUS_PER_WORKER="${SCORE_GPUS_PER_WORKER-1}"  # set but empty: no --gpus-per-worker (CPU workers)
SCORE_BACKEND="${SCORE_BACKEND:-vllm}"                   # the score job's sampling: vllm (GPU) | transformers (CPU/GPU)
SCORE_ARGS="${SCORE_ARGS:-}"                             # extra `verl-difficulty score` flags (win over the recipe's)
SELECT_ARGS="${SELECT_ARGS:-}"                           # extra `verl-difficulty select p4` flags
TRAIN_OVERRIDES="${TRAIN_OVERRIDES:-}"                   # extra hydra overrides of main_ppo (space-separated)
STAGES="${STAGES:-prepare score select train}"           # add train_full for the full-data baseline
PYTHON="${PYTHON:-python3}"
# ------------------------------------------------------------------------------------------------------------------

"$PYTHON" -m verl_difficulty.cli recipes check "$RECIPE"
mkdir -p "$WORK"
read -r -a score_args <<< "$SCORE_ARGS"
read -r -a select_args <<< "$SELECT_ARGS"
read -r -a train_overrides <<< "$TRAIN_OVERRIDES"
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
SCORED="$WORK/scores/cde_ace/scored.parquet"             # training rows + CDE and ACE columns
SELECTION="$WORK/select_$SELECT_MODE"

if has_stage prepare; then
  echo "[$RECIPE] prepare: $SOURCE -> $WORK/data"
  "$PYTHON" "$HERE/prepare_data.py" --source "$SOURCE" --output "$WORK/data"
fi

if has_stage score; then
  # Graded by the training reward (0.9 accuracy + 0.1 format), which also records the correct-AND-formatted counts
  # the official selection uses; 2048 new tokens = the official max_response_length of the scoring pass (EasyR1's
  # trainer.eval run with the training config). One job on Ray (honours $RAY_ADDRESS): $SCORE_BACKEND samples CDE's
  # 10 generations and ACE's response per row; on vllm (no attention weights) each worker also loads a transformers
  # copy of the checkpoint for ACE's teacher-forced pass (vLLM then takes 0.5 of the GPU by default; see README).
  echo "[$RECIPE] score: cde,ace ($SCORE_BACKEND) on $WORK/data/train.parquet -> $SCORED"
  "$PYTHON" -m verl_difficulty.cli score "$WORK/data/train.parquet" -o "$WORK/scores/cde_ace" --model "$MODEL_PATH" \
    --scorers cde,ace --backend "$SCORE_BACKEND" --reward math_acc_format \
    --cde-m 5 --cde-temperature 1.0 --cde-max-tokens 2048 \
    --ace-temperature 1.0 --ace-max-tokens 2048 --ace-sigma 2.0 --ace-layer -1 --ace-heads mean \
    --num-workers "$SCORE_WORKERS" ${SCORE_GPUS_PER_WORKER:+--gpus-per-worker "$SCORE_GPUS_PER_WORKER"} \
    "${score_args[@]}"
fi

if has_stage select; then
  echo "[$RECIPE] select: p4 --mode $SELECT_MODE on $SCORED -> $SELECTION"
  "$PYTHON" -m verl_difficulty.cli select p4 "$SCORED" -o "$SELECTION" --mode "$SELECT_MODE" "${select_args[@]}"
fi

if has_stage train; then
  echo "[$RECIPE] train: grpo on $SELECTION/train.parquet"
  # an empty selection would only fail inside verl's dataset loader after Ray start-up: `select` exits 1 on it, and
  # without a select stage in STAGES this check stops on the counts its record keeps
  "$PYTHON" - "$SELECTION/selection.json" <<'PY'
import json, sys
counts = json.load(open(sys.argv[1]))["counts"]
if not counts["kept"]:
    sys.exit(f"{sys.argv[1]}: the selection kept 0 of {counts['input_rows']} rows ({counts['by_reason']}); nothing to "
             "train on (see the select stage's notes)")
PY
  "$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name grpo \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    data.train_files="$SELECTION/train.parquet" \
    data.val_files="$WORK/data/val.parquet" \
    trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$N_GPUS_PER_NODE" \
    trainer.experiment_name="rap_${SELECT_MODE}_grpo_qwen2_5_vl_7b_mm_eureka" \
    trainer.default_local_dir="$WORK/checkpoints/rap_$SELECT_MODE" \
    "${train_overrides[@]}" "$@"
fi

if has_stage train_full; then
  echo "[$RECIPE] train_full: grpo on the whole $WORK/data/train.parquet ($FULL_EPOCHS epochs)"
  "$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name grpo \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    data.train_files="$WORK/data/train.parquet" \
    data.val_files="$WORK/data/val.parquet" \
    trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$N_GPUS_PER_NODE" \
    trainer.total_epochs="$FULL_EPOCHS" \
    trainer.experiment_name="full_grpo_qwen2_5_vl_7b_mm_eureka" \
    trainer.default_local_dir="$WORK/checkpoints/full" \
    "${train_overrides[@]}" "$@"
fi
