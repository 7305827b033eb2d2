#!/usr/bin/env bash
# P3 Durian (arXiv 2602.21743) on one node: Geometry3K -> visual entropy -> Durian under GRPO or DAPO.
#
#   bash run_qwen2_5_vl_7b.sh [extra hydra overrides for main_ppo ...]
#
# Stages (STAGES, in this order): prepare (Geometry3K -> verl parquet), score (visual_entropy column on every training
# row: the perceptual half of Durian's regrouping), train (stock verl main_ppo with durian_${VARIANT}.yaml).
# Every path and size below can be set from the environment. ray_job.sh runs this same script as a job on an existing
# Ray cluster (scoring and training then use the whole cluster); slurm.sbatch starts that cluster on a SLURM allocation.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE=p3_durian

# ---- paths and sizes (environment overrides) -------------------------------------------------------------------
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}"  # a checkpoint directory every node can read (or a hub id)
SOURCE="${SOURCE:-hiyouga/geometry3k}"                   # Geometry3K as released: local copy or HF dataset id
WORK="${WORK:-$PWD/outputs/$RECIPE}"                     # data/, scores/, checkpoints/, logs/ (shared storage on a cluster)
VARIANT="${VARIANT:-grpo}"                               # grpo | dapo  -> durian_grpo.yaml | durian_dapo.yaml
NNODES="${NNODES:-1}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
SCORE_WORKERS="${SCORE_WORKERS:-$((NNODES * N_GPUS_PER_NODE))}"  # Ray scoring workers (0 = in this process)
SCORE_GPUS_PER_WORKER="${SCORE_GPUS_PER_WORKER-1}"  # set but empty: no --gpus-per-worker (CPU workers)
SCORE_ARGS="${SCORE_ARGS:-}"                             # extra `verl-difficulty score` flags, e.g. "--device cpu"
TRAIN_OVERRIDES="${TRAIN_OVERRIDES:-}"                   # extra hydra overrides of main_ppo (space-separated)
STAGES="${STAGES:-prepare score train}"
PYTHON="${PYTHON:-python3}"
# ------------------------------------------------------------------------------------------------------------------

"$PYTHON" -m verl_difficulty.cli recipes check "$RECIPE"
mkdir -p "$WORK"
read -r -a score_args <<< "$SCORE_ARGS"
read -r -a train_overrides <<< "$TRAIN_OVERRIDES"
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

if has_stage prepare; then
  echo "[$RECIPE] prepare: $SOURCE -> $WORK/data"
  "$PYTHON" "$HERE/prepare_data.py" --source "$SOURCE" --output "$WORK/data"
fi

if has_stage score; then
  # visual entropy needs the vision tower only (one forward pass per image, no generation): the transformers backend
  echo "[$RECIPE] score: visual_entropy on $WORK/data/train.parquet"
  "$PYTHON" -m verl_difficulty.cli score "$WORK/data/train.parquet" -o "$WORK/scores" \
    --model "$MODEL_PATH" --scorers visual_entropy --visual-entropy-features merged \
    --num-workers "$SCORE_WORKERS" ${SCORE_GPUS_PER_WORKER:+--gpus-per-worker "$SCORE_GPUS_PER_WORKER"} "${score_args[@]}"
fi

if has_stage train; then
  echo "[$RECIPE] train: durian_$VARIANT on $WORK/scores/scored.parquet"
  "$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name "durian_$VARIANT" \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    data.train_files="$WORK/scores/scored.parquet" \
    data.val_files="$WORK/data/val.parquet" \
    trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$N_GPUS_PER_NODE" \
    trainer.default_local_dir="$WORK/checkpoints/durian_$VARIANT" \
    "${train_overrides[@]}" "$@"
fi
