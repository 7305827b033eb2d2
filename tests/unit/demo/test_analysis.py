"""Spearman, the bootstrap interval, the agreement table and the subset-mix comparison of the demo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from verl_difficulty import schema
from verl_difficulty.demo import analysis as A


def test_ranks_average_ties_like_rankdata():
    assert A.ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert A.ranks([1, 1, 1]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_monotone_reversed_ties_nan_constant():
    x = [0.1, 0.4, 0.2, 0.9, 0.5]
    assert A.spearman(x, [v ** 3 for v in x]) == pytest.approx(1.0)
    assert A.spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    # hand computation with ties: ranks x = 1,2,3,4 ; y = 1.5,1.5,3,4 -> Pearson of the ranks
    xr, yr = np.array([1, 2, 3, 4.0]), np.array([1.5, 1.5, 3, 4])
    expected = np.corrcoef(xr, yr)[0, 1]
    assert A.spearman([1, 2, 3, 4], [7, 7, 8, 9]) == pytest.approx(expected)
    # NaN rows are dropped, not ranked
    assert A.spearman([1, 2, float("nan"), 3], [1, 2, 100, 3]) == pytest.approx(1.0)
    assert math.isnan(A.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        A.spearman([1, 2], [1, 2, 3])


def test_bootstrap_interval_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    x = rng.normal(size=80)
    y = x + rng.normal(scale=0.8, size=80)
    rho = A.spearman(x, y)
    a = A.bootstrap_interval(x, y, draws=300, seed=1)
    b = A.bootstrap_interval(x, y, draws=300, seed=1)
    c = A.bootstrap_interval(x, y, draws=300, seed=2)
    assert a == b and a != c
    assert a[0] < rho < a[1] and 0 < a[0] and a[1] < 1
    # a weaker relation gives a wider interval
    y2 = x + rng.normal(scale=3.0, size=80)
    lo2, hi2 = A.bootstrap_interval(x, y2, draws=300, seed=1)
    assert hi2 - lo2 > a[1] - a[0]
    assert all(math.isnan(v) for v in A.bootstrap_interval([1.0], [2.0]))


def test_difficulty_values_buckets_and_pism_never_fails():
    assert A.as_difficulty_values(schema.PISM_BUCKET, ["easy", "unsolved", None, "hard"]).tolist()[:2] == [0.0, 3.0]
    assert math.isnan(A.as_difficulty_values(schema.CMAB_BUCKET, [None])[0])
    assert A.as_difficulty_values(schema.PISM_LAMBDA, [0.3, None, float("nan")]).tolist() == [0.3, 1.0, 1.0]
    assert math.isnan(A.as_difficulty_values(schema.PASS_RATE, [None])[0])


def test_agreement_signs_by_direction_and_skips_absent_columns():
    level = np.repeat([0, 1, 2, 3], 10).astype(float)
    rng = np.random.default_rng(0)
    pass_rate = 1 - level / 3 + rng.normal(scale=0.2, size=40)  # falls with the level: rho < 0, agreement > 0
    entropy = level + rng.normal(scale=0.5, size=40)  # rises with the level
    ace = rng.normal(size=40)  # no direction
    rows = A.agreement({schema.PASS_RATE: pass_rate, schema.VISUAL_ENTROPY: entropy, schema.ACE_SCORE: ace}, level,
                       draws=200, seed=0)
    by = {r.column: r for r in rows}
    assert set(by) == {schema.PASS_RATE, schema.VISUAL_ENTROPY, schema.ACE_SCORE}
    pr, ve = by[schema.PASS_RATE], by[schema.VISUAL_ENTROPY]
    assert pr.rho < -0.5 and pr.agreement == pytest.approx(-pr.rho)
    assert pr.agreement_low <= pr.agreement <= pr.agreement_high
    assert ve.rho > 0.5 and ve.agreement == pytest.approx(ve.rho)
    assert by[schema.ACE_SCORE].agreement is None and by[schema.ACE_SCORE].n == 40
    # report order follows SCORE_COLUMNS
    assert [r.column for r in rows] == [schema.PASS_RATE, schema.VISUAL_ENTROPY, schema.ACE_SCORE]
    with pytest.raises(ValueError):
        A.agreement({schema.PASS_RATE: pass_rate[:5]}, level)


def test_level_means():
    means = A.level_means(np.array([1.0, 3.0, 10.0, np.nan]), np.array([0, 0, 1, 1.0]))
    assert means == {0: 2.0, 1: 10.0}


def test_subset_mix_against_random_subsets():
    pop = np.repeat([0, 1, 2, 3], 25)
    hard = [3] * 10
    m = A.subset_mix("hard", hard, pop, draws=500, seed=0)
    assert m.size == 10 and m.population == 100 and m.levels == [0, 1, 2, 3]
    assert m.share == [0.0, 0.0, 0.0, 1.0]
    assert m.mean_level == 3.0 and m.percentile > 0.99
    assert m.random_mean == pytest.approx([0.25] * 4, abs=0.03)
    assert all(lo <= mean <= hi for lo, mean, hi in zip(m.random_low, m.random_mean, m.random_high))
    assert m.random_mean_level_low < 1.5 < m.random_mean_level_high
    easy = A.subset_mix("easy", [0] * 10, pop, draws=500, seed=0)
    assert easy.percentile < 0.01
    assert A.subset_mix("x", hard, pop, draws=200, seed=5) == A.subset_mix("x", hard, pop, draws=200, seed=5)
    with pytest.raises(ValueError):
        A.subset_mix("too big", [0] * 5, [0] * 4)
