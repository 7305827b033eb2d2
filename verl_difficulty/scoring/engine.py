"""The offline scoring engine: sharded, resumable, provenance-stamped scoring of verl parquet files on Ray.

Data flow. The input (one parquet, several, or a directory of ``*.parquet`` shards, read in sorted order) is cut into
fixed shards of ``shard_size`` consecutive rows (a shard never spans two files). The driver reads one shard at a time,
sends it to a scoring worker (a Ray actor holding ONE model replica: one per GPU, or one per ``cpus_per_worker`` CPUs),
gets back only the score values, joins them with the input rows and writes the shard. Only the driver touches the
output directory, so neither the input nor the output needs a shared filesystem on a multi-node cluster (rows travel
through Ray's object store).

Why Ray actors and not Ray Data: each worker must load the model once and keep it (actors do that); the unit of work
must be an exactly reproducible, atomically committed shard with a fixed batch composition (Ray Data re-blocks rows
by its own rules and writes files without a commit protocol, so a killed job could not be resumed exactly); failures
of one shard must be retried without touching the others. A plain actor pool with a driver-side commit loop gives all
three with little code, and works unchanged in-process (``num_workers=0``, no Ray), on a local ``ray.init()`` and on an
existing cluster (``ray_address`` or ``ray job submit``, which sets ``RAY_ADDRESS``).

Output layout (``output_dir``)::

    manifest.json          job fingerprint, settings, provenance, and one entry per committed shard
    shards/part-00000.parquet ...   scored rows of each shard (bad rows left out), in input order
    shards/part-00000.bad.jsonl ... bad rows of each shard (only when it has some)
    scored.parquet         all shards concatenated in input order (written when every shard is done)
    bad_rows.jsonl         all bad rows: shard, file, row, extra_info.index, bad_row_reason
    summary.json           counts, bad-row reasons, generations, per-scorer statistics, wall time

``shards/`` is itself a valid parquet dataset of the same rows; ``scored.parquet`` is the file to hand to verl.

Commit protocol (exact resume). Every file is written to a temporary name in the same directory and renamed into place
(``os.replace``, atomic on POSIX); a shard is committed by rewriting ``manifest.json`` the same way after its parquet
and bad-row files exist. A rerun with the same settings skips committed shards (their files checked by size), redoes
everything else, and removes stray temporary files. Since every value is a function of (seed, row id, scorer,
ratio/arm, try) and the batch composition of a shard is fixed (see :mod:`verl_difficulty.scoring.base`), a job killed
at any point and rerun gives the same rows with the same values as an uninterrupted run, whatever the number of
workers. A rerun with different settings (other scorer parameters, seed, shard or batch size, model, inputs) is
refused unless ``overwrite``.

Output columns: every input column, plus each scorer's columns (names from :mod:`verl_difficulty.schema`), plus
:data:`~verl_difficulty.schema.SCORE_PROVENANCE` (JSON: per scorer its name, version, parameters, model path, backend,
verifier, seed, date); all of them are mirrored inside the ``extra_info`` struct (verl forwards ``extra_info`` to the
reward loop and drops unknown top-level columns). Columns of the same name already in the input (a re-score) are
replaced; provenance entries of other scorers are kept. The provenance date is the job's creation date (kept across
resumes). An ``extra_info`` that is not a struct column (a map or a JSON string) is left as is: the scores are then in
the flat columns only.

Threads: every worker (and the in-process mode) sets torch to ``cpus_per_worker`` threads, so all workers compute
with the same thread count (CPU float reductions can depend on it). In-process mode changes the calling process's
torch thread count.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from verl_difficulty.schema import (
    BAD_ROW_REASON,
    CDE_ACC_IMG,
    CDE_ACC_TXT,
    CDE_D,
    EXTRA_INFO,
    PASS_RATE,
    PISM_BUCKET,
    PISM_LAMBDA,
    PROMPT_ID,
    SCORE_PROVENANCE,
)

logger = logging.getLogger(__name__)

FORMAT = "verl-difficulty-scores/1"
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
MERGED = "scored.parquet"
BAD_ROWS = "bad_rows.jsonl"
SUMMARY = "summary.json"
PROVENANCE_META_KEY = b"verl_difficulty.provenance"
TMP_MARK = ".tmp-"

DEFAULT_BATCH_SIZE = {"transformers": 16, "vllm": 100_000}
"""Requests per generate call: transformers pads a batch; vLLM schedules a whole shard round itself."""
_RUNTIME_ONLY_BACKEND_KEYS = {"num_threads", "gpu_memory_utilization"}
"""Backend settings that do not change the values (left out of the fingerprint, so a resume may change them)."""


# ====================================================================================================================
# Job settings
# ====================================================================================================================
@dataclass
class ScoreJob:
    """Everything a scoring job needs. See ``verl-difficulty score --help`` for the user-facing meaning."""

    inputs: list
    output_dir: str
    model_path: str
    scorers: dict
    """Scorer name -> parameters (run in this order)."""
    backend: str = "transformers"
    backend_kwargs: dict = field(default_factory=dict)
    verifier: dict = field(default_factory=lambda: {"name": "reward", "reward": "r1v_acc"})
    seed: int = 0
    shard_size: int = 128
    batch_size: Optional[int] = None
    """None: ``DEFAULT_BATCH_SIZE`` of the backend."""
    system_prompt: str = "keep"
    limit: Optional[int] = None
    """Score only the first ``limit`` rows (in input order)."""
    num_workers: Optional[int] = None
    """None: one per GPU of the cluster (``gpus_per_worker`` each), else 1. 0: in this process, without Ray."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: Optional[float] = None
    """None: 1 when the cluster has GPUs and the backend device is not ``cpu``, else 0."""
    ray_address: Optional[str] = None
    max_attempts: int = 3
    """Tries per shard when a worker dies or raises (then the shard is reported failed; a rerun retries it)."""
    progress: bool = True
    overwrite: bool = False

    def resolved_batch_size(self) -> int:
        return int(self.batch_size or DEFAULT_BATCH_SIZE.get(self.backend, 16))

    def backend_spec(self) -> dict:
        return {"name": self.backend, "model_path": self.model_path, **self.backend_kwargs}

    def worker_config(self) -> dict:
        """What each worker needs (JSON-able)."""
        return {"backend": self.backend_spec(), "verifier": dict(self.verifier),
                "scorers": [[n, dict(p or {})] for n, p in self.scorers.items()], "seed": int(self.seed),
                "batch_size": self.resolved_batch_size(), "system_prompt": self.system_prompt}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ====================================================================================================================
# Inputs and shards
# ====================================================================================================================
def discover_inputs(inputs: list) -> list[str]:
    """Input parquet files: files as given, directories expanded to their ``*.parquet`` files (sorted)."""
    files: list[str] = []
    for item in inputs:
        item = os.path.abspath(os.fspath(item))
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.parquet")))
            if not found:
                raise FileNotFoundError(f"no *.parquet files in {item}")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return files


def input_identity(path: str) -> dict:
    """Cheap content identity of an input file: size, rows and a hash of its parquet footer (tail 64 KiB)."""
    import pyarrow.parquet as pq

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = hashlib.sha256(f.read()).hexdigest()
    return {"path": path, "bytes": size, "rows": pq.ParquetFile(path).metadata.num_rows, "tail_sha256": tail}


@dataclass(frozen=True)
class Shard:
    id: int
    file: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def stem(self) -> str:
        return f"part-{self.id:05d}"


def plan_shards(files: list[str], shard_size: int, limit: Optional[int] = None) -> list[Shard]:
    """Consecutive row ranges of ``shard_size`` per file (the last one of a file may be shorter)."""
    import pyarrow.parquet as pq

    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    shards: list[Shard] = []
    remaining = math.inf if limit is None else int(limit)
    for path in files:
        n = pq.ParquetFile(path).metadata.num_rows
        n = int(min(n, remaining))
        for start in range(0, n, shard_size):
            shards.append(Shard(len(shards), path, start, min(n, start + shard_size)))
        remaining -= n
        if remaining <= 0:
            break
    return shards


class ShardReader:
    """Reads a shard's rows; keeps the last row groups read (shards are read in order)."""

    def __init__(self):
        self._files: dict[str, Any] = {}
        self._cache: tuple = (None, None, None)  # (file, first row of the cached groups, table)

    def read(self, shard: Shard):
        import pyarrow.parquet as pq

        pf = self._files.get(shard.file)
        if pf is None:
            pf = self._files[shard.file] = pq.ParquetFile(shard.file)
        meta = pf.metadata
        groups, offset, first = [], 0, None
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if offset < shard.stop and offset + n > shard.start:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        key = (shard.file, tuple(groups))
        if self._cache[0] != key:
            self._cache = (key, first, pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table())
        _, base, table = self._cache
        return table.slice(shard.start - (base or 0), shard.rows)


# ====================================================================================================================
# The worker (one model replica)
# ====================================================================================================================
class ScoringWorker:
    """Scores shards with one model replica. Used directly (``num_workers=0``) or as a Ray actor.

    ``backend`` / ``verifier`` objects may be injected (in-process use and tests); otherwise they are built from the
    specs in ``config`` (:meth:`ScoreJob.worker_config`).
    """

    def __init__(self, config: dict, backend: Any = None, verifier: Any = None, num_threads: Optional[int] = None):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from verl_difficulty.scoring import make_scorer
        from verl_difficulty.scoring.backends import make_backend
        from verl_difficulty.scoring.verifier import make_verifier

        self.config = config
        spec = dict(config["backend"])
        if num_threads and spec.get("name") == "transformers":
            spec.setdefault("num_threads", int(num_threads))
        self.backend = backend if backend is not None else make_backend(spec)
        self.verifier = verifier if verifier is not None else make_verifier(config["verifier"])
        self.scorers = [make_scorer(n, p) for n, p in config["scorers"]]
        self._generations = 0
        self.on_progress: Optional[Callable[[int], None]] = None
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> dict:
        return {"worker": self.where, "backend": self.backend.describe()}

    def progress(self) -> int:
        """Generations done by this worker so far (polled by the driver for the progress bar)."""
        return self._generations

    def _count(self, n: int) -> None:
        self._generations += n
        if self.on_progress is not None:
            self.on_progress(self._generations)

    def score_shard(self, shard_id: int, table: Any) -> dict:
        """Score the rows of one shard. Never raises for a bad row: it is reported in ``bad``."""
        from verl_difficulty.scoring.base import RowFailure, ScoringContext
        from verl_difficulty.scoring.rows import prepare_row, row_problem

        t0 = time.time()
        rows = table.to_pylist() if hasattr(table, "to_pylist") else list(table)
        scores: list = [None] * len(rows)
        bad: list[dict] = []
        prepared = []
        for pos, row in enumerate(rows):
            reason = row_problem(row)
            if reason is None:
                try:
                    prepared.append(prepare_row(row, pos, self.config.get("system_prompt", "keep")))
                    continue
                except RowFailure as e:
                    reason = str(e)
            bad.append({"position": pos, PROMPT_ID: _row_index(row), BAD_ROW_REASON: reason})
        ctx = ScoringContext(self.backend, self.verifier, seed=self.config["seed"],
                             batch_size=self.config["batch_size"], on_generations=self._count)
        generations: dict[str, int] = {}
        values: dict[int, dict] = {r.position: {} for r in prepared}
        for scorer in self.scorers:
            before = ctx.generations
            try:
                results = scorer.score(prepared, ctx)
            except Exception as e:  # noqa: BLE001 - a scorer bug must not lose the other rows' work silently
                logger.exception("scorer %s failed on shard %s", scorer.name, shard_id)
                results = [RowFailure(f"{scorer.name} crashed: {type(e).__name__}: {e}")] * len(prepared)
            generations[scorer.name] = ctx.generations - before
            keep = []
            for row, res in zip(prepared, results):
                if isinstance(res, Exception) or res is None:
                    reason = str(res) if res is not None else f"{scorer.name}: no result"
                    bad.append({"position": row.position, PROMPT_ID: row.row_id, BAD_ROW_REASON: reason})
                    values.pop(row.position, None)
                else:
                    values[row.position].update(res)
                    keep.append(row)
            prepared = keep
        for pos, v in values.items():
            scores[pos] = v
        bad.sort(key=lambda b: b["position"])
        return {"shard": int(shard_id), "scores": scores, "bad": bad, "generations": generations,
                "wall_s": round(time.time() - t0, 3), "worker": self.where}


def _row_index(row: Any) -> Optional[int]:
    try:
        v = (row.get(EXTRA_INFO) or {}).get(PROMPT_ID)
        return int(v) if v is not None else None
    except Exception:  # noqa: BLE001
        return None


# ====================================================================================================================
# Output assembly and atomic files
# ====================================================================================================================
def _atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + TMP_MARK, dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_parquet(path: str, table: Any) -> None:
    import pyarrow.parquet as pq

    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + TMP_MARK, dir=d)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="snappy")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _merge_provenance(existing: Optional[str], new: dict) -> str:
    merged: dict = {}
    if existing:
        try:
            old = json.loads(existing)
            if isinstance(old, dict):
                merged.update(old)
        except ValueError:
            merged["previous"] = existing
    merged.update(new)
    return _canonical(merged)


def assemble_shard(table: Any, result: dict, fields: list, provenance: dict) -> Any:
    """Input rows of a shard minus its bad rows, plus score columns, provenance, and their ``extra_info`` mirror."""
    import pyarrow as pa
    import pyarrow.compute as pc

    scores = result["scores"]
    keep = [s is not None for s in scores]
    kept = [s for s in scores if s is not None]
    t = table.filter(pa.array(keep, type=pa.bool_())) if not all(keep) else table
    cols: dict[str, Any] = {name: pa.array([s.get(name) for s in kept], type=typ) for name, typ in fields}
    if SCORE_PROVENANCE in t.column_names:
        prev = t.column(SCORE_PROVENANCE).to_pylist()
    else:
        prev = [None] * t.num_rows
    cache: dict = {}
    prov = []
    for p in prev:
        if p not in cache:
            cache[p] = _merge_provenance(p, provenance)
        prov.append(cache[p])
    cols[SCORE_PROVENANCE] = pa.array(prov, type=pa.string())
    for name, arr in cols.items():
        if name in t.column_names:
            t = t.set_column(t.column_names.index(name), pa.field(name, arr.type), arr)
        else:
            t = t.append_column(pa.field(name, arr.type), arr)
    if EXTRA_INFO in t.column_names and pa.types.is_struct(t.schema.field(EXTRA_INFO).type):
        ei = t.column(EXTRA_INFO).combine_chunks()
        if isinstance(ei, pa.ChunkedArray):  # zero chunks
            ei = pa.array([], type=t.schema.field(EXTRA_INFO).type)
        struct_type = ei.type
        children = ei.flatten()
        names = [struct_type.field(i).name for i in range(struct_type.num_fields)]
        arrays, out_fields = [], []
        for i, name in enumerate(names):
            if name not in cols:
                arrays.append(children[i])
                out_fields.append(struct_type.field(i))
        for name, arr in cols.items():
            arrays.append(arr)
            out_fields.append(pa.field(name, arr.type))
        mask = pc.is_null(ei) if ei.null_count else None
        new_ei = pa.StructArray.from_arrays(arrays, fields=out_fields, mask=mask)
        t = t.set_column(t.column_names.index(EXTRA_INFO), pa.field(EXTRA_INFO, new_ei.type), new_ei)
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)
    meta[PROVENANCE_META_KEY] = _canonical(provenance).encode()
    return t.replace_schema_metadata(meta)


# ====================================================================================================================
# Manifest
# ====================================================================================================================
class OutputDir:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.shards = os.path.join(self.path, SHARDS_DIR)
        self.manifest_path = os.path.join(self.path, MANIFEST)
        self.merged = os.path.join(self.path, MERGED)
        self.bad_rows = os.path.join(self.path, BAD_ROWS)
        self.summary = os.path.join(self.path, SUMMARY)
        self.manifest: dict = {}

    def shard_file(self, shard: Shard) -> str:
        return os.path.join(self.shards, shard.stem + ".parquet")

    def bad_file(self, shard: Shard) -> str:
        return os.path.join(self.shards, shard.stem + ".bad.jsonl")

    def clean_temporaries(self) -> int:
        n = 0
        for d in (self.path, self.shards):
            for p in glob.glob(os.path.join(d, "*" + TMP_MARK + "*")):
                try:
                    os.unlink(p)
                    n += 1
                except OSError:
                    pass
        return n

    def open(self, fingerprint: str, job_desc: dict, overwrite: bool) -> dict:
        """Load the manifest of the same job, or start a new one (refusing to mix two jobs in one directory)."""
        os.makedirs(self.shards, exist_ok=True)
        if os.path.exists(self.manifest_path):
            with open(self.manifest_path) as f:
                old = json.load(f)
            if old.get("fingerprint") == fingerprint and not overwrite:
                self.manifest = old
                self.clean_temporaries()
                return self.manifest
            if not overwrite:
                diff = sorted(k for k in set(old.get("job", {})) | set(job_desc)
                              if old.get("job", {}).get(k) != job_desc.get(k))
                raise FileExistsError(
                    f"{self.path} holds the output of another scoring job (settings differ in: {', '.join(diff)}). "
                    "Rerun with the same settings to resume it, pass --overwrite to start over, or use another "
                    "--output directory."
                )
            for p in glob.glob(os.path.join(self.shards, "*")):
                os.unlink(p)
            for p in (self.merged, self.bad_rows, self.summary, self.manifest_path):
                if os.path.exists(p):
                    os.unlink(p)
        self.clean_temporaries()
        self.manifest = {"format": FORMAT, "fingerprint": fingerprint, "job": job_desc,
                         "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "done": {},
                         "complete": False}
        self.save()
        return self.manifest

    def save(self) -> None:
        _atomic_write_bytes(self.manifest_path, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def is_done(self, shard: Shard) -> bool:
        entry = self.manifest.get("done", {}).get(str(shard.id))
        if not entry:
            return False
        path = self.shard_file(shard)
        if not os.path.exists(path) or os.path.getsize(path) != entry.get("bytes"):
            return False
        if entry.get("bad") and not os.path.exists(self.bad_file(shard)):
            return False
        return True

    def commit(self, shard: Shard, table: Any, bad: list, info: dict) -> None:
        """Write a shard's files atomically, then record it in the manifest (the commit point)."""
        if bad:
            data = "".join(json.dumps(b, sort_keys=True) + "\n" for b in bad).encode()
            _atomic_write_bytes(self.bad_file(shard), data)
        elif os.path.exists(self.bad_file(shard)):
            os.unlink(self.bad_file(shard))
        path = self.shard_file(shard)
        _atomic_write_parquet(path, table)
        entry = {"rows_in": shard.rows, "rows_out": table.num_rows, "bad": len(bad), "bytes": os.path.getsize(path),
                 **info}
        self.manifest.setdefault("done", {})[str(shard.id)] = entry
        self.save()


# ====================================================================================================================
# The driver
# ====================================================================================================================
def _fields_of(worker_config: dict) -> tuple[list, list]:
    from verl_difficulty.scoring import make_scorer

    scorers = [make_scorer(n, p) for n, p in worker_config["scorers"]]
    fields = [f for s in scorers for f in s.fields()]
    return scorers, fields


def _job_description(job: ScoreJob, files: list[str], scorers: list, backend_desc: Optional[dict],
                     verifier_desc: Optional[dict]) -> dict:
    backend = backend_desc or {k: v for k, v in job.backend_spec().items() if k not in _RUNTIME_ONLY_BACKEND_KEYS}
    if backend.get("model_path") and os.path.exists(str(backend["model_path"])):
        backend["model_path"] = os.path.abspath(str(backend["model_path"]))  # a local dir; remote paths as given
    return {
        "inputs": [input_identity(f) for f in files],
        "limit": job.limit,
        "shard_size": int(job.shard_size),
        "batch_size": job.resolved_batch_size(),
        "seed": int(job.seed),
        "scorers": [{"name": s.name, "version": s.version, "params": s.params()} for s in scorers],
        "backend": backend,
        "verifier": verifier_desc or dict(job.verifier),
        "system_prompt": job.system_prompt,
    }


def _provenance(desc: dict, created: str) -> dict:
    from verl_difficulty import __version__

    out = {}
    for s in desc["scorers"]:
        out[s["name"]] = {
            "scorer": s["name"], "version": s["version"], "params": s["params"],
            "model_path": desc["backend"].get("model_path"), "backend": desc["backend"], "verifier": desc["verifier"],
            "seed": desc["seed"], "date": created, "system_prompt": desc["system_prompt"],
            "shard_size": desc["shard_size"], "batch_size": desc["batch_size"],
            "package": f"verl-difficulty {__version__}",
        }
    return out


class _Progress:
    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        self.gens = 0
        self.t0 = time.time()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="row", desc="scoring", dynamic_ncols=True,
                            smoothing=0.1, file=sys.stderr)

    def rows(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def generations(self, total: int) -> None:
        self.gens = max(self.gens, total)
        if self.bar is not None:
            rate = self.gens / max(1e-9, time.time() - self.t0)
            self.bar.set_postfix_str(f"gen={self.gens} ({rate:.1f}/s)", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_scoring(job: ScoreJob, backend: Any = None, verifier: Any = None,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Run (or resume) a scoring job and return its summary.

    ``backend`` / ``verifier`` objects replace the specs of ``job`` (in-process only: ``num_workers=0``).
    Raises ``RuntimeError`` if some shards still failed after ``max_attempts`` (their work is kept; rerun to retry).
    """
    t_start = time.time()
    if (backend is not None or verifier is not None) and job.num_workers not in (0,):
        raise ValueError("backend/verifier objects can only be injected with num_workers=0 (in-process)")
    files = discover_inputs(job.inputs)
    shards = plan_shards(files, job.shard_size, job.limit)
    if not shards:
        raise ValueError(f"no rows to score in {files}")
    config = job.worker_config()
    scorers, fields = _fields_of(config)
    desc = _job_description(job, files, scorers, backend.describe() if backend is not None else None,
                            verifier.describe() if verifier is not None else None)
    fingerprint = hashlib.sha256(_canonical(desc).encode()).hexdigest()
    out = OutputDir(job.output_dir)
    manifest = out.open(fingerprint, desc, job.overwrite)
    provenance = _provenance(desc, manifest["created"])
    todo = [s for s in shards if not out.is_done(s)]
    total_rows = sum(s.rows for s in shards)
    resumed = len(shards) - len(todo)
    if resumed:
        log(f"resuming {out.path}: {resumed}/{len(shards)} shards already done")
    if todo and out.manifest.get("complete"):
        out.manifest["complete"] = False
        out.save()
    failed: dict[int, str] = {}
    stats = {"workers": 0}
    if todo:
        progress = _Progress(job.progress, total_rows, total_rows - sum(s.rows for s in todo))
        try:
            commit = _committer(out, fields, provenance, progress)
            if job.num_workers == 0:
                stats["workers"] = 0
                _run_inline(job, config, todo, commit, progress, failed, backend, verifier)
            else:
                stats["workers"] = _run_ray(job, config, todo, commit, progress, failed, log)
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
        _merge(out, shards)
    summary = _summary(out, shards, fields, job, stats, resumed, time.time() - t_start,
                       sum(s.rows for s in todo))
    if not already:
        out.manifest["complete"] = True
        out.manifest["merged_sha256"] = _sha256_file(out.merged)
        out.manifest["merged_bytes"] = os.path.getsize(out.merged)
        out.save()
    _atomic_write_bytes(out.summary, json.dumps(summary, indent=1, sort_keys=True).encode())
    log(format_summary(summary))
    return summary


def _committer(out: OutputDir, fields: list, provenance: dict, progress: _Progress):
    def commit(shard: Shard, table: Any, result: dict) -> None:
        scored = assemble_shard(table, result, fields, provenance)
        bad = [{"shard": shard.id, "file": shard.file, "row": shard.start + b["position"], PROMPT_ID: b[PROMPT_ID],
                BAD_ROW_REASON: b[BAD_ROW_REASON]} for b in result["bad"]]
        out.commit(shard, scored, bad, {"generations": result["generations"], "wall_s": result["wall_s"],
                                        "worker": result.get("worker", "")})
        progress.rows(shard.rows)
    return commit


def _run_inline(job, config, todo, commit, progress, failed, backend, verifier) -> None:
    worker = ScoringWorker(config, backend=backend, verifier=verifier,
                           num_threads=int(job.cpus_per_worker) if job.cpus_per_worker else None)
    worker.on_progress = progress.generations
    reader = ShardReader()
    for shard in todo:
        table = reader.read(shard)
        for attempt in range(job.max_attempts):
            try:
                result = worker.score_shard(shard.id, table)
                break
            except Exception as e:  # noqa: BLE001
                logger.exception("shard %s failed (attempt %s)", shard.id, attempt + 1)
                result = None
                failed[shard.id] = f"{type(e).__name__}: {e}"
        if result is None:
            continue
        failed.pop(shard.id, None)
        commit(shard, table, result)
        progress.generations(worker.progress())


def _init_ray(job: ScoreJob, log) -> bool:
    """Connect to / start Ray; returns True if this call started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = job.ray_address or os.environ.get("RAY_ADDRESS")
    if address:  # no runtime_env here: a `ray job submit` runtime env (pip, working_dir) stays in charge
        log(f"connecting to the Ray cluster at {address}")
        ray.init(address=address, log_to_driver=True)
    else:
        n = job.num_workers or 1
        num_cpus = max(os.cpu_count() or 1, int(math.ceil(n * job.cpus_per_worker)))
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 object_store_memory=int(os.environ.get("VERL_DIFFICULTY_OBJECT_STORE_MB", "1024")) * 2**20)
    return True


_WORKER_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}}
"""Per-actor runtime env (Ray merges ``env_vars`` with the job's runtime env)."""


def _actor_class():
    import ray

    class _RayScoringWorker(ScoringWorker):
        @ray.method(concurrency_group="progress")
        def progress(self) -> int:
            return self._generations

    return ray.remote(concurrency_groups={"progress": 1})(_RayScoringWorker)


def _run_ray(job, config, todo, commit, progress, failed, log) -> int:
    import ray

    started = _init_ray(job, log)
    try:
        resources = ray.cluster_resources()
        device = str(job.backend_kwargs.get("device", "auto"))
        cluster_gpus = float(resources.get("GPU", 0))
        gpus = job.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if (cluster_gpus > 0 and device != "cpu") else 0.0
        n = job.num_workers
        if n is None:
            n = max(1, int(cluster_gpus // gpus)) if gpus > 0 else 1
        if int(n) > len(todo):
            log(f"only {len(todo)} shard(s) to do for {n} workers: using {len(todo)} (a smaller --shard-size "
                "spreads the rows over more workers)")
        n = max(1, min(int(n), len(todo)))
        threads = max(1, int(job.cpus_per_worker)) if job.cpus_per_worker else None
        log(f"starting {n} scoring worker(s) ({job.cpus_per_worker} CPU, {gpus} GPU each; cluster: "
            f"{resources.get('CPU', 0):g} CPU, {cluster_gpus:g} GPU)")
        cls = _actor_class()
        actors = [cls.options(num_cpus=job.cpus_per_worker, num_gpus=gpus, max_restarts=2, max_task_retries=0,
                              runtime_env=_WORKER_ENV).remote(config, None, None, threads) for _ in range(n)]
        try:
            info = ray.get([a.ready.remote() for a in actors])
        except Exception as e:  # noqa: BLE001 - e.g. vLLM missing on a node, a wrong model path
            raise RuntimeError(f"scoring workers failed to start: {type(e).__name__}: {str(e)[-2000:]}") from e
        for i in info:
            log(f"worker {i['worker']}: {_canonical(i['backend'])}")
        _dispatch(job, actors, todo, commit, progress, failed, log)
        for a in actors:
            ray.kill(a)
        return n
    finally:
        if started:
            ray.shutdown()


def _dispatch(job, actors, todo, commit, progress, failed, log) -> None:
    import ray

    reader = ShardReader()
    queue = deque(todo)
    attempts: Counter = Counter()
    in_flight: dict = {}
    load = {i: 0 for i in range(len(actors))}
    gen_done = 0  # generations of finished shards
    last_poll = 0.0
    while queue or in_flight:
        for i, actor in enumerate(actors):
            while load[i] < 2 and queue:
                shard = queue.popleft()
                table = reader.read(shard)
                ref = actor.score_shard.remote(shard.id, table)
                in_flight[ref] = (shard, i, table)
                load[i] += 1
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        for ref in ready:
            shard, i, table = in_flight.pop(ref)
            load[i] -= 1
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - worker died or raised: retry the shard
                attempts[shard.id] += 1
                msg = f"{type(e).__name__}: {str(e)[:300]}"
                if attempts[shard.id] < job.max_attempts:
                    log(f"shard {shard.id} failed on worker {i} ({msg}); retrying")
                    queue.appendleft(shard)
                else:
                    failed[shard.id] = msg
                continue
            commit(shard, table, result)
            gen_done += sum(result["generations"].values())
        if time.time() - last_poll > 2.0:
            last_poll = time.time()
            try:
                counts = ray.get([a.progress.remote() for a in actors], timeout=2)
                progress.generations(sum(counts))
            except Exception:  # noqa: BLE001 - a restarting worker; try again later
                progress.generations(gen_done)


# ====================================================================================================================
# Merge and summary
# ====================================================================================================================
def _merge(out: OutputDir, shards: list[Shard]) -> None:
    """Concatenate the shards in input order into ``scored.parquet`` and their bad rows into ``bad_rows.jsonl``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [out.shard_file(s) for s in shards]
    schemas = [pq.read_schema(p) for p in paths]
    target = schemas[0]
    if any(not s.equals(target, check_metadata=False) for s in schemas[1:]):
        target = pa.unify_schemas(schemas, promote_options="permissive")
    target = target.with_metadata(schemas[0].metadata)
    fd, tmp = tempfile.mkstemp(prefix=MERGED + TMP_MARK, dir=out.path)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, target, compression="snappy") as writer:
            for p in paths:
                t = pq.read_table(p)
                if not t.schema.equals(target, check_metadata=False):
                    t = t.cast(target)
                writer.write_table(t.replace_schema_metadata(target.metadata))
        os.replace(tmp, out.merged)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    chunks = []
    for s in shards:
        if os.path.exists(out.bad_file(s)):
            with open(out.bad_file(s), "rb") as f:
                chunks.append(f.read())
    _atomic_write_bytes(out.bad_rows, b"".join(chunks))


def _summary(out: OutputDir, shards: list[Shard], fields: list, job: ScoreJob, stats: dict, resumed: int,
             wall_s: float, rows_run: int) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    done = out.manifest["done"]
    rows_in = sum(s.rows for s in shards)
    rows_out = sum(done[str(s.id)]["rows_out"] for s in shards)
    gens: Counter = Counter()
    for s in shards:
        gens.update(done[str(s.id)].get("generations", {}))
    reasons: Counter = Counter()
    if os.path.exists(out.bad_rows):
        with open(out.bad_rows) as f:
            for line in f:
                if line.strip():
                    reasons[json.loads(line)[BAD_ROW_REASON].split(":")[0][:120]] += 1
    names = [n for n, _ in fields]
    table = pq.read_table(out.merged, columns=names) if names else None
    per_scorer: dict = {}
    if table is not None and table.num_rows:
        if PASS_RATE in names:
            pr = np.asarray(table.column(PASS_RATE).to_pylist(), dtype=float)
            hist = np.histogram(pr, bins=10, range=(0.0, 1.0))[0].tolist()
            per_scorer["passk"] = {"mean_pass_rate": float(pr.mean()), "histogram_10_bins": hist,
                                   "all_wrong": int((pr == 0).sum()), "all_right": int((pr == 1).sum())}
        if PISM_BUCKET in names:
            buckets = Counter(table.column(PISM_BUCKET).to_pylist())
            lam = Counter("never" if v is None else f"{v:.1f}" for v in table.column(PISM_LAMBDA).to_pylist())
            per_scorer["pism"] = {"buckets": dict(sorted(buckets.items())), "lambda_star": dict(sorted(lam.items()))}
        if CDE_D in names:
            d = np.asarray(table.column(CDE_D).to_pylist(), dtype=float)
            per_scorer["cde"] = {"mean_acc_img": float(np.mean(table.column(CDE_ACC_IMG).to_pylist())),
                                 "mean_acc_txt": float(np.mean(table.column(CDE_ACC_TXT).to_pylist())),
                                 "mean_D": float(d.mean()), "D_ge_0.5": int((d >= 0.5).sum())}
    for name, n in gens.items():
        per_scorer.setdefault(name, {})["generations"] = int(n)
        per_scorer[name]["generations_per_row"] = round(n / max(1, rows_out), 3)
    return {
        "output": out.merged, "bad_rows_file": out.bad_rows, "rows_in": rows_in, "rows_scored": rows_out,
        "rows_bad": rows_in - rows_out, "bad_reasons": dict(reasons.most_common()), "shards": len(shards),
        "shards_resumed": resumed, "workers": stats.get("workers"), "generations": int(sum(gens.values())),
        "scorers": per_scorer, "wall_s_this_run": round(wall_s, 2), "rows_this_run": rows_run,
        "rows_per_s_this_run": round(rows_run / wall_s, 3) if wall_s > 0 else None,
        "fingerprint": out.manifest["fingerprint"], "created": out.manifest["created"],
    }


def format_summary(s: dict) -> str:
    lines = [f"scored {s['rows_scored']}/{s['rows_in']} rows into {s['output']} "
             f"({s['shards']} shards, {s['shards_resumed']} resumed; {s['generations']} generations; "
             f"{s['wall_s_this_run']:.1f} s this run)"]
    if s["rows_bad"]:
        lines.append(f"  {s['rows_bad']} bad rows skipped (see {s['bad_rows_file']}):")
        for reason, n in s["bad_reasons"].items():
            lines.append(f"    {n:>6}  {reason}")
    for name, st in s["scorers"].items():
        parts = ", ".join(f"{k}={v}" for k, v in st.items())
        lines.append(f"  {name}: {parts}")
    return "\n".join(lines)


def job_from_dict(d: dict) -> ScoreJob:
    """A :class:`ScoreJob` from a dict (unknown keys raise ``TypeError``)."""
    names = {f.name for f in dataclasses.fields(ScoreJob)}
    unknown = set(d) - names
    if unknown:
        raise TypeError(f"unknown job settings: {sorted(unknown)}")
    return ScoreJob(**d)
