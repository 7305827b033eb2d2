"""Scale benchmark of the difficulty sampler (issue 5): 1,000,000 prompts.

Prints, per mode: the time to build the sampler from a verl-style ``datasets.Dataset`` (reading prompt ids, buckets and
offline scores from ``extra_info``) and decide its first batch ("first epoch built"), the bytes the sampler holds in
arrays and in its checkpoint state, the median cost of one batch decision, and the cost of one update at two dataset
sizes (an update is O(batch): its cost must not grow with the dataset). Targets: build < 1 s, state < 100 MB,
target-mode draw < 5 ms per batch of 512.

Target modes also time, on the same sampler states, the O(N) reference draw the sampler used before its sorted
index (:func:`reference_target_draw`, kept here only): the ``draw/batch`` column shows before -> after and the ratio.
The ``+refill`` rows draw batches of one prompt (DAPO's ``gen_batch_size=1`` refills), 512 of them per step.

    python benchmarks/sampler.py [--n 1000000] [--batch 512] [--rollouts 8]

No test times these figures (CI machines vary); run it by hand.
"""

from __future__ import annotations

import argparse
import io
import time
import tracemalloc

import numpy as np
import torch

from verl_difficulty import schema
from verl_difficulty.sampling.config import SamplerConfig
from verl_difficulty.sampling.sampler import DifficultySampler

MODES = {
    "uniform": {"mode": "uniform"},
    "stratified+band": {
        "mode": "stratified",
        "mix": {"easy": 0.2, "medium": 0.4, "hard": 0.4},
        "band": {"enable": True, "low": 0.1, "high": 0.9, "readmit_after": 50},
    },
    "two_stage": {
        "mode": "stratified",
        "mix": {"medium": 1.0},
        "schedule": {"type": "two_stage", "switch_step": 2, "stage1": {"mix": {"medium": 1.0}},
                     "stage2": {"mix": {"hard": 1.0}}},
    },
    "target+adaptive+band": {
        "mode": "target",
        "target": 0.5,
        "schedule": {"type": "adaptive"},
        "band": {"enable": True, "low": 0.1, "high": 0.9},
    },
    "target+readmit": {"mode": "target", "target": 0.5, "band": {"enable": True, "low": 0.2, "high": 0.8,
                                                                   "readmit_after": 5}},
    "target+T=0.05": {"mode": "target", "target": 0.5, "target_temperature": 0.05},
    "target+refill": {"mode": "target", "target": 0.5, "band": {"enable": True, "low": 0.1, "high": 0.9}},
}


def make_dataset(n: int, seed: int = 0):
    """A ``datasets.Dataset`` shaped like verl's (``extra_info`` struct with index, bucket, offline score)."""
    import datasets
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    names = np.array(schema.BUCKETS)
    extra = pa.StructArray.from_arrays(
        [
            pa.array(rng.permutation(n).astype(np.int64)),
            pa.array(names[rng.integers(0, len(names), n)]),
            pa.array(rng.random(n)),
        ],
        names=[schema.PROMPT_ID, schema.DIFFICULTY_BUCKET, schema.DIFFICULTY_SCORE],
    )
    return datasets.Dataset(pa.table({schema.EXTRA_INFO: extra}))


class _DS:
    def __init__(self, frame):
        self.dataframe = frame


_NEVER = np.iinfo(np.int32).max


def reference_target_draw(s: DifficultySampler, n: int) -> np.ndarray:
    """The O(N) target-mode draw of the sampler before its sorted index (the reference of the ratio): admission of
    the whole pool, bans, the per-epoch mask, then an argpartition over every candidate. Works on copies: the
    sampler's state is left as it is."""
    d, est, step, cfg = s.drawer, s.tracker.est, s.step, s.config
    setting = s.setting()
    band, target = setting.band, float(setting.target)
    rng = d.rng(2, d.epoch, d.batch_in_epoch)
    pool = d.pools[0].astype(np.int64)
    if band is None:
        adm = np.ones(len(pool), dtype=bool)
    else:
        p, bu = est[pool], d.banned_until[pool]
        inside = (p >= band[0]) & (p <= band[1])
        adm = inside | ((bu > 0) & (step >= bu))
        newly = ~inside & (bu == 0)
        ra = cfg.band.readmit_after
        banned = d.banned_until.copy()
        banned[pool[newly]] = _NEVER if ra is None else min(_NEVER - 1, step + ra)
    cand_mask = adm
    if d.drawn is not None:
        cand_mask = adm & ~d.drawn[pool]
        if cand_mask.sum() < n:
            cand_mask = adm
    cand = pool[cand_mask]
    k = min(n, len(cand))
    dist = np.abs(est[cand] - target)
    tau = cfg.target_temperature
    key = dist / tau - rng.gumbel(size=len(cand)) if tau > 0 else dist + rng.random(len(cand)) * 1e-12
    part = np.argpartition(key, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
    return cand[part[np.argsort(key[part], kind="stable")]]


def bench_mode(name: str, cfg: dict, ds, batch: int, rollouts: int, n_batches: int = 20) -> dict:
    config = SamplerConfig.from_dict({"enable": True, **cfg})
    refill = name.endswith("+refill")
    draw_size = 1 if refill else batch
    tracemalloc.start()
    t0 = time.perf_counter()
    s = DifficultySampler.from_dataset(_DS(ds), config, batch_size=draw_size)
    it = iter(s)
    first = [next(it) for _ in range(draw_size)]
    build = time.perf_counter() - t0
    first += [next(it) for _ in range(batch - draw_size)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rng = np.random.default_rng(1)
    draw_t, ref_t, upd_t = [], [], []
    for step in range(1, n_batches + 1):
        ids = np.repeat(s.prompt_ids[first], rollouts)
        correct = (rng.random(len(ids)) < 0.4).astype(np.float64)
        t0 = time.perf_counter()
        s.update(ids, correct, step=step)
        upd_t.append(time.perf_counter() - t0)
        if config.mode == "target" and step <= 5:
            t0 = time.perf_counter()
            for _ in range(batch // draw_size if not refill else 8):  # refill: 8 of the 512 one-prompt draws
                reference_target_draw(s, draw_size)
            ref_t.append((time.perf_counter() - t0) * (1 if not refill else batch / 8))
        t0 = time.perf_counter()
        first = [next(it) for _ in range(batch)]
        draw_t.append(time.perf_counter() - t0)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    return {
        "mode": name,
        "build_first_batch_s": build,
        "build_peak_alloc_mb": peak / 2**20,
        "arrays_mb": s.state_nbytes() / 2**20,
        "checkpoint_mb": buf.tell() / 2**20,
        "draw_ms": 1000 * float(np.median(draw_t)),
        "draw_mean_ms": 1000 * float(np.mean(draw_t)),
        "ref_ms": 1000 * float(np.median(ref_t)) if ref_t else None,
        "update_ms": 1000 * float(np.median(upd_t)),
    }


def update_cost(n: int, batch: int, rollouts: int, reps: int = 50) -> float:
    s = DifficultySampler(np.arange(n), None, SamplerConfig(enable=True), batch_size=batch)
    rng = np.random.default_rng(0)
    ts = []
    for step in range(1, reps + 1):
        ids = np.repeat(rng.integers(0, n, batch), rollouts)
        correct = (rng.random(len(ids)) < 0.5).astype(np.float64)
        t0 = time.perf_counter()
        s.update(ids, correct, step=step)
        ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rollouts", type=int, default=8)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ds = make_dataset(args.n)
    print(f"dataset: {args.n:,} prompts built in {time.perf_counter() - t0:.2f} s (not counted)")
    print(f"{'mode':<22} {'build+1st batch':>16} {'peak alloc':>11} {'arrays':>9} {'ckpt':>9} "
          f"{'draw/batch: O(N) before -> now (ratio)':>40} {'mean':>9} {'update':>9}")
    worst_build, worst_mem = 0.0, 0.0
    for name, cfg in MODES.items():
        r = bench_mode(name, cfg, ds, args.batch, args.rollouts)
        worst_build = max(worst_build, r["build_first_batch_s"])
        worst_mem = max(worst_mem, r["arrays_mb"], r["checkpoint_mb"], r["build_peak_alloc_mb"])
        if r["ref_ms"] is not None:
            draw = f"{r['ref_ms']:8.2f} ms -> {r['draw_ms']:6.2f} ms ({r['ref_ms'] / r['draw_ms']:5.1f}x)"
        else:
            draw = f"(unchanged) {r['draw_ms']:6.2f} ms"
        print(f"{r['mode']:<22} {r['build_first_batch_s']:>14.3f} s {r['build_peak_alloc_mb']:>8.1f} MB "
              f"{r['arrays_mb']:>6.1f} MB {r['checkpoint_mb']:>6.1f} MB {draw:>40} {r['draw_mean_ms']:>6.2f} ms "
              f"{r['update_ms']:>6.2f} ms")
    small, large = update_cost(10_000, args.batch, args.rollouts), update_cost(args.n, args.batch, args.rollouts)
    print(f"update of {args.batch} prompts x {args.rollouts} rollouts: {small:.3f} ms at N=10,000, "
          f"{large:.3f} ms at N={args.n:,} (O(batch): independent of N)")
    print(f"worst build+first batch: {worst_build:.3f} s (target < 1 s): {'OK' if worst_build < 1 else 'MISSED'}")
    print(f"worst state/peak memory: {worst_mem:.1f} MB (target < 100 MB): {'OK' if worst_mem < 100 else 'MISSED'}")


if __name__ == "__main__":
    main()
