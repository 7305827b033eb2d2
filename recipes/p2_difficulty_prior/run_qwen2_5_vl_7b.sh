#!/usr/bin/env bash
# P2 difficulty prior (arXiv 2505.13261) on one node: Geometry3K + K12-freeform -> pass@k of the base model -> U-shape
# band and two stages -> GRPO with difficulty-weighted advantages, stage 1 (moderate) then stage 2 (moderate-to-hard,
# with the difficulty hint) from the stage-1 policy.
#
#   bash run_qwen2_5_vl_7b.sh [extra hydra overrides for every main_ppo run ...]
#
# Stages (STAGES, run in this order):
#   prepare  the sources -> verl parquet ($WORK/data/train.parquet, val.parquet; several sources are concatenated)
#   score    pass@k of the base model on every training row ($WORK/scores/scored.parquet: pass_rate)
#   select   U-shape band and the two stages ($WORK/selection/stage1.parquet, stage2.parquet, train.parquet)
#   stage1   main_ppo with stage1.yaml on stage1.parquet ($WORK/checkpoints/stage1)
#   stage2   main_ppo with stage2.yaml on stage2.parquet from the stage-1 policy: the Hugging Face model in stage 1's
#            last checkpoint (actor/huggingface; else verl's model merger exports one to $WORK/models/)
#            ($WORK/checkpoints/stage2); `train` = stage1 stage2
#   sampler  (not in the default) the one-run alternative: two_stage_sampler.yaml on train.parquet
# Every path and size below can be set from the environment. ray_job.sh runs this same script as a job on an existing
# Ray cluster (scoring and training then use the whole cluster); slurm.sbatch starts that cluster on a SLURM allocation.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE=p2_difficulty_prior

# ---- paths and sizes (environment overrides) -------------------------------------------------------------------
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}"  # a checkpoint directory every node can read (or a hub id)
SOURCE="${SOURCE:-hiyouga/geometry3k xyliu6/k12-freeform}"  # space-separated, pooled: local copies or HF ids
DATASET="${DATASET:-auto}"                               # per source (or one for all): auto | geometry3k | k12
WORK="${WORK:-$PWD/outputs/$RECIPE}"                     # data/, scores/, selection/, checkpoints/, models/
NNODES="${NNODES:-1}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
SCORE_WORKERS="${SCORE_WORKERS:-$((NNODES * N_GPUS_PER_NODE))}"  # Ray scoring workers (0 = in this process)
SCORE_GPUS_PER_WORKER="${SCORE_GPUS_PER_WORKER-1}"      # set but empty: no --gpus-per-worker (CPU workers)
SCORE_BACKEND="${SCORE_BACKEND:-vllm}"                   # pass@k's generations: vllm (GPU) | transformers (CPU or GPU)
PASSK_K="${PASSK_K:-8}"                                  # rollouts per prompt (the paper's "multi-round sampling")
SCORE_ARGS="${SCORE_ARGS:-}"                             # extra `verl-difficulty score` flags (win over the above)
STAGE1_SIZE="${STAGE1_SIZE:-2000}"                       # "2K" moderate prompts; `rest` = every band row not in stage 2
STAGE2_SIZE="${STAGE2_SIZE:-600}"                        # "0.6K" moderate-to-hard; both `rest` = the 0.6 : 2 proportion
SELECT_ARGS="${SELECT_ARGS:-}"                           # extra `verl-difficulty select p2` flags
STAGE1_MODEL="${STAGE1_MODEL:-}"                         # stage 2 from this HF model, not stage 1's last checkpoint
TRAIN_OVERRIDES="${TRAIN_OVERRIDES:-}"                   # extra hydra overrides of every main_ppo run (space-separated)
STAGES="${STAGES:-prepare score select stage1 stage2}"
PYTHON="${PYTHON:-python3}"
# ------------------------------------------------------------------------------------------------------------------

"$PYTHON" -m verl_difficulty.cli recipes check "$RECIPE"
mkdir -p "$WORK"
read -r -a sources <<< "$SOURCE"
read -r -a datasets <<< "$DATASET"
read -r -a score_args <<< "$SCORE_ARGS"
read -r -a select_args <<< "$SELECT_ARGS"
read -r -a train_overrides <<< "$TRAIN_OVERRIDES"
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
DATA="$WORK/data" SCORES="$WORK/scores" SELECTION="$WORK/selection" CKPT="$WORK/checkpoints"
cluster=(trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$N_GPUS_PER_NODE" data.val_files="$DATA/val.parquet")

if has_stage prepare; then
  if (( ${#datasets[@]} != 1 && ${#datasets[@]} != ${#sources[@]} )); then
    echo "[$RECIPE] DATASET has ${#datasets[@]} entries for ${#sources[@]} sources: give one, or one per source" >&2
    exit 2
  fi
  parts=()
  for i in "${!sources[@]}"; do
    out="$DATA"; (( ${#sources[@]} > 1 )) && out="$DATA/parts/$i"
    echo "[$RECIPE] prepare: ${sources[$i]} -> $out"
    "$PYTHON" "$HERE/prepare_data.py" --source "${sources[$i]}" --dataset "${datasets[$i]:-${datasets[0]}}" \
      --output "$out"
    parts+=("$out")
  done
  if (( ${#parts[@]} > 1 )); then  # one training pool (ids never collide: prepare_data.py offsets each dataset)
    "$PYTHON" - "$DATA" "${parts[@]}" <<'PY'
import sys
import pyarrow as pa
import pyarrow.parquet as pq
from verl_difficulty.data.io import write_parquet
out, parts = sys.argv[1], sys.argv[2:]
for split in ("train", "val"):
    table = pa.concat_tables([pq.read_table(f"{p}/{split}.parquet") for p in parts], promote_options="default")
    write_parquet(f"{out}/{split}.parquet", table)
    print(f"[p2_difficulty_prior] prepare: {out}/{split}.parquet = {table.num_rows} rows from {len(parts)} sources")
PY
  fi
fi

if has_stage score; then
  # "multi-round sampling" of every prompt with the base model: K and the temperature are UNSPECIFIED in the paper;
  # ours: K = 8 rollouts at temperature 1.0 (verl's rollout default), as long as training's responses (2048 tokens),
  # correct = the accuracy part of the training reward (math_acc_format: math-verify on the \boxed{} answer)
  echo "[$RECIPE] score: pass@$PASSK_K ($SCORE_BACKEND) on $DATA/train.parquet"
  "$PYTHON" -m verl_difficulty.cli score "$DATA/train.parquet" -o "$SCORES" \
    --model "$MODEL_PATH" --backend "$SCORE_BACKEND" --scorers passk --reward math_acc_format \
    --passk-k "$PASSK_K" --passk-temperature 1.0 --passk-max-tokens 2048 \
    --num-workers "$SCORE_WORKERS" ${SCORE_GPUS_PER_WORKER:+--gpus-per-worker "$SCORE_GPUS_PER_WORKER"} "${score_args[@]}"
fi

if has_stage select; then
  # "filter out prompts that are either too simple or extremely difficult": keep 0.1 <= acc <= 0.87 (the paper's
  # thresholds); stage 2 = the hardest band rows ("moderate-to-hard"), stage 1 = the next ("moderate")
  sizes=()
  [[ "$STAGE1_SIZE" != rest ]] && sizes+=(--stage1-size "$STAGE1_SIZE")
  [[ "$STAGE2_SIZE" != rest ]] && sizes+=(--stage2-size "$STAGE2_SIZE")
  echo "[$RECIPE] select: U-shape band and two stages of $SCORES/scored.parquet -> $SELECTION"
  "$PYTHON" -m verl_difficulty.cli select p2 "$SCORES/scored.parquet" -o "$SELECTION" \
    --low 0.1 --high 0.87 "${sizes[@]}" "${select_args[@]}"
fi

if has_stage stage1 || has_stage train; then
  echo "[$RECIPE] stage 1: stage1.yaml on $SELECTION/stage1.parquet"
  "$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name stage1 \
    actor_rollout_ref.model.path="$MODEL_PATH" data.train_files="$SELECTION/stage1.parquet" "${cluster[@]}" \
    trainer.default_local_dir="$CKPT/stage1" "${train_overrides[@]}" "$@"
fi

if has_stage stage2 || has_stage train; then
  model="$STAGE1_MODEL"
  if [[ -z "$model" ]]; then
    # the stage-1 policy = its last checkpoint (verl always saves the last step when trainer.save_freq > 0): the
    # Hugging Face model stage1.yaml saves in it (hf_model), else verl's model merger exports one (bf16 weights)
    if [[ ! -f "$CKPT/stage1/latest_checkpointed_iteration.txt" ]]; then
      echo "[$RECIPE] stage 2 starts from stage 1's last checkpoint, but $CKPT/stage1 holds none: run stage1 with" \
           "trainer.save_freq > 0 (or set STAGE1_MODEL to a Hugging Face model directory)" >&2
      exit 2
    fi
    actor="$CKPT/stage1/global_step_$(cat "$CKPT/stage1/latest_checkpointed_iteration.txt")/actor"
    model="$actor/huggingface"
    if ! compgen -G "$model/*.safetensors" > /dev/null; then
      model="$WORK/models/stage1_$(basename "$(dirname "$actor")")"
      if [[ ! -f "$model/config.json" ]]; then
        echo "[$RECIPE] stage 2: exporting $actor -> $model"
        rm -rf "$model.tmp"
        "$PYTHON" -m verl.model_merger merge --backend fsdp --local_dir "$actor" --target_dir "$model.tmp"
        mv "$model.tmp" "$model"
      fi
    fi
  fi
  echo "[$RECIPE] stage 2: stage2.yaml on $SELECTION/stage2.parquet from $model"
  "$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name stage2 \
    actor_rollout_ref.model.path="$model" data.train_files="$SELECTION/stage2.parquet" "${cluster[@]}" \
    trainer.default_local_dir="$CKPT/stage2" "${train_overrides[@]}" "$@"
fi

if has_stage sampler; then
  echo "[$RECIPE] sampler: two_stage_sampler.yaml on $SELECTION/train.parquet"
  "$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name two_stage_sampler \
    actor_rollout_ref.model.path="$MODEL_PATH" data.train_files="$SELECTION/train.parquet" "${cluster[@]}" \
    trainer.default_local_dir="$CKPT/two_stage_sampler" "${train_overrides[@]}" "$@"
fi
