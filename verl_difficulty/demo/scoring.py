"""Stage ``score``: every row scored by every chosen scorer, with the plugin's scoring engine (in this process, through
:func:`verl_difficulty.scoring.run_scoring`; its workers on Ray unless ``--num-workers 0``).

The engine resumes by itself: a killed demo rerun finds the committed shards in ``DIR/score/shards`` and scores only
the rest. The progress bar follows the shards committed in the job's manifest. The stage ends with the agreement of
each score with the true level (:func:`verl_difficulty.demo.analysis.agreement`, the same numbers as the report).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Optional

import numpy as np

from verl_difficulty.demo import analysis
from verl_difficulty.demo.prepare import true_levels
from verl_difficulty.demo.settings import DemoSettings
from verl_difficulty.demo.workspace import DemoRun, StageResult


def scorer_params(s: DemoSettings) -> dict:
    """The demo's parameters of each chosen scorer (short generations for the tiny model; the rest as shipped)."""
    gen = {"max_tokens": s.max_tokens}
    params = {"passk": {**gen, "k": s.passk_k, "temperature": s.passk_temperature}, "pism": {**gen, "k": s.pism_tries},
              "cde": dict(gen), "visual_entropy": {}, "cmab": dict(gen), "ace": dict(gen)}
    return {name: params[name] for name in s.scorers}


def make_job(run: DemoRun, overwrite: bool = False):
    from verl_difficulty.scoring import ScoreJob

    s = run.settings
    return ScoreJob(inputs=[run.data_file], output_dir=run.path("score"), model_path=run.model_dir,
                    scorers=scorer_params(s), num_workers=s.num_workers, cpus_per_worker=1.0,
                    shard_size=s.shard_size, seed=s.seed, progress=False, overwrite=overwrite)


def _rows_done(manifest_path: str, shard_size: int, total: int) -> int:
    try:
        with open(manifest_path) as f:
            done = json.load(f).get("done", {})
    except (OSError, ValueError):
        return 0
    rows = 0
    for key in done:
        try:
            start = int(key) * shard_size
        except ValueError:
            continue
        rows += max(0, min(shard_size, total - start))
    return rows


class _ManifestWatcher:
    """Moves a progress bar as shards are committed (polls the job's manifest)."""

    def __init__(self, bar, manifest: str, shard_size: int, total: int):
        self.bar, self.manifest, self.shard_size, self.total = bar, manifest, shard_size, total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self) -> None:
        n = _rows_done(self.manifest, self.shard_size, self.total)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._poll()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll()
        return False


def agreement_from_table(table, draws: int, seed: int) -> Optional[list]:
    """The agreement rows of a scored table (None when it has no true level)."""
    level = true_levels(table)
    if not np.isfinite(level).any():
        return None
    cols = {c.column: table.column(c.column).to_pylist() for c in analysis.SCORE_COLUMNS
            if c.column in table.column_names}
    return analysis.agreement(cols, level, draws=draws, seed=seed)


def format_agreement(row) -> str:
    if row.agreement is None:
        return (f"{row.scorer:<15}{row.column:<18} rho {row.rho:+.2f} [{row.rho_low:+.2f}, {row.rho_high:+.2f}]  "
                f"n={row.n}")
    return (f"{row.scorer:<15}{row.column:<18} agreement {row.agreement:+.2f} "
            f"[{row.agreement_low:+.2f}, {row.agreement_high:+.2f}]  n={row.n}")


def run_score(run: DemoRun) -> StageResult:
    import pyarrow.parquet as pq

    from verl_difficulty.scoring import run_scoring

    s = run.settings
    total = pq.ParquetFile(run.data_file).metadata.num_rows
    overwrite = "score" in run.force
    t0 = time.time()
    bar = run.console.bar(total, "scoring", unit="row")
    log = lambda msg: print(msg, flush=True)  # noqa: E731 - the stage log
    try:
        with _ManifestWatcher(bar, run.path("score", "manifest.json"), s.shard_size, total):
            try:
                summary = run_scoring(make_job(run, overwrite), log=log)
            except FileExistsError:  # the folder holds a job with other settings: this stage redoes it
                summary = run_scoring(make_job(run, True), log=log)
    finally:
        bar.close()
    table = pq.read_table(run.scored_file)
    gens = int(summary.get("generations") or 0)
    bad = int(summary.get("rows_bad") or 0)
    lines = [f"{table.num_rows} rows scored with {', '.join(s.scorers)} ({gens:,} generations"
             + (f", {summary.get('shards_resumed')} shards resumed" if summary.get("shards_resumed") else "")
             + f") in {time.time() - t0:.0f}s -> {run.scored_file}"]
    if bad:
        lines.append(f"{bad} bad rows left out: {summary.get('bad_reasons')} (see {summary.get('bad_rows_file')})")
    rows = agreement_from_table(table, draws=s.bootstrap, seed=s.seed)
    data = {"rows": table.num_rows, "generations": gens, "rows_bad": bad}
    if rows is not None:
        lines.append("agreement with the true level (Spearman rho x direction, 95% bootstrap interval):")
        lines += ["  " + format_agreement(r) for r in rows if r.headline]
        data["agreement"] = [r.to_dict() for r in rows]
    return StageResult([run.scored_file], lines, data)

