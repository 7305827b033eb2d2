"""Loading the report's inputs: a scored parquet, a scoring output folder, a selection folder (several at once).

* **scored parquet**: any ``*.parquet`` file holding score columns (``verl-difficulty schema``).
* **scoring folder** (``verl-difficulty score -o OUT``): ``scored.parquet`` plus ``summary.json`` (rows in / scored /
  bad, bad-row reasons), ``manifest.json`` (the job: input files, scorers) and ``bad_rows.jsonl``.
* **selection folder** (``verl-difficulty select -o OUT``): ``selection.json`` (method, mode, params, inputs, counts,
  outputs) and ``decisions.parquet`` (one row per input row: ``index``, ``kept``, ``reason``, ``bucket``, ``stage``,
  ``subset``); ``train.parquet`` holds the kept rows.

Columns are read lazily and only those a section asks for, so the images of a scored dataset are never loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

SCORED = "scored"
SCORING = "scoring"
SELECTION = "selection"

SCORED_FILE = "scored.parquet"
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
BAD_ROWS_FILE = "bad_rows.jsonl"
SELECTION_FILE = "selection.json"
DECISIONS_FILE = "decisions.parquet"


class ReportInputError(ValueError):
    """An input the report cannot read; the message names it and says what was expected."""


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ReportInputError(f"{path}: cannot read it as JSON ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _schema_names(path: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as e:  # noqa: BLE001 - any unreadable file is an input error naming it
        raise ReportInputError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e


@dataclass
class ReportInput:
    """One input: its kind, the parquet that holds its rows, and the side files of its folder."""

    path: str
    kind: str
    table_path: str
    label: str
    columns: list[str]
    summary: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    bad_rows: Optional[int] = None
    selection: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_rows(self) -> int:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(self.table_path).metadata.num_rows)

    def has(self, columns) -> bool:
        return all(c in self.columns for c in columns)

    def read(self, columns) -> Any:
        """A pandas DataFrame of ``columns`` (cached per column)."""
        import pandas as pd
        import pyarrow.parquet as pq

        missing = [c for c in columns if c not in self._cache]
        if missing:
            t = pq.read_table(self.table_path, columns=missing)
            for c in missing:
                self._cache[c] = t.column(c).to_pandas()
        return pd.DataFrame({c: self._cache[c] for c in columns})

    def unique_strings(self, column: str) -> list[str]:
        """The distinct non-null values of a string column (read without materialising one object per row)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        col = pq.read_table(self.table_path, columns=[column]).column(column)
        return [v for v in pc.unique(col).to_pylist() if v is not None]

    def input_files(self) -> list[str]:
        """The dataset files behind this input (a scoring job's inputs, a selection's inputs, else itself)."""
        if self.kind == SCORING:
            return [str(i.get("path", i)) if isinstance(i, dict) else str(i)
                    for i in self.manifest.get("job", {}).get("inputs", [])] or [self.table_path]
        if self.kind == SELECTION:
            return [str(i.get("path", "?")) for i in self.selection.get("inputs", []) if isinstance(i, dict)]
        return [self.path]


def _count_lines(path: str) -> Optional[int]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def _scoring_folder(path: str, label: str) -> ReportInput:
    table = os.path.join(path, SCORED_FILE)
    if not os.path.exists(table):
        raise ReportInputError(f"{path}: a scoring output folder without {SCORED_FILE} (the job is not complete: "
                               "rerun the same verl-difficulty score command to finish it)")
    summary = _read_json(os.path.join(path, SUMMARY_FILE)) if os.path.exists(os.path.join(path, SUMMARY_FILE)) else {}
    manifest = _read_json(os.path.join(path, MANIFEST_FILE)) if os.path.exists(os.path.join(path, MANIFEST_FILE)) \
        else {}
    bad = summary.get("rows_bad")
    if bad is None:
        bad = _count_lines(os.path.join(path, BAD_ROWS_FILE))
    return ReportInput(path=path, kind=SCORING, table_path=table, label=label, columns=_schema_names(table),
                       summary=summary, manifest=manifest, bad_rows=bad)


def _selection_folder(path: str, label: str) -> ReportInput:
    sel = _read_json(os.path.join(path, SELECTION_FILE))
    table = os.path.join(path, DECISIONS_FILE)
    if not os.path.exists(table):
        raise ReportInputError(f"{path}: a selection folder without {DECISIONS_FILE}")
    method = sel.get("method", "?")
    return ReportInput(path=path, kind=SELECTION, table_path=table, label=f"{label} ({method})",
                       columns=_schema_names(table), selection=sel)


def load_input(path: str, label: Optional[str] = None) -> ReportInput:
    """Read one input (see the module docstring); :class:`ReportInputError` naming it when it is none of them."""
    path = os.path.abspath(os.fspath(path))
    label = label or os.path.basename(path.rstrip(os.sep)) or path
    if not os.path.exists(path):
        raise ReportInputError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, SELECTION_FILE)):
            return _selection_folder(path, label)
        if os.path.exists(os.path.join(path, SCORED_FILE)) or os.path.exists(os.path.join(path, MANIFEST_FILE)):
            return _scoring_folder(path, label)
    elif path.endswith(".parquet"):
        return ReportInput(path=path, kind=SCORED, table_path=path, label=label, columns=_schema_names(path))
    raise ReportInputError(
        f"{path}: neither a scored parquet file (*.parquet), a scoring output folder ({SCORED_FILE}, {SUMMARY_FILE}, "
        f"{MANIFEST_FILE}) nor a selection folder ({SELECTION_FILE}, {DECISIONS_FILE})")


def load_inputs(paths) -> list[ReportInput]:
    """Read every input; labels are made unique (``name``, ``name#2``, ...) so legends tell them apart."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[ReportInput] = []
    seen: dict[str, int] = {}
    for p in paths:
        item = p if isinstance(p, ReportInput) else load_input(p)
        n = seen.get(item.label, 0) + 1
        seen[item.label] = n
        if n > 1:
            item.label = f"{item.label}#{n}"
        out.append(item)
    if not out:
        raise ReportInputError("no input given: pass scored parquet files, scoring folders or selection folders")
    return out
