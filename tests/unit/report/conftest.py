"""Constructed inputs of the report tests: scored tables with every score column (realistic values), a scoring
output folder and a selection folder following the ``verl-difficulty select`` output contract."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_difficulty import schema as S

RATIOS = [round(0.1 * i, 1) for i in range(10)]


def _pism(rng, n):
    """lambda* on the ratio grid (None = never fails), the early-exit pass vector and the P1 bucket."""
    idx = rng.choice(11, size=n, p=[0.22, 0.03, 0.06, 0.08, 0.09, 0.1, 0.1, 0.09, 0.07, 0.05, 0.11])
    lams, vecs, tries, buckets = [], [], [], []
    for i in idx:
        if i == 10:
            lam, vec, tr = None, [1.0] * 10, [int(rng.integers(1, 4)) for _ in range(10)]
        else:
            lam = RATIOS[i]
            vec = [1.0] * i + [0.0] + [float("nan")] * (9 - i)
            tr = [int(rng.integers(1, 4)) for _ in range(i)] + [10] + [0] * (9 - i)
        lams.append(lam)
        vecs.append(vec)
        tries.append(tr)
        buckets.append("easy" if lam is None or lam >= 0.7 else "unsolved" if lam == 0 else
                       "hard" if lam <= 0.4 else "medium")
    return lams, vecs, tries, buckets


PROVENANCE = {
    name: {"scorer": name, "version": "1", "params": params, "model_path": "/models/Qwen2.5-VL-7B-Instruct",
           "backend": {"name": "vllm", "model_path": "/models/Qwen2.5-VL-7B-Instruct"}, "seed": 0,
           "date": "2026-11-20T10:00:00Z"}
    for name, params in {"passk": {"k": 8, "temperature": 1.0}, "pism": {"ratios": RATIOS, "tau": 0.1,
                         "hard_max": 0.4, "medium_max": 0.7, "k": 10}, "cmab": {"edges": [0.1, 0.4, 1.6, 1.9]},
                         "visual_entropy": {"features": "merged"}, "cde": {"m": 5}, "ace": {"scale": "log"}}.items()
}


def scored_table(n: int = 400, seed: int = 0, columns=None) -> pa.Table:
    """A scored table with every score column (or only ``columns``, plus the row id)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.3, 0.3, n)
    num = rng.binomial(8, p)
    lams, vecs, tries, pb = _pism(rng, n)
    cmab = np.exp(rng.normal(np.log(0.6), 1.1, n))
    cmab_bucket = np.where((cmab < 0.1) | (cmab > 1.9), "easy", np.where((cmab < 0.4) | (cmab > 1.6), "medium", "hard"))
    cmab_bucket = np.where(num == 0, "unsolved", cmab_bucket)
    p_img = rng.beta(0.6, 0.5, n)
    p_txt = np.clip(p_img * rng.uniform(0.0, 1.0, n), 0, 1)
    acc_img, acc_txt = rng.binomial(5, p_img) / 5, rng.binomial(5, p_txt) / 5
    cols = {
        "data_source": pa.array(["synth"] * n),
        "images": pa.array([b"\x89PNG fake"] * n, type=pa.binary()),
        S.PASS_RATE: pa.array(num / 8.0), S.NUM_CORRECT: pa.array(num.astype("int64")),
        S.PASS_K: pa.array(np.full(n, 8, dtype="int64")),
        S.PISM_LAMBDA: pa.array(lams, type=pa.float64()), S.PISM_PASS: pa.array(vecs, type=pa.list_(pa.float64())),
        S.PISM_TRIES: pa.array(tries, type=pa.list_(pa.int64())), S.PISM_BUCKET: pa.array(pb),
        S.CMAB_RATIO: pa.array(cmab), S.CMAB_BUCKET: pa.array(cmab_bucket.tolist()),
        S.VISUAL_ENTROPY: pa.array(rng.normal(4.6, 0.55, n)),
        S.CDE_ACC_IMG: pa.array(acc_img), S.CDE_ACC_TXT: pa.array(acc_txt), S.CDE_D: pa.array(acc_img - acc_txt),
        S.CDE_ROLLOUTS: pa.array(np.full(n, 5, dtype="int64")),
        S.ACE_SCORE: pa.array(rng.normal(-3.2, 1.1, n)),
        S.SCORE_PROVENANCE: pa.array([json.dumps(PROVENANCE, sort_keys=True)] * n),
    }
    if columns is not None:
        cols = {k: v for k, v in cols.items() if k in set(columns)}
    return pa.table(cols)


def write_scored(path: str, **kw) -> str:
    pq.write_table(scored_table(**kw), path)
    return path


def write_scoring_folder(out: str, n: int = 400, bad: int = 3, **kw) -> str:
    os.makedirs(out, exist_ok=True)
    write_scored(os.path.join(out, "scored.parquet"), n=n, **kw)
    with open(os.path.join(out, "bad_rows.jsonl"), "w") as f:
        for i in range(bad):
            f.write(json.dumps({"row": i, "index": 10_000 + i, "bad_row_reason": "image: cannot decode",
                                "kind": "image"}) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"rows_in": n + bad, "rows_scored": n, "rows_bad": bad, "bad_reasons": {"image": bad}}, f)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"format": "verl-difficulty-scores/1", "fingerprint": "x", "complete": True, "done": {},
                   "job": {"inputs": [{"path": "/data/geo3k/train.parquet", "bytes": 1, "sha256": "0" * 64}]}}, f)
    return out


def write_selection_folder(out: str, n: int = 400, method: str = "p2", params=None, seed: int = 1) -> str:
    """A selection folder as ``verl-difficulty select`` writes it (selection.json, decisions.parquet, train.parquet)."""
    os.makedirs(out, exist_ok=True)
    table = scored_table(n=n, seed=seed)
    pr = np.asarray(table.column(S.PASS_RATE))
    params = params if params is not None else {"low": 0.1, "high": 0.87, "stage2_max": 0.5}
    kept = (pr >= params.get("low", 0.1)) & (pr <= params.get("high", 0.87))
    reason = np.where(kept, "in_band", np.where(pr < params.get("low", 0.1), "too_hard", "too_easy"))
    stage = np.where(kept, np.where(pr <= params.get("stage2_max", 0.5), 2, 1), -1)
    bucket = np.where(pr < 0.3, "hard", np.where(pr < 0.7, "medium", "easy"))
    decisions = pa.table({
        "index": pa.array(np.arange(n, dtype="int64")), "kept": pa.array(kept),
        "reason": pa.array(reason.tolist()), "bucket": pa.array(bucket.tolist()),
        "stage": pa.array([int(s) if s > 0 else None for s in stage], type=pa.int64()),
        "subset": pa.array([None] * n, type=pa.string()),
    })
    pq.write_table(decisions, os.path.join(out, "decisions.parquet"))
    pq.write_table(table.filter(pa.array(kept)), os.path.join(out, "train.parquet"))
    by_reason = {r: int((reason == r).sum()) for r in sorted(set(reason))}
    sel = {"method": method, "mode": "paper", "params": params,
           "inputs": [{"path": "/data/scores/scored.parquet", "rows": n, "sha256": "0" * 64}],
           "counts": {"input_rows": n, "kept": int(kept.sum()), "by_reason": by_reason,
                      "by_bucket": {}, "by_stage": {}},
           "outputs": {"train": "train.parquet", "decisions": "decisions.parquet"},
           "version": "0.1", "created": "2026-11-21T10:00:00Z"}
    with open(os.path.join(out, "selection.json"), "w") as f:
        json.dump(sel, f)
    return out


@pytest.fixture
def scoring_folder(tmp_path):
    return write_scoring_folder(str(tmp_path / "scores"))


@pytest.fixture
def selection_folder(tmp_path):
    return write_selection_folder(str(tmp_path / "select"))


@pytest.fixture
def data():
    """The builders above (test modules cannot import conftest under ``--import-mode=importlib``)."""
    import types

    return types.SimpleNamespace(scored_table=scored_table, write_scored=write_scored,
                                 write_scoring_folder=write_scoring_folder,
                                 write_selection_folder=write_selection_folder)
