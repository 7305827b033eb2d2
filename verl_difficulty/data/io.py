"""Parquet I/O of verl datasets: atomic writes, score columns mirrored inside ``extra_info``, provenance merging.

* :func:`atomic_write` / :func:`atomic_write_bytes` / :func:`write_parquet`: write to a temporary name in the same directory, fsync, then
  ``os.replace`` (atomic on POSIX): a reader (or a resumed job) never sees a half-written file.
* :func:`set_struct_fields`: add or replace children of a struct column (how ``extra_info`` gets a field).
* :func:`add_score_columns`: what a scored parquet holds: the input rows plus score columns, each mirrored inside
  ``extra_info`` (verl forwards ``extra_info`` to the reward loop and drops unknown top-level columns), plus the
  :data:`~verl_difficulty.schema.SCORE_PROVENANCE` column merged with the provenance already in the row.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Callable, Optional

from verl_difficulty.schema import EXTRA_INFO, SCORE_PROVENANCE

TMP_MARK = ".tmp-"
"""Part of every temporary file name (so a resumed job can remove leftovers)."""
PROVENANCE_META_KEY = b"verl_difficulty.provenance"
"""Parquet schema metadata key of the scoring provenance (JSON)."""


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (the same object always gives the same text)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _create_temporary(path: str) -> str:
    """Create an empty temporary file beside ``path`` (mode 0666 minus the umask, unlike ``tempfile.mkstemp``'s
    0600, so the renamed output is readable by others exactly as a plain ``open(path, "w")`` would make it)."""
    d = os.path.dirname(path) or "."
    for _ in range(100):
        tmp = os.path.join(d, os.path.basename(path) + TMP_MARK + secrets.token_hex(4))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def fsync_dir(path: str) -> None:
    """fsync a directory (makes a rename inside it durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, fsync it, then rename it to ``path`` (and fsync the
    directory). The file gets the usual permissions (0666 minus the umask). On any error (disk full, permission)
    ``path`` is left as it was and the temporary file is removed."""
    tmp = _create_temporary(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(path) or ".")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def write_parquet(path: str, table: Any, compression: str = "snappy") -> None:
    """Write a pyarrow table to ``path`` atomically."""
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=compression))


def merge_provenance(existing: Optional[str], new: dict) -> str:
    """The JSON provenance of a row: its ``existing`` entries (other scorers) updated with ``new``."""
    merged: dict = {}
    if existing:
        try:
            old = json.loads(existing)
            if isinstance(old, dict):
                merged.update(old)
        except ValueError:
            merged["previous"] = existing
    merged.update(new)
    return canonical_json(merged)


def set_struct_fields(struct: Any, columns: dict) -> Any:
    """The struct array ``struct`` with the children named in ``columns`` replaced or appended (null rows kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(struct, pa.ChunkedArray):
        struct = struct.combine_chunks()
        if isinstance(struct, pa.ChunkedArray):  # zero chunks
            struct = pa.array([], type=struct.type)
    stype = struct.type
    children = struct.flatten()
    arrays, fields = [], []
    for i in range(stype.num_fields):
        if stype.field(i).name not in columns:
            arrays.append(children[i])
            fields.append(stype.field(i))
    for name, arr in columns.items():
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    mask = pc.is_null(struct) if struct.null_count else None
    return pa.StructArray.from_arrays(arrays, fields=fields, mask=mask)


def add_score_columns(table: Any, columns: dict, provenance: dict) -> Any:
    """``table`` plus the score ``columns`` (name -> pyarrow array, one value per row) and the merged provenance, all
    mirrored in ``extra_info`` when it is a struct column (a map or JSON-string ``extra_info`` is left as is).

    Columns of the same name already in ``table`` (a re-score) are replaced; provenance entries of other scorers are
    kept; the provenance is also stored in the schema metadata (``PROVENANCE_META_KEY``).
    """
    import pyarrow as pa

    cols = dict(columns)
    prev = table.column(SCORE_PROVENANCE).to_pylist() if SCORE_PROVENANCE in table.column_names else \
        [None] * table.num_rows
    cache: dict = {}
    for p in prev:
        if p not in cache:
            cache[p] = merge_provenance(p, provenance)
    cols[SCORE_PROVENANCE] = pa.array([cache[p] for p in prev], type=pa.string())
    t = table
    for name, arr in cols.items():
        if name in t.column_names:
            t = t.set_column(t.column_names.index(name), pa.field(name, arr.type), arr)
        else:
            t = t.append_column(pa.field(name, arr.type), arr)
    if EXTRA_INFO in t.column_names and pa.types.is_struct(t.schema.field(EXTRA_INFO).type):
        ei = set_struct_fields(t.column(EXTRA_INFO), cols)
        t = t.set_column(t.column_names.index(EXTRA_INFO), pa.field(EXTRA_INFO, ei.type), ei)
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)
    meta[PROVENANCE_META_KEY] = canonical_json(provenance).encode()
    return t.replace_schema_metadata(meta)
