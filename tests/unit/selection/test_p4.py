"""P4 selection: paper CDE -> ACE -> DRM (k, replacement order, ACE scale) and the official script's exact rules."""

from __future__ import annotations

import math
import random

import pyarrow.parquet as pq
import pytest

from verl_difficulty import schema
from verl_difficulty.config import ConfigError
from verl_difficulty.selection import run_selection

#            id:  0    1    2    3    4    5    6    7    8    9
ACC_IMG = [1.0, 0.8, 1.0, 0.6, 0.2, 0.2, 0.0, 0.8, 0.4, 0.2]
ACC_TXT = [0.4, 0.2, 0.2, 0.4, 0.0, 0.2, 0.0, 0.0, 0.2, 0.0]
D = [0.6, 0.6, 0.8, 0.2, 0.2, 0.0, 0.0, 0.8, 0.2, 0.2]
ACE_LOG = [-5.0, -3.0, -5.0, -5.0, -5.0, -5.0, -5.0, -1.0, -5.0, -5.0]  # id 7: -1 > log(0.1) = -2.30


def _paper_input(scored, ace=ACE_LOG, scale="log"):
    cols = {schema.CDE_ACC_IMG: ACC_IMG, schema.CDE_ACC_TXT: ACC_TXT, schema.CDE_D: D}
    if ace is not None:
        cols[schema.ACE_SCORE] = ace
    return scored(cols, provenance={"ace": {"params": {"scale": scale, "sigma": 2.0}}})


def _decisions(out):
    return pq.read_table(out / "decisions.parquet").to_pylist()


def _kept(out):
    return [e[schema.PROMPT_ID] for e in pq.read_table(out / "train.parquet").column(schema.EXTRA_INFO).to_pylist()]


def test_p4_paper_cde_ace_drm(scored, tmp_path):
    out = tmp_path / "o"
    rec = run_selection("p4", [_paper_input(scored)], str(out))
    # CDE keeps D >= 0.5: 0, 1, 2, 7; ACE drops 7; DRM removes the trivially easy 0 and 2 (acc_img = 1), k = 2, and
    # adds the hardest non-zero-accuracy discarded rows: acc 0.2 first, D descending (4, 9 at D 0.2: by id), then 5
    assert [r["reason"] for r in _decisions(out)] == [
        "replaced_trivial", "kept", "replaced_trivial", "cde_below_threshold", "drm_added", "cde_below_threshold",
        "cde_below_threshold", "ace_above_threshold", "cde_below_threshold", "drm_added"]
    assert _kept(out) == [1, 4, 9]
    assert any("DRM: removed 2" in n for n in rec["notes"]) and any("ACE (log scale)" in n for n in rec["notes"])
    run_selection("p4", [_paper_input(scored)], str(tmp_path / "k3"), {"drm_k": 3})
    assert _kept(tmp_path / "k3") == [1, 4, 5, 9]
    run_selection("p4", [_paper_input(scored)], str(tmp_path / "k9"), {"drm_k": 9})
    assert _kept(tmp_path / "k9") == [1, 3, 4, 5, 7, 8, 9]  # the whole non-zero pool (6 has acc 0)
    run_selection("p4", [_paper_input(scored)], str(tmp_path / "nodrm"), {"drm": False})
    assert _kept(tmp_path / "nodrm") == [0, 1, 2]


def test_p4_paper_ace_scale_and_skip(scored, tmp_path):
    linear = [math.exp(x) for x in ACE_LOG]  # id 7: 0.37 > 0.1
    run_selection("p4", [_paper_input(scored, ace=linear, scale="linear")], str(tmp_path / "lin"), {"drm": False})
    assert _kept(tmp_path / "lin") == [0, 1, 2]
    run_selection("p4", [_paper_input(scored)], str(tmp_path / "la"), {"drm": False, "lambda_a": 0.5})
    assert _kept(tmp_path / "la") == [0, 1, 2, 7]  # log(0.5) = -0.69 > -1.0
    rec = run_selection("p4", [_paper_input(scored, ace=None)], str(tmp_path / "no"), {"drm": False})
    assert _kept(tmp_path / "no") == [0, 1, 2, 7]
    assert any(n.startswith("ACE step skipped: no ace_score column") for n in rec["notes"])
    run_selection("p4", [_paper_input(scored)], str(tmp_path / "c"), {"drm": False, "lambda_c": 0.7})
    assert _kept(tmp_path / "c") == [2]


# --------------------------------------------------------------------------------------------------------------------
# reference_code mode: the official selection script
# --------------------------------------------------------------------------------------------------------------------
def _counts_input(scored, rows):
    """rows: (img correct & formatted, txt correct & formatted, img correct (format ignored)), M = 5."""
    return scored({
        schema.CDE_IMG_CORRECT_FORMATTED: [r[0] for r in rows], schema.CDE_TXT_CORRECT_FORMATTED: [r[1] for r in rows],
        schema.CDE_IMG_CORRECT: [r[2] for r in rows], schema.CDE_ROLLOUTS: [5] * len(rows),
    })


def test_p4_reference_float_edges_and_easy(scored, tmp_path):
    rows = [(4, 3, 4), (3, 2, 3), (3, 0, 5), (4, 0, 4), (0, 0, 0), (0, 0, 1)]
    assert 4 / 5 - 3 / 5 > 0.2 and not 3 / 5 - 2 / 5 > 0.2  # the script's float arithmetic
    mean = (0.8 + 0.6 + 0.6 + 0.8) / 6
    assert 1 - (0.8 - mean) ** 2 / (1 - mean) ** 2 >= 0.6  # so D decides rows 0 and 1
    out = tmp_path / "o"
    run_selection("p4", [_counts_input(scored, rows)], str(out), {"mode": "reference_code"})
    assert [r["reason"] for r in _decisions(out)] == [
        "reference_main",  # 0.8 - 0.6 = 0.20000000000000007 > 0.2
        "cde_below_threshold",  # 0.6 - 0.4 = 0.19999999999999996
        "easy",  # 5 of 5 correct (2 badly formatted): dropped although score and D pass
        "reference_main", "score_below_threshold", "score_below_threshold"]
    assert _kept(out) == [0, 3]


def test_p4_reference_addback_draw(scored, tmp_path):
    pattern = [(1, 0, 1)] * 5 + [(1, 0, 2), (0, 0, 1), (0, 0, 0)]  # pool, right1 by format-ignored count only, ...
    rows = pattern * 4  # 32 rows, pool = the 20 (1, 0, 1) rows
    pool = [i for i, r in enumerate(rows) if r == (1, 0, 1)]
    random.seed(42)
    expected = sorted(random.sample(pool, int(0.1 * len(pool))))
    assert len(expected) == 2
    out = tmp_path / "o"
    rec = run_selection("p4", [_counts_input(scored, rows)], str(out), {"mode": "reference_code", "seed": 7})
    assert _kept(out) == expected  # --seed does not change the script's seed 42
    reasons = [r["reason"] for r in _decisions(out)]
    assert [i for i, r in enumerate(reasons) if r == "reference_addback"] == expected
    assert [i for i, r in enumerate(reasons) if r == "addback_not_drawn"] == [i for i in pool if i not in expected]
    # (1, 0, 2): 2 correct of which 1 formatted: not right1; D = 0.2 is not > 0.2: not main
    assert {reasons[i] for i, r in enumerate(rows) if r == (1, 0, 2)} == {"cde_below_threshold"}
    assert rec["counts"]["by_reason"]["reference_addback"] == 2


def test_p4_errors(scored, tmp_path):
    path = scored({schema.CDE_D: [0.6], schema.CDE_ACC_IMG: [0.8]})
    with pytest.raises(ConfigError, match=r"p4 --mode reference_code needs cde_rollouts.*--scorers cde"):
        run_selection("p4", [path], str(tmp_path / "o"), {"mode": "reference_code"})
    with pytest.raises(ConfigError, match=r"p4 needs cde_discrepancy.*--scorers cde"):
        run_selection("p4", [scored({schema.PASS_RATE: [0.5]}, name="other.parquet")], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"select.p4.lambda_a: must be > 0.0"):
        run_selection("p4", [path], str(tmp_path / "o"), {"lambda_a": 0.0})
    with pytest.raises(ConfigError, match=r"select.p4.lambda_c: must be <= 1.0"):
        run_selection("p4", [path], str(tmp_path / "o"), {"lambda_c": 1.5})
