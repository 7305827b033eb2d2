#!/usr/bin/env bash
# P1 PISM + CMAB (arXiv 2511.06722) on one node: training pool -> PISM (and CMAB) difficulty buckets -> GRPO on the
# medium+hard buckets, plus the paper's comparisons (same-size baselines, SFT on one bucket -> GRPO on another).
#
#   bash run_qwen2_5_vl_7b.sh [extra hydra overrides for main_ppo ...]
#
# Stages (STAGES, run in this order; default "prepare score select train"):
#   prepare          the pool -> verl parquet ($WORK/data/{train,val}.parquet)
#   score            PISM failure point lambda* of every row (generation: vLLM on GPUs), then CMAB attention balance
#                    (a sampled response + one teacher-forced forward pass reading attention: transformers backend)
#   select           buckets -> $WORK/selection: train.parquet (medium+hard), subsets/{random,fullset,unsolved}.parquet,
#                    sft.parquet + grpo.parquet (SFT -> GRPO)
#   train            GRPO only on medium+hard (grpo_medium_hard.yaml): the paper's winner
#   train_baseline_random | train_baseline_fullset | train_baseline_unsolved   the same YAML on subsets/<name>.parquet
#   sft              verl's SFT trainer (sft.yaml) on sft.parquet (SFT_BUCKETS)
#   train_after_sft  GRPO (grpo_medium_hard.yaml) from the SFT checkpoint on grpo.parquet (GRPO_BUCKETS)
# Every path and size below can be set from the environment. ray_job.sh runs this same script as a job on an existing
# Ray cluster (scoring and training then use the whole cluster); slurm.sbatch starts that cluster on a SLURM allocation.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE=p1_pism_cmab

# ---- paths and sizes (environment overrides) -------------------------------------------------------------------
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}"  # a checkpoint directory every node can read (or a hub id)
SOURCE="${SOURCE:-One-RL-to-See-Them-All/Orsta-Data-47k}" # the pool (prepare_data.py --help: jsonl, parquet, dataset id)
TASK="${TASK:-vrt}"                                      # vrt (visual reasoning, r1v_acc) | vpt (visual perception)
WORK="${WORK:-$PWD/outputs/$RECIPE}"                     # data/, scores/, selection/, checkpoints/ (shared storage on a cluster)
NNODES="${NNODES:-1}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
SCORE_WORKERS="${SCORE_WORKERS:-$((NNODES * N_GPUS_PER_NODE))}"  # Ray scoring workers (0 = in this process)
SCORE_GPUS_PER_WORKER="${SCORE_GPUS_PER_WORKER-1}"  # set but empty: no --gpus-per-worker (CPU workers)
SCORERS="${SCORERS:-pism,cmab}"                          # pism,cmab | pism | cmab
SCORE_BACKEND="${SCORE_BACKEND:-vllm}"                   # generation backend: vllm (GPU; CMAB then also loads a transformers
                                                         # copy for its attention pass) | transformers (CPU or GPU)
PISM_MODE="${PISM_MODE:-rect_reference}"                 # rect_reference (official script's mask) | rect | pixel
BUCKET_SOURCE="${BUCKET_SOURCE:-pism}"                   # buckets from pism (lambda*) or cmab (attention balance)
SFT_BUCKETS="${SFT_BUCKETS:-medium}"                     # SFT -> GRPO: "SFT(mid)+GRPO(hard)", the paper's first pairing
GRPO_BUCKETS="${GRPO_BUCKETS:-hard}"
SFT_TEMPLATE="${SFT_TEMPLATE:-{answer\}}"                # SFT target: the bare ground truth, as the official converter
SFT_TRAINER="${SFT_TRAINER:-torchrun}"                   # torchrun (verl.trainer.sft_trainer, this node) | ray (sft_trainer_ray)
SFT_MODEL_PATH="${SFT_MODEL_PATH:-}"                     # train_after_sft: default = the last checkpoint of the sft stage
PREPARE_ARGS="${PREPARE_ARGS:-}"                         # extra prepare_data.py flags, e.g. "--format pool --image-root /data"
SCORE_ARGS="${SCORE_ARGS:-}"                             # extra `verl-difficulty score` flags, e.g. "--device cpu"
SELECT_ARGS="${SELECT_ARGS:-}"                           # extra `verl-difficulty select p1` flags, e.g. "--lambda-boundary appendix"
TRAIN_OVERRIDES="${TRAIN_OVERRIDES:-}"                   # extra hydra overrides of every main_ppo run (space-separated)
SFT_OVERRIDES="${SFT_OVERRIDES:-}"                       # extra hydra overrides of the SFT trainer (space-separated)
STAGES="${STAGES:-prepare score select train}"
PYTHON="${PYTHON:-python3}"
# ------------------------------------------------------------------------------------------------------------------

"$PYTHON" -m verl_difficulty.cli recipes check "$RECIPE"
mkdir -p "$WORK"
read -r -a prepare_args <<< "$PREPARE_ARGS"
read -r -a score_args <<< "$SCORE_ARGS"
read -r -a select_args <<< "$SELECT_ARGS"
read -r -a train_overrides <<< "$TRAIN_OVERRIDES"
read -r -a sft_overrides <<< "$SFT_OVERRIDES"
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
case "$TASK" in
  vrt) REWARD=r1v_acc ;;      # "--reward_funcs external_r1v_acc" (binary accuracy)
  vpt) REWARD=perception ;;   # "--reward_funcs visual_perception_accuracy" (IoU, OCR similarity, counting)
  *) echo "[$RECIPE] TASK must be vrt or vpt, got '$TASK'" >&2; exit 2 ;;
esac
SEL="$WORK/selection"
SCORED="$WORK/scores/scored.parquet"

if has_stage prepare; then
  echo "[$RECIPE] prepare: $SOURCE -> $WORK/data"
  "$PYTHON" "$HERE/prepare_data.py" --source "$SOURCE" --output "$WORK/data" --task "$TASK" "${prepare_args[@]}"
fi

if has_stage score; then
  # decoding of the official scoring scripts: no system prompt, temperature 0.7, 1024 new tokens (the scorers' defaults)
  score() {
    "$PYTHON" -m verl_difficulty.cli score "$@" --model "$MODEL_PATH" --reward "$REWARD" --system-prompt drop \
      --num-workers "$SCORE_WORKERS" ${SCORE_GPUS_PER_WORKER:+--gpus-per-worker "$SCORE_GPUS_PER_WORKER"} "${score_args[@]}"
  }
  # one job: PISM samples on $SCORE_BACKEND; CMAB's response is sampled there too and read by a teacher-forced pass of
  # a transformers copy of the model (eager attention, reduced inside per-layer hooks) when the backend is vLLM
  echo "[$RECIPE] score: $SCORERS (PISM $PISM_MODE masks, $SCORE_BACKEND) on $WORK/data/train.parquet"
  score "$WORK/data/train.parquet" -o "$WORK/scores" --scorers "$SCORERS" --backend "$SCORE_BACKEND" \
    --pism-mode "$PISM_MODE"
fi

if has_stage select; then
  echo "[$RECIPE] select: $BUCKET_SOURCE buckets of $SCORED -> $SEL"
  "$PYTHON" -m verl_difficulty.cli select p1 "$SCORED" -o "$SEL" --bucket-source "$BUCKET_SOURCE" \
    --sft-buckets "$SFT_BUCKETS" --grpo-buckets "$GRPO_BUCKETS" --sft-template "$SFT_TEMPLATE" "${select_args[@]}"
fi

# one GRPO run of grpo_medium_hard.yaml: grpo NAME TRAIN_FILE MODEL
grpo() {
  echo "[$RECIPE] $1: GRPO on $2 from $3"
  "$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name grpo_medium_hard \
    actor_rollout_ref.model.path="$3" \
    data.train_files="$2" \
    data.val_files="$WORK/data/val.parquet" \
    reward.reward_manager.name="$REWARD" \
    trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$N_GPUS_PER_NODE" \
    trainer.experiment_name="${1}_qwen2_5_vl_7b" \
    trainer.default_local_dir="$WORK/checkpoints/$1" \
    "${train_overrides[@]}" "${@:4}"
}

if has_stage train; then grpo grpo_medium_hard "$SEL/train.parquet" "$MODEL_PATH" "$@"; fi
for name in random fullset unsolved; do
  if has_stage "train_baseline_$name"; then grpo "grpo_baseline_$name" "$SEL/subsets/$name.parquet" "$MODEL_PATH" "$@"; fi
done

if has_stage sft; then
  echo "[$RECIPE] sft: $SFT_BUCKETS rows ($SEL/sft.parquet), $SFT_TRAINER trainer"
  sft_args=(--config-path "$HERE" --config-name sft model.path="$MODEL_PATH" data.train_files="$SEL/sft.parquet"
            trainer.n_gpus_per_node="$N_GPUS_PER_NODE" trainer.default_local_dir="$WORK/checkpoints/sft")
  case "$SFT_TRAINER" in
    # the Ray trainer places its workers on the whole cluster (inside a Ray job: RAY_ADDRESS)
    ray) "$PYTHON" -m verl.trainer.sft_trainer_ray "${sft_args[@]}" trainer.nnodes="$NNODES" "${sft_overrides[@]}" ;;
    # verl's torchrun trainer: the GPUs of this node only
    torchrun) "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$N_GPUS_PER_NODE" \
                -m verl.trainer.sft_trainer "${sft_args[@]}" trainer.nnodes=1 "${sft_overrides[@]}" ;;
    *) echo "[$RECIPE] SFT_TRAINER must be ray or torchrun, got '$SFT_TRAINER'" >&2; exit 2 ;;
  esac
fi

if has_stage train_after_sft; then
  if [[ -z "$SFT_MODEL_PATH" ]]; then
    step="$(cat "$WORK/checkpoints/sft/latest_checkpointed_iteration.txt")"
    SFT_MODEL_PATH="$WORK/checkpoints/sft/global_step_$step/huggingface"
  fi
  grpo grpo_after_sft "$SEL/grpo.parquet" "$SFT_MODEL_PATH" "$@"
fi
