"""Stages ``data`` and ``model``: the rows with their known difficulty, and a model that is right on some of them.

``data`` writes the synthetic dataset (:func:`verl_difficulty.data.synthetic.write_dataset`: 4 tasks x 4 known
levels) or copies the user's parquet (adding a flat ``true_difficulty`` column when only ``extra_info`` has it).

``model`` builds the tiny Qwen2.5-VL (:func:`verl_difficulty.models.tiny.build_tiny_model_dir`) and warms it up
(:func:`verl_difficulty.models.warmup.warm_up`) on the rows of the demo, each row repeated by the exposure weight of
its true level (:func:`exposure_feed`). Why rows of the demo and graded exposure: the tiny model (~180k parameters,
random init) does not learn to *see* in minutes on a CPU (warming it on held-out rows leaves it at the answer prior of
each task, the same at every level), but it learns answers by heart; showing easier rows more often makes it
competent on most easy rows, some medium ones, few hard ones and no level-3 row, the way a real base model is more
often right on easier problems. The scorers are not told the weights: they measure the model. A user's model
(``--model``) is used as it is.
"""

from __future__ import annotations

import os
import shutil
from typing import Sequence

import numpy as np

from verl_difficulty import schema
from verl_difficulty.demo.workspace import DemoRun, StageResult


def true_levels(table) -> np.ndarray:
    """The true level of every row (NaN where unknown): the flat column, else ``extra_info.true_difficulty``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.column_names
    ei_type = table.schema.field(schema.EXTRA_INFO).type if schema.EXTRA_INFO in names else None
    if schema.TRUE_LEVEL in names:
        col = table.column(schema.TRUE_LEVEL)
    elif ei_type is not None and pa.types.is_struct(ei_type) and ei_type.get_field_index(schema.TRUE_LEVEL) >= 0:
        col = pc.struct_field(table.column(schema.EXTRA_INFO).combine_chunks(), schema.TRUE_LEVEL)
    else:
        return np.full(table.num_rows, np.nan)
    return np.array([np.nan if v is None else float(v) for v in col.to_pylist()], dtype=np.float64)


def level_counts(levels: np.ndarray) -> dict[int, int]:
    ok = levels[np.isfinite(levels)].astype(int)
    return {int(k): int(v) for k, v in zip(*np.unique(ok, return_counts=True))}


def run_data(run: DemoRun) -> StageResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from verl_difficulty.data.io import write_parquet

    s = run.settings
    os.makedirs(run.path("data"), exist_ok=True)
    if s.data:
        table = pq.read_table(s.data)
        if schema.TRUE_LEVEL not in table.column_names:
            levels = true_levels(table)
            if np.isfinite(levels).any():
                table = table.append_column(schema.TRUE_LEVEL, pa.array(
                    [None if np.isnan(v) else int(v) for v in levels], type=pa.int64()))
        write_parquet(run.data_file, table)
        source = f"your parquet {s.data}"
    else:
        from verl_difficulty.data.synthetic import write_dataset

        write_dataset(run.path("data"), n_train=s.n_train, n_val=0, seed=s.seed)
        table = pq.read_table(run.data_file)
        source = "synthetic"
    levels = true_levels(table)
    counts = level_counts(levels)
    tasks = sorted(set(table.column(schema.TASK_TYPE).to_pylist())) if schema.TASK_TYPE in table.column_names else []
    lines = [f"{table.num_rows} rows ({source})" + (f": tasks {', '.join(tasks)}" if tasks else "")]
    if counts:
        lines.append("true difficulty level: " + ", ".join(f"{k}: {v} rows" for k, v in counts.items()))
    else:
        lines.append("no true_difficulty column: the comparisons with the true difficulty are skipped")
    lines.append(f"-> {run.data_file}")
    return StageResult([run.data_file], lines, {"rows": table.num_rows, "levels": counts, "tasks": tasks})


def exposure_feed(rows: Sequence[dict], levels: Sequence[float], weights: Sequence[float]) -> list[dict]:
    """The warm-up feed: each row repeated ``round(weights[level])`` times (levels beyond the list take its last
    weight; a row of unknown level is shown once). Order: row order, copies adjacent (``warm_up`` draws at random)."""
    feed = []
    for row, lv in zip(rows, levels):
        if lv is None or not np.isfinite(lv):
            copies = 1
        else:
            copies = int(round(float(weights[min(int(lv), len(weights) - 1)])))
        feed.extend([row] * max(copies, 0))
    return feed


class _StepCounter:
    """Counts optimizer steps process-wide (torch's global step hook) to drive the warm-up progress bar."""

    def __init__(self, bar):
        self.bar = bar
        self.handle = None

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: self.bar.update(1))
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
        return False


def run_model(run: DemoRun) -> StageResult:
    s = run.settings
    if s.model:
        lines = [f"your model {s.model} (used as is, no warm-up)"]
        return StageResult([s.model], lines, {"model": s.model, "warmup": None})
    import pyarrow.parquet as pq

    from verl_difficulty.models.tiny import build_tiny_model_dir
    from verl_difficulty.models.warmup import warm_up

    model_dir = run.path("model")
    if os.path.isdir(model_dir):  # warm_up trains in place: a redo starts again from the random weights
        shutil.rmtree(model_dir)
    build_tiny_model_dir(model_dir, seed=s.seed)
    table = pq.read_table(run.data_file)
    levels = true_levels(table)
    feed = exposure_feed(table.to_pylist(), levels, s.warmup_exposure)
    if not feed:
        raise ValueError("the warm-up feed is empty: every --warmup-exposure weight rounds to 0")
    bar = run.console.bar(s.warmup_steps, "warm-up", unit="step")
    try:
        with _StepCounter(bar):
            done = warm_up(model_dir, feed, steps=s.warmup_steps, lr=s.warmup_lr, seed=s.seed)
    finally:
        bar.close()
    shown = {int(lv): int(round(float(s.warmup_exposure[min(lv, len(s.warmup_exposure) - 1)])))
             for lv in level_counts(levels)}
    loss = done.get("final_loss")
    lines = [f"tiny Qwen2.5-VL -> {model_dir}",
             f"warm-up: {s.warmup_steps} steps, lr {s.warmup_lr:g}, on {len(feed)} rows fed (copies per row by true "
             "level: " + ", ".join(f"{k}: {v}" for k, v in shown.items()) + ")"
             + (f"; last loss {loss:.3f}" if isinstance(loss, float) else "")]
    return StageResult([model_dir], lines, {"model": model_dir, "warmup": done, "feed_rows": len(feed)})
