"""Benchmark of the difficulty-aware advantage estimators against verl's GRPO and a memory floor (CPU, float32).

For each shape (responses x tokens) with n = 8 rollouts per prompt it times, as medians over several repeats after a
warm-up, all called the way verl calls them (uid object array, (bs, T) tensors):

* ``verl_grpo_vec``: ``verl.trainer.ppo.core_algos.compute_grpo_vectorized_outcome_advantage``;
* ``difficulty_weighted`` and ``durian`` (default settings, seam inputs: the verdict ``correct``, ``acc``,
  ``extra_info`` with ``visual_entropy``, ``old_log_probs``);
* the memory floor, measured in the same run: one read of each input and one write of the output, i.e. a row
  reduction of ``token_level_rewards`` (for durian also of ``old_log_probs``) and ``scalar[:, None] * mask``. Each
  row reduction is timed both as ``x.sum(-1)`` and as a BLAS gemv ``x @ ones`` and the faster one is the floor (a
  strict floor: the estimators may use either).

Targets (float32 mask): difficulty_weighted and durian <= 1.5x floor. The int64 mask rows show verl's actual
response-mask dtype (verl's agent loop builds it as int64); there the floor's broadcast goes through torch's
type-promoting multiply.

The machine should be otherwise idle: on a shared 2-core box another process's load changes every median (the
``(min)`` column is steadier).

Usage: ``python benchmarks/advantage.py [--quick] [--repeats N] [--mask-dtypes float32,int64] [--threads N]``.
Always exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl.trainer.ppo.core_algos import compute_grpo_vectorized_outcome_advantage  # noqa: E402

from verl_difficulty.estimators import metrics as est_metrics  # noqa: E402
from verl_difficulty.estimators.difficulty_weighted import compute_difficulty_weighted_advantage  # noqa: E402
from verl_difficulty.estimators.durian import compute_durian_advantage  # noqa: E402
from verl_difficulty.schema import ACC, CORRECT, EXTRA_INFO, VISUAL_ENTROPY  # noqa: E402

N_ROLLOUTS = 8
FULL_SHAPES = [(4096, 2048), (16384, 1024)]
QUICK_SHAPES = [(512, 256), (1024, 128)]
TARGETS = {"difficulty_weighted": 1.5, "durian": 1.5}


def make_inputs(bs: int, T: int, mask_dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_prompts = bs // N_ROLLOUTS
    uids = np.array([str(uuid.UUID(int=int(rng.integers(2**62)))) for _ in range(n_prompts)], dtype=object)
    index = np.repeat(uids, N_ROLLOUTS)
    lengths = torch.randint(1, T + 1, (bs,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(mask_dtype)
    r = (torch.rand(bs, generator=g) > 0.5).float()
    tlr = torch.zeros(bs, T)
    tlr[torch.arange(bs), lengths - 1] = r  # outcome reward on the last response token, as verl does
    lp = -torch.rand(bs, T, generator=g)
    h = rng.uniform(0.0, 5.0, size=n_prompts).repeat(N_ROLLOUTS)
    ntb = {
        "uid": index,
        ACC: r.numpy().astype(np.float64),
        CORRECT: r.numpy().astype(np.float64),  # the seam's verdict (all responses non-empty here)
        EXTRA_INFO: np.array([{"index": i // N_ROLLOUTS, VISUAL_ENTROPY: float(h[i])} for i in range(bs)],
                             dtype=object),
    }
    return dict(tlr=tlr, mask=mask, lp=lp, index=index, ntb=ntb)


def time_interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    """{name: (median, min)} wall seconds. Every round runs each function once, in rotation, so a busy machine slows
    all of them alike and the ratios stay meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            del out
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def bench_shape(bs: int, T: int, mask_dtype: torch.dtype, repeats: int) -> list[dict]:
    x = make_inputs(bs, T, mask_dtype)
    tlr, mask, lp, index, ntb = x["tlr"], x["mask"], x["lp"], x["index"], x["ntb"]
    ones = torch.ones(T)
    scalar = torch.randn(bs)

    def floor_dw_sum():
        s = tlr.sum(-1)
        return (s + scalar)[:, None] * mask

    def floor_dw_gemv():
        s = tlr @ ones
        return (s + scalar)[:, None] * mask

    def floor_durian_sum():
        s = tlr.sum(-1) + lp.sum(-1)
        return (s + scalar)[:, None] * mask

    def floor_durian_gemv():
        s = tlr @ ones + lp @ ones
        return (s + scalar)[:, None] * mask

    fns = {
        "verl_grpo_vec": lambda: compute_grpo_vectorized_outcome_advantage(tlr, mask, index)[0],
        "difficulty_weighted": lambda: compute_difficulty_weighted_advantage(
            tlr, mask, config=None, index=index, non_tensor_batch=ntb, old_log_probs=lp)[0],
        "durian": lambda: compute_durian_advantage(
            tlr, mask, config=None, index=index, non_tensor_batch=ntb, old_log_probs=lp)[0],
        "floor_dw_sum": floor_dw_sum,
        "floor_dw_gemv": floor_dw_gemv,
        "floor_durian_sum": floor_durian_sum,
        "floor_durian_gemv": floor_durian_gemv,
    }
    t = time_interleaved(fns, repeats)
    est_metrics.pop_all()

    def best(a, b):  # the faster implementation of the same traffic (median and min taken separately)
        return min(t[a][0], t[b][0]), min(t[a][1], t[b][1])

    floors = {"difficulty_weighted": best("floor_dw_sum", "floor_dw_gemv"),
              "durian": best("floor_durian_sum", "floor_durian_gemv")}
    floors["verl_grpo_vec"] = floors["difficulty_weighted"]
    rows = []
    for name in ("verl_grpo_vec", "difficulty_weighted", "durian"):
        med, lo = t[name]
        rows.append(dict(shape=f"{bs}x{T}", mask=str(mask_dtype).replace("torch.", ""), name=name, ms=med * 1e3,
                         vs_verl=med / t["verl_grpo_vec"][0], floor_ms=floors[name][0] * 1e3,
                         vs_floor=med / floors[name][0], vs_floor_min=lo / floors[name][1], target=TARGETS.get(name)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per function (default 11, quick 5)")
    ap.add_argument("--mask-dtypes", default="float32,int64", help="comma list of response-mask dtypes")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 11)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    dtypes = [getattr(torch, d.strip()) for d in args.mask_dtypes.split(",") if d.strip()]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU float32, n={N_ROLLOUTS} rollouts/prompt, "
          f"median of {repeats} interleaved rounds after warm-up")
    header = (f"{'shape':>11} {'mask':>7} {'estimator':>20} {'median ms':>10} {'x verl':>7} {'floor ms':>9} "
              f"{'x floor':>8} {'(min)':>6} {'target':>7}")
    print(header)
    print("-" * len(header))
    for bs, T in shapes:
        for dtype in dtypes:
            for r in bench_shape(bs, T, dtype, repeats):
                target = "" if r["target"] is None else f"<={r['target']:.1f}"
                verdict = ""
                if r["target"] is not None and r["mask"] == "float32" and not args.quick:
                    verdict = " ok" if r["vs_floor"] <= r["target"] else " MISSED"
                print(f"{r['shape']:>11} {r['mask']:>7} {r['name']:>20} {r['ms']:>10.2f} {r['vs_verl']:>7.2f} "
                      f"{r['floor_ms']:>9.2f} {r['vs_floor']:>8.2f} {r['vs_floor_min']:>6.2f} {target:>7}{verdict}")
    print("x verl / x floor: ratio of medians; (min): ratio of the fastest runs (less sensitive to a busy machine)")
    if args.quick:
        print("--quick: small shapes are dominated by fixed per-call overhead; targets are judged on the full shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
