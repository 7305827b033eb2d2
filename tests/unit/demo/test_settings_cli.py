"""The demo's options: flags generated from the settings dataclass, the --quick preset, errors naming the flag, what
each stage depends on, and the warm-up feed."""

from __future__ import annotations

import pytest

from verl_difficulty.cli import main
from verl_difficulty.config import ConfigError
from verl_difficulty.demo.prepare import exposure_feed
from verl_difficulty.demo.settings import QUICK, STAGES, DemoSettings, make_settings, stage_settings


def _parse(argv):
    import argparse

    from verl_difficulty.cli import demo

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    demo.add_parser(sub)
    args = parser.parse_args(["demo", *argv])
    return args, demo.settings_from_args(args)


def test_flags_and_quick_preset():
    args, s = _parse(["-o", "/tmp/x", "--scorers", "passk,visual_entropy", "--warmup-exposure", "4,2,1,0",
                      "--train-on", "all", "--only", "report", "--force", "train", "--force", "report"])
    assert s.output == "/tmp/x" and s.scorers == ["passk", "visual_entropy"] and s.warmup_exposure == [4, 2, 1, 0]
    assert args.only == "report" and args.force == ["train", "report"]
    _, q = _parse(["--quick", "--train-steps", "5"])
    assert q.n_train == QUICK["n_train"] and q.train_steps == 5  # explicit flags win over the preset
    _, d = _parse([])
    assert d == DemoSettings()


@pytest.mark.parametrize("argv, message", [
    (["--n-train", "3"], "--n-train: must be >= 16"),
    (["--scorers", "passk,pism"], "keep visual_entropy"),
    (["--scorers", "visual_entropy,bogus"], "unknown ['bogus']"),
    (["--scorers", "visual_entropy,passk", "--train-on", "p4"], "p4 selects from the cde, ace scorer(s)"),
    (["--data", "/nonexistent.parquet"], "--data: /nonexistent.parquet does not exist"),
])
def test_bad_values_exit_2_naming_the_flag(argv, message, capsys):
    assert main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for flag in ("--output", "--data", "--model", "--n-train", "--only", "--force", "--quick", "--train-steps",
                 "--scorers", "stages"):
        assert flag in out


def test_stage_settings_cover_what_changes_results():
    a, b = make_settings({}), make_settings({"num_workers": 0})
    for stage in STAGES:
        assert stage_settings(a, stage) == stage_settings(b, stage)  # runtime-only: no redo
    c = make_settings({"passk_k": 4})
    assert stage_settings(a, "score") != stage_settings(c, "score")
    assert stage_settings(a, "model") == stage_settings(c, "model")
    with pytest.raises(ValueError):
        stage_settings(a, "nope")
    with pytest.raises(ConfigError):
        make_settings({"warmup_exposure": []})


def test_exposure_feed_repeats_rows_by_level():
    rows = [{"id": i} for i in range(5)]
    feed = exposure_feed(rows, [0, 1, 2, 7, float("nan")], [3, 2, 1, 0])
    assert [r["id"] for r in feed] == [0, 0, 0, 1, 1, 2, 4]  # level 3 and beyond: 0 copies; unknown level: once
