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

Faults (fail loudly, lose nothing). Before any work, :mod:`.preflight` checks the settings, the model directory, the
inputs (parquet, unique ``extra_info.index``) and the output directory; its errors are one line naming the option,
file or path, and nothing is written. A *row fault* (the input's fault, deterministic: undecodable image, missing
ground truth, placeholder mismatch, a request that fails alone while the others work) makes a bad row
(``bad_rows.jsonl``, with its ``kind``); a shard with more than ``max_bad_fraction`` bad rows stops the job
(:class:`ScoringFailed`, the reasons counted). An *execution fault* (backend exception, out of memory, NaN
probabilities, a model that cannot take the rows' images, a scorer crash: :class:`~verl_difficulty.data.rows.
ExecutionFault`) is retried (``max_attempts``, backoff ``retry_backoff_s``), per batch and per shard; if it persists,
the shard is not committed, no other shard is started and the job raises :class:`ScoringFailed` naming the shard
and the cause; a rerun retries it. Committed shards are verified by SHA-256 on resume and before the merge (a
damaged one is named in the log and redone); ``scored.parquet`` is reused only if its recorded SHA-256 matches.

Two backends. A generation backend that cannot run forward passes (vLLM) gets, per worker, a transformers forward
model of the same checkpoint for the scorers that need one (:meth:`~.job.ScoreJob.forward_spec`; built on first use,
so a job that only generates never loads it); its settings are part of the fingerprint and of each such scorer's
provenance (``generation_backend``, ``forward_backend``, ``forward_model``).

The engine knows no scorer by name: scorers come from the registry (:mod:`.registry`) and write their own summary
(:mod:`.summary`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

from collections import Counter

from verl_difficulty.data.io import atomic_write_bytes
from verl_difficulty.data.rows import reason_kind
from verl_difficulty.schema import BAD_ROW_REASON, PROMPT_ID
from verl_difficulty.scoring.backends import check_needs
from verl_difficulty.scoring.job import ScoreJob, describe_job, fingerprint, provenance
from verl_difficulty.scoring.preflight import PreflightError, check_inputs, preflight
from verl_difficulty.scoring.registry import make_scorer
from verl_difficulty.scoring.runner import Progress, run_shards
from verl_difficulty.scoring.shards import Shard, discover_inputs, plan_shards
from verl_difficulty.scoring.store import OutputDir, assemble_shard, merge, sha256_file
from verl_difficulty.scoring.summary import build_summary, format_summary

__all__ = ["ScoreJob", "ScoringFailed", "run_scoring"]


class ScoringFailed(RuntimeError):
    """The job stopped on a fault (a shard kept failing, or had too many bad rows): the message names the shard and
    the cause; finished shards are kept and a rerun of the same command retries the rest."""


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


def _plan(job: ScoreJob, backend: Any, verifier: Any, log: Callable[[str], None]) -> tuple:
    """Scorers, inputs and shards of a job, all checked before any work (:mod:`.preflight`)."""
    if (backend is not None or verifier is not None) and job.num_workers not in (0,):
        raise ValueError("backend/verifier objects can only be injected with num_workers=0 (in-process)")
    classes, scorers, fields = _scorers(job)
    check_needs(backend if backend is not None else job.backend, scorers,
                forward_model=job.model_path if job.forward_spec(backend) is not None else None)
    try:
        files = discover_inputs(job.inputs)
    except FileNotFoundError as e:
        raise PreflightError(f"INPUT: {e}") from e
    check_inputs(files)
    shards = plan_shards(files, job.shard_size, job.limit)
    if not shards:
        raise PreflightError(f"INPUT: no rows to score in {', '.join(files)}")
    preflight(job, scorers, files, shards, backend, verifier)
    return classes, scorers, fields, files, shards


def _where(shard: Shard) -> str:
    return f"shard {shard.id} (rows {shard.start}-{shard.stop - 1} of {shard.file})"


def run_scoring(job: ScoreJob, backend: Any = None, verifier: Any = None,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Run (or resume) a scoring job and return its summary.

    ``backend`` / ``verifier`` objects replace the specs of ``job`` (in-process only: ``num_workers=0``).
    Raises :class:`~.preflight.PreflightError` (a ``ValueError``) before any work for a job that cannot run, and
    :class:`ScoringFailed` (a ``RuntimeError``) if a shard still failed after ``max_attempts`` or had more bad rows
    than ``max_bad_fraction`` (finished shards are kept; rerun to retry).
    """
    t_start = time.time()
    classes, scorers, fields, files, shards = _plan(job, backend, verifier, log)
    config = job.worker_config(backend)
    desc = describe_job(job, files, scorers, backend.describe() if backend is not None else None,
                        verifier.describe() if verifier is not None else None, backend=backend)
    out = OutputDir(job.output_dir)
    manifest = out.open(fingerprint(desc), desc, job.overwrite, log)
    prov = provenance(desc, manifest["created"], scorers)
    todo = [s for s in shards if not _intact(out, s, log)]
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
            commit = _committer(out, fields, prov, progress, job.max_bad_fraction)
            workers = run_shards(job, config, classes, todo, commit, progress, failed, log, backend, verifier)
        finally:
            progress.close()
    by_id = {s.id: s for s in shards}
    if failed:
        done = sum(1 for s in shards if str(s.id) in out.manifest.get("done", {}))
        raise ScoringFailed(
            "; ".join(f"{_where(by_id[k])} failed after {job.max_attempts} attempt(s): {v}"
                      for k, v in sorted(failed.items())[:3])
            + f" -- {done}/{len(shards)} shards are done and kept; fix the cause and rerun the same command to "
            "retry the rest (--max-attempts, --retry-backoff-s set the retries)")
    broken = [s for s in shards if not _intact(out, s, log)]  # verified again before the merge
    if broken:
        raise ScoringFailed(f"{len(broken)} shard(s) are not done or were damaged meanwhile (first: "
                            f"{_where(broken[0])}); rerun the same command to redo them")
    why = out.merged_ok() if not todo else "shards were scored in this run"
    if why is not None and not todo and out.manifest.get("complete"):
        log(f"{why}; merging the shards again")
    if why is not None:  # a finished job with an intact scored.parquet reruns as a no-op
        merge(out, shards)
    summary = build_summary(out, shards, scorers, workers, resumed, time.time() - t_start,
                            sum(s.rows for s in todo))
    if why is not None:
        out.manifest["complete"] = True
        out.manifest["merged_sha256"] = sha256_file(out.merged)
        out.manifest["merged_bytes"] = os.path.getsize(out.merged)
        out.save()
    atomic_write_bytes(out.summary, json.dumps(summary, indent=1, sort_keys=True).encode())
    log(format_summary(summary, scorers))
    return summary


def _intact(out: OutputDir, shard: Shard, log: Callable[[str], None]) -> bool:
    """Whether a shard is committed with intact files; a damaged one is named in the log and forgotten (redone)."""
    why = out.check_done(shard)
    if why is None:
        return True
    if why != "not done":
        log(f"{_where(shard)}: {why}; it will be redone")
        out.forget(shard)
    return False


def _too_many_bad(shard: Shard, bad: list, limit: float) -> str:
    kinds = Counter(b["kind"] for b in bad)
    examples: dict = {}
    for b in bad:
        examples.setdefault(b["kind"], []).append(str(b["row"]))
    counted = ", ".join(f"{k}: {n} (rows {', '.join(examples[k][:3])}{', ...' if n > 3 else ''})"
                        for k, n in kinds.most_common())
    return (f"{_where(shard)}: {len(bad)} of {shard.rows} rows are bad rows ({len(bad) / shard.rows:.0%} > "
            f"--max-bad-fraction {limit:g}): {counted}. Fix the input, or rerun with a higher --max-bad-fraction to "
            "skip such rows (they are then listed in bad_rows.jsonl)")


def _committer(out: OutputDir, fields: list, prov: dict, progress: Progress, max_bad_fraction: float = 1.0):
    def commit(shard: Shard, table: Any, result: dict) -> None:
        bad = [{"shard": shard.id, "file": shard.file, "row": shard.start + b["position"], PROMPT_ID: b[PROMPT_ID],
                BAD_ROW_REASON: b[BAD_ROW_REASON], "kind": reason_kind(b[BAD_ROW_REASON])} for b in result["bad"]]
        if bad and len(bad) > max_bad_fraction * shard.rows:
            raise ScoringFailed(_too_many_bad(shard, bad, max_bad_fraction))
        scored = assemble_shard(table, result, fields, prov)
        out.commit(shard, scored, bad, {"generations": result["generations"], "wall_s": result["wall_s"],
                                        "worker": result.get("worker", "")})
        progress.rows(shard.rows)
    return commit
