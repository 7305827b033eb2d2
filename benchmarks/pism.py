"""PISM cost: generations per sample of the exact early-exit procedure vs the naive and the reference-code procedures.

    python benchmarks/pism.py [--n 20000] [--seed 0] [--k 10] [--tau 0.1]

Simulated samples (P1's setting): base accuracy a ~ Beta(0.3, 0.3) (U-shaped, as P2 observes), success probability at
mask ratio lambda p(lambda) = a * (1 - lambda)^k with k ~ U[0.5, 4]. Each sample gets ONE table of outcomes
(10 ratios x K tries, drawn once), and all three procedures read the same table, so their lambda* must be identical
(checked for every sample):

* naive: K tries at each of the 10 ratios = 100 generations;
* reference code: ratio 0 on every sample (stopping at the first success); samples that pass it are then tried at
  every other ratio independently, stopping within a ratio at the first success;
* ours (:class:`verl_difficulty.scoring.scorers.pism.PismState`): ratios in ascending order, stop within a ratio at the
  first success, stop at lambda* (the first failing ratio).

Targets (issue 6): ours <= 25% of naive and <= 50% of the reference procedure. Also printed: the ``scan_all`` variant
(every ratio tried, for the non-monotone analysis) and a non-monotone simulation (success probabilities permuted over
the ratios) to show lambda* stays identical there too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_difficulty.scoring.scorers.pism import DEFAULT_RATIOS, PismParams, lambda_star, run_procedure  # noqa: E402


def simulate(n: int, seed: int, k: int, non_monotone: bool = False):
    rng = np.random.default_rng(seed)
    ratios = np.asarray(DEFAULT_RATIOS)
    for _ in range(n):
        a = rng.beta(0.3, 0.3)
        decay = rng.uniform(0.5, 4.0)
        p = a * (1.0 - ratios) ** decay
        if non_monotone:
            p = np.concatenate([[p[0]], rng.permutation(p[1:])])
        yield rng.random((len(ratios), k)) < p[:, None]


def first_success_cost(row: np.ndarray) -> tuple[int, bool]:
    """Tries until the first success within one ratio (K if none) and whether it passed."""
    hits = np.flatnonzero(row)
    return (int(hits[0]) + 1, True) if hits.size else (row.size, False)


def naive(table: np.ndarray, tau: float):
    pc = table.mean(axis=1)
    return table.size, lambda_star(pc.tolist(), DEFAULT_RATIOS, tau)


def reference(table: np.ndarray, tau: float):
    """The released code's procedure (valid for tau*K <= 1: a ratio passes iff one try succeeds)."""
    cost, passed0 = first_success_cost(table[0])
    if not passed0:
        return cost, 0.0
    passed = [True]
    for r in range(1, table.shape[0]):
        c, ok = first_success_cost(table[r])
        cost += c
        passed.append(ok)
    return cost, lambda_star([1.0 if ok else 0.0 for ok in passed], DEFAULT_RATIOS, tau, indicator=True)


def ours(table: np.ndarray, params: PismParams):
    st = run_procedure(lambda r, t: bool(table[r, t]), params)
    return st.generated, st.lambda_star(), st.result()


def run(n: int, seed: int, k: int, tau: float, non_monotone: bool) -> dict:
    params = PismParams(k=k, tau=tau)
    params_all = PismParams(k=k, tau=tau, scan_all=True)
    tot = Counter()
    buckets = Counter()
    t0 = time.time()
    for table in simulate(n, seed, k, non_monotone):
        c_naive, l_naive = naive(table, tau)
        c_ref, l_ref = reference(table, tau)
        c_ours, l_ours, res = ours(table, params)
        c_all, l_all, _ = ours(table, params_all)
        if not (l_naive == l_ref == l_ours == l_all):
            raise AssertionError(f"lambda* differs: naive {l_naive}, reference {l_ref}, ours {l_ours}, all {l_all}")
        tot.update(naive=c_naive, reference=c_ref, ours=c_ours, scan_all=c_all)
        buckets[res["pism_bucket"]] += 1
    return {"n": n, "per_sample": {key: v / n for key, v in tot.items()}, "buckets": dict(buckets),
            "seconds": time.time() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tau", type=float, default=0.1)
    args = ap.parse_args()
    if args.tau * args.k > 1 + 1e-9:
        print("the reference procedure is only defined for tau*K <= 1", file=sys.stderr)
        return 2
    ok = True
    for label, non_mono in (("monotone a*(1-lambda)^k", False), ("non-monotone (permuted p over ratios > 0)", True)):
        res = run(args.n, args.seed, args.k, args.tau, non_mono)
        ps = res["per_sample"]
        r_naive = ps["ours"] / ps["naive"]
        r_ref = ps["ours"] / ps["reference"]
        print(f"\n== {label}: {res['n']} samples, K={args.k}, tau={args.tau}, base acc ~ Beta(0.3,0.3), "
              f"k ~ U[0.5,4] ({res['seconds']:.1f} s); lambda* identical for all 4 procedures: yes")
        print(f"{'procedure':<34}{'generations/sample':>20}{'ours / it':>12}")
        print(f"{'naive (K x 10 ratios)':<34}{ps['naive']:>20.2f}{r_naive:>12.1%}")
        print(f"{'reference code':<34}{ps['reference']:>20.2f}{r_ref:>12.1%}")
        print(f"{'ours, scan_all (every ratio)':<34}{ps['scan_all']:>20.2f}{ps['ours'] / ps['scan_all']:>12.1%}")
        print(f"{'ours (early exit, stop at lambda*)':<34}{ps['ours']:>20.2f}{'':>12}")
        print(f"buckets: {dict(sorted(res['buckets'].items()))}")
        if not non_mono:
            ok = r_naive <= 0.25 and r_ref <= 0.50
            print(f"targets: ours <= 25% of naive: {r_naive:.1%} {'PASS' if r_naive <= 0.25 else 'FAIL'}; "
                  f"<= 50% of reference: {r_ref:.1%} {'PASS' if r_ref <= 0.5 else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
