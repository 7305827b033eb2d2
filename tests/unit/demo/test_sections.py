"""The report's demo sections on a constructed demo folder: drawn through build_report's extra_sections hook, the
agreement computed from the scored rows, the mix and the curves read from the demo's files."""

from __future__ import annotations

import json
import os

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from verl_difficulty import schema
from verl_difficulty.demo import analysis
from verl_difficulty.demo import metrics as M
from verl_difficulty.demo.sections import demo_sections
from verl_difficulty.demo.workspace import DEMO_FILE
from verl_difficulty.report import build_report


def _scored(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    level = np.repeat([0, 1, 2, 3], n // 4)
    pass_rate = np.clip(1 - level / 3 + rng.normal(scale=0.25, size=n), 0, 1)
    lam = [None if v > 0.9 else round(float(v), 1) for v in np.clip(pass_rate, 0, 0.95)]
    table = pa.table({schema.TRUE_LEVEL: level.astype(np.int64), schema.PASS_RATE: pass_rate,
                      schema.PISM_LAMBDA: pa.array(lam, type=pa.float64()),
                      schema.VISUAL_ENTROPY: level + rng.normal(size=n)})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    return level, pass_rate


def _metrics(path, acc0, acc3):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for step in range(3):
            data = {f"val-core/{M.level_source(0)}/acc/mean@4": acc0 + 0.1 * step,
                    f"val-core/{M.level_source(3)}/acc/mean@4": acc3}
            if step:
                data.update({M.STEP_KEY: step, M.REWARD: 0.5 + 0.1 * step, M.TRAIN_ACC: 0.2 * step,
                             M.MIX_PREFIX + "easy": 0.25, M.MIX_PREFIX + "hard": 0.75})
            f.write(orjson.dumps({"step": step, "data": data}) + b"\n")


def test_demo_sections_in_a_report(tmp_path):
    root = tmp_path / "demo"
    level, pass_rate = _scored(str(root / "score" / "scored.parquet"))
    (root / DEMO_FILE).write_text(json.dumps({"bootstrap": 100, "seed": 3}))
    mix = analysis.subset_mix("p2/train", level[pass_rate < 0.5], level, draws=100, seed=0).to_dict()
    os.makedirs(root / "select")
    (root / "select" / "mix.json").write_text(json.dumps({"population": len(level), "draws": 100, "seed": 0,
                                                          "subsets": [mix], "skipped": {"p4": "needs cde"}}))
    _metrics(str(root / "train" / "durian" / "metrics.jsonl"), 0.5, 0.1)
    _metrics(str(root / "train" / "grpo" / "metrics.jsonl"), 0.4, 0.1)
    result = build_report([str(root / "score" / "scored.parquet")], str(tmp_path / "report"),
                          extra_sections=demo_sections())
    assert {"demo_run", "demo_agreement", "demo_mix", "demo_training"} <= set(result.sections)
    names = {os.path.basename(p) for p in result.plots}
    assert {"demo_agreement.png", "demo_score_by_level.png", "demo_selection_mix.png", "demo_reward.png",
            "demo_val_by_level.png", "demo_sampler_mix.png"} <= names
    html = open(result.index).read()
    rho = analysis.spearman(pass_rate, level)
    assert f"{rho:.4g}" in html  # the table shows the rho of the scored rows
    assert "100-resample" in html and "seed 3" in html  # the demo's bootstrap settings
    assert "p2/train" in html and "p4: needs cde" in html
    assert "metrics.jsonl" in html and "Durian + difficulty sampler" in html


def test_outside_a_demo_folder_only_the_agreement_is_drawn(tmp_path):
    _scored(str(tmp_path / "elsewhere" / "scored.parquet"))
    result = build_report([str(tmp_path / "elsewhere" / "scored.parquet")], str(tmp_path / "report"),
                          extra_sections=demo_sections())
    assert "demo_agreement" in result.sections
    assert not {"demo_run", "demo_mix", "demo_training"} & set(result.sections)
