"""End to end: ``verl-difficulty demo --quick`` (the reduced demo, ~3 min on 2 cores) and what it leaves behind.

Real parts only: the synthetic dataset, the tiny Qwen2.5-VL and its warm-up, the scoring engine with all six scorers
on Ray, the three selections, two stock ``python -m verl.trainer.main_ppo`` runs on CPU (Durian with the perceptual
branch and the difficulty sampler; plain GRPO), the report. The assertions are on the files, their columns, the
plots, the correlations, verl's tracker output, the console (stages and summaries, no library noise), the reuse of
finished stages by a second run, and the message of a failing stage.

The default sizes (``verl-difficulty demo``, ~9 min) are measured by hand, not here: see the figures in the demo's
docstrings and the project notes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from verl_difficulty import schema
from verl_difficulty.demo import metrics as M

pytestmark = pytest.mark.e2e

SCORE_COLUMNS = [schema.PASS_RATE, schema.PISM_LAMBDA, schema.PISM_BUCKET, schema.CDE_ACC_IMG, schema.CDE_D,
                 schema.VISUAL_ENTROPY, schema.CMAB_RATIO, schema.CMAB_BUCKET, schema.ACE_SCORE]
DEMO_PLOTS = ["demo_agreement", "demo_score_by_level", "demo_selection_mix", "demo_reward", "demo_val_by_level",
              "demo_sampler_mix"]


def _demo(*args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "verl_difficulty.cli", "demo", *args], capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.time() - start


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc, wall = _demo("--quick", "-o", str(out))
    print(f"[e2e] quick demo: {wall:.0f}s\n{proc.stdout}")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out, proc, wall


def test_console_tells_the_story_without_library_noise(quick):
    out, proc, _ = quick
    text = proc.stdout
    for i, stage in enumerate(["data", "model", "score", "select", "train", "report"], 1):
        assert f"[{i}/6] {stage}" in text
    assert f"{out / 'logs'}" in text and f"Report: {out / 'report' / 'index.html'}" in text
    assert "agreement with the true difficulty" in text and "durian: reward" in text and "grpo: reward" in text
    # verl's and Ray's own lines went to the logs, not the console
    for noise in ("(TaskRunner", "INFO worker.py", "Started a local Ray instance", "Loading weights", "step:1 -"):
        assert noise not in text and noise not in proc.stderr
    logs = {p.name for p in (out / "logs").iterdir()}
    assert {"data.log", "model.log", "score.log", "select.log", "report.log", "train_durian.log",
            "train_grpo.log"} <= logs
    assert "Ray" in (out / "logs" / "score.log").read_text()
    assert "main_ppo" in (out / "logs" / "train_durian.log").read_text()


def test_files_columns_and_plots(quick):
    out, _, _ = quick
    data = pq.read_table(out / "data" / "train.parquet")
    assert data.num_rows == 32 and sorted(set(data.column(schema.TRUE_LEVEL).to_pylist())) == [0, 1, 2, 3]
    assert (out / "model" / "verl_difficulty_warmup.json").exists()
    scored = pq.read_table(out / "score" / "scored.parquet")
    assert scored.num_rows == 32
    assert set(SCORE_COLUMNS) <= set(scored.column_names)
    for method in ("p1", "p2", "p4"):
        sel = json.loads((out / "select" / method / "selection.json").read_text())
        assert sel["method"] == method and (out / "select" / method / "train.parquet").exists()
    mix = json.loads((out / "select" / "mix.json").read_text())
    names = {m["name"] for m in mix["subsets"]}
    assert {"p1/train", "p2/train", "p4/train", "p2/stage1"} <= names
    for m in mix["subsets"]:
        assert abs(sum(m["share"]) - 1) < 1e-9 and 0 <= m["percentile"] <= 1
        assert all(lo <= r <= hi for lo, r, hi in zip(m["random_low"], m["random_mean"], m["random_high"]))
    index = (out / "report" / "index.html").read_text()
    for title in ("Demo: the run", "Demo: difficulty scores vs the true difficulty",
                  "Demo: what the selections kept", "Demo: training curves, Durian vs GRPO",
                  "P2: pass@k histogram"):
        assert title in index
    for name in DEMO_PLOTS:
        png = out / "report" / "plots" / f"{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_correlations_are_finite_with_intervals(quick):
    out, _, _ = quick
    summary = json.loads((out / "report" / "demo_summary.json").read_text())
    rows = {a["column"]: a for a in summary["agreement"]}
    assert set(SCORE_COLUMNS) <= set(rows)
    for col in (schema.PASS_RATE, schema.PISM_LAMBDA, schema.CDE_ACC_IMG, schema.VISUAL_ENTROPY):
        a = rows[col]
        assert a["n"] == 32
        for key in ("rho", "rho_low", "rho_high", "agreement"):
            assert math.isfinite(a[key]), (col, key, a)
        assert -1 <= a["rho_low"] <= a["rho"] <= a["rho_high"] <= 1
    # written by the report stage from the markers of the stages before it
    assert set(summary["stages"]) == {"data", "model", "score", "select", "train"}
    assert set(summary["training"]) == {"durian", "grpo"} and summary["report"]["plots"] >= 6


def test_training_metrics_from_verls_tracker(quick):
    out, _, _ = quick
    levels = [M.level_source(lv) for lv in range(4)]
    for run in ("durian", "grpo"):
        records = M.read_records(str(out / "train" / run / "metrics.jsonl"))
        assert M.steps_done(records) == 2
        steps = {r["step"]: r["data"] for r in records}
        assert 0 in steps  # the validation before training
        for step in (1, 2):
            d = steps[step]
            assert math.isfinite(d[M.REWARD]) and 0 <= d[M.TRAIN_ACC] <= 1
            # the sampler's mix per true level (bucket field = the true level's bucket)
            fr = [d[M.MIX_PREFIX + b] for b in schema.BUCKETS]
            assert abs(sum(fr) - 1) < 1e-6
            assert d["training/rollout_probs_diff_max"] < 1e-3
        for step in (0, 2):
            for src in levels:
                assert 0 <= steps[step][f"val-core/{src}/acc/mean@2"] <= 1
        if run == "durian":
            assert steps[1]["difficulty/durian/percep_active"] == 1.0  # perceptual branch on (visual_entropy)
            assert steps[1]["difficulty/durian/num_prompts"] == 4
            assert steps[1][schema.metric("curriculum", "target_pass_rate")] == 0.5
        else:
            assert not any(k.startswith("difficulty/durian/") for k in steps[1])


def test_second_run_reuses_finished_stages(quick):
    out, _, _ = quick
    proc, wall = _demo("--quick", "-o", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.count("reused (finished") == 6 and wall < 60
    assert "Report:" in proc.stdout


def test_a_failing_stage_names_itself_its_cause_and_its_log(tmp_path):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    out = tmp_path / "demo"
    proc, _ = _demo("--quick", "-o", str(out), "--model", str(empty), timeout=300)
    assert proc.returncode == 1
    log = out / "logs" / "score.log"
    assert "stage 'score' failed:" in proc.stdout and f"log: {log}" in proc.stdout
    assert "rerun the same command" in proc.stdout
    assert "Traceback" in log.read_text()
    assert "[1/6] data" in proc.stdout and "[4/6]" not in proc.stdout
