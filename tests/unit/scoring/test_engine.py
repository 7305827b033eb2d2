"""The scoring engine: bad rows, output columns and provenance, exact resume (in-process crash and a SIGKILLed CLI),
refusal to mix jobs, and Ray runs with 1 and 2 workers equal to the in-process run (tiny Qwen2.5-VL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_difficulty.data.synthetic import generate_rows, parquet_schema
from verl_difficulty.schema import (
    BAD_ROW_REASON,
    EXTRA_INFO,
    NUM_CORRECT,
    PASS_RATE,
    PISM_BUCKET,
    PISM_LAMBDA,
    PISM_PASS,
    PROMPT_ID,
    SCORE_PROVENANCE,
)
from verl_difficulty.scoring import ScoreJob, run_scoring
from verl_difficulty.scoring.scripted import ScriptedBackend, ScriptedVerifier
from verl_difficulty.scoring.store import OutputDir

SCORERS = {"passk": {"k": 3, "max_tokens": 4}, "pism": {"max_tokens": 4}, "cde": {"m": 2, "max_tokens": 4}}
HASH_VERIFIER = {"name": "scripted", "mode": "hash", "rate": 0.15}


def _write(rows, path):
    pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()), path)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return _write(generate_rows(30, seed=0), d / "train.parquet")


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    rows = generate_rows(16, seed=0)
    rows[3]["images"] = [{"bytes": b"\x89PNG not really", "path": None}]
    rows[5]["reward_model"]["ground_truth"] = " "
    rows[7]["prompt"][-1]["content"] = "<image><image>" + rows[7]["prompt"][-1]["content"].replace("<image>", "")
    rows[9]["extra_info"]["index"] = None
    rows[11]["images"] = []  # a text-only row: fine for passk, not for pism/cde
    rows[11]["prompt"][-1]["content"] = rows[11]["prompt"][-1]["content"].replace("<image>", "")
    return _write(rows, tmp_path_factory.mktemp("bad") / "bad.parquet")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from verl_difficulty.models.tiny import build_tiny_model_dir

    return build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))


def _job(data, out, **kw):
    base = dict(inputs=[data], output_dir=str(out), model_path="scripted", scorers=SCORERS, num_workers=0,
                shard_size=4, progress=False)
    base.update(kw)
    return ScoreJob(**base)


def _run_scripted(data, out, **kw):
    backend = kw.pop("backend", None) or ScriptedBackend()
    return run_scoring(_job(data, out, **kw), backend=backend, verifier=ScriptedVerifier(), log=lambda s: None)


# ----------------------------------------------------------------------------------------------------------------
# Bad rows, columns, provenance
# ----------------------------------------------------------------------------------------------------------------
def test_bad_rows_are_skipped_counted_and_never_stop_the_job(bad_data, tmp_path):
    rows_in = pq.read_table(bad_data).to_pylist()
    fail_id = rows_in[13]["extra_info"]["index"]
    s = _run_scripted(bad_data, tmp_path / "o", backend=ScriptedBackend(fail_rows=[fail_id]))
    out = pq.read_table(tmp_path / "o" / "scored.parquet").to_pylist()
    bad = [json.loads(line) for line in open(tmp_path / "o" / "bad_rows.jsonl")]
    by_row = {b["row"]: b[BAD_ROW_REASON] for b in bad}
    assert sorted(by_row) == [3, 5, 7, 9, 11, 13]
    assert "undecodable image" in by_row[3]
    assert "ground_truth" in by_row[5]
    assert "placeholder count mismatch" in by_row[7]
    assert "extra_info.index" in by_row[9]
    assert "pism: the row has no image" in by_row[11]
    assert "generation failed" in by_row[13] and "scripted failure" in by_row[13]
    assert all(b["shard"] == b["row"] // 4 for b in bad)
    assert [b[PROMPT_ID] for b in bad if b["row"] == 13] == [fail_id]
    kept = [i for i in range(16) if i not in by_row]
    assert [r["extra_info"]["index"] for r in out] == [rows_in[i]["extra_info"]["index"] for i in kept]
    assert s["rows_in"] == 16 and s["rows_scored"] == 10 and s["rows_bad"] == 6
    assert sum(s["bad_reasons"].values()) == 6


def test_columns_are_mirrored_in_extra_info_with_provenance(data, tmp_path):
    _run_scripted(data, tmp_path / "o", seed=3)
    table = pq.read_table(tmp_path / "o" / "scored.parquet")
    manifest = json.load(open(tmp_path / "o" / "manifest.json"))
    for row in table.to_pylist():
        for name in (PASS_RATE, NUM_CORRECT, PISM_LAMBDA, PISM_BUCKET, SCORE_PROVENANCE):
            assert row[EXTRA_INFO][name] == row[name]
        assert str(row[EXTRA_INFO][PISM_PASS]) == str(row[PISM_PASS])
        assert row[EXTRA_INFO]["question"]  # the input's extra_info fields are kept
        prov = json.loads(row[SCORE_PROVENANCE])
        assert set(prov) == {"passk", "pism", "cde"}
        p = prov["pism"]
        assert p["scorer"] == "pism" and p["version"] == "1" and p["seed"] == 3
        assert p["params"]["k"] == 10 and p["params"]["mode"] == "rect" and p["params"]["max_tokens"] == 4
        assert p["model_path"] == "scripted" and p["date"] == manifest["created"]
        assert p["verifier"]["verifier"] == "scripted"
    assert b"verl_difficulty.provenance" in table.schema.metadata
    # the output feeds the plugin's readers: flat column first, then extra_info
    from verl_difficulty.schema import row_score

    r = table.slice(0, 1).to_pylist()[0]
    assert row_score(r, PISM_BUCKET) == r[PISM_BUCKET]


def test_rescoring_replaces_columns_and_merges_provenance(data, tmp_path):
    _run_scripted(data, tmp_path / "a", scorers={"pism": {"max_tokens": 2}}, limit=8)
    first = tmp_path / "a" / "scored.parquet"
    _run_scripted(str(first), tmp_path / "b", scorers={"passk": {"k": 2, "max_tokens": 2}})
    _run_scripted(str(tmp_path / "b" / "scored.parquet"), tmp_path / "c", scorers={"passk": {"k": 5, "max_tokens": 2}})
    t = pq.read_table(tmp_path / "c" / "scored.parquet")
    assert t.column_names.count("pass_k") == 1 and set(t.column("pass_k").to_pylist()) == {5}
    assert t.column(PISM_BUCKET).to_pylist() == pq.read_table(first).column(PISM_BUCKET).to_pylist()
    prov = json.loads(t.column(SCORE_PROVENANCE)[0].as_py())
    assert set(prov) == {"pism", "passk"} and prov["passk"]["params"]["k"] == 5


def test_same_values_for_any_shard_size(data, tmp_path, scored_bytes):
    _run_scripted(data, tmp_path / "a", shard_size=3)
    _run_scripted(data, tmp_path / "b", shard_size=7, batch_size=5)
    assert scored_bytes(tmp_path / "a" / "scored.parquet") == scored_bytes(tmp_path / "b" / "scored.parquet")


# ----------------------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crash_at", ["after_parquet", "after_manifest"])
def test_resume_after_a_crash_is_exact(data, tmp_path, monkeypatch, crash_at, scored_bytes):
    _run_scripted(data, tmp_path / "ref")
    calls = {"n": 0}
    real_save, real_commit = OutputDir.save, OutputDir.commit

    def save(self):
        calls["n"] += 1
        if crash_at == "after_parquet" and calls["n"] == 4:  # 1 = new manifest, 2-3 = two shards, 4 = crash
            raise KeyboardInterrupt("simulated crash between the shard file and its manifest entry")
        real_save(self)

    def commit(self, *a, **k):
        real_commit(self, *a, **k)
        if crash_at == "after_manifest" and len(self.manifest["done"]) == 3:
            raise KeyboardInterrupt("simulated crash after a commit")

    monkeypatch.setattr(OutputDir, "save", save)
    monkeypatch.setattr(OutputDir, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        _run_scripted(data, tmp_path / "o")
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "o" / "scored.parquet")
    (tmp_path / "o" / "shards" / "part-00005.parquet.tmp-leftover").write_bytes(b"junk")
    s = _run_scripted(data, tmp_path / "o")
    assert s["shards_resumed"] == (2 if crash_at == "after_parquet" else 3)
    assert s["rows_this_run"] == 30 - 4 * s["shards_resumed"]
    assert not list((tmp_path / "o" / "shards").glob("*.tmp-*"))
    assert scored_bytes(tmp_path / "o" / "scored.parquet") == scored_bytes(tmp_path / "ref" / "scored.parquet")
    s2 = _run_scripted(data, tmp_path / "o")  # a finished job reruns as a no-op
    assert s2["shards_resumed"] == s2["shards"] and s2["generations"] == s["generations"]


def test_other_settings_are_refused_unless_overwrite(data, tmp_path):
    _run_scripted(data, tmp_path / "o", limit=8)
    with pytest.raises(FileExistsError, match="seed"):
        _run_scripted(data, tmp_path / "o", limit=8, seed=1)
    s = _run_scripted(data, tmp_path / "o", limit=8, seed=1, overwrite=True)
    assert s["shards_resumed"] == 0


# ----------------------------------------------------------------------------------------------------------------
# Ray: 1 and 2 workers == in-process (the tiny Qwen2.5-VL, text-sensitive hash verifier)
# ----------------------------------------------------------------------------------------------------------------
def _tiny_job(data, tiny, out, **kw):
    return ScoreJob(inputs=[data], output_dir=str(out), model_path=tiny, scorers=SCORERS,
                    backend_kwargs={"device": "cpu"}, verifier=dict(HASH_VERIFIER), shard_size=4, limit=16,
                    progress=False, **kw)


def test_ray_two_workers_equal_one_worker_and_in_process(data, tiny, tmp_path, scored_bytes):
    import ray

    t0 = time.time()
    run_scoring(_tiny_job(data, tiny, tmp_path / "inline", num_workers=0), log=lambda s: None)
    t_inline = time.time() - t0
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        t0 = time.time()
        s1 = run_scoring(_tiny_job(data, tiny, tmp_path / "w1", num_workers=1), log=lambda s: None)
        t1 = time.time() - t0
        t0 = time.time()
        s2 = run_scoring(_tiny_job(data, tiny, tmp_path / "w2", num_workers=2), log=lambda s: None)
        t2 = time.time() - t0
    finally:
        ray.shutdown()
    print(f"inline {t_inline:.1f}s, 1 worker {t1:.1f}s, 2 workers {t2:.1f}s")
    assert s1["workers"] == 1 and s2["workers"] == 2
    ref = scored_bytes(tmp_path / "inline" / "scored.parquet")
    assert scored_bytes(tmp_path / "w1" / "scored.parquet") == ref
    assert scored_bytes(tmp_path / "w2" / "scored.parquet") == ref
    workers = {e["worker"] for e in json.load(open(tmp_path / "w2" / "manifest.json"))["done"].values()}
    assert len(workers) == 2  # both workers did shards
    t = pq.read_table(tmp_path / "w2" / "scored.parquet")
    assert len(set(t.column(PASS_RATE).to_pylist())) > 1  # text-sensitive values, not all zeros
    assert len(set(t.column(PISM_BUCKET).to_pylist())) > 1


# ----------------------------------------------------------------------------------------------------------------
# The CLI, SIGKILLed after its first shard, then rerun
# ----------------------------------------------------------------------------------------------------------------
def _cli(data, tiny, out):
    return [sys.executable, "-m", "verl_difficulty.cli", "score", data, "--model", tiny, "-o", str(out),
            "--scorers", "passk,pism,cde", "--passk-k", "3", "--passk-max-tokens", "4", "--pism-max-tokens", "4",
            "--cde-m", "2", "--cde-max-tokens", "4", "--shard-size", "2", "--limit", "24", "--device", "cpu",
            "--num-workers", "1", "--verifier", json.dumps(HASH_VERIFIER), "--no-progress"]


def test_cli_killed_after_first_shard_resumes_exactly(data, tiny, tmp_path, scored_bytes):
    out = tmp_path / "killed"
    manifest = out / "manifest.json"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_cli(data, tiny, out), start_new_session=True, stdout=log, stderr=log)
    t0 = time.time()
    done = 0
    try:
        while time.time() - t0 < 300 and proc.poll() is None:
            try:
                done = len(json.loads(manifest.read_text())["done"])
            except (OSError, ValueError, KeyError):
                done = 0
            if done:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its local Ray cluster and its worker
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, open(tmp_path / "first.log").read()[-3000:]
    done = len(json.loads(manifest.read_text())["done"])
    assert 0 < done < 12, done
    assert not (out / "scored.parquet").exists()
    res = subprocess.run(_cli(data, tiny, out), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{done} resumed" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards_resumed"] == done and summary["rows_scored"] == 24
    # reference: an uninterrupted in-process run with the same settings
    ref = ScoreJob(inputs=[data], output_dir=str(tmp_path / "ref"), model_path=tiny,
                   scorers={"passk": {"k": 3, "max_tokens": 4}, "pism": {"max_tokens": 4},
                            "cde": {"m": 2, "max_tokens": 4}},
                   backend_kwargs={"device": "cpu", "dtype": "auto"}, verifier=dict(HASH_VERIFIER), shard_size=2,
                   limit=24, num_workers=0, progress=False)
    run_scoring(ref, log=lambda s: None)
    assert scored_bytes(out / "scored.parquet") == scored_bytes(tmp_path / "ref" / "scored.parquet")
    fp = json.loads(manifest.read_text())["fingerprint"]
    assert fp == json.loads((tmp_path / "ref" / "manifest.json").read_text())["fingerprint"]
