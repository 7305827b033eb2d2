"""``verl-difficulty select`` end to end through ``cli.main``: outputs, summary, generated flags, error messages."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from verl_difficulty import cli, schema


def test_cli_p2_writes_the_three_outputs(scored, tmp_path, capsys):
    path = scored({schema.PASS_RATE: [0.0, 0.1, 0.4, 0.6, 0.87, 1.0]})
    out = tmp_path / "sel"
    assert cli.main(["select", "p2", path, "-o", str(out), "--stage2-size", "1", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "p2 (paper): kept 4 of 6 rows" in printed and "by reason: above_band=1, below_band=1, kept=4" in printed
    assert "by stage (kept): 1=3, 2=1" in printed
    sel = json.loads((out / "selection.json").read_text())
    assert sel["method"] == "p2" and sel["params"]["stage2_size"] == 1 and sel["params"]["seed"] == 5
    assert sel["outputs"] == {"decisions": "decisions.parquet", "train": "train.parquet",
                              "stage1": "stage1.parquet", "stage2": "stage2.parquet"}
    d = pq.read_table(out / "decisions.parquet")
    assert d.schema.names == ["index", "kept", "reason", "bucket", "stage", "subset"]
    assert str(d.schema.field("index").type) == "int64" and str(d.schema.field("stage").type) == "int64"
    assert pq.read_table(out / "train.parquet").num_rows == 4
    # the same command again: accepted; another one: refused (exit 2) unless --overwrite
    assert cli.main(["select", "p2", path, "-o", str(out), "--stage2-size", "1", "--seed", "5"]) == 0
    assert cli.main(["select", "p2", path, "-o", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main(["select", "p2", path, "-o", str(out), "--overwrite"]) == 0


def test_cli_p1_and_p4_flags(scored, tmp_path, capsys):
    path = scored({schema.PISM_LAMBDA: [0.0, 0.2, 0.5, 0.7], schema.CDE_D: [0.6, 0.6, 0.1, 0.9],
                   schema.CDE_ACC_IMG: [1.0, 0.8, 0.2, 0.9]})
    assert cli.main(["select", "p1", path, "-o", str(tmp_path / "p1"), "--lambda-boundary", "appendix",
                     "--train-buckets", "medium", "--sft-buckets", "", "--baselines", "fullset"]) == 0
    sel = json.loads((tmp_path / "p1" / "selection.json").read_text())
    assert sel["counts"]["kept"] == 2 and sel["params"]["sft_buckets"] == [] and "sft" not in sel["outputs"]
    assert sorted(sel["outputs"]) == ["decisions", "fullset", "grpo", "train"]
    assert cli.main(["select", "p4", path, "-o", str(tmp_path / "p4"), "--no-drm", "--no-ace"]) == 0
    assert "ACE step skipped: --no-ace" in capsys.readouterr().out
    assert json.loads((tmp_path / "p4" / "selection.json").read_text())["counts"]["kept"] == 3


@pytest.mark.parametrize("argv,message", [
    (["p2", "--low", "-0.5"], "--low: must be >= 0.0"),
    (["p2", "--low", "0.9", "--high", "0.2"], "--low: must be <= --high"),
    (["p4", "--lambda-a", "0"], "--lambda-a: must be > 0.0"),
    (["p2", "--stage-boundary", "0.5", "--stage1-size", "3"], "--stage-boundary: give either"),
    (["p1", "--mode", "reference_code"], "--mode: p1 implements ['paper']"),
    (["p4"], "p4 needs cde_discrepancy (CDE discrepancy): the input lacks it; run `verl-difficulty score INPUT "
             "--model MODEL -o OUT --scorers cde`"),
])
def test_cli_errors_name_the_flag(scored, tmp_path, capsys, argv, message):
    path = scored({schema.PASS_RATE: [0.5]})
    assert cli.main(["select", argv[0], path, "-o", str(tmp_path / "o"), *argv[1:]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "selection.json").exists()


def test_cli_bad_choice_is_a_usage_error(scored, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["select", "p1", scored({schema.PASS_RATE: [0.5]}), "-o", str(tmp_path), "--bucket-source", "x"])
    assert e.value.code == 2 and "--bucket-source" in capsys.readouterr().err
