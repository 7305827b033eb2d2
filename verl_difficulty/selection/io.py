"""Reading scored inputs and writing a selection folder (``verl-difficulty select ... -o OUTDIR``).

Inputs: one or more scored parquet files (or directories of ``*.parquet``, sorted), concatenated in the order given.
Every row must carry a stable int ``extra_info.index``, unique over all inputs (rows without one, and duplicates, are
refused with their count): the decisions are keyed by it.

Outputs (every file written atomically, :mod:`verl_difficulty.data.io`; ``selection.json`` last):

* ``train.parquet``: the kept rows in verl's RLHF schema, input order, every input column kept; the difficulty fields
  a selection sets (``difficulty_bucket``, ``hard_hint``, ``difficulty_stage``) are mirrored in ``extra_info`` and the
  selection is added to ``difficulty_provenance``;
* the method's extra tables (P1 ``subsets/<name>.parquet``, ``sft.parquet``, ``grpo.parquet``; P2
  ``stage1.parquet``, ``stage2.parquet``);
* ``decisions.parquet``: one row per input row: ``index`` (int64), ``kept`` (bool), ``reason`` (string), ``bucket``
  (string or null), ``stage`` (int64 or null), ``subset`` (the comma-separated subsets of the row, or null);
* ``selection.json``: ``method``, ``mode``, ``params`` (every parameter), ``inputs`` (path, rows, sha256),
  ``fingerprint``, ``status`` (``complete``), ``counts`` (``input_rows``, ``kept``, ``by_reason`` over all rows,
  ``by_bucket`` over all rows with a bucket, ``by_stage`` over the kept rows, ``by_subset``), ``notes``, ``outputs``
  (name -> relative path), ``version``, ``created``.

An EMPTY selection (no row kept: the train set would be empty) is an error
(:class:`~verl_difficulty.selection.common.EmptySelectionError`, exit 1): no row table is written (no
``train.parquet``, no extra table), only ``decisions.parquet`` and a ``selection.json`` with ``status: empty``,
``error`` (the reason counts and the parameters to loosen) and ``outputs`` = the decisions alone, so the folder can be
inspected (``verl-difficulty report OUTDIR`` draws the reasons). That record is not a finished selection: nothing
resumes from it, and the next selection into OUTDIR replaces it without ``overwrite``. An empty selection never
replaces a finished one (nor foreign files), even with ``overwrite``: then nothing is written.

Re-running: an OUTDIR holding a DIFFERENT finished selection (method, mode, params or input sha256 differ), or files
but no ``selection.json``, is refused unless ``overwrite``; the same selection again rewrites identical files (its
``created`` date is kept). A record without ``status`` (written before it existed) counts as finished when it kept
rows.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Optional

from verl_difficulty import schema
from verl_difficulty.data.io import add_score_columns, atomic_write_bytes, canonical_json, write_parquet
from verl_difficulty.selection.common import Outcome, Output, values

SELECTION_FILE = "selection.json"
DECISIONS_FILE = "decisions.parquet"
TRAIN_FILE = "train.parquet"
STATUS_COMPLETE = "complete"
STATUS_EMPTY = "empty"


def input_files(paths: list) -> list[str]:
    """Files of ``paths`` (a directory contributes its ``*.parquet``, sorted); a missing or non-parquet path raises."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.parquet")))
            if not found:
                raise FileNotFoundError(f"{p}: a directory without *.parquet files")
            out.extend(found)
        elif not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such file")
        else:
            out.append(p)
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_inputs(paths: list) -> tuple[Any, list[dict]]:
    """The concatenated table of the scored inputs and their ``{"path", "rows", "sha256"}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, info = [], []
    for path in input_files(paths):
        try:
            t = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - not a parquet file
            raise ValueError(f"{path}: not a readable parquet file: {type(e).__name__}: {e}") from e
        tables.append(t)
        info.append({"path": os.path.abspath(path), "rows": t.num_rows, "sha256": _sha256(path)})
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    return table, info


def row_ids(table: Any) -> list[int]:
    """``extra_info.index`` of every row as int; rows without a stable int id or with a duplicate id are refused."""
    raw = values(table, schema.PROMPT_ID, flat=False)  # a top-level 'index' column is not the id
    if raw is None:
        raw = [None] * table.num_rows
    bad = [i for i, v in enumerate(raw) if v is None or isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ValueError(f"{len(bad)} of {table.num_rows} rows have no int {schema.EXTRA_INFO}.{schema.PROMPT_ID} "
                         f"(first at rows {bad[:5]}); every row needs a stable id (verl-difficulty synth and score "
                         "keep it)")
    dup = [k for k, c in Counter(raw).items() if c > 1]
    if dup:
        raise ValueError(f"{len(dup)} {schema.EXTRA_INFO}.{schema.PROMPT_ID} values occur more than once (e.g. "
                         f"{sorted(dup)[:5]}); the ids must be unique over all inputs")
    return [int(v) for v in raw]


def fingerprint(method: str, mode: str, params: dict, inputs: list[dict]) -> str:
    """SHA-256 of what decides a selection's output: method, mode, every parameter, the inputs' contents."""
    what = {"method": method, "mode": mode, "params": params, "inputs": [i["sha256"] for i in inputs]}
    return hashlib.sha256(canonical_json(what).encode()).hexdigest()


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in ("method", "mode") if old.get(k) != new.get(k)]
    keys += [f"params.{k}" for k in sorted(set(old.get("params", {})) | set(new["params"]))
             if old.get("params", {}).get(k) != new["params"].get(k)]
    if [i.get("sha256") for i in old.get("inputs", [])] != [i["sha256"] for i in new["inputs"]]:
        keys.append("inputs")
    return ", ".join(keys) or "fingerprint"


def is_finished(record: dict) -> bool:
    """Whether a ``selection.json`` record is a finished selection (its outputs written): ``status`` complete, or,
    in a record from before ``status`` existed, at least one row kept."""
    if "status" in record:
        return record["status"] == STATUS_COMPLETE
    return bool((record.get("counts") or {}).get("kept"))


def _check_outdir(outdir: str, inputs: list[dict]) -> tuple[str, str, Optional[dict]]:
    """(absolute OUTDIR, its state, its previous record): state ``free`` (missing or empty), ``finished`` or ``empty``
    (a record, :func:`is_finished` or not) or ``foreign`` (files without a readable record). An OUTDIR holding an
    input file is refused."""
    out = os.path.abspath(outdir)
    if any(os.path.dirname(i["path"]) == out for i in inputs):
        raise ValueError(f"-o {outdir}: the output directory holds an input file; choose another directory")
    if not os.path.isdir(out) or not os.listdir(out):
        return out, "free", None
    try:
        with open(os.path.join(out, SELECTION_FILE)) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        return out, "foreign", None
    return out, "finished" if is_finished(old) else "empty", old


def _remove_selection(out: str, old: dict) -> None:
    for rel in list((old.get("outputs") or {}).values()) + [DECISIONS_FILE, SELECTION_FILE]:
        target = os.path.join(out, rel) if isinstance(rel, str) else None
        if target and os.path.isfile(target):
            os.unlink(target)


def prepare_outdir(outdir: str, new: dict, overwrite: bool, inputs: list[dict]) -> Optional[str]:
    """Check OUTDIR against the selection ``new`` (method, mode, params, inputs, fingerprint); returns the previous
    ``created`` date when OUTDIR already holds this same finished selection. The record of an empty selection
    (``status: empty``, not finished) is removed with its files. A different finished selection (or unknown files) is
    refused unless ``overwrite``, which removes the previous selection's files first."""
    out, state, old = _check_outdir(outdir, inputs)
    if state == "free":
        os.makedirs(out, exist_ok=True)
        return None
    if state == "empty":
        _remove_selection(out, old)
        return None
    if state == "finished" and old.get("fingerprint") == new["fingerprint"]:
        return old.get("created")
    if not overwrite:
        what = (f"a different selection ({old.get('method')}/{old.get('mode')}; differs in {_differences(old, new)})"
                if old is not None else f"files but no readable {SELECTION_FILE}")
        raise FileExistsError(f"-o {outdir}: holds {what}; pass --overwrite to replace it, or choose another "
                              "directory")
    if old is not None:
        _remove_selection(out, old)
    return None


def occupied(outdir: str, inputs: list[dict]) -> str:
    """Why OUTDIR must not receive the record of an empty selection ('' when it may: missing, empty, or holding
    only another empty selection's record): it holds a finished selection or files without a record."""
    _, state, old = _check_outdir(outdir, inputs)
    if state in ("free", "empty"):
        return ""
    what = (f"a finished selection ({old.get('method')}/{old.get('mode')})" if old is not None
            else f"files but no readable {SELECTION_FILE}")
    return f"-o {outdir} holds {what}, left as it was"


def _arrow(name: str, vals: list) -> Any:
    import pyarrow as pa

    types = {schema.DIFFICULTY_BUCKET: pa.string(), schema.HARD_HINT: pa.bool_(), schema.SELECTION_STAGE: pa.int64()}
    return pa.array(vals, type=types.get(name))


def output_table(table: Any, o: Output, provenance: dict) -> Any:
    """The rows of ``o`` with its difficulty columns (mirrored in ``extra_info``, provenance added) and plain ones."""
    import pyarrow as pa

    t = table.take(pa.array(o.positions, type=pa.int64()))
    cols = {name: _arrow(name, [vals[i] for i in o.positions]) for name, vals in o.columns.items()}
    t = add_score_columns(t, cols, provenance)
    for name, vals in o.plain.items():
        arr = pa.array(vals)
        if name in t.column_names:
            t = t.set_column(t.column_names.index(name), name, arr)
        else:
            t = t.append_column(name, arr)
    return t


def decisions_table(ids: list, outcome: Outcome) -> Any:
    import pyarrow as pa

    d = outcome.decisions
    return pa.table({
        schema.PROMPT_ID: pa.array(ids, type=pa.int64()),
        schema.SELECTION_KEPT: pa.array([x.kept for x in d], type=pa.bool_()),
        schema.SELECTION_REASON: pa.array([x.reason for x in d], type=pa.string()),
        schema.SELECTION_BUCKET: pa.array([x.bucket for x in d], type=pa.string()),
        schema.SELECTION_STAGE_COLUMN: pa.array([x.stage for x in d], type=pa.int64()),
        schema.SELECTION_SUBSET: pa.array([",".join(x.subsets) if x.subsets else None for x in d], type=pa.string()),
    })


def counts(outcome: Outcome) -> dict:
    d = outcome.decisions
    subsets: Counter = Counter(s for x in d for s in x.subsets)
    return {
        "input_rows": len(d),
        "kept": sum(x.kept for x in d),
        "by_reason": dict(sorted(Counter(x.reason for x in d).items())),
        "by_bucket": dict(sorted(Counter(x.bucket for x in d if x.bucket is not None).items())),
        "by_stage": {str(k): v for k, v in sorted(Counter(x.stage for x in d if x.kept and x.stage).items())},
        "by_subset": dict(sorted(subsets.items())),
    }


def write_selection(outdir: str, table: Any, ids: list, outcome: Outcome, record: dict) -> dict:
    """Write every output of ``outcome`` under ``outdir``, then ``decisions.parquet`` and ``selection.json``
    (``record``: method, mode, params, inputs, fingerprint, created, version). Returns the selection record."""
    prov = {f"select:{record['method']}": {k: record[k] for k in ("method", "mode", "params", "fingerprint",
                                                                   "version", "created")}}
    kept = [i for i, x in enumerate(outcome.decisions) if x.kept]
    outputs = {"train": Output(TRAIN_FILE, kept, dict(outcome.columns))}
    for name, o in outcome.extra.items():
        outputs[name] = dataclasses.replace(o, columns={**outcome.columns, **o.columns})
    for o in outputs.values():
        path = os.path.join(outdir, o.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_parquet(path, output_table(table, o, prov))
    write_parquet(os.path.join(outdir, DECISIONS_FILE), decisions_table(ids, outcome))
    full = {**record, "status": STATUS_COMPLETE, "counts": counts(outcome), "notes": list(outcome.notes),
            "outputs": {"decisions": DECISIONS_FILE, **{n: o.path for n, o in outputs.items()}}}
    _write_record(outdir, full)
    return full


def write_empty(outdir: str, ids: list, outcome: Outcome, record: dict, error: str) -> dict:
    """The record of an empty selection: ``decisions.parquet``, then ``selection.json`` with ``status: empty`` and
    ``error``; no row table. Returns the record."""
    write_parquet(os.path.join(outdir, DECISIONS_FILE), decisions_table(ids, outcome))
    full = {**record, "status": STATUS_EMPTY, "error": error, "counts": counts(outcome),
            "notes": list(outcome.notes), "outputs": {"decisions": DECISIONS_FILE}}
    _write_record(outdir, full)
    return full


def _write_record(outdir: str, full: dict) -> None:
    atomic_write_bytes(os.path.join(outdir, SELECTION_FILE), (json.dumps(full, indent=2, sort_keys=True) + "\n")
                       .encode())


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary_text(full: dict) -> str:
    """The printed summary: counts per bucket and stage, kept/dropped by reason, subsets, notes, outputs."""
    c = full["counts"]
    lines = [f"{full['method']} ({full['mode']}): kept {c['kept']} of {c['input_rows']} rows"]
    for title, key in (("by reason", "by_reason"), ("by bucket (all rows)", "by_bucket"),
                       ("by stage (kept)", "by_stage"), ("by subset", "by_subset")):
        if c[key]:
            lines.append(f"  {title}: " + ", ".join(f"{k}={v}" for k, v in c[key].items()))
    lines += [f"  note: {n}" for n in full["notes"]]
    lines += [f"  {name}: {path}" for name, path in full["outputs"].items()]
    return "\n".join(lines)
