"""The input side of a scoring job: input files, their identities, the fixed shards and reading a shard's rows.

The input (one parquet, several, or a directory of ``*.parquet`` shards, read in sorted order) is cut into fixed
shards of ``shard_size`` consecutive rows (a shard never spans two files). Shard boundaries are part of the job
fingerprint, so a resumed job reuses them.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Optional


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
