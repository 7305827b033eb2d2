"""Parquet I/O (atomic writes, score columns mirrored in extra_info, provenance merge) and row decoding."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_difficulty.data.io import (
    PROVENANCE_META_KEY,
    add_score_columns,
    atomic_write_bytes,
    set_struct_fields,
    write_parquet,
)
from verl_difficulty.data.rows import open_image, prepare_row, row_index, validate_row
from verl_difficulty.data.synthetic import generate_rows, parquet_schema
from verl_difficulty.data.true_buckets import add_true_buckets
from verl_difficulty.schema import DIFFICULTY_BUCKET, EXTRA_INFO, SCORE_PROVENANCE


def test_atomic_writes_leave_no_temporaries(tmp_path):
    atomic_write_bytes(str(tmp_path / "a.json"), b"{}")
    write_parquet(str(tmp_path / "t.parquet"), pa.table({"x": [1, 2]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.parquet"]
    assert pq.read_table(tmp_path / "t.parquet").column("x").to_pylist() == [1, 2]


def test_set_struct_fields_replaces_appends_and_keeps_nulls():
    s = pa.array([{"a": 1, "b": "x"}, None, {"a": 3, "b": "z"}])
    out = set_struct_fields(s, {"b": pa.array(["X", "Y", "Z"]), "c": pa.array([1.0, 2.0, 3.0])})
    assert [f.name for f in out.type] == ["a", "b", "c"]
    assert out.to_pylist() == [{"a": 1, "b": "X", "c": 1.0}, None, {"a": 3, "b": "Z", "c": 3.0}]


def test_score_columns_are_mirrored_and_provenance_merged():
    rows = generate_rows(3, seed=0)
    table = pa.Table.from_pylist(rows, schema=parquet_schema())
    first = add_score_columns(table, {"s1": pa.array([0.1, 0.2, 0.3])}, {"one": {"v": 1}})
    second = add_score_columns(first, {"s1": pa.array([1.0, 2.0, 3.0]), "s2": pa.array([1, 2, 3])},
                               {"two": {"v": 2}})
    assert second.column_names.count("s1") == 1
    for r in second.to_pylist():
        assert r[EXTRA_INFO]["s1"] == r["s1"] and r[EXTRA_INFO]["s2"] == r["s2"]
        assert r[EXTRA_INFO][SCORE_PROVENANCE] == r[SCORE_PROVENANCE]
        assert json.loads(r[SCORE_PROVENANCE]) == {"one": {"v": 1}, "two": {"v": 2}}
        assert r[EXTRA_INFO]["question"]
    assert json.loads(second.schema.metadata[PROVENANCE_META_KEY]) == {"two": {"v": 2}}


def test_true_buckets_in_place(tmp_path):
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.Table.from_pylist(generate_rows(8, seed=0), schema=parquet_schema()), path)
    assert add_true_buckets(path) and not add_true_buckets(path)
    for r in pq.read_table(path).to_pylist():
        assert r[EXTRA_INFO][DIFFICULTY_BUCKET] == ("easy", "medium", "hard", "unsolved")[r["true_difficulty"]]
    assert [p.name for p in tmp_path.iterdir()] == ["d.parquet"]


def test_rows_open_images_from_bytes_paths_and_pil(tmp_path):
    row = generate_rows(1, seed=0)[0]
    pil = open_image(row["images"][0])
    pil.save(tmp_path / "i.png")
    assert open_image(str(tmp_path / "i.png")).size == pil.size == open_image({"path": str(tmp_path / "i.png")}).size
    assert open_image(pil) is pil
    with pytest.raises(TypeError):
        open_image(3)
    assert validate_row(row) is None and row_index(row) == 0 and row_index({}) is None
    decoded = prepare_row(row, 5)
    assert decoded.position == 5 and decoded.images[0].mode == "RGB" and decoded.ground_truth == row[
        "reward_model"]["ground_truth"]
