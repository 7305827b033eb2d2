"""The selection folder: refusing a different selection, --overwrite, same-selection rewrite, row ids, inputs."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_difficulty import schema
from verl_difficulty.data.io import write_parquet
from verl_difficulty.selection import run_selection


def test_same_selection_rewrites_identically_and_different_is_refused(scored, tmp_path, read_json):
    path = scored({schema.PASS_RATE: [0.0, 0.3, 0.5, 0.9]})
    out = tmp_path / "o"
    first = run_selection("p2", [path], str(out))
    files = {f: (out / f).read_bytes() for f in ("train.parquet", "decisions.parquet", "selection.json")}
    again = run_selection("p2", [path], str(out))
    assert again["created"] == first["created"]
    assert {f: (out / f).read_bytes() for f in files} == files
    with pytest.raises(FileExistsError, match=r"holds a different selection \(p2/paper; differs in params.high\); "
                       r"pass --overwrite"):
        run_selection("p2", [path], str(out), {"high": 0.95})
    assert (out / "selection.json").read_bytes() == files["selection.json"]
    with pytest.raises(FileExistsError, match=r"differs in method"):
        run_selection("p1", [scored({schema.PISM_LAMBDA: [0.5, 0.2, 0.0, None]}, name="p.parquet")], str(out))
    rec = run_selection("p2", [path], str(out), {"high": 0.95}, overwrite=True)
    assert rec["params"]["high"] == 0.95 and read_json(out / "selection.json")["counts"]["kept"] == 3
    # overwriting with another method removes the previous method's files
    run_selection("p1", [scored({schema.PISM_LAMBDA: [0.5, 0.2, 0.0, None]}, name="p.parquet")], str(out),
                  overwrite=True)
    assert not (out / "stage1.parquet").exists() and (out / "subsets" / "random.parquet").exists()


def test_changed_input_is_a_different_selection(scored, tmp_path):
    out = tmp_path / "o"
    run_selection("p2", [scored({schema.PASS_RATE: [0.3, 0.5]})], str(out))
    with pytest.raises(FileExistsError, match="differs in inputs"):
        run_selection("p2", [scored({schema.PASS_RATE: [0.3, 0.6]})], str(out))


def test_foreign_directory_and_input_directory_are_refused(scored, tmp_path):
    path = scored({schema.PASS_RATE: [0.3]})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="files but no readable selection.json"):
        run_selection("p2", [path], str(tmp_path / "busy"))
    run_selection("p2", [path], str(tmp_path / "busy"), overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="holds an input file"):
        run_selection("p2", [path], os.path.dirname(path))


def test_rows_without_stable_index_are_refused(tmp_path):
    rows = [{"prompt": "q", schema.EXTRA_INFO: {schema.PROMPT_ID: i}, schema.PASS_RATE: 0.5} for i in (0, None, None)]
    write_parquet(str(tmp_path / "a.parquet"), pa.Table.from_pylist(rows))
    with pytest.raises(ValueError, match=r"2 of 3 rows have no int extra_info.index"):
        run_selection("p2", [str(tmp_path / "a.parquet")], str(tmp_path / "o"))
    rows = [{"prompt": "q", schema.EXTRA_INFO: {schema.PROMPT_ID: i}, schema.PASS_RATE: 0.5} for i in (0, 1, 1, 2, 2)]
    write_parquet(str(tmp_path / "b.parquet"), pa.Table.from_pylist(rows))
    with pytest.raises(ValueError, match=r"2 extra_info.index values occur more than once"):
        run_selection("p2", [str(tmp_path / "b.parquet")], str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    # a top-level "index" column is not the id: extra_info.index is
    rows = [{"index": 7, schema.EXTRA_INFO: {schema.PROMPT_ID: i}, schema.PASS_RATE: 0.5} for i in (3, 4)]
    write_parquet(str(tmp_path / "c.parquet"), pa.Table.from_pylist(rows))
    run_selection("p2", [str(tmp_path / "c.parquet")], str(tmp_path / "c"))
    assert pq.read_table(tmp_path / "c" / "decisions.parquet").column("index").to_pylist() == [3, 4]


def test_several_inputs_and_a_directory(scored, tmp_path, read_json):
    a = scored({schema.PASS_RATE: [0.3, 0.95]}, name="a.parquet")
    second = pa.Table.from_pylist([{"prompt": [{"role": "user", "content": "q"}],
                                    schema.EXTRA_INFO: {schema.PROMPT_ID: 10 + i, "split": "train"}}
                                   for i in range(2)])
    b = scored({schema.PASS_RATE: [0.5, 0.05]}, name="b.parquet", table=second)
    rec = run_selection("p2", [a, b], str(tmp_path / "o"))
    d = pq.read_table(tmp_path / "o" / "decisions.parquet")
    assert d.column("index").to_pylist() == [0, 1, 10, 11]
    assert d.column("kept").to_pylist() == [True, False, True, False]
    assert [i["rows"] for i in rec["inputs"]] == [2, 2] and all(len(i["sha256"]) == 64 for i in rec["inputs"])
    assert rec["counts"]["by_reason"] == {"above_band": 1, "below_band": 1, "kept": 2}
    rec2 = run_selection("p2", [os.path.dirname(a)], str(tmp_path / "dir"))
    assert rec2["fingerprint"] == rec["fingerprint"]
    assert set(read_json(tmp_path / "o" / "selection.json")) >= {"method", "mode", "params", "inputs", "counts",
                                                                  "outputs", "version", "created"}
    assert json.dumps(rec["params"]) and rec["params"]["seed"] == 0 and rec["params"]["mode"] == "paper"
    with pytest.raises(FileNotFoundError, match="no such file"):
        run_selection("p2", [str(tmp_path / "missing.parquet")], str(tmp_path / "x"))
