"""P2 selection: U-shape band edges (inclusive), stage split by boundary / sizes / fraction, hint flags."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from verl_difficulty import schema
from verl_difficulty.config import ConfigError
from verl_difficulty.sampling.config import HintConfig
from verl_difficulty.sampling.hints import HintRule
from verl_difficulty.selection import run_selection

#      id: 0    1     2    3     4     5     6      7     8     9
ACC = [0.0, 0.1, 0.25, 0.5, 0.75, 0.87, 0.875, 1.0, 0.3, None]
BAND = [1, 2, 3, 4, 5, 8]  # 0.1 and 0.87 inclusive; 0.875 above; None no_score


def _decisions(out):
    return pq.read_table(out / "decisions.parquet").to_pylist()


def test_p2_band_edges_and_default_split(scored, tmp_path):
    out = tmp_path / "o"
    rec = run_selection("p2", [scored({schema.PASS_RATE: ACC})], str(out))
    d = _decisions(out)
    assert [r["index"] for r in d if r["kept"]] == BAND
    assert [r["reason"] for r in d] == ["below_band", "kept", "kept", "kept", "kept", "kept", "above_band",
                                        "above_band", "kept", "no_score"]
    # default: round(0.2308 * 6) = 1 row in stage 2, the lowest accuracy (id 1, acc 0.1)
    assert {r["index"]: r["stage"] for r in d if r["kept"]} == {1: 2, 2: 1, 3: 1, 4: 1, 5: 1, 8: 1}
    assert rec["counts"]["by_stage"] == {"1": 5, "2": 1}


def test_p2_stage_boundary_and_hint_fields(scored, tmp_path):
    out = tmp_path / "o"
    run_selection("p2", [scored({schema.PASS_RATE: ACC})], str(out), {"stage_boundary": 0.3})
    t = pq.read_table(out / "train.parquet")
    rows = t.to_pylist()
    assert [r[schema.EXTRA_INFO][schema.PROMPT_ID] for r in rows] == BAND  # input order
    stage = {r[schema.EXTRA_INFO][schema.PROMPT_ID]: r[schema.SELECTION_STAGE] for r in rows}
    assert stage == {1: 2, 2: 2, 3: 1, 4: 1, 5: 1, 8: 2}  # acc <= 0.3 -> stage 2
    for r in rows:
        hard = stage[r[schema.EXTRA_INFO][schema.PROMPT_ID]] == 2
        assert r[schema.HARD_HINT] is hard and r[schema.EXTRA_INFO][schema.HARD_HINT] is hard
        assert r[schema.DIFFICULTY_BUCKET] == r[schema.EXTRA_INFO][schema.DIFFICULTY_BUCKET] == \
            ("hard" if hard else "medium")
        assert r[schema.EXTRA_INFO][schema.SELECTION_STAGE] == r[schema.SELECTION_STAGE]
    # the sampler's hint rule (select: [flag]) picks exactly the stage-2 rows
    rule = HintRule()
    rule.configure_hints(HintConfig(enable=True), split="train")
    assert [r[schema.EXTRA_INFO][schema.PROMPT_ID] for r in rows if rule.hint_wanted(r)] == [1, 2, 8]
    only_extra = [{schema.EXTRA_INFO: r[schema.EXTRA_INFO]} for r in rows]  # what verl forwards
    assert [e[schema.EXTRA_INFO][schema.PROMPT_ID] for e in only_extra if rule.hint_wanted(e)] == [1, 2, 8]
    s1 = pq.read_table(out / "stage1.parquet").column(schema.EXTRA_INFO).to_pylist()
    s2 = pq.read_table(out / "stage2.parquet").column(schema.EXTRA_INFO).to_pylist()
    assert [e["index"] for e in s1] == [3, 4, 5] and [e["index"] for e in s2] == [1, 2, 8]


@pytest.mark.parametrize("sizes,stages", [
    ({"stage2_size": 2, "stage1_size": 3}, {1: 2, 2: 2, 8: 1, 3: 1, 4: 1}),  # id 5 (0.87) beyond the sizes
    ({"stage2_size": 2}, {1: 2, 2: 2, 8: 1, 3: 1, 4: 1, 5: 1}),
    ({"stage1_size": 4}, {1: 2, 2: 2, 8: 1, 3: 1, 4: 1, 5: 1}),
    ({"stage2_size": 10}, {1: 2, 2: 2, 8: 2, 3: 2, 4: 2, 5: 2}),
])
def test_p2_stage_sizes(scored, tmp_path, sizes, stages):
    out = tmp_path / "o"
    run_selection("p2", [scored({schema.PASS_RATE: ACC})], str(out), sizes)
    d = _decisions(out)
    assert {r["index"]: r["stage"] for r in d if r["kept"]} == stages
    if 5 not in stages:
        assert d[5]["reason"] == "beyond_stage_sizes" and d[5]["stage"] is None


def test_p2_ties_by_index(scored, tmp_path):
    out = tmp_path / "o"
    run_selection("p2", [scored({schema.PASS_RATE: [0.5, 0.5, 0.5, 0.5]})], str(out), {"stage2_size": 2})
    assert [r["stage"] for r in _decisions(out)] == [2, 2, 1, 1]


def test_p2_errors(scored, tmp_path):
    path = scored({schema.PISM_LAMBDA: [0.5]})
    with pytest.raises(ConfigError, match=r"p2 needs pass_rate.*--scorers passk"):
        run_selection("p2", [path], str(tmp_path / "o"))
    for bad, msg in (({"low": -0.1}, r"select.p2.low: must be >= 0.0"), ({"high": 1.5}, r"select.p2.high: must be"),
                     ({"low": 0.9, "high": 0.5}, r"low: must be <= "),
                     ({"stage_boundary": 0.3, "stage2_size": 3}, "either the boundary or the stage sizes")):
        with pytest.raises(ConfigError, match=msg):
            run_selection("p2", [path], str(tmp_path / "o"), bad)
