"""Reading the curves from a file in the format of verl's file logger (verl.utils.tracking.FileLogger)."""

from __future__ import annotations

import orjson
import pytest

from verl_difficulty.demo import metrics as M


def _write(path, records, torn: bytes = b""):
    with open(path, "wb") as f:
        for step, data in records:
            f.write(orjson.dumps({"step": step, "data": data}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        f.write(torn)


def _val(level, acc, n=4):
    src = M.level_source(level)
    return {f"val-core/{src}/acc/mean@{n}": acc, f"val-aux/{src}/acc/std@{n}": 0.1,
            f"val-core/{src}/acc/best@{n}/mean": 0.9, f"val-aux/{src}/reward/mean@{n}": acc + 0.5}


def test_curves_from_a_tracker_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    step0 = {**_val(0, 0.6), **_val(3, 0.1), "val-core/other_source/acc/mean@4": 0.3}
    step1 = {M.STEP_KEY: 1, M.REWARD: 0.7, M.TRAIN_ACC: 0.25, M.MIX_PREFIX + "hard": 0.5,
             M.MIX_PREFIX + "easy": 0.5, M.MIX_PREFIX + "unsolved": 0.0}
    step2 = {M.STEP_KEY: 2, M.REWARD: 0.9, M.TRAIN_ACC: float("nan"), M.MIX_PREFIX + "hard": 1.0,
             M.MIX_PREFIX + "easy": 0.0, M.MIX_PREFIX + "unsolved": 0.0, **_val(0, 0.7), **_val(3, 0.2)}
    _write(path, [(0, step0), (1, step1), (2, step2)], torn=b'{"step": 3, "da')
    records = M.read_records(str(path))
    assert [r["step"] for r in records] == [0, 1, 2]  # the torn last line is being written: skipped
    assert M.steps_done(records) == 2
    assert M.series(records, M.REWARD) == ([1, 2], [0.7, 0.9])
    assert M.series(records, M.TRAIN_ACC) == ([1], [0.25])  # NaN is not a point
    val = M.validation_accuracy(records)
    assert list(val) == ["true_level_0", "true_level_3", "other_source"]  # levels first, in order
    assert val["true_level_0"] == {"n": 4, "level": 0, "steps": [0, 2], "values": [0.6, 0.7]}
    assert val["other_source"]["level"] is None
    mix = M.sampler_mix(records)
    assert list(mix) == ["easy", "hard", "unsolved"]  # schema.BUCKETS order
    assert mix["hard"] == ([1, 2], [0.5, 1.0])
    c = M.curves(records)
    assert c["steps"] == 2 and M.first_last(c["reward"]) == (0.7, 0.9)
    assert M.window_mean(c["reward"], last=3) == pytest.approx(0.8) and M.window_mean(([], [])) is None


def test_missing_and_corrupt_files(tmp_path):
    assert M.read_records(str(tmp_path / "absent.jsonl")) == []
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'not json\n{"step": 1, "data": {}}\n')
    with pytest.raises(ValueError, match="line 1"):
        M.read_records(str(bad))
    assert M.source_level("true_level_12") == 12 and M.source_level("verl/synthetic") is None
