"""The offline scoring engine: sharded, resumable, provenance-stamped scoring of verl parquet files on Ray.

Data flow. The input is cut into fixed shards (:mod:`.shards`). The driver reads one shard at a time, sends it to a
scoring worker (:mod:`.runner`: a Ray actor holding ONE model replica, one per GPU or one per ``cpus_per_worker``
CPUs, or the calling process with ``num_workers=0``), gets back only the score values, joins them with the input
rows and commits the shard (:mod:`.store`). Only the driver touches the output directory, so neither the input nor
the output needs a shared filesystem on a multi-node cluster (rows travel through Ray's object store).

Exact resume. Every value is a function of (seed, row id, scorer, ratio/arm, try) and the batch composition of a
shard is fixed (see :mod:`verl_difficulty.scoring.scorer`), so a job killed at any point and rerun gives the same rows
with the same values as an uninterrupted run, whatever the number of workers. A rerun with different settings (other
scorer parameters, seed, shard or batch size, model, inputs; :mod:`.job`) is refused unless ``overwrite``.

Output columns: every input column, plus each scorer's columns (names from :mod:`verl_difficulty.schema`), plus
:data:`~verl_difficulty.schema.SCORE_PROVENANCE` (JSON: per scorer its name, version, parameters, model path, backend,
verifier, seed, date); all of them are mirrored inside the ``extra_info`` struct (:mod:`verl_difficulty.data.io`).
Columns of the same name already in the input (a re-score) are replaced; provenance entries of other scorers are
kept. The provenance date is the job's creation date (kept across resumes). An ``extra_info`` that is not a struct
column (a map or a JSON string) is left as is: the scores are then in the flat columns only.

The engine knows no scorer by name: scorers come from the registry (:mod:`.registry`) and write their own summary
(:mod:`.summary`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

from verl_difficulty.data.io import atomic_write_bytes
from verl_difficulty.schema import BAD_ROW_REASON, PROMPT_ID
from verl_difficulty.scoring.backends import check_needs
from verl_difficulty.scoring.job import ScoreJob, describe_job, fingerprint, provenance
from verl_difficulty.scoring.registry import make_scorer
from verl_difficulty.scoring.runner import Progress, run_shards
from verl_difficulty.scoring.shards import Shard, discover_inputs, plan_shards
from verl_difficulty.scoring.store import OutputDir, assemble_shard, merge, sha256_file
from verl_difficulty.scoring.summary import build_summary, format_summary

__all__ = ["ScoreJob", "run_scoring"]


def _scorers(job: ScoreJob) -> tuple[dict, list, list]:
    """The job's scorer classes, instances (parameters parsed) and output fields (names must not collide)."""
    classes = job.scorer_classes()
    scorers = [make_scorer(n, p, classes) for n, p in job.scorers.items()]
    fields, owner = [], {}
    for s in scorers:
        for name, typ in s.fields():
            if name in owner:
                raise ValueError(f"scorers {owner[name]!r} and {s.name!r} both write the column {name!r}")
            owner[name] = s.name
            fields.append((name, typ))
    return classes, scorers, fields


def run_scoring(job: ScoreJob, backend: Any = None, verifier: Any = None,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Run (or resume) a scoring job and return its summary.

    ``backend`` / ``verifier`` objects replace the specs of ``job`` (in-process only: ``num_workers=0``).
    Raises ``RuntimeError`` if some shards still failed after ``max_attempts`` (their work is kept; rerun to retry).
    """
    t_start = time.time()
    if (backend is not None or verifier is not None) and job.num_workers not in (0,):
        raise ValueError("backend/verifier objects can only be injected with num_workers=0 (in-process)")
    classes, scorers, fields = _scorers(job)
    check_needs(backend if backend is not None else job.backend, scorers)
    files = discover_inputs(job.inputs)
    shards = plan_shards(files, job.shard_size, job.limit)
    if not shards:
        raise ValueError(f"no rows to score in {files}")
    config = job.worker_config()
    desc = describe_job(job, files, scorers, backend.describe() if backend is not None else None,
                        verifier.describe() if verifier is not None else None)
    out = OutputDir(job.output_dir)
    manifest = out.open(fingerprint(desc), desc, job.overwrite)
    prov = provenance(desc, manifest["created"])
    todo = [s for s in shards if not out.is_done(s)]
    total_rows = sum(s.rows for s in shards)
    resumed = len(shards) - len(todo)
    if resumed:
        log(f"resuming {out.path}: {resumed}/{len(shards)} shards already done")
    if todo and out.manifest.get("complete"):
        out.manifest["complete"] = False
        out.save()
    failed: dict[int, str] = {}
    workers = 0
    if todo:
        progress = Progress(job.progress, total_rows, total_rows - sum(s.rows for s in todo))
        try:
            commit = _committer(out, fields, prov, progress)
            workers = run_shards(job, config, classes, todo, commit, progress, failed, log, backend, verifier)
        finally:
            progress.close()
    if failed:
        raise RuntimeError(f"{len(failed)} shard(s) failed after {job.max_attempts} attempts (their rows are not "
                           f"in the output; rerun the same command to retry them): "
                           + "; ".join(f"shard {k}: {v}" for k, v in sorted(failed.items())[:5]))
    missing = [s.id for s in shards if not out.is_done(s)]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} are not done")
    already = (not todo and out.manifest.get("complete") and os.path.exists(out.merged)
               and os.path.getsize(out.merged) == out.manifest.get("merged_bytes"))
    if not already:  # a finished job rerun is a no-op
        merge(out, shards)
    summary = build_summary(out, shards, scorers, workers, resumed, time.time() - t_start,
                            sum(s.rows for s in todo))
    if not already:
        out.manifest["complete"] = True
        out.manifest["merged_sha256"] = sha256_file(out.merged)
        out.manifest["merged_bytes"] = os.path.getsize(out.merged)
        out.save()
    atomic_write_bytes(out.summary, json.dumps(summary, indent=1, sort_keys=True).encode())
    log(format_summary(summary, scorers))
    return summary


def _committer(out: OutputDir, fields: list, prov: dict, progress: Progress):
    def commit(shard: Shard, table: Any, result: dict) -> None:
        scored = assemble_shard(table, result, fields, prov)
        bad = [{"shard": shard.id, "file": shard.file, "row": shard.start + b["position"], PROMPT_ID: b[PROMPT_ID],
                BAD_ROW_REASON: b[BAD_ROW_REASON]} for b in result["bad"]]
        out.commit(shard, scored, bad, {"generations": result["generations"], "wall_s": result["wall_s"],
                                        "worker": result.get("worker", "")})
        progress.rows(shard.rows)
    return commit
