"""Scoring throughput of the transformers backend: batched generation vs one sample at a time (tiny Qwen2.5-VL, CPU).

    python benchmarks/scoring.py [--rows 32] [--k 4] [--max-tokens 32] [--batch-sizes 1,8,32] [--threads 1]

Runs the real scorer path (:class:`verl_difficulty.scoring.scorers.passk.PassKScorer` through
:class:`verl_difficulty.scoring.context.ScoringContext` and :class:`verl_difficulty.scoring.backends.TransformersBackend`)
on synthetic image rows, k rollouts per row, with a scripted verifier (grading cost excluded) and reports rows/s and
generations/s per batch size. Batch size 1 is "one sample at a time". It also checks that every batch size produced
the same values (per-request seeds), so the speed-up costs no reproducibility.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_difficulty.data.rows import prepare_row  # noqa: E402
from verl_difficulty.data.synthetic import generate_rows  # noqa: E402
from verl_difficulty.models.tiny import build_tiny_model_dir  # noqa: E402
from verl_difficulty.scoring.backends import TransformersBackend  # noqa: E402
from verl_difficulty.scoring.context import ScoringContext  # noqa: E402
from verl_difficulty.scoring.scorers.passk import PassKScorer  # noqa: E402
from verl_difficulty.scoring.scripted import ScriptedVerifier  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a scoring worker uses its CPU count)")
    ap.add_argument("--model", default=None, help="checkpoint dir (default: the tiny Qwen2.5-VL built in code)")
    args = ap.parse_args()
    path = args.model or build_tiny_model_dir(str(Path(tempfile.gettempdir()) / "verl_difficulty_tiny_bench"))
    backend = TransformersBackend(path, device="cpu", num_threads=args.threads)
    rows = [prepare_row(r, i) for i, r in enumerate(generate_rows(args.rows, seed=0))]
    scorer = PassKScorer(k=args.k, max_tokens=args.max_tokens)
    verifier = ScriptedVerifier(mode="hash", rate=0.5)
    warm = ScoringContext(backend, verifier, seed=0, batch_size=8)
    scorer.score(rows[:2], warm)  # warm-up
    results = {}
    values = {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        ctx = ScoringContext(backend, verifier, seed=0, batch_size=bs)
        t0 = time.perf_counter()
        values[bs] = scorer.score(rows, ctx)
        dt = time.perf_counter() - t0
        results[bs] = (len(rows) / dt, ctx.generations / dt, dt)
    base = results[min(results)]
    print(f"tiny Qwen2.5-VL on CPU ({args.threads} thread(s)), {args.rows} image rows x k={args.k} rollouts, "
          f"<= {args.max_tokens} new tokens (temperature 1.0, stops at eos)")
    print(f"{'batch size':>10}{'rows/s':>10}{'gen/s':>10}{'seconds':>10}{'speed-up':>10}")
    for bs, (rps, gps, dt) in results.items():
        print(f"{bs:>10}{rps:>10.2f}{gps:>10.1f}{dt:>10.2f}{rps / base[0]:>9.1f}x")
    same = all(values[b] == values[min(values)] for b in values)
    print(f"identical pass@k values for every batch size: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
