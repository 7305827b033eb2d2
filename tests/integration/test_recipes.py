"""The tiny CPU variant of every paper recipe: its own launcher, its own YAMLs, only backend and size overrides.

Each case runs ``recipes/<name>/run_qwen2_5_vl_7b.sh`` -- the script a user runs on a GPU node -- with
``VERL_PLATFORM=cpu``, a tiny Qwen2.5-VL built and warmed up in code, the synthetic image data (known difficulty
levels), ``STAGES`` naming the stages of the case and ``TRAIN_OVERRIDES`` = :func:`tiny_cpu_overrides` (the plugin's
CPU backend instead of vLLM/CUDA, 4 prompts x 4 responses, 24 response tokens, 1 step). Nothing is mocked: the
scoring engine, the selection, stock ``python -m verl.trainer.main_ppo`` (and verl's SFT trainer under torchrun for
P1, :func:`tiny_cpu_sft_overrides`) with Ray,
TransferQueue, the reward loop and the plugin's trainer mode, estimators, sampler and reward managers all run.

The cases of one recipe share a work directory and run in order (score -> select -> train ...), so every recipe's
score -> select chain feeds its training stages exactly as on a cluster. Each training case checks the metrics verl's
own file logger wrote (``VERL_FILE_LOGGER_PATH``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


@dataclass
class Case:
    recipe: str
    name: str
    stages: str
    model: str  # "boxed" (math_acc_format recipes) | "answer" (r1v_acc recipes)
    env: dict = field(default_factory=dict)
    check: Optional[Callable[[dict, Path], None]] = None  # (last training metrics or {}, work dir)
    trains: bool = True
    save_freq: int = -1  # a stage that the next one starts from keeps its checkpoint (P2's stage 1)

    @property
    def id(self) -> str:
        return f"{self.recipe}/{self.name}"


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _train_step(records: list[dict]) -> dict:
    steps = [r["data"] for r in records if "actor/grad_norm" in r["data"]]
    assert steps, "no training step was logged"
    data = steps[-1]
    bad = [k for k, v in data.items() if isinstance(v, float) and not math.isfinite(v)]
    assert not bad, f"non-finite metrics: {bad}"
    return data


# ---- P1 PISM + CMAB ------------------------------------------------------------------------------------------------

def _p1_scored(_: dict, work: Path) -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(work / "scores" / "scored.parquet").to_pylist()
    assert len(rows) == 64
    assert {r["extra_info"]["pism_bucket"] for r in rows} <= {"easy", "medium", "hard", "unsolved"}
    assert all("cmab_bucket" in r["extra_info"] for r in rows)  # both scorers in one job


def _p1_selected(_: dict, work: Path) -> None:
    import pyarrow.parquet as pq

    sel = work / "selection"
    train = pq.read_table(sel / "train.parquet").to_pylist()
    assert train and {r["extra_info"]["difficulty_bucket"] for r in train} <= {"medium", "hard"}
    assert pq.read_table(sel / "subsets" / "random.parquet").num_rows == len(train)  # same-size baseline
    assert "messages" in pq.read_table(sel / "sft.parquet").column_names  # verl's multi-turn SFT format


def _p1_sft(_: dict, work: Path) -> None:
    records = _metrics(work / "sft.metrics.jsonl")
    losses = [r["data"]["train/loss"] for r in records if "train/loss" in r["data"]]
    assert losses and all(math.isfinite(x) for x in losses)
    step = (work / "checkpoints" / "sft" / "latest_checkpointed_iteration.txt").read_text().strip()
    assert (work / "checkpoints" / "sft" / f"global_step_{step}" / "huggingface" / "config.json").exists()


def _p1_after_sft(d: dict, work: Path) -> None:
    assert "checkpoints/sft/global_step_" in (work / "train_after_sft.log").read_text()  # started from the SFT model
    assert d["difficulty/sampler/batch_frac/hard"] == 1.0  # grpo.parquet = the hard bucket


P1_SCORE = {"SCORE_BACKEND": "transformers", "SCORE_ARGS": "--device cpu --no-progress --pism-k 2 "
            "--pism-ratios 0.0,0.3,0.6 --pism-max-tokens 24 --cmab-max-tokens 24"}


# ---- P2 difficulty prior -------------------------------------------------------------------------------------------

def _p2_selected(_: dict, work: Path) -> None:
    import pyarrow.parquet as pq

    stage1 = pq.read_table(work / "selection" / "stage1.parquet").to_pylist()
    stage2 = pq.read_table(work / "selection" / "stage2.parquet").to_pylist()
    assert len(stage1) == 4 and len(stage2) == 4
    rates = [[r["extra_info"]["pass_rate"] for r in rows] for rows in (stage1, stage2)]
    assert all(0.1 <= p <= 0.87 for p in rates[0] + rates[1])  # the U-shape band
    assert max(rates[1]) <= min(rates[0])  # stage 2 = the hardest band rows


def _p2_stage1(d: dict, work: Path) -> None:
    assert "difficulty/weighting/weight_mean" in d  # difficulty_weighted advantages
    assert d.get("difficulty/hints/applied", 0.0) == 0.0  # no hints in stage 1
    assert (work / "checkpoints" / "stage1" / "latest_checkpointed_iteration.txt").exists()


def _p2_stage2(d: dict, work: Path) -> None:
    assert "checkpoints/stage1/global_step_1/actor/huggingface" in (work / "stage2.log").read_text()
    assert d["difficulty/hints/applied"] == 4.0  # every stage-2 prompt carries the hint
    assert "difficulty/weighting/weight_mean" in d


# pass@8 as in the recipe (the tiny model is right ~2% of the time: fewer rollouts leave too few rows in the band)
P2_SCORE = {"SCORE_BACKEND": "transformers", "SCORE_ARGS": "--device cpu --no-progress --passk-max-tokens 24"}
P2_SIZES = {"STAGE1_SIZE": "4", "STAGE2_SIZE": "4"}


# ---- P3 Durian ----------------------------------------------------------------------------------------------------

def _p3_scored(_: dict, work: Path) -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(work / "scores" / "scored.parquet").to_pylist()
    assert len(rows) == 64 and all(math.isfinite(r["extra_info"]["visual_entropy"]) for r in rows)


def _p3_durian(d: dict, work: Path) -> None:
    assert d["difficulty/durian/num_prompts"] == 4
    assert d["difficulty/durian/percep_active"] == 1.0  # the perceptual branch read the scorer's column
    assert sum(d[f"difficulty/durian/percep_prompts/g{k}"] for k in range(3)) == 4


def _p3_dapo(d: dict, work: Path) -> None:
    _p3_durian(d, work)
    assert d["difficulty/durian/zero_variance_frac"] == 0.0  # DAPO filtered before durian's regrouping


# ---- P4 RAP ------------------------------------------------------------------------------------------------------

def _p4_scored(_: dict, work: Path) -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(work / "scores" / "cde_ace" / "scored.parquet").to_pylist()
    assert len(rows) == 64
    for r in rows:  # CDE's counts (correct, correct-and-formatted per arm) and ACE's score on every row
        info = r["extra_info"]
        assert 0 <= info["cde_img_correct_formatted"] <= info["cde_img_correct"] <= 5
        assert math.isfinite(info["ace_score"])


def _p4_selection(mode: str, must_keep: bool):
    def check(_: dict, work: Path) -> None:
        record = json.loads((work / f"select_{mode}" / "selection.json").read_text())
        assert record["mode"] == mode and record["counts"]["input_rows"] == 64
        if must_keep:
            assert record["counts"]["kept"] > 0
    return check


# the tiny model is as (in)accurate with the image as without (CDE's D = 0 on every row), so the paper's lambda_c = 0.5
# keeps nothing; the paper-mode case lowers it to 0 to give the training stage rows (the official rule has no knob)
P4_SCORE = {"SCORE_BACKEND": "transformers",
            "SCORE_ARGS": "--device cpu --no-progress --cde-max-tokens 32 --ace-max-tokens 32"}


CASES: list[Case] = [
    Case("p1_pism_cmab", "score", "score", "answer", env=P1_SCORE, check=_p1_scored, trains=False),
    Case("p1_pism_cmab", "select", "select", "answer", check=_p1_selected, trains=False),
    Case("p1_pism_cmab", "grpo_medium_hard", "train", "answer"),
    Case("p1_pism_cmab", "sft", "sft", "answer", env={"SFT_TRAINER": "torchrun", "N_GPUS_PER_NODE": "1"},
         check=_p1_sft, trains=False),
    Case("p1_pism_cmab", "train_after_sft", "train_after_sft", "answer", check=_p1_after_sft),
    Case("p2_difficulty_prior", "score", "score", "boxed", env=P2_SCORE, trains=False),
    Case("p2_difficulty_prior", "select", "select", "boxed", env=P2_SIZES, check=_p2_selected, trains=False),
    Case("p2_difficulty_prior", "stage1", "stage1", "boxed", save_freq=1, check=_p2_stage1),
    Case("p2_difficulty_prior", "stage2", "stage2", "boxed", check=_p2_stage2),
    Case("p3_durian", "score", "score", "boxed", check=_p3_scored, trains=False),
    Case("p3_durian", "durian_grpo", "train", "boxed", env={"VARIANT": "grpo"}, check=_p3_durian),
    Case("p3_durian", "durian_dapo", "train", "boxed", env={"VARIANT": "dapo"}, check=_p3_dapo),
    Case("p4_rap", "score", "score", "boxed", env=P4_SCORE, check=_p4_scored, trains=False),
    Case("p4_rap", "select_reference_code", "select", "boxed", env={"SELECT_MODE": "reference_code"},
         check=_p4_selection("reference_code", must_keep=False), trains=False),
    Case("p4_rap", "select_paper", "select", "boxed", env={"SELECT_MODE": "paper", "SELECT_ARGS": "--lambda-c 0"},
         check=_p4_selection("paper", must_keep=True), trains=False),
    Case("p4_rap", "grpo", "train", "boxed", env={"SELECT_MODE": "paper"}),
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """The synthetic data (64 train rows, 16 per true difficulty level) and two warmed-up tiny models."""
    import pyarrow.parquet as pq

    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.data.true_buckets import add_true_buckets
    from verl_difficulty.models.tiny import build_tiny_model_dir
    from verl_difficulty.models.warmup import warm_up

    root = tmp_path_factory.mktemp("recipes_tiny")
    write_dataset(str(root / "data"), n_train=64, n_val=8, seed=0)
    for split in ("train", "val"):
        add_true_buckets(str(root / "data" / f"{split}.parquet"))
    rows = pq.read_table(root / "data" / "train.parquet").to_pylist()
    models = {}
    for style in ("boxed", "answer"):
        models[style] = build_tiny_model_dir(str(root / f"tiny_{style}"), seed=0)
        warm_up(models[style], rows, steps=300, seed=0, style=style)
    return {"root": root, "data": root / "data", "models": models}


def _work(tiny: dict, recipe: str) -> Path:
    work = tiny["root"] / "work" / recipe
    if not work.exists():
        shutil.copytree(tiny["data"], work / "data")
    return work


def _tiny_env(tiny: dict, case: Case, work: Path, metrics: Path) -> dict:
    from verl_difficulty.cpu.recipe_overrides import tiny_cpu_overrides, tiny_cpu_sft_overrides

    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHON=sys.executable,
        VERL_PLATFORM="cpu",
        VERL_FILE_LOGGER_PATH=str(metrics),
        RAY_DEDUP_LOGS="0",
        MODEL_PATH=str(tiny["models"][case.model]),
        WORK=str(work),
        STAGES=case.stages,
        SCORE_WORKERS="0",
        SCORE_GPUS_PER_WORKER="",
        SCORE_ARGS="--device cpu --no-progress",
        TRAIN_OVERRIDES=" ".join(tiny_cpu_overrides(steps=1, save_freq=case.save_freq)),
        SFT_OVERRIDES=" ".join(tiny_cpu_sft_overrides()),
    )
    env.update(case.env)
    return env


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_recipe_tiny_variant(case: Case, tiny):
    work = _work(tiny, case.recipe)
    metrics = work / f"{case.name}.metrics.jsonl"
    env = _tiny_env(tiny, case, work, metrics)
    start = time.time()
    proc = subprocess.run(["bash", str(RECIPES / case.recipe / "run_qwen2_5_vl_7b.sh")], env=env, cwd=work,
                          capture_output=True, text=True, timeout=1200)
    wall = time.time() - start
    out = proc.stdout + proc.stderr
    (work / f"{case.name}.log").write_text(out)
    assert proc.returncode == 0, f"{case.id} failed (rc={proc.returncode}):\n{out[-6000:]}"
    assert f"recipe {case.recipe}: verl" in out  # the launcher checked its verl pin first
    data = _train_step(_metrics(metrics)) if case.trains else {}
    if case.trains:
        assert data["actor/grad_norm"] >= 0 and data["difficulty/seam/prompt_id_coverage"] == 1.0
    if case.check:
        case.check(data, work)
    shown = {k: round(v, 4) for k, v in data.items() if k in ("critic/score/mean", "actor/grad_norm", "timing_s/step")}
    print(f"[recipes] {case.id}: {wall:.1f}s {shown}")
