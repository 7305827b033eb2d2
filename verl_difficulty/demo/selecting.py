"""Stage ``select``: the training sets of P1, P2 and P4 from the scored rows
(:func:`verl_difficulty.selection.run_selection`, each paper's defaults), and how each selected subset's true-level
mix compares with random subsets of the same size (:func:`verl_difficulty.demo.analysis.subset_mix`), written to
``DIR/select/mix.json``.

A method whose scorer did not run is skipped (named in the summary); one that keeps no row
(:class:`~verl_difficulty.selection.EmptySelectionError`) stops the stage if the runs train on it (``--train-on``),
else it is reported with its cause, has no subsets to compare (an earlier run's selection in its folder is removed),
and the demo goes on. Every output table of a selection is compared (``train`` and the method's own subsets: P1's
baselines and SFT/GRPO split, P2's two stages), except the decisions.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from verl_difficulty import schema
from verl_difficulty.data.io import atomic_write_bytes
from verl_difficulty.demo import analysis
from verl_difficulty.demo.prepare import true_levels
from verl_difficulty.demo.settings import METHOD_NEEDS, METHODS
from verl_difficulty.demo.workspace import DemoRun, StageResult

MIX_FILE = "mix.json"


def row_ids(path: str) -> list[int]:
    """``extra_info.index`` of every row of a verl parquet."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ei = pq.read_table(path, columns=[schema.EXTRA_INFO]).column(schema.EXTRA_INFO).combine_chunks()
    return [int(v) for v in pc.struct_field(ei, schema.PROMPT_ID).to_pylist()]


def level_by_id(scored_path: str) -> dict[int, float]:
    import pyarrow.parquet as pq

    table = pq.read_table(scored_path, columns=[schema.EXTRA_INFO] + (
        [schema.TRUE_LEVEL] if schema.TRUE_LEVEL in pq.read_schema(scored_path).names else []))
    return dict(zip(row_ids(scored_path), true_levels(table).tolist()))


def subset_outputs(selection_dir: str) -> dict[str, str]:
    """The row tables a selection wrote (name -> path), from its ``selection.json`` (the decisions left out)."""
    with open(os.path.join(selection_dir, "selection.json")) as f:
        record = json.load(f)
    out = {}
    for name, rel in (record.get("outputs") or {}).items():
        if name == "decisions" or not isinstance(rel, str):
            continue
        path = os.path.join(selection_dir, rel)
        if path.endswith(".parquet") and os.path.isfile(path):
            out[name] = path
    return out


def run_select(run: DemoRun) -> StageResult:
    from verl_difficulty.selection import EmptySelectionError, run_selection

    s = run.settings
    lines, data, outputs, skipped, empty = [], {"methods": {}}, [], {}, set()
    for method in METHODS:
        missing = [sc for sc in METHOD_NEEDS[method] if sc not in s.scorers]
        if missing:
            skipped[method] = f"needs the {', '.join(missing)} scorer(s)"
            continue
        out_dir = run.path("select", method)
        try:
            record = run_selection(method, [run.path("score")], out_dir, params={"seed": s.seed}, overwrite=True)
        except EmptySelectionError as e:  # nothing to train on: said, and the other methods still run
            if method == s.train_on:
                raise
            if not e.written:  # the demo's own folder held an earlier run's selection: stale now
                shutil.rmtree(out_dir)
            record = e.record
            empty.add(method)
            lines.append(f"{method}: {e.cause()}" + ("" if e.written else f"; the earlier selection in {out_dir} "
                                                                         "removed"))
        else:
            lines.append(f"{method}: kept {record['counts'].get('kept')}/{record['counts'].get('input_rows')} "
                         f"rows -> {out_dir}")
        counts = record.get("counts", {})
        data["methods"][method] = {"kept": counts.get("kept"), "input_rows": counts.get("input_rows"),
                                   "notes": record.get("notes", [])}
        if os.path.isfile(os.path.join(out_dir, "selection.json")):
            outputs.append(os.path.join(out_dir, "selection.json"))
    for method, why in skipped.items():
        lines.append(f"{method}: skipped ({why})")
    by_id = level_by_id(run.scored_file)
    population = np.array([v for v in by_id.values() if np.isfinite(v)], dtype=np.int64)
    mixes = []
    if len(population):
        for method in [m for m in data["methods"] if m not in empty]:
            for name, path in subset_outputs(run.path("select", method)).items():
                lv = [by_id.get(i, np.nan) for i in row_ids(path)]
                lv = [int(v) for v in lv if np.isfinite(v)]
                if not lv:
                    continue
                mix = analysis.subset_mix(f"{method}/{name}", lv, population, draws=s.random_subsets, seed=s.seed)
                mixes.append(mix.to_dict())
                if name == "train":
                    lines.append(f"{method}/train: mean true level {mix.mean_level:.2f} vs random subsets "
                                 f"{mix.random_mean_level:.2f} [{mix.random_mean_level_low:.2f}, "
                                 f"{mix.random_mean_level_high:.2f}] (n={mix.size})")
    mix_path = run.path("select", MIX_FILE)
    os.makedirs(os.path.dirname(mix_path), exist_ok=True)
    atomic_write_bytes(mix_path, json.dumps({"population": int(len(population)), "draws": s.random_subsets,
                                             "seed": s.seed, "subsets": mixes, "skipped": skipped},
                                            indent=1).encode())
    outputs.append(mix_path)
    data["mix"] = [{k: m[k] for k in ("name", "size", "mean_level", "random_mean_level", "random_mean_level_low",
                                      "random_mean_level_high", "percentile")} for m in mixes]
    data["skipped"] = skipped
    return StageResult(outputs, lines, data)
