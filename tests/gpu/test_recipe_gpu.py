"""GPU-only: one recipe's tiny variant through stock ``main_ppo`` on a GPU with the vLLM rollout (skipped without CUDA
or vLLM, see tests/conftest.py).

P3 Durian (``recipes/p3_durian/run_qwen2_5_vl_7b.sh``, ``durian_grpo.yaml``) on a vLLM-friendly tiny Qwen2.5-VL (head
size 64, warmed up to the recipe's ``\\boxed{}`` format): the ``score`` stage writes ``visual_entropy`` on the GPU, the
``train`` stage runs 3 steps with the recipe's own YAML and only size overrides plus the plugin's difficulty sampler
switched on: vLLM rollout, the plugin's trainer mode, sampler and Durian with its perceptual branch. Prints what a
note needs: step time, the share of the plugin's advantage step (``timing_s/adv``) in it, GPU memory (nvidia-smi peak).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[2]


def _gpu_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return max((int(x) for x in out.split()), default=0)


def test_p3_durian_tiny_on_gpu_with_vllm(tmp_path):
    import pyarrow.parquet as pq

    from verl_difficulty.cpu.recipe_overrides import tiny_sizes
    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.models.tiny import build_tiny_model_dir
    from verl_difficulty.models.warmup import warm_up

    work = tmp_path / "p3"
    write_dataset(str(work / "data"), n_train=64, n_val=8, seed=0)
    model = build_tiny_model_dir(str(tmp_path / "tiny_vllm"), seed=0, vllm_friendly=True)
    warm_up(model, pq.read_table(work / "data" / "train.parquet").to_pylist(), steps=300, seed=0, style="boxed")
    metrics = tmp_path / "metrics.jsonl"
    overrides = tiny_sizes(steps=3, batch=8, n=4, response_length=64) + [
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        "actor_rollout_ref.rollout.max_model_len=1024",
        "actor_rollout_ref.actor.fsdp_config.param_offload=false",
        "actor_rollout_ref.ref.fsdp_config.param_offload=false",
        "data.dataloader_num_workers=0",
        "difficulty.sampler.enable=true",
    ]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHON=sys.executable, VERL_FILE_LOGGER_PATH=str(metrics), MODEL_PATH=model, WORK=str(work),
               STAGES="score train", SCORE_WORKERS="0", SCORE_GPUS_PER_WORKER="", TRAIN_OVERRIDES=" ".join(overrides))
    peak = {"mib": 0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak["mib"] = max(peak["mib"], _gpu_used_mib())
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.time()
    proc = subprocess.run(["bash", str(REPO / "recipes" / "p3_durian" / "run_qwen2_5_vl_7b.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1500)
    wall = time.time() - start
    done.set()
    out = proc.stdout + proc.stderr
    (tmp_path / "run.log").write_text(out)
    assert proc.returncode == 0, out[-8000:]
    steps = [json.loads(line)["data"] for line in metrics.read_text().splitlines() if line.strip()]
    steps = [d for d in steps if "actor/grad_norm" in d]
    assert len(steps) == 3
    for d in steps:
        assert d["difficulty/durian/percep_active"] == 1.0 and d["difficulty/durian/num_prompts"] == 8
        assert d["difficulty/seam/prompt_id_coverage"] == 1.0
    assert steps[-1]["difficulty/sampler/prompts_seen"] == 24
    step_s = [d["timing_s/step"] for d in steps]
    adv_share = [d.get("timing_s/adv", float("nan")) / d["timing_s/step"] for d in steps]
    print(f"[gpu recipe] p3_durian tiny on GPU + vLLM: wall {wall:.1f}s, step time {step_s}, timing_s/adv share "
          f"{[round(x, 4) for x in adv_share]}, GPU memory peak {peak['mib']} MiB, "
          f"score/mean {[round(d['critic/score/mean'], 3) for d in steps]}")
