"""Reading the training curves from verl's own tracker output (never recomputed).

verl's file logger (``trainer.logger=[console,file]``, path from ``VERL_FILE_LOGGER_PATH``) writes one JSON object per
logged step: ``{"step": N, "data": {metric: value}}``. The validation before training is logged at step 0, each
training step at its global step (with that step's validation, when there is one, in the same record). This module
reads such a file (also while it is being written: an incomplete last line is ignored) and picks the demo's curves:

* reward: ``critic/score/mean`` (the mean sequence reward of the step's rollouts);
* training accuracy: ``difficulty/batch/acc_mean`` (the plugin's seam: share of correct responses);
* accuracy per true level: verl's validation metrics per data source, ``val-core/<source>/acc/mean@<n>``; the demo
  names each validation row's data source after its true level (:func:`level_source`);
* the sampler's mix: ``difficulty/sampler/batch_frac/<bucket>`` (share of the step's prompts per bucket; the demo
  points the sampler's bucket field at the true level, so these are true-level shares).
"""

from __future__ import annotations

import json
import math
import re
from typing import Optional

from verl_difficulty import schema

REWARD = "critic/score/mean"
"""verl's mean sequence reward of a training step."""
TRAIN_ACC = schema.metric("batch", "acc_mean")
"""The plugin's share of correct responses in a training step."""
MIX_PREFIX = schema.metric("sampler", "batch_frac") + "/"
"""The sampler's share of the step's prompts per bucket: ``MIX_PREFIX + bucket``."""
STEP_KEY = "training/global_step"
"""Present in every training step's record (absent from the step-0 validation record)."""
LEVEL_SOURCE = "true_level_{}"
"""The data source the demo gives a validation row of true level L."""
_VAL_ACC = re.compile(r"^val-core/(?P<source>.+)/acc/mean@(?P<n>\d+)$")
_LEVEL = re.compile(r"^true_level_(?P<level>-?\d+)$")


def level_source(level: int) -> str:
    """The validation data source name of true level ``level``."""
    return LEVEL_SOURCE.format(int(level))


def source_level(source: str) -> Optional[int]:
    """The true level a data source name stands for (None if it is not a :func:`level_source` name)."""
    m = _LEVEL.match(str(source))
    return int(m.group("level")) if m else None


def read_records(path: str) -> list[dict]:
    """The records of a verl tracker JSONL file, in file order (missing file: []; a torn last line is skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                continue  # being written
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
        if isinstance(rec, dict) and isinstance(rec.get("data"), dict) and "step" in rec:
            out.append(rec)
    return out


def steps_done(records: list[dict]) -> int:
    """The highest training step logged so far (0 if none)."""
    steps = [int(r["step"]) for r in records if STEP_KEY in r["data"]]
    return max(steps) if steps else 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one metric over the records that have a finite value for it."""
    steps, values = [], []
    for r in records:
        v = r["data"].get(key)
        if _finite(v):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def validation_accuracy(records: list[dict]) -> dict[str, dict]:
    """Validation accuracy per data source: ``{source: {"n": samples per prompt, "level": true level or None,
    "steps": [...], "values": [...]}}`` from verl's ``val-core/<source>/acc/mean@<n>`` (the largest ``n``)."""
    found: dict[str, int] = {}
    for r in records:
        for key in r["data"]:
            m = _VAL_ACC.match(key)
            if m:
                found[m.group("source")] = max(found.get(m.group("source"), 0), int(m.group("n")))
    out = {}
    for source, n in sorted(found.items(), key=lambda kv: (source_level(kv[0]) is None, source_level(kv[0]) or 0,
                                                           kv[0])):
        steps, values = series(records, f"val-core/{source}/acc/mean@{n}")
        out[source] = {"n": n, "level": source_level(source), "steps": steps, "values": values}
    return out


def sampler_mix(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """The sampler's batch share per bucket: ``{bucket: (steps, shares)}`` (buckets in :data:`schema.BUCKETS`
    order first)."""
    names: list[str] = []
    for r in records:
        for key in r["data"]:
            if key.startswith(MIX_PREFIX) and key[len(MIX_PREFIX):] not in names:
                names.append(key[len(MIX_PREFIX):])
    order = {b: i for i, b in enumerate(schema.BUCKETS)}
    names.sort(key=lambda b: (order.get(b, len(order)), b))
    return {b: series(records, MIX_PREFIX + b) for b in names}


def curves(records: list[dict]) -> dict:
    """Everything the demo plots for one run, as plain lists (JSON-able)."""
    return {
        "reward": series(records, REWARD),
        "train_acc": series(records, TRAIN_ACC),
        "val_acc": validation_accuracy(records),
        "mix": sampler_mix(records),
        "steps": steps_done(records),
    }


def first_last(steps_values: tuple[list[int], list[float]]) -> tuple[Optional[float], Optional[float]]:
    """The first and last value of a series (None when empty)."""
    _, values = steps_values
    return (values[0], values[-1]) if values else (None, None)


def window_mean(steps_values: tuple[list[int], list[float]], last: int = 3) -> Optional[float]:
    """Mean of the last ``last`` values of a series (None when empty): a less noisy end point for a few steps."""
    _, values = steps_values
    if not values:
        return None
    tail = values[-last:]
    return sum(tail) / len(tail)
