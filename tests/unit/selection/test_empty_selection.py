"""A selection that keeps no row (an empty train set): exit 1 with one stderr line naming the method, the rows read,
the counts per reason and the flags to loosen; only the decisions and a ``status: empty`` record are written, never a
train.parquet, never over a finished selection; the next selection into the folder replaces that record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from verl_difficulty import cli, schema, selection
from verl_difficulty.data.io import write_parquet
from verl_difficulty.selection import EmptySelectionError, io, run_selection

ACC = [0.0, 0.05, 0.5, 0.6, 0.95, 1.0]  # p2 --low 0.7 --high 0.8 keeps none: below_band=4, above_band=2


def _files(out: Path) -> set:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("method,columns,flags,expect", [
    ("p2", {schema.PASS_RATE: ACC}, ["--low", "0.7", "--high", "0.8"],
     ["kept 0 of 6 rows read (above_band=2, below_band=4)", "loosen --low (now 0.7), --high (now 0.8)"]),
    ("p2", {schema.PASS_RATE: ACC}, ["--stage1-size", "0", "--stage2-size", "0"],
     ["beyond_stage_sizes=2", "--stage1-size (now 0), --stage2-size (now 0)"]),
    ("p1", {schema.PISM_LAMBDA: [0.0, 0.9, None, 0.0]}, [],
     ["kept 0 of 4 rows read (easy=2, unsolved=2)", "loosen --train-buckets (now medium,hard)"]),
    ("p4", {schema.CDE_D: [0.1, 0.2, 0.3], schema.CDE_ACC_IMG: [0.5, 0.5, 0.5]}, [],
     ["kept 0 of 3 rows read (cde_below_threshold=3)", "loosen --lambda-c (now 0.5)"]),
    ("p4", {schema.CDE_D: [0.6, 0.7], schema.CDE_ACC_IMG: [1.0, 1.0]}, ["--no-ace"],
     ["kept 0 of 2 rows read (replaced_trivial=2)", "loosen --no-drm;"]),
    ("p4", {schema.CDE_IMG_CORRECT_FORMATTED: [2, 0], schema.CDE_TXT_CORRECT_FORMATTED: [2, 0],
            schema.CDE_IMG_CORRECT: [2, 0], schema.CDE_ROLLOUTS: [5, 5]}, ["--mode", "reference_code"],
     ["kept 0 of 2 rows read (cde_below_threshold=2)", "loosen --mode (now reference_code)"]),
])
def test_cli_empty_train_exits_1_naming_method_counts_and_flags(scored, tmp_path, capsys, method, columns, flags,
                                                                  expect):
    path = scored(columns)
    out = tmp_path / "sel"
    assert cli.main(["select", method, path, "-o", str(out), *flags]) == 1
    cap = capsys.readouterr()
    line = _one_line(cap.err)
    assert line.startswith(f"verl-difficulty select {method}: empty train set: ")
    for text in expect:
        assert text in line
    assert f"only decisions.parquet and selection.json (status empty) written to {out}" in line
    assert "no train.parquet" in line and cap.out == ""
    # for inspection: the decisions and the record, no row table (P1's fullset/sft/unsolved sets included)
    assert _files(out) == {"decisions.parquet", "selection.json"}
    rec = json.loads((out / "selection.json").read_text())
    n = len(next(iter(columns.values())))
    assert rec["status"] == "empty" and rec["outputs"] == {"decisions": "decisions.parquet"}
    assert rec["counts"]["kept"] == 0 and rec["counts"]["input_rows"] == n and rec["method"] == method
    assert "select." + method in rec["error"] and "empty train set" in rec["error"]
    d = pq.read_table(out / "decisions.parquet")
    assert d.num_rows == n and not any(d.column("kept").to_pylist())


def test_p1_empty_train_with_other_sets_writes_none_of_them(scored, tmp_path, capsys):
    # easy rows fill sft.parquet and every row fullset: still an error, train is the selection (random = its size)
    path = scored({schema.PISM_LAMBDA: [0.9, None, 0.8]})
    out = tmp_path / "p1"
    assert cli.main(["select", "p1", path, "-o", str(out)]) == 1
    assert "(easy=3)" in capsys.readouterr().err
    rec = json.loads((out / "selection.json").read_text())
    assert rec["counts"]["by_subset"] == {"fullset": 3, "sft": 3}
    assert not (out / "sft.parquet").exists() and not (out / "subsets").exists()
    # naming the bucket in --train-buckets selects it
    assert cli.main(["select", "p1", path, "-o", str(out), "--train-buckets", "easy"]) == 0
    assert pq.read_table(out / "train.parquet").num_rows == 3 and (out / "sft.parquet").exists()


def test_rows_without_a_score_name_no_flag(scored, tmp_path, capsys):
    path = scored({schema.PASS_RATE: [None, float("nan"), 0.05]})
    assert cli.main(["select", "p2", path, "-o", str(tmp_path / "o")]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "(below_band=1, no_score=2)" in line and "--low (now 0.1)" in line
    assert "no parameter keeps the no_score rows (rescore them)" in line


def test_empty_record_is_not_a_finished_selection(scored, tmp_path, capsys, read_json):
    path = scored({schema.PASS_RATE: ACC})
    out = tmp_path / "sel"
    empty = ["select", "p2", path, "-o", str(out), "--low", "0.7", "--high", "0.8"]
    assert cli.main(empty) == 1
    first = read_json(out / "selection.json")
    # the same command again: the same error, still no train set (nothing resumed from the empty record)
    assert cli.main(empty) == 1
    assert "empty train set" in capsys.readouterr().err and not (out / "train.parquet").exists()
    assert read_json(out / "selection.json")["fingerprint"] == first["fingerprint"]
    # the empty record is not taken as this selection (no created date kept) and is removed by prepare_outdir
    assert io.prepare_outdir(str(out), {"fingerprint": first["fingerprint"]}, False, first["inputs"]) is None
    assert _files(out) == set()
    assert cli.main(empty) == 1
    # loosened: replaces the empty record without --overwrite, a complete selection
    assert cli.main(["select", "p2", path, "-o", str(out), "--low", "0.4"]) == 0
    rec = read_json(out / "selection.json")
    assert rec["status"] == "complete" and "error" not in rec and rec["counts"]["kept"] == 2
    assert pq.read_table(out / "train.parquet").num_rows == 2


def test_empty_selection_never_replaces_a_finished_one(scored, tmp_path, capsys):
    path = scored({schema.PASS_RATE: ACC})
    out = tmp_path / "sel"
    assert cli.main(["select", "p2", path, "-o", str(out)]) == 0
    before = {f: (out / f).read_bytes() for f in _files(out)}
    assert "train.parquet" in before and json.loads(before["selection.json"])["status"] == "complete"
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert cli.main(["select", "p2", path, "-o", str(out), "--low", "0.7", "--high", "0.8", *extra]) == 1
        line = _one_line(capsys.readouterr().err)
        assert "kept 0 of 6 rows read" in line and "--low (now 0.7)" in line
        assert line.endswith(f"nothing written: -o {out} holds a finished selection (p2/paper), left as it was")
        assert {f: (out / f).read_bytes() for f in _files(out)} == before
    # foreign files: left alone too
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert cli.main(["select", "p2", path, "-o", str(busy), "--low", "0.7", "--high", "0.8", "--overwrite"]) == 1
    assert "holds files but no readable selection.json, left as it was" in capsys.readouterr().err
    assert _files(busy) == {"notes.txt"}


def test_run_selection_raises_empty_selection_error(scored, tmp_path):
    path = scored({schema.PASS_RATE: ACC})
    with pytest.raises(EmptySelectionError) as e:
        run_selection("p2", [path], str(tmp_path / "o"), {"low": 0.7, "high": 0.8})
    err = e.value
    assert isinstance(err, ValueError) and "EmptySelectionError" in selection.__all__
    assert err.method == "p2" and err.mode == "paper" and err.written
    assert err.counts["by_reason"] == {"above_band": 2, "below_band": 4} and err.counts["input_rows"] == 6
    assert str(err).startswith("p2 (paper): empty train set: kept 0 of 6 rows read")
    assert "select.p2.low (now 0.7), select.p2.high (now 0.8)" in str(err)
    assert err.record["status"] == "empty" and err.record == json.loads((tmp_path / "o" / "selection.json")
                                                                         .read_text())


def test_input_without_rows_is_a_usage_error(scored, tmp_path, capsys):
    path = str(tmp_path / "none.parquet")
    write_parquet(path, pq.read_table(scored({schema.PASS_RATE: [0.5]})).slice(0, 0))
    assert cli.main(["select", "p2", path, "-o", str(tmp_path / "o")]) == 2
    assert "the input holds no rows" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _entries():
    script = Path(sys.executable).parent / "verl-difficulty"
    return [[sys.executable, "-m", "verl_difficulty.cli"]] + ([[str(script)]] if script.is_file() else [])


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: os.path.basename(e[-1]))
def test_entry_exit_codes(scored, tmp_path, entry):
    path = scored({schema.PASS_RATE: ACC})
    bad = subprocess.run([*entry, "select", "p2", path, "-o", str(tmp_path / "e"), "--low", "0.7", "--high", "0.8"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stdout == ""
    line = _one_line(bad.stderr)
    assert line.startswith("verl-difficulty select p2: empty train set: kept 0 of 6 rows read (above_band=2, "
                           "below_band=4)") and "--low (now 0.7)" in line and "--high (now 0.8)" in line
    assert not (tmp_path / "e" / "train.parquet").exists()
    ok = subprocess.run([*entry, "select", "p2", path, "-o", str(tmp_path / "e")], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0 and ok.stderr == "" and "p2 (paper): kept 2 of 6 rows" in ok.stdout
    assert pq.read_table(tmp_path / "e" / "train.parquet").num_rows == 2
