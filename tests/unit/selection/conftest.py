"""Constructed scored tables for the selection tests (no model: the score columns are given by the test)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from verl_difficulty import schema
from verl_difficulty.data.io import add_score_columns, write_parquet

TYPES = {
    schema.PASS_RATE: pa.float64(), schema.PISM_LAMBDA: pa.float64(), schema.PISM_BUCKET: pa.string(),
    schema.CMAB_BUCKET: pa.string(), schema.CDE_D: pa.float64(), schema.CDE_ACC_IMG: pa.float64(),
    schema.CDE_ACC_TXT: pa.float64(), schema.ACE_SCORE: pa.float64(), schema.CDE_ROLLOUTS: pa.int64(),
    schema.CDE_IMG_CORRECT: pa.int64(), schema.CDE_IMG_CORRECT_FORMATTED: pa.int64(),
    schema.CDE_TXT_CORRECT: pa.int64(), schema.CDE_TXT_CORRECT_FORMATTED: pa.int64(),
}


def text_rows(n: int, start: int = 0) -> pa.Table:
    """n verl rows without images (ids start..start+n-1, ground truth = str(id))."""
    rows = [{
        schema.DATA_SOURCE: "toy",
        "prompt": [{"role": "user", "content": f"question {start + i}?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(start + i)},
        schema.EXTRA_INFO: {schema.PROMPT_ID: start + i, "split": "train"},
    } for i in range(n)]
    return pa.Table.from_pylist(rows)


def add_scores(table: pa.Table, columns: dict, provenance: dict | None = None) -> pa.Table:
    cols = {k: pa.array(v, type=TYPES.get(k)) for k, v in columns.items()}
    return add_score_columns(table, cols, provenance or {"test": {"params": {}}})


@pytest.fixture
def scored(tmp_path):
    """scored(columns, name=..., provenance=..., table=...) -> path of a scored parquet built from the columns."""

    def make(columns: dict, name: str = "scored.parquet", provenance: dict | None = None, table=None) -> str:
        n = len(next(iter(columns.values())))
        t = add_scores(table if table is not None else text_rows(n), columns, provenance)
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        write_parquet(str(path), t)
        return str(path)

    return make


@pytest.fixture
def read_json():
    def read(path):
        with open(path) as f:
            return json.load(f)

    return read
