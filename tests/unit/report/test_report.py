"""``verl-difficulty report``: sections drawn only where their columns exist, a self-contained page, extra sections,
the command line and its error messages (inputs built in conftest.py)."""

from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_difficulty import cli
from verl_difficulty import schema as S
from verl_difficulty.report import (EmptyReportError, ReportInputError, Section, SectionOutput, build_report,
                                    load_input)
from verl_difficulty.report.sections import SECTIONS, Figure, pass_matrix

SCORE_SECTIONS = ["passk", "pism_curves", "pism_lambda", "cmab", "visual_entropy", "cde", "ace"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pngs(out) -> set[str]:
    return set(os.listdir(os.path.join(out, "plots")))


def _assert_self_contained(page: str) -> None:
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs, "the page embeds its figures"
    bad = [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]
    assert not bad, f"external references: {bad[:3]}"
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()


def test_every_score_section_from_a_scoring_folder(scoring_folder, tmp_path):
    out = str(tmp_path / "report")
    res = build_report([scoring_folder], out)
    assert res.sections == SCORE_SECTIONS + ["provenance"]
    assert res.skipped == ["selection"]
    assert _pngs(out) == {f"{n}.png" for n in SCORE_SECTIONS}
    for p in res.plots:
        with open(p, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    _assert_self_contained(page)
    assert page.count("data:image/png;base64,") == len(SCORE_SECTIONS)
    # header: rows, dataset files, bad rows by kind
    assert "/data/geo3k/train.parquet" in page and "3 (image: 3)" in page and "403" in page
    # provenance table: model, scorer, version, parameters, date
    assert "/models/Qwen2.5-VL-7B-Instruct" in page and "2026-11-20T10:00:00Z" in page and "&quot;edges&quot;" in page
    # the P2 band and the PISM thresholds are named
    assert "[0.1, 0.87]" in page and "0.4" in page


def test_selection_folder_with_scores_uses_its_band(data, scoring_folder, tmp_path):
    sel = data.write_selection_folder(str(tmp_path / "sel"), params={"low": 0.25, "high": 0.75, "stage2_max": 0.5})
    out = str(tmp_path / "report")
    res = build_report([scoring_folder, sel], out)
    assert "selection" in res.sections
    assert _pngs(out) == {f"{n}.png" for n in SCORE_SECTIONS} | {"selection.png"}
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    _assert_self_contained(page)
    assert "[0.25, 0.75]" in page  # the band of the P2 selection, not the default
    for reason in ("in_band", "too_hard", "too_easy"):
        assert reason in page
    assert "stage 1" in page and "stage 2" in page and "medium" in page


def test_selection_folder_alone_draws_only_the_selection(selection_folder, tmp_path):
    out = str(tmp_path / "report")
    res = build_report([selection_folder], out)
    assert res.sections == ["selection"]
    assert _pngs(out) == {"selection.png"}


def test_only_pass_rate_draws_only_passk(data, tmp_path):
    path = data.write_scored(str(tmp_path / "only.parquet"), columns=[S.PASS_RATE])
    out = str(tmp_path / "report")
    res = build_report([path], out)
    assert res.sections == ["passk"]
    assert _pngs(out) == {"passk.png"}
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert page.count("<figure>") == 1 and "bad rows" in page


@pytest.mark.parametrize("columns, expected", [
    ([S.PISM_LAMBDA], ["pism_lambda"]),
    ([S.PISM_PASS, S.PISM_BUCKET], ["pism_curves"]),
    ([S.CDE_ACC_IMG], []),  # CDE needs both arms
    ([S.CDE_ACC_IMG, S.CDE_ACC_TXT, S.ACE_SCORE], ["cde", "ace"]),
])
def test_sections_follow_the_columns(data, tmp_path, columns, expected):
    path = data.write_scored(str(tmp_path / "t.parquet"), columns=columns + [S.PASS_RATE])
    res = build_report([path], str(tmp_path / "r"))
    assert res.sections == ["passk"] + expected
    assert _pngs(str(tmp_path / "r")) == {f"{n}.png" for n in ["passk"] + expected}


def test_several_scored_inputs_are_overlaid(data, tmp_path):
    a = data.write_scored(str(tmp_path / "a.parquet"), n=300, seed=1)
    b = data.write_scored(str(tmp_path / "b.parquet"), n=200, seed=2)
    res = build_report([a, b], str(tmp_path / "r"))
    assert res.sections == SCORE_SECTIONS + ["provenance"]
    page = open(res.index, encoding="utf-8").read()
    assert "a.parquet" in page and "b.parquet" in page


def test_same_labels_are_told_apart(data, tmp_path):
    os.makedirs(tmp_path / "x")
    os.makedirs(tmp_path / "y")
    a = data.write_scored(str(tmp_path / "x" / "scored.parquet"), columns=[S.PASS_RATE])
    b = data.write_scored(str(tmp_path / "y" / "scored.parquet"), columns=[S.PASS_RATE])
    page = open(build_report([a, b], str(tmp_path / "r")).index, encoding="utf-8").read()
    assert "scored.parquet#2" in page


def test_extra_sections_from_a_caller(data, tmp_path):
    from verl_difficulty.report import plots

    path = data.write_scored(str(tmp_path / "t.parquet"), columns=[S.PASS_RATE, S.VISUAL_ENTROPY])

    def spearman(ctx):
        (label, df), = ctx.frames([S.PASS_RATE, S.VISUAL_ENTROPY])
        rho = df[S.PASS_RATE].rank().corr(df[S.VISUAL_ENTROPY].rank())
        fig, (ax,) = plots.figure()
        ax.scatter(df[S.PASS_RATE], df[S.VISUAL_ENTROPY], s=3)
        return SectionOutput("Spearman correlations", f"<p>rho = {rho:.3f}</p>", [Figure("spearman", plots.png(fig))])

    def nothing(ctx):
        return None

    missing = Section("curves", draw=lambda ctx: SectionOutput("never"), needs=("training_step",))
    res = build_report([path], str(tmp_path / "r"), extra_sections=[spearman, nothing, missing])
    assert res.sections == ["passk", "visual_entropy", "spearman"]
    assert set(res.skipped) >= {"nothing", "curves"}
    assert "spearman.png" in _pngs(str(tmp_path / "r"))
    assert "Spearman correlations" in open(res.index, encoding="utf-8").read()
    # the built-in list is untouched by a caller's sections
    assert [s.name for s in SECTIONS][-1] == "provenance"
    with pytest.raises(TypeError, match="extra_sections\\[0\\]"):
        build_report([path], str(tmp_path / "r2"), extra_sections=["not a section"])


def test_pass_matrix_counts_untried_ratios_after_a_failure_as_failed():
    nan = float("nan")
    m = pass_matrix([[1.0, 0.0, nan], [1.0, 1.0, 1.0], [0.0, nan, nan], None], width=3)
    assert m[0].tolist() == [1.0, 0.0, 0.0]
    assert m[2].tolist() == [0.0, 0.0, 0.0]
    assert m[1].tolist() == [1.0, 1.0, 1.0]
    assert all(v != v for v in m[3])  # a row without a vector stays untried


def test_stale_plots_are_removed(data, tmp_path, scoring_folder):
    out = str(tmp_path / "r")
    build_report([scoring_folder], out)
    path = data.write_scored(str(tmp_path / "only.parquet"), columns=[S.PASS_RATE])
    build_report([path], out)
    assert _pngs(out) == {"passk.png"}


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------
def test_input_that_is_none_of_the_three_is_named(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    with pytest.raises(ReportInputError, match=r"plain: neither a scored parquet file .* nor a selection folder"):
        load_input(str(d))
    with pytest.raises(ReportInputError, match=r"notes.txt: neither"):
        load_input(str(d / "notes.txt"))
    with pytest.raises(ReportInputError, match=r"missing: no such file or folder"):
        load_input(str(tmp_path / "missing"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ReportInputError, match=r"bad.parquet: not a readable parquet file"):
        load_input(str(bad))


def test_incomplete_scoring_folder_and_broken_selection(tmp_path):
    d = tmp_path / "scores"
    d.mkdir()
    (d / "manifest.json").write_text("{}")
    with pytest.raises(ReportInputError, match="without scored.parquet"):
        load_input(str(d))
    s = tmp_path / "sel"
    s.mkdir()
    (s / "selection.json").write_text("{not json")
    with pytest.raises(ReportInputError, match=r"selection.json: cannot read it as JSON"):
        load_input(str(s))
    (s / "selection.json").write_text(json.dumps({"method": "p2"}))
    with pytest.raises(ReportInputError, match="without decisions.parquet"):
        load_input(str(s))


def test_empty_report_names_the_columns_it_looked_for(tmp_path):
    path = str(tmp_path / "plain.parquet")
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", "2"]}), path)
    with pytest.raises(EmptyReportError) as e:
        build_report([path], str(tmp_path / "r"))
    msg = str(e.value)
    assert "plain.parquet" in msg
    for col in (S.PASS_RATE, S.PISM_LAMBDA, S.PISM_PASS, S.CMAB_RATIO, S.VISUAL_ENTROPY, S.CDE_ACC_IMG, S.ACE_SCORE,
                "kept", "reason"):
        assert col in msg
    assert not os.path.exists(tmp_path / "r" / "index.html")


# ---------------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------------
def test_cli_end_to_end(scoring_folder, selection_folder, tmp_path, capsys):
    out = str(tmp_path / "report")
    assert cli.main(["report", scoring_folder, selection_folder, "-o", out, "--title", "geo3k"]) == 0
    printed = capsys.readouterr().out
    assert "index.html" in printed and "8 plots" in printed
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert "<title>geo3k</title>" in page
    assert _pngs(out) == {f"{n}.png" for n in SCORE_SECTIONS} | {"selection.png"}


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    d = tmp_path / "plain"
    d.mkdir()
    assert cli.main(["report", str(d), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verl-difficulty report: ") and "plain: neither" in err and err.count("\n") == 1
    path = str(tmp_path / "plain.parquet")
    pq.write_table(pa.table({"prompt": ["a"]}), path)
    assert cli.main(["report", path, "-o", str(tmp_path / "r")]) == 2
    assert "looked for score columns pass_rate" in capsys.readouterr().err.replace("Looked", "looked")


def test_scored_table_helper_has_every_score_column(data):
    t = data.scored_table(n=50)
    for col in (S.PASS_RATE, S.PISM_LAMBDA, S.PISM_PASS, S.PISM_BUCKET, S.CMAB_RATIO, S.CMAB_BUCKET, S.VISUAL_ENTROPY,
                S.CDE_ACC_IMG, S.CDE_ACC_TXT, S.ACE_SCORE, S.SCORE_PROVENANCE):
        assert col in t.column_names


def test_all_null_columns_draw_nothing_and_nan_rows_are_left_out(tmp_path):
    n = 40
    nan = float("nan")
    path = str(tmp_path / "nulls.parquet")
    pq.write_table(pa.table({
        S.PASS_RATE: pa.array([0.5] * n),
        S.VISUAL_ENTROPY: pa.array([None] * n, type=pa.float64()),
        S.ACE_SCORE: pa.array([nan] * n),
        S.CDE_ACC_IMG: pa.array([1.0, nan] * (n // 2)), S.CDE_ACC_TXT: pa.array([0.0] * n),
        S.PISM_PASS: pa.array([[1.0, nan], None] * (n // 2), type=pa.list_(pa.float64())),
    }), path)
    res = build_report([path], str(tmp_path / "r"))
    assert res.sections == ["passk", "pism_curves", "cde"]
    page = open(res.index, encoding="utf-8").read()
    assert "20 (100.0%)" in page  # the 20 rows with both arms, all with D = 1 >= 0.5
