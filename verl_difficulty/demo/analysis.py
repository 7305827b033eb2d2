"""The demo's statistics: how well each difficulty score agrees with the generator's true difficulty, and how the
selected subsets' true-difficulty mix compares with random subsets of the same size.

* :func:`spearman`: Spearman's rank correlation (average ranks for ties, i.e. Pearson on the tie-averaged ranks;
  NaN when a side is constant).
* :func:`bootstrap_interval`: a seeded percentile bootstrap over the rows (resample rows with replacement, recompute
  the statistic, take the 2.5th and 97.5th percentiles of the finite values).
* :func:`agreement`: one row per score column: rho against the true level, its interval, the number of rows, and the
  *agreement* = rho x the column's direction (+1 when a higher value means harder, -1 when it means easier), so a
  positive agreement always means "the score ranks rows like the generator does". Columns without a difficulty
  direction (CDE's discrepancy, CMAB's ratio, ACE's score: they measure something else) show rho only.
* :func:`subset_mix`: the true-level shares of a subset against ``draws`` random subsets of the same size drawn
  without replacement from the same rows (mean share and 95% range per level, and where the subset's mean level lies
  among the random subsets' mean levels).

Everything here is pure numpy on arrays; nothing reads files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from verl_difficulty import schema

PISM_NEVER_FAILS = 1.0
"""Value given to PISM's lambda* when a row never fails (NaN in the column): above every mask ratio tried."""

BUCKET_ORDINAL = {name: float(i) for i, name in enumerate(schema.BUCKETS)}
"""easy 0 < medium 1 < hard 2 < unsolved 3: the bucket columns as an ordinal difficulty."""


@dataclass(frozen=True)
class ScoreColumn:
    """How a score column is read as a difficulty: its scorer, its direction and how missing values are treated."""

    column: str
    scorer: str
    direction: int  # +1: higher = harder; -1: higher = easier; 0: not a difficulty (rho shown, no agreement)
    meaning: str
    headline: bool = False  # the column that stands for its scorer in the summary


SCORE_COLUMNS: tuple[ScoreColumn, ...] = (
    ScoreColumn(schema.PASS_RATE, "passk", -1, "pass rate over k rollouts (lower = harder)", True),
    ScoreColumn(schema.PISM_LAMBDA, "pism", -1, "failure mask ratio lambda* (lower = harder; never fails = 1.0)",
                True),
    ScoreColumn(schema.PISM_BUCKET, "pism", +1, "PISM bucket as an ordinal (easy < medium < hard < unsolved)"),
    ScoreColumn(schema.CDE_ACC_IMG, "cde", -1, "accuracy with the image (lower = harder)", True),
    ScoreColumn(schema.CDE_D, "cde", 0, "causal discrepancy acc_img - acc_txt (image reliance, not difficulty)"),
    ScoreColumn(schema.VISUAL_ENTROPY, "visual_entropy", +1, "visual entropy (Durian: higher = perceptually harder)",
                True),
    ScoreColumn(schema.CMAB_BUCKET, "cmab", +1, "CMAB bucket as an ordinal (easy < medium < hard < unsolved)", True),
    ScoreColumn(schema.CMAB_RATIO, "cmab", 0, "image/text attention ratio (non-monotone in difficulty)"),
    ScoreColumn(schema.ACE_SCORE, "ace", 0, "attention confidence (log; a data-quality filter, not difficulty)",
                True),
)
"""The score columns the demo compares with the true level, in report order."""


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (like ``scipy.stats.rankdata``)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # start index of each run of equal values
    new_run = np.concatenate(([True], sorted_v[1:] != sorted_v[:-1]))
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate((starts[1:], [len(v)]))
    avg = (starts + ends - 1) / 2.0 + 1.0  # average of 1-based positions start+1 .. end
    out = np.empty(len(v), dtype=np.float64)
    out[order] = avg[run_id]
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if den <= 0.0:
        return float("nan")
    return float((a * b).sum() / den)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of two equally long sequences (rows where either is NaN are dropped first)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return _pearson(ranks(x[ok]), ranks(y[ok]))


def bootstrap_interval(x: Sequence[float], y: Sequence[float], statistic: Callable = spearman, draws: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` over rows resampled with replacement (seeded).

    Resamples where the statistic is undefined (a constant side) are left out; (NaN, NaN) when none is defined.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 2 or draws < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(draws, dtype=np.float64)
    for i in range(draws):
        idx = rng.integers(0, n, size=n)
        stats[i] = statistic(x[idx], y[idx])
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def as_difficulty_values(column: str, values: Sequence) -> np.ndarray:
    """A score column as float64 for ranking: buckets as ordinals, PISM's "never fails" (NaN) as
    :data:`PISM_NEVER_FAILS`, None as NaN."""
    if column in (schema.PISM_BUCKET, schema.CMAB_BUCKET):
        return np.array([BUCKET_ORDINAL.get(str(v), np.nan) if v is not None else np.nan for v in values])
    out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if column == schema.PISM_LAMBDA:
        out = np.where(np.isnan(out), PISM_NEVER_FAILS, out)
    return out


@dataclass
class Agreement:
    """One row of the agreement table."""

    scorer: str
    column: str
    meaning: str
    direction: int
    n: int
    rho: float
    rho_low: float
    rho_high: float
    agreement: Optional[float]  # rho x direction (None for direction 0)
    agreement_low: Optional[float]
    agreement_high: Optional[float]
    headline: bool

    def to_dict(self) -> dict:
        return asdict(self)


def agreement(columns: dict, true_level: Sequence[float], draws: int = 1000, seed: int = 0,
              specs: Sequence[ScoreColumn] = SCORE_COLUMNS) -> list[Agreement]:
    """The agreement table of the score columns present in ``columns`` (name -> values, one per row) with the true
    level (one per row). Each column's bootstrap uses the same seed, so the table is reproducible."""
    level = np.asarray(true_level, dtype=np.float64)
    out = []
    for spec in specs:
        if spec.column not in columns:
            continue
        values = as_difficulty_values(spec.column, columns[spec.column])
        if len(values) != len(level):
            raise ValueError(f"{spec.column}: {len(values)} values for {len(level)} rows")
        ok = np.isfinite(values) & np.isfinite(level)
        rho = spearman(values[ok], level[ok])
        lo, hi = bootstrap_interval(values[ok], level[ok], draws=draws, seed=seed)
        if spec.direction:
            d = spec.direction
            ag, ag_lo, ag_hi = rho * d, min(lo * d, hi * d), max(lo * d, hi * d)
        else:
            ag = ag_lo = ag_hi = None
        out.append(Agreement(spec.scorer, spec.column, spec.meaning, spec.direction, int(ok.sum()), rho, lo, hi,
                             ag, ag_lo, ag_hi, spec.headline))
    return out


def level_means(values: np.ndarray, level: np.ndarray) -> dict[int, float]:
    """Mean of the finite ``values`` per true level."""
    out = {}
    for lv in np.unique(level[np.isfinite(level)]).astype(int):
        v = values[(level == lv) & np.isfinite(values)]
        out[int(lv)] = float(v.mean()) if len(v) else float("nan")
    return out


@dataclass
class SubsetMix:
    """A subset's true-level mix against random subsets of the same size."""

    name: str
    size: int
    population: int
    levels: list[int]
    share: list[float]  # per level, of the subset
    random_mean: list[float]  # per level, mean share over the random subsets
    random_low: list[float]  # per level, 2.5th percentile
    random_high: list[float]  # per level, 97.5th percentile
    mean_level: float
    random_mean_level: float
    random_mean_level_low: float
    random_mean_level_high: float
    percentile: float  # share of random subsets whose mean level is below the subset's (ties count half)
    draws: int

    def to_dict(self) -> dict:
        return asdict(self)


def subset_mix(name: str, subset_levels: Sequence[int], population_levels: Sequence[int], draws: int = 2000,
               seed: int = 0) -> SubsetMix:
    """Compare a subset's true-level mix with ``draws`` random subsets of the same size (seeded, without
    replacement) from the population (which must contain the subset)."""
    sub = np.asarray(subset_levels, dtype=np.int64)
    pop = np.asarray(population_levels, dtype=np.int64)
    m, n = len(sub), len(pop)
    if m > n:
        raise ValueError(f"{name}: subset of {m} rows is larger than the population of {n}")
    levels = sorted(int(v) for v in np.unique(pop))
    idx = {lv: i for i, lv in enumerate(levels)}
    k = len(levels)

    def shares(vals: np.ndarray) -> np.ndarray:
        counts = np.bincount([idx[int(v)] for v in vals], minlength=k).astype(np.float64)
        return counts / max(len(vals), 1)

    rng = np.random.default_rng(seed)
    rand_shares = np.empty((draws, k))
    rand_means = np.empty(draws)
    for i in range(draws):
        pick = pop[rng.permutation(n)[:m]]
        rand_shares[i] = shares(pick)
        rand_means[i] = pick.mean() if m else np.nan
    mean_level = float(sub.mean()) if m else float("nan")
    below = float(np.mean(rand_means < mean_level) + 0.5 * np.mean(rand_means == mean_level)) if m else float("nan")
    q = np.quantile(rand_shares, [0.025, 0.975], axis=0) if draws else np.full((2, k), np.nan)
    qm = np.quantile(rand_means, [0.025, 0.975]) if draws and m else [float("nan")] * 2
    return SubsetMix(name=name, size=m, population=n, levels=levels, share=shares(sub).tolist(),
                     random_mean=rand_shares.mean(axis=0).tolist() if draws else [float("nan")] * k,
                     random_low=q[0].tolist(), random_high=q[1].tolist(), mean_level=mean_level,
                     random_mean_level=float(np.nanmean(rand_means)) if draws and m else float("nan"),
                     random_mean_level_low=float(qm[0]), random_mean_level_high=float(qm[1]), percentile=below,
                     draws=int(draws))
