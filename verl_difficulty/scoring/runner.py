"""Scoring workers (one model replica each) and how the driver feeds them shards: in-process or as Ray actors.

Why Ray actors and not Ray Data: each worker must load the model once and keep it (actors do that); the unit of work
must be an exactly reproducible, atomically committed shard with a fixed batch composition (Ray Data re-blocks rows
by its own rules and writes files without a commit protocol, so a killed job could not be resumed exactly); failures
of one shard must be retried without touching the others. A plain actor pool with a driver-side commit loop gives all
three with little code, and works unchanged in-process (``num_workers=0``, no Ray), on a local ``ray.init()`` and on an
existing cluster (``ray_address`` or ``ray job submit``, which sets ``RAY_ADDRESS``).

Workers get the scorer classes from the driver (pickled by reference, or by value for a module registered with
``ray.cloudpickle.register_pickle_by_value``), so a scorer registered in the driver only (``--scorer-module``, a test)
runs on the workers too. Only the driver touches the output directory: workers return score values, not files.

Threads: every worker (and the in-process mode) sets torch to ``cpus_per_worker`` threads, so all workers compute
with the same thread count (CPU float reductions can depend on it). In-process mode changes the calling process's
torch thread count.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from collections import Counter, deque
from typing import Any, Callable, Optional

from verl_difficulty.data.io import canonical_json
from verl_difficulty.data.rows import ExecutionFault, RowFailure, prepare_row, row_index, row_problem
from verl_difficulty.schema import BAD_ROW_REASON, PROMPT_ID
from verl_difficulty.scoring.context import describe_error
from verl_difficulty.scoring.job import ScoreJob
from verl_difficulty.scoring.shards import ShardReader

logger = logging.getLogger(__name__)


class ScoringWorker:
    """Scores shards with one model replica. Used directly (``num_workers=0``) or as a Ray actor.

    ``classes`` maps the job's scorer names to their classes (None: the registry of this process). ``backend`` /
    ``verifier`` objects may be injected (in-process use and tests); otherwise they are built from the specs in
    ``config`` (:meth:`ScoreJob.worker_config`). A two-backend job (``config["forward"]``) also holds a
    :class:`~verl_difficulty.scoring.backends.LazyForwardModel`: the transformers forward model on this worker's
    device, built at the first forward pass (after the generation backend, which on one GPU has then taken its share
    of the memory) and kept for the next shards.
    """

    def __init__(self, config: dict, classes: Optional[dict] = None, backend: Any = None, verifier: Any = None,
                 num_threads: Optional[int] = None):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from verl_difficulty.scoring.backends import LazyForwardModel, check_needs, make_backend
        from verl_difficulty.scoring.registry import make_scorer
        from verl_difficulty.scoring.verifier import make_verifier

        self.config = config
        self.scorers = [make_scorer(n, p, classes) for n, p in config["scorers"]]
        spec = dict(config["backend"])
        if num_threads and spec.get("name") == "transformers":
            spec.setdefault("num_threads", int(num_threads))
        forward = dict(config["forward"]) if config.get("forward") else None
        if forward is not None and num_threads:
            forward.setdefault("num_threads", int(num_threads))
        self.forward_model = LazyForwardModel(forward) if forward is not None else None
        fpath = forward["model_path"] if forward is not None else None
        check_needs(backend if backend is not None else spec["name"], self.scorers, forward_model=fpath)
        self.backend = backend if backend is not None else make_backend(spec)
        check_needs(self.backend, self.scorers, forward_model=fpath)
        self.verifier = verifier if verifier is not None else make_verifier(config["verifier"])
        self._generations = 0
        self.on_progress: Optional[Callable[[int], None]] = None
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> dict:
        info = {"worker": self.where, "backend": self.backend.describe()}
        if self.forward_model is not None:
            info["forward_model"] = self.forward_model.describe()
        return info

    def progress(self) -> int:
        """Generations done by this worker so far (polled by the driver for the progress bar)."""
        return self._generations

    def _count(self, n: int) -> None:
        self._generations += n
        if self.on_progress is not None:
            self.on_progress(self._generations)

    def score_shard(self, shard_id: int, table: Any) -> dict:
        """Score the rows of one shard. Never raises for a bad row: it is reported in ``bad``."""
        from verl_difficulty.scoring.context import ScoringContext, describe_error

        t0 = time.time()
        rows = table.to_pylist() if hasattr(table, "to_pylist") else list(table)
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
            bad.append({"position": pos, PROMPT_ID: row_index(row), BAD_ROW_REASON: reason})
        ctx = ScoringContext(self.backend, self.verifier, seed=self.config["seed"],
                             batch_size=self.config["batch_size"], on_generations=self._count,
                             max_attempts=self.config.get("max_attempts", 1),
                             retry_backoff_s=self.config.get("retry_backoff_s", 0.0),
                             forward_model=self.forward_model,
                             forward_batch_size=self.config.get("forward_batch_size"))
        generations: dict[str, int] = {}
        values: dict[int, dict] = {r.position: {} for r in prepared}
        for scorer in self.scorers:
            before, ok_before, failed_before = ctx.generations, ctx.succeeded, ctx.failed
            ctx.scorer = scorer.name
            try:
                results = scorer.score(prepared, ctx)
            except ExecutionFault:
                raise
            except Exception as e:  # noqa: BLE001 - a scorer bug fails the shard, never its rows silently
                logger.debug("scorer %s failed on shard %s", scorer.name, shard_id, exc_info=True)
                raise ExecutionFault(f"scorer {scorer.name!r} crashed: {describe_error(e)}") from e
            if ctx.failed > failed_before and ctx.succeeded == ok_before:
                raise ExecutionFault(f"scorer {scorer.name!r}: all {ctx.failed - failed_before} prompt/generation "
                                     f"request(s) of the shard failed, none worked: {ctx.last_error}")
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
        scores: list = [values.get(pos) for pos in range(len(rows))]
        bad.sort(key=lambda b: b["position"])
        return {"shard": int(shard_id), "scores": scores, "bad": bad, "generations": generations,
                "wall_s": round(time.time() - t0, 3), "worker": self.where}


class Progress:
    """The driver's progress bar: rows committed, generations done (polled from the workers)."""

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


def run_shards(job: ScoreJob, config: dict, classes: dict, todo: list, commit: Callable, progress: Progress,
               failed: dict, log: Callable[[str], None], backend: Any = None, verifier: Any = None) -> int:
    """Score the ``todo`` shards (in-process for ``num_workers=0``, else on Ray actors), calling ``commit(shard,
    table, result)`` for each as it finishes (in the driver); shards that fail ``max_attempts`` times go to
    ``failed``. Returns the number of workers used."""
    if job.num_workers == 0:
        _run_inline(job, config, classes, todo, commit, progress, failed, log, backend, verifier)
        return 0
    return _run_ray(job, config, classes, todo, commit, progress, failed, log)


def _start_failed(e: BaseException) -> RuntimeError:
    return RuntimeError(f"the scoring worker failed to start: {describe_error(e, 2000)}")


def _backoff(job: ScoreJob, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
    return float(job.retry_backoff_s) * 2 ** (attempt - 1)


def _run_inline(job, config, classes, todo, commit, progress, failed, log, backend, verifier) -> None:
    try:
        worker = ScoringWorker(config, classes, backend=backend, verifier=verifier,
                               num_threads=int(job.cpus_per_worker) if job.cpus_per_worker else None)
    except Exception as e:  # noqa: BLE001 - e.g. a model that does not load
        raise _start_failed(e) from e
    worker.on_progress = progress.generations
    reader = ShardReader()
    for shard in todo:
        table = reader.read(shard)
        result = None
        for attempt in range(1, job.max_attempts + 1):
            try:
                result = worker.score_shard(shard.id, table)
                break
            except Exception as e:  # noqa: BLE001 - retried, then reported
                logger.debug("shard %s failed (attempt %s)", shard.id, attempt, exc_info=True)
                failed[shard.id] = describe_error(e, 500)
                if attempt < job.max_attempts:
                    log(f"shard {shard.id} failed ({failed[shard.id]}); retrying ({attempt + 1}/{job.max_attempts})")
                    time.sleep(_backoff(job, attempt))
        if result is None:
            return  # fail fast: the job stops at its first shard that keeps failing
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


def _run_ray(job, config, classes, todo, commit, progress, failed, log) -> int:
    import ray

    started = _init_ray(job, log)
    try:
        resources = ray.cluster_resources()
        devices = {str(job.backend_kwargs.get("device", "auto"))}
        if config.get("forward"):
            devices.add(str(config["forward"]["device"]))  # the forward model of a two-backend job
        cluster_gpus = float(resources.get("GPU", 0))
        gpus = job.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if (cluster_gpus > 0 and devices != {"cpu"}) else 0.0
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
                              runtime_env=_WORKER_ENV).remote(config, classes, None, None, threads)
                  for _ in range(n)]
        try:
            try:
                info = ray.get([a.ready.remote() for a in actors])
            except Exception as e:  # noqa: BLE001 - e.g. vLLM missing on a node, a wrong model path
                raise _start_failed(e) from e
            for i in info:
                log(f"worker {i['worker']}: {canonical_json(i['backend'])}"
                    + (f"; forward model (built at the first forward pass): {canonical_json(i['forward_model'])}"
                       if i.get("forward_model") else ""))
            _dispatch(job, actors, todo, commit, progress, failed, log)
        finally:
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
                msg = describe_error(e, 500)
                if attempts[shard.id] < job.max_attempts and not failed:
                    log(f"shard {shard.id} failed on worker {i} ({msg}); retrying "
                        f"({attempts[shard.id] + 1}/{job.max_attempts})")
                    time.sleep(_backoff(job, attempts[shard.id]))
                    queue.appendleft(shard)
                else:
                    failed[shard.id] = msg
                    queue.clear()  # fail fast: finish the shards in flight, start no other
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
