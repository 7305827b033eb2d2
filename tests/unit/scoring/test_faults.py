"""Fail loudly, lose nothing: row faults stay bad rows, execution faults are retried and then fail the job (no shard
marked done, a rerun finishes it), damaged shards are detected and redone, preflight errors come before any work as
one line naming the option/file/path, OS errors leave committed work consistent, files honour the umask, and the
summary groups bad rows by kind.

Each test here backs a line of the fault matrix (README "Offline scoring")."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from verl_difficulty import cli
from verl_difficulty.data import io as dio
from verl_difficulty.data.synthetic import generate_rows
from verl_difficulty.scoring import ScoreJob, ScoringContext, run_scoring
from verl_difficulty.scoring.engine import ScoringFailed
from verl_difficulty.scoring.preflight import PreflightError
from verl_difficulty.scoring.scorers.passk import PassKScorer
from verl_difficulty.scoring.scripted import ScriptedBackend, ScriptedVerifier

SCRIPTED = "verl_difficulty.scoring.scripted:ScriptedBackend"
_spec = importlib.util.spec_from_file_location("_engine_test_helpers", Path(__file__).with_name("test_engine.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
SCORERS, _write = _helpers.SCORERS, _helpers._write  # the engine tests' helpers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write(generate_rows(12, seed=0), tmp_path_factory.mktemp("data") / "train.parquet")


def _job(data, out, **kw):
    base = dict(inputs=[data], output_dir=str(out), model_path="scripted", scorers=SCORERS, num_workers=0,
                shard_size=4, progress=False, retry_backoff_s=0.0)
    base.update(kw)
    return ScoreJob(**base)


def _run(data, out, backend=None, log=None, **kw):
    return run_scoring(_job(data, out, **kw), backend=backend or ScriptedBackend(), verifier=ScriptedVerifier(),
                       log=log or (lambda s: None))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, scored_bytes):
    out = tmp_path_factory.mktemp("ref") / "o"
    _run(data, out)
    return scored_bytes(out / "scored.parquet")


def _cli(data, out, *extra):
    return ["score", data, "--model", "scripted", "-o", str(out), "--backend", SCRIPTED, "--verifier",
            '{"name": "scripted"}', "--num-workers", "0", "--shard-size", "4", "--no-progress",
            "--retry-backoff-s", "0", "--passk-k", "2", "--passk-max-tokens", "2", *extra]


def _err(capsys) -> str:
    """The error line (retries before it are logged on lines of their own); never a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("verl-difficulty score: ")]
    assert len(lines) == 1 and err.endswith(lines[0]), err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# Execution faults: retried, then the job fails without marking the shard done; a rerun finishes it
# ----------------------------------------------------------------------------------------------------------------
def test_a_transient_backend_fault_is_retried_to_the_same_output(data, tmp_path, reference, scored_bytes):
    backend = ScriptedBackend(fail_first=1)  # the first generate call raises "CUDA out of memory"
    s = _run(data, tmp_path / "o", backend=backend)
    assert backend.calls > 1 and s["rows_bad"] == 0
    assert scored_bytes(tmp_path / "o" / "scored.parquet") == reference
    ctx_backend = ScriptedBackend(fail_first=2)
    ctx = ScoringContext(ctx_backend, ScriptedVerifier(), batch_size=8, max_attempts=3)
    rows = _rows(data, 3)
    assert PassKScorer(k=2, max_tokens=2).score(rows, ctx) == PassKScorer(k=2, max_tokens=2).score(
        rows, ScoringContext(ScriptedBackend(), ScriptedVerifier(), batch_size=8))
    assert ctx_backend.batch_sizes == [6] and ctx.retries == 2


def _rows(data, n):
    from verl_difficulty.data.rows import prepare_row

    return [prepare_row(r, i) for i, r in enumerate(pq.read_table(data).slice(0, n).to_pylist())]


def test_an_always_failing_backend_fails_the_job_and_a_rerun_finishes_it(data, tmp_path, reference, scored_bytes):
    out = tmp_path / "o"
    with pytest.raises(ScoringFailed, match=r"shard 0 \(rows 0-3 of .*train.parquet\) failed after 3 attempt.*"
                                            r"CUDA out of memory"):
        _run(data, out, backend=ScriptedBackend(fail_always=True))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["done"] == {} and not (out / "scored.parquet").exists() and not (out / "bad_rows.jsonl").exists()
    s = _run(data, out)  # the same job with a working backend
    assert s["shards_resumed"] == 0 and s["rows_scored"] == 12
    assert scored_bytes(out / "scored.parquet") == reference


def test_cli_always_failing_backend_exits_1_naming_shard_and_cause_then_rerun_works(data, tmp_path, capsys):
    out = tmp_path / "o"
    kwargs = json.dumps({"fail_always": True, "fail_message": "probability tensor contains either inf, nan"})
    assert cli.main(_cli(data, out, "--backend-kwargs", kwargs)) == 1
    err = _err(capsys)
    assert "shard 0" in err and "probability tensor" in err, err
    assert json.loads((out / "manifest.json").read_text())["done"] == {}
    # a job that died before its first shard never blocks the corrected rerun (other settings here)
    assert cli.main(_cli(data, out)) == 0
    assert pq.read_table(out / "scored.parquet").num_rows == 12


def test_a_row_level_generation_error_of_the_machine_is_not_a_bad_row(data, tmp_path):
    class NanRow(ScriptedBackend):
        def generate(self, requests, sampling):  # one row's requests hit NaN probabilities, the others work
            if any(int(r.tag.get("row", -1)) == 1 for r in requests):
                raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
            return super().generate(requests, sampling)

    with pytest.raises(ScoringFailed, match="shard 0 .*nan"):
        _run(data, tmp_path / "o", backend=NanRow())
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["done"] == {}


def test_a_text_only_model_is_an_execution_fault_not_bad_rows(data, tmp_path):
    with pytest.raises(ScoringFailed, match="no image processor"):
        _run(data, tmp_path / "o", backend=ScriptedBackend(images=False), scorers={"passk": {"k": 2}})
    assert not (tmp_path / "o" / "bad_rows.jsonl").exists()


def test_a_scorer_crash_fails_the_shard(data, tmp_path, monkeypatch):
    monkeypatch.setattr(PassKScorer, "score", lambda self, rows, ctx: 1 / 0)
    with pytest.raises(ScoringFailed, match="'passk' crashed: ZeroDivisionError"):
        _run(data, tmp_path / "o")


# ----------------------------------------------------------------------------------------------------------------
# Row faults: bad rows, unless a shard has too many
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mostly_bad(tmp_path_factory):
    rows = generate_rows(8, seed=0)
    for i in (0, 1, 2):
        rows[i]["images"] = [{"bytes": b"not an image", "path": None}]
    rows[5]["reward_model"]["ground_truth"] = ""
    return _write(rows, tmp_path_factory.mktemp("mostly_bad") / "bad.parquet")


def test_a_shard_with_too_many_bad_rows_stops_the_job_with_reasons_counted(mostly_bad, tmp_path):
    with pytest.raises(ScoringFailed, match=r"shard 0 .*3 of 4 rows are bad rows \(75% > --max-bad-fraction 0.5\): "
                                            r"image: undecodable: 3 \(rows 0, 1, 2\)"):
        _run(mostly_bad, tmp_path / "o")
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["done"] == {}
    s = _run(mostly_bad, tmp_path / "o", max_bad_fraction=1.0)  # accepted: a runtime setting, same job
    assert s["rows_scored"] == 4 and s["bad_reasons"] == {"image: undecodable": 3, "ground_truth: missing": 1}
    assert s["bad_examples"]["image: undecodable"] == [0, 1, 2]
    assert {json.loads(line)["kind"] for line in open(tmp_path / "o" / "bad_rows.jsonl")} == \
        {"image: undecodable", "ground_truth: missing"}


def test_summary_with_nothing_scored_has_no_generations_per_row(data, tmp_path):
    from verl_difficulty.scoring.summary import format_summary

    rows = generate_rows(4, seed=0)
    for r in rows:  # text-only rows: passk generates, pism fails every row
        r["images"] = []
        r["prompt"][-1]["content"] = r["prompt"][-1]["content"].replace("<image>", "")
    path = _write(rows, tmp_path / "text.parquet")
    s = _run(path, tmp_path / "o", scorers={"passk": {"k": 2}, "pism": {}}, max_bad_fraction=1.0)
    assert s["rows_scored"] == 0 and s["generations"] == 8
    assert s["scorers"]["passk"]["generations_per_row"] is None
    text = format_summary(s)
    assert "generations_per_row=n/a" in text and "image: none (the scorer needs one)" in text


# ----------------------------------------------------------------------------------------------------------------
# Integrity: content hashes of shards and of scored.parquet
# ----------------------------------------------------------------------------------------------------------------
def _flip(path, at=None):
    raw = bytearray(open(path, "rb").read())
    at = len(raw) // 2 if at is None else at
    raw[at] ^= 0xFF
    open(path, "wb").write(bytes(raw))


def test_a_damaged_shard_is_detected_named_and_redone(data, tmp_path, reference, scored_bytes):
    out = tmp_path / "o"
    _run(data, out)
    size = os.path.getsize(out / "shards" / "part-00001.parquet")
    _flip(out / "shards" / "part-00001.parquet")
    assert os.path.getsize(out / "shards" / "part-00001.parquet") == size
    os.unlink(out / "scored.parquet")
    logs = []
    s = _run(data, out, log=logs.append)
    assert any("part-00001.parquet is corrupt" in line and "redone" in line for line in logs), logs
    assert s["shards_resumed"] == 2 and s["rows_this_run"] == 4
    assert scored_bytes(out / "scored.parquet") == reference


def test_a_damaged_scored_parquet_is_merged_again(data, tmp_path, reference, scored_bytes):
    out = tmp_path / "o"
    _run(data, out)
    _flip(out / "scored.parquet")
    logs = []
    _run(data, out, log=logs.append)
    assert any("scored.parquet is corrupt" in line for line in logs), logs
    assert scored_bytes(out / "scored.parquet") == reference


# ----------------------------------------------------------------------------------------------------------------
# Preflight: one line naming the option, file or path, before anything is written
# ----------------------------------------------------------------------------------------------------------------
def _text_only_model(path, vision=False, processor=False):
    path.mkdir()
    config = {"model_type": "qwen2"} | ({"vision_config": {}} if vision else {})
    (path / "config.json").write_text(json.dumps(config))
    if processor:
        (path / "preprocessor_config.json").write_text("{}")
    return str(path)


@pytest.mark.parametrize("vision", [False, True])
def test_a_model_without_vision_or_processor_is_refused_for_image_scorers(data, tmp_path, capsys, vision):
    model = _text_only_model(tmp_path / "m", vision=vision)
    args = ["score", data, "--model", model, "-o", str(tmp_path / "o"), "--scorers", "pism", "--no-progress"]
    assert cli.main(args) == 2
    err = _err(capsys)
    assert "--model" in err and model in err and ("image processor" in err) and ("vision part" in err) != vision
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra,expect", [
    (["--dtype", "f32", "--backend", "transformers"], "--dtype: 'f32' is not one of"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--max-attempts", "0"], "--max-attempts: must be >= 1"),
    (["--max-bad-fraction", "1.5"], "--max-bad-fraction: must be <= 1.0"),
    (["--retry-backoff-s", "nan"], "--retry-backoff-s: expected a finite number"),
    (["--passk-temperature", "nan"], "--passk-temperature: expected a finite number"),
    (["--passk-top-p", "1.01"], "--passk-top-p: must be <= 1.0"),
    (["--scorers", "pism", "--pism-ratios", "0,nan"], "--pism-ratios[1]: expected a finite number"),
    (["--scorers", "pism", "--pism-medium-max", "1.5"], "--pism-medium-max: must be <= 1.0"),
    (["--verifier", '{"name": "no_such_pkg_xyz.mod:V"}'], "--verifier: cannot import module 'no_such_pkg_xyz.mod'"),
    (["--reward", "r1v_acc", "--reward-kwargs", '{"no_such_setting": 1}'], "--reward-kwargs"),
])
def test_bad_settings_are_one_line_errors_before_any_work(data, tmp_path, capsys, extra, expect):
    args = _cli(data, tmp_path / "o", *extra)
    if "--reward" in extra:  # the reward verifier instead of the scripted one
        i = args.index("--verifier")
        del args[i : i + 2]
    assert cli.main(args) == 2
    err = _err(capsys)
    assert expect in err, err
    assert not (tmp_path / "o").exists()


def test_inputs_outputs_and_model_paths_are_named(data, tmp_path, capsys):
    fake = tmp_path / "in" / "notes.parquet"
    fake.parent.mkdir()
    fake.write_text("id,text\n1,hello\n")
    assert cli.main(_cli(str(fake), tmp_path / "o")) == 2
    assert f"input {fake} is not a readable parquet file" in _err(capsys)
    assert cli.main(_cli(str(tmp_path / "missing.parquet"), tmp_path / "o")) == 2
    assert "input not found" in _err(capsys)
    assert cli.main(_cli(os.path.dirname(data), os.path.dirname(data))) == 2
    assert "--output: " in _err(capsys)
    args = ["score", data, "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--no-progress"]
    assert cli.main(args) == 2
    assert f"--model: {tmp_path / 'nope'} is not a directory" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_duplicate_row_ids_are_refused_with_a_count_and_examples(tmp_path, capsys):
    rows = generate_rows(10, seed=0)
    rows[4]["extra_info"]["index"] = rows[1]["extra_info"]["index"]
    rows[7]["extra_info"]["index"] = rows[1]["extra_info"]["index"]
    rows[9]["extra_info"]["index"] = rows[2]["extra_info"]["index"]
    path = _write(rows, tmp_path / "dup.parquet")
    assert cli.main(_cli(path, tmp_path / "o")) == 2
    err = _err(capsys)
    assert "2 extra_info.index value(s) used by more than one row (3 duplicate row(s)" in err, err
    assert "dup.parquet row 1, dup.parquet row 4, dup.parquet row 7" in err
    with pytest.raises(PreflightError):
        _run(path, tmp_path / "o")


def test_a_corrupt_manifest_is_named_and_overwrite_recovers(data, tmp_path, capsys, reference, scored_bytes):
    out = tmp_path / "o"
    _run(data, out)
    (out / "manifest.json").write_text('{"fingerprint": "abc", "done": ')
    assert cli.main(_cli(data, out)) == 2
    err = _err(capsys)
    assert f"{out / 'manifest.json'} is corrupt" in err and "--overwrite" in err
    s = _run(data, out, overwrite=True)
    assert s["shards_resumed"] == 0 and scored_bytes(out / "scored.parquet") == reference


# ----------------------------------------------------------------------------------------------------------------
# OS errors: consistent committed work, a message with the path and what to do
# ----------------------------------------------------------------------------------------------------------------
def test_disk_full_mid_job_keeps_committed_work_consistent(data, tmp_path, monkeypatch, reference, scored_bytes):
    out = tmp_path / "o"
    real = dio.atomic_write

    def flaky(path, write):
        if path.endswith("part-00001.parquet"):
            def full(tmp):
                write(tmp)
                raise OSError(errno.ENOSPC, "No space left on device", tmp)
            return real(path, full)
        return real(path, write)

    monkeypatch.setattr(dio, "atomic_write", flaky)
    with pytest.raises(OSError, match="No space left"):
        _run(data, out)
    monkeypatch.undo()
    done = json.loads((out / "manifest.json").read_text())["done"]
    assert sorted(done) == ["0"] and not list((out / "shards").glob("*.tmp-*"))
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["part-00000.parquet"]
    s = _run(data, out)
    assert s["shards_resumed"] == 1 and scored_bytes(out / "scored.parquet") == reference


def test_cli_os_errors_are_one_line_with_the_path_and_what_to_do(data, tmp_path, capsys, monkeypatch):
    def full(job, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "shards" / "part-00002.parquet"))

    monkeypatch.setattr("verl_difficulty.scoring.engine.run_scoring", full)
    assert cli.main(_cli(data, tmp_path / "o")) == 1
    err = _err(capsys)
    assert "part-00002.parquet: No space left on device; free some space" in err


def test_an_unreadable_shards_dir_is_reported_by_path(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    _run(data, out, limit=4)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("shards") else real_access(p, m))
    assert cli.main(_cli(data, out, "--limit", "4")) == 2
    assert f"--output: {out / 'shards'} is not writable" in _err(capsys)


# ----------------------------------------------------------------------------------------------------------------
# Files others can read
# ----------------------------------------------------------------------------------------------------------------
def test_outputs_honour_the_umask(data, tmp_path):
    old = os.umask(0o022)
    try:
        _run(data, tmp_path / "o", limit=4)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "o").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"scored.parquet", "manifest.json", "summary.json", "part-00000.parquet"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o644"}
