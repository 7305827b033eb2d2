"""The sampler's view of the dataset rows: prompt ids, buckets and offline scores, read from a verl dataset.

Reading is arrow-native (a 1M-row parquet reads in tens of milliseconds) with an exact slow path for frames that are
not arrow-backed. :class:`Rows` checks what was read against the sampler's settings: a missing or duplicate prompt
id is always an error; a missing bucket the mode needs, an unknown bucket or an offline score outside [0, 1] is an
error naming the row and field (``on_bad_row: error``) or a counted, logged bad row left out of every draw
(``on_bad_row: skip``). Prompt ids are looked up through a dense offset map or a sorted-id array + ``searchsorted``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from verl_difficulty import schema
from verl_difficulty.sampling.config import SamplerConfig

logger = logging.getLogger(__name__)


@dataclass
class RowFields:
    """The per-row inputs of the sampler, read from a dataset."""

    prompt_ids: np.ndarray  # int64 (N,)
    buckets: Optional[list]  # per row: bucket name (str) or None; None when the field is absent everywhere
    scores: np.ndarray  # float64 (N,), NaN where absent


def _frame_table(frame):
    """(pyarrow Table, row indices or None) of a verl dataframe (``datasets.Dataset``), else ``None``."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover
        return None
    data = getattr(frame, "data", None)
    table = getattr(data, "table", data)
    if not isinstance(table, pa.Table):
        return None
    indices = getattr(frame, "_indices", None)
    if indices is not None:
        ind_table = getattr(indices, "table", indices)
        indices = ind_table.column(0)
    return table, indices


def _arrow_field(table, indices, name: str, flat: bool):
    """One field as a pyarrow Array: the flat column and ``extra_info[name]``, flat first where not null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    if flat and name in table.column_names:
        parts.append(table.column(name))
    if schema.EXTRA_INFO in table.column_names:
        ei = table.column(schema.EXTRA_INFO)
        if pa.types.is_struct(ei.type) and ei.type.get_field_index(name) >= 0:
            parts.append(pc.struct_field(ei, name))
    if not parts:
        return None
    if len(parts) == 2 and parts[0].type == parts[1].type:
        arr = pc.coalesce(parts[0], parts[1])
    elif len(parts) == 2 and parts[0].null_count == 0:
        arr = parts[0]
    elif len(parts) == 2:
        # different types in the flat column and extra_info: fall back to the slow, exact path
        raise TypeError("mixed types")
    else:
        arr = parts[0]
    if indices is not None:
        arr = arr.take(indices)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr


def _read_fields_arrow(frame, bucket_key: str, score_keys: Sequence[str]) -> Optional[RowFields]:
    import pyarrow as pa
    import pyarrow.compute as pc

    got = _frame_table(frame)
    if got is None:
        return None
    table, indices = got
    n = len(indices) if indices is not None else table.num_rows
    if schema.EXTRA_INFO not in table.column_names:
        raise ValueError(
            f"dataset has no '{schema.EXTRA_INFO}' column; the sampler needs {schema.EXTRA_INFO}.{schema.PROMPT_ID}"
        )
    if not pa.types.is_struct(table.column(schema.EXTRA_INFO).type):
        return None
    ids = _arrow_field(table, indices, schema.PROMPT_ID, flat=False)
    if ids is None:
        raise ValueError(f"dataset row 0: missing {schema.EXTRA_INFO}.{schema.PROMPT_ID} (the stable prompt id)")
    if ids.null_count:
        row = int(np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"dataset row {row}: missing {schema.EXTRA_INFO}.{schema.PROMPT_ID} (the stable prompt id)")
    if not pa.types.is_integer(ids.type):
        return None
    prompt_ids = ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    buckets = None
    b = _arrow_field(table, indices, bucket_key, flat=True)
    if b is not None:
        if not (pa.types.is_string(b.type) or pa.types.is_large_string(b.type) or pa.types.is_null(b.type)):
            return None  # unusual type: the slow path reports the bad row
        enc = pc.dictionary_encode(b)
        names = enc.dictionary.to_pylist()
        codes = enc.indices.to_numpy(zero_copy_only=False)
        valid = ~pc.is_null(enc.indices).to_numpy(zero_copy_only=False)
        buckets = BucketColumn(names, np.where(valid, codes, -1).astype(np.int32))
    scores = np.full(n, np.nan, dtype=np.float64)
    for key in score_keys:
        s = _arrow_field(table, indices, key, flat=True)
        if s is None:
            continue
        if not (pa.types.is_floating(s.type) or pa.types.is_integer(s.type) or pa.types.is_null(s.type)):
            return None
        vals = pc.cast(s, pa.float64()).to_numpy(zero_copy_only=False)
        vals = np.where(pc.is_null(s).to_numpy(zero_copy_only=False), np.nan, vals)
        fill = np.isnan(scores) & np.isfinite(vals)
        scores[fill] = vals[fill]
        bad = np.isnan(scores) & ~np.isnan(vals)  # +-inf
        scores[bad] = vals[bad]
    return RowFields(prompt_ids, buckets, scores)


@dataclass
class BucketColumn:
    """Dictionary-encoded bucket names: ``names[codes[i]]`` (code -1 = missing)."""

    names: list
    codes: np.ndarray

    def __len__(self):
        return len(self.codes)


def _read_fields_python(frame, bucket_key: str, score_keys: Sequence[str]) -> RowFields:
    """Slow exact path for frames that are not arrow-backed (a list of row dicts, a pandas DataFrame...)."""
    if hasattr(frame, "to_dict") and hasattr(frame, "columns"):  # pandas
        rows = frame.to_dict("records")
    else:
        rows = [frame[i] for i in range(len(frame))]
    n = len(rows)
    prompt_ids = np.empty(n, dtype=np.int64)
    raw_buckets: list = [None] * n
    scores = np.full(n, np.nan, dtype=np.float64)
    for i, row in enumerate(rows):
        info = row.get(schema.EXTRA_INFO) if isinstance(row, dict) else None
        pid = info.get(schema.PROMPT_ID) if isinstance(info, dict) else None
        if pid is None:
            raise ValueError(f"dataset row {i}: missing {schema.EXTRA_INFO}.{schema.PROMPT_ID} (the stable prompt id)")
        try:
            prompt_ids[i] = int(pid)
        except (TypeError, ValueError):
            raise ValueError(f"dataset row {i}: {schema.EXTRA_INFO}.{schema.PROMPT_ID}={pid!r} is not an integer")
        raw_buckets[i] = schema.row_score(row, bucket_key)
        for k in score_keys:
            v = schema.row_score(row, k)
            if v is None:
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"dataset row {i}: field {k!r}={v!r} is not a number (an offline pass rate)")
            if not math.isnan(v):
                scores[i] = v
                break
    any_bucket = any(b is not None for b in raw_buckets)
    return RowFields(prompt_ids, _as_bucket_column(raw_buckets, n) if any_bucket else None, scores)


def read_row_fields(dataset, config: SamplerConfig) -> RowFields:
    """Prompt ids, buckets and offline scores of every row of a verl dataset (``.dataframe``) or a row list."""
    frame = getattr(dataset, "dataframe", dataset)
    if frame is None:
        raise TypeError("the difficulty sampler needs verl's RLHFDataset (a dataset with a .dataframe)")
    got = None
    try:
        got = _read_fields_arrow(frame, config.bucket_key, config.score_keys)
    except TypeError:
        got = None
    return got if got is not None else _read_fields_python(frame, config.bucket_key, config.score_keys)


def read_float_field(dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(prompt ids, values)`` of a numeric row field (flat column first, then ``extra_info[name]``) for every row of
    a verl dataset (``.dataframe``) or a row list; NaN where a row has no value. Used for start-up checks of the
    training data (e.g. durian's ``visual_entropy``)."""
    frame = getattr(dataset, "dataframe", dataset)
    located = _frame_table(frame)
    if located is not None:
        table, indices = located
        try:
            arr = _arrow_field(table, indices, name, flat=True)
            ids = _arrow_field(table, indices, schema.PROMPT_ID, flat=False)
        except TypeError:
            arr = None
        else:
            n = len(frame)
            values = np.full(n, np.nan) if arr is None else np.asarray(
                arr.cast("float64").to_numpy(zero_copy_only=False), dtype=np.float64)
            pids = np.full(n, -1, dtype=np.int64) if ids is None else np.asarray(
                ids.fill_null(-1).cast("int64").to_numpy(zero_copy_only=False))
            return pids, values
    rows = frame.to_dict("records") if hasattr(frame, "to_dict") else [frame[i] for i in range(len(frame))]
    values = np.array([np.nan if (v := schema.row_score(r, name)) is None else float(v) for r in rows], np.float64)
    pids = np.array([int(schema.row_score(r, schema.PROMPT_ID, -1)) if isinstance(r.get(schema.EXTRA_INFO), dict)
                     else -1 for r in rows], dtype=np.int64)
    return pids, values


def _fingerprint(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


def _as_bucket_column(buckets: Any, n: int) -> BucketColumn:
    """Per-row bucket names (or None) as a :class:`BucketColumn`."""
    if isinstance(buckets, BucketColumn):
        return buckets
    if len(buckets) != n:
        raise ValueError(f"buckets has {len(buckets)} rows, prompt_ids {n}")
    names: list = []
    index_of: dict = {}
    codes = np.full(n, -1, dtype=np.int32)
    for i, b in enumerate(buckets):
        if b is not None:
            codes[i] = index_of.setdefault(b if isinstance(b, str) else repr(b), len(names))
            if codes[i] == len(names):
                names.append(b if isinstance(b, str) else repr(b))
    return BucketColumn(names, codes)


class Rows:
    """The rows of the training set as the sampler sees them.

    Attributes:
        prompt_ids: int64 (N,) stable prompt id per row.
        bucket_codes: int8 (N,) index into ``config.buckets`` (-1: none or unknown).
        valid: bool (N,) rows that may be drawn (not bad).
        bad_rows: number of bad rows left out (``on_bad_row: skip``).
        fingerprint: hash of the prompt ids (a checkpoint must come from the same data).
    """

    def __init__(self, prompt_ids: np.ndarray, priors: Optional[np.ndarray], buckets: Any, config: SamplerConfig):
        self.config = config
        self.buckets = tuple(config.buckets)
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        n = len(self.prompt_ids)
        self._build_id_map()
        self.fingerprint = _fingerprint(self.prompt_ids)
        priors = np.full(n, np.nan) if priors is None else np.asarray(priors, dtype=np.float64)
        if len(priors) != n:
            raise ValueError(f"priors has {len(priors)} rows, prompt_ids {n}")
        needs_bucket = config.mode == "stratified" or config.include_buckets is not None
        bad = np.zeros(n, dtype=bool)
        reasons: list[str] = []
        self.bucket_codes = self._bucket_codes(buckets, n, needs_bucket, bad, reasons)
        out_of_range = np.isfinite(priors) & ((priors < 0) | (priors > 1)) | np.isinf(priors)
        if out_of_range.any():
            rows = np.flatnonzero(out_of_range)
            self._bad(rows, f"offline score ({'/'.join(config.score_keys)}) outside [0, 1]", priors, bad, reasons)
        self.bad_rows = int(bad.sum())
        if self.bad_rows:
            logger.warning(
                "difficulty sampler: skipping %d bad rows (on_bad_row=skip): %s", self.bad_rows, "; ".join(reasons[:5])
            )
        self.valid = ~bad
        # a copy only when rows were dropped: the caller's array stays alive during the build (no second 8 MB at 1M)
        self._priors: Optional[np.ndarray] = np.where(bad, np.nan, priors) if self.bad_rows else priors

    def pop_priors(self) -> np.ndarray:
        """The offline priors (NaN where absent or bad), handed over once (to the tracker: not kept twice)."""
        priors, self._priors = self._priors, None
        return priors

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def _build_id_map(self) -> None:
        ids = self.prompt_ids
        n = len(ids)
        self._id_min = int(ids.min()) if n else 0
        span = (int(ids.max()) - self._id_min + 1) if n else 0
        if n and span <= 4 * n + 1024:
            dense = np.full(span, -1, dtype=np.int32 if n < 2**31 else np.int64)
            rows = np.arange(n, dtype=dense.dtype)
            dense[ids - self._id_min] = rows
            if (dense >= 0).sum() != n:
                self._raise_duplicate(ids)
            self._dense, self._sorted_ids, self._sorted_rows = dense, None, None
        else:
            order = np.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            if n > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
                self._raise_duplicate(ids)
            self._dense, self._sorted_ids, self._sorted_rows = None, sorted_ids, order

    @staticmethod
    def _raise_duplicate(ids: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        s = ids[order]
        j = int(np.flatnonzero(s[1:] == s[:-1])[0])
        raise ValueError(
            f"dataset rows {int(order[j])} and {int(order[j + 1])}: {schema.EXTRA_INFO}.{schema.PROMPT_ID}={int(s[j])} "
            "is not unique (the sampler keys its online estimates by this stable prompt id)"
        )

    def _bad(self, rows: np.ndarray, what: str, values, bad: np.ndarray, reasons: list) -> None:
        row = int(rows[0])
        val = values[row] if values is not None else None
        msg = f"dataset row {row}: {what}" + (f" (got {val!r})" if val is not None else "")
        if self.config.on_bad_row == "error":
            more = f"; {len(rows) - 1} more rows like it" if len(rows) > 1 else ""
            raise ValueError(msg + more + " (set difficulty.sampler.on_bad_row=skip to leave such rows out)")
        bad[rows] = True
        reasons.append(f"{msg} and {len(rows) - 1} more" if len(rows) > 1 else msg)

    def _bucket_codes(self, buckets, n: int, needs: bool, bad: np.ndarray, reasons: list) -> np.ndarray:
        cfg = self.config
        codes = np.full(n, -1, dtype=np.int8)
        why = "mode=stratified" if cfg.mode == "stratified" else "include_buckets"
        missing_field = f"missing field {cfg.bucket_key!r} (a difficulty bucket; {why} needs it)"
        if buckets is None:
            if needs:
                self._bad(np.arange(n), missing_field, None, bad, reasons)
            return codes
        buckets = _as_bucket_column(buckets, n)
        lookup = np.array([self.buckets.index(x) if x in self.buckets else -2 for x in buckets.names] + [-1],
                          dtype=np.int16)
        mapped = lookup[buckets.codes]  # code -1 -> last entry (-1)
        unknown = mapped == -2
        if unknown.any():
            rows = np.flatnonzero(unknown)
            name = buckets.names[int(buckets.codes[rows[0]])]
            if needs:
                self._bad(rows, f"field {cfg.bucket_key!r} has unknown bucket {name!r}; known: {list(self.buckets)}",
                          None, bad, reasons)
            mapped[unknown] = -1
        if needs:
            missing = (mapped == -1) & ~bad
            if missing.any():
                self._bad(np.flatnonzero(missing), missing_field, None, bad, reasons)
        codes[:] = mapped
        return codes

    def rows_of(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Dataset row of each prompt id (-1 where unknown). O(len(prompt_ids)) (dense map) or O(b log N)."""
        ids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if self._dense is not None:
            off = ids - self._id_min
            ok = (off >= 0) & (off < len(self._dense))
            out = np.full(len(ids), -1, dtype=np.int64)
            out[ok] = self._dense[off[ok]]
            return out
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_c = np.minimum(pos, len(self._sorted_ids) - 1)
        hit = (pos < len(self._sorted_ids)) & (self._sorted_ids[pos_c] == ids)
        return np.where(hit, self._sorted_rows[pos_c], -1).astype(np.int64)


    def nbytes(self) -> int:
        arrays = [self.prompt_ids, self.bucket_codes, self.valid, self._dense, self._sorted_ids, self._sorted_rows]
        return sum(a.nbytes for a in arrays if a is not None)
