"""GPU-only: the forward-pass scorers (visual_entropy, cmab, ace) in bf16 with eager attention on CUDA.

Runs each scorer through the engine (transformers backend on ``cuda``, bfloat16, responses sampled by the same backend)
on the synthetic dataset and the tiny Qwen2.5-VL, and prints rows/s and the peak CUDA memory of each; checks that the
values are finite and that bf16 on the GPU agrees with fp32 on the CPU within bf16 precision for visual entropy
(no sampling involved). Skipped without CUDA (tests/conftest.py).
"""

from __future__ import annotations

import math
import time

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.gpu

SCORERS = {
    "visual_entropy": {},
    "cmab": {"max_tokens": 32},
    "ace": {"max_tokens": 32},
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.models.tiny import build_tiny_model_dir

    root = tmp_path_factory.mktemp("fwd_gpu")
    model = build_tiny_model_dir(str(root / "tiny"), seed=0)
    data = write_dataset(str(root / "data"), n_train=256, n_val=1, seed=0)["train"]
    return root, model, data


def _job(root, model, data, name, device, dtype, batch_size=64):
    from verl_difficulty.scoring import ScoreJob

    return ScoreJob(inputs=[data], output_dir=str(root / f"{name}-{device}-{dtype}"), model_path=model,
                    scorers={name: SCORERS[name]}, backend="transformers",
                    backend_kwargs={"device": device, "dtype": dtype}, batch_size=batch_size,
                    verifier={"name": "scripted", "mode": "hash", "rate": 0.5}, shard_size=256, num_workers=0,
                    progress=False)


@pytest.mark.parametrize("name", list(SCORERS))
def test_forward_scorer_runs_in_bf16_on_cuda(assets, name):
    import torch

    from verl_difficulty.scoring import run_scoring

    root, model, data = assets
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    summary = run_scoring(_job(root, model, data, name, "cuda", "bfloat16"))
    wall = time.time() - start
    peak = torch.cuda.max_memory_allocated() / 2**20
    assert summary["rows_scored"] == 256 and summary["rows_bad"] == 0, summary
    table = pq.read_table(root / f"{name}-cuda-bfloat16" / "scored.parquet").to_pylist()
    column = {"visual_entropy": "visual_entropy", "cmab": "cmab_ratio", "ace": "ace_score"}[name]
    values = [r[column] for r in table]
    assert all(v is not None and (math.isfinite(v) or v == -math.inf) for v in values), values[:5]
    print(f"[gpu] {name}: 256 rows in {wall:.1f}s ({256 / wall:.1f} rows/s incl. model load), "
          f"peak CUDA memory {peak:.0f} MiB")


def test_visual_entropy_bf16_cuda_agrees_with_fp32_cpu(assets):
    from verl_difficulty.scoring import run_scoring

    root, model, data = assets
    for device, dtype in (("cuda", "bfloat16"), ("cpu", "float32")):
        out = root / f"visual_entropy-{device}-{dtype}" / "scored.parquet"
        if not out.exists():
            run_scoring(_job(root, model, data, "visual_entropy", device, dtype))
    gpu = [r["visual_entropy"] for r in pq.read_table(root / "visual_entropy-cuda-bfloat16" / "scored.parquet")
           .to_pylist()]
    cpu = [r["visual_entropy"] for r in pq.read_table(root / "visual_entropy-cpu-float32" / "scored.parquet")
           .to_pylist()]
    worst = max(abs(a - b) for a, b in zip(gpu, cpu))
    print(f"[gpu] visual entropy bf16/cuda vs fp32/cpu: max |diff| {worst:.2e} nats over {len(cpu)} rows")
    assert worst < 0.05
