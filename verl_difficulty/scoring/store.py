"""The output directory of a scoring job: manifest, atomic shard commits, and the final merge.

Layout (``output_dir``)::

    manifest.json          job fingerprint, settings, provenance, and one entry per committed shard
    shards/part-00000.parquet ...   scored rows of each shard (bad rows left out), in input order
    shards/part-00000.bad.jsonl ... bad rows of each shard (only when it has some)
    scored.parquet         all shards concatenated in input order (written when every shard is done)
    bad_rows.jsonl         all bad rows: shard, file, row, extra_info.index, bad_row_reason
    summary.json           counts, bad-row reasons, generations, per-scorer statistics, wall time

``shards/`` is itself a valid parquet dataset of the same rows; ``scored.parquet`` is the file to hand to verl.

Commit protocol (exact resume). Every file is written to a temporary name in the same directory and renamed into place
(:mod:`verl_difficulty.data.io`); a shard is committed by rewriting ``manifest.json`` the same way after its parquet
and bad-row files exist; the manifest records each shard file's size and SHA-256. A rerun with the same settings skips
committed shards whose files are intact (size and SHA-256 checked, again before the merge), redoes everything else
(a corrupt shard is named in the log and redone), and removes stray temporary files; a ``scored.parquet`` is reused
only when its recorded SHA-256 matches. A rerun with different settings is refused unless ``overwrite`` (or unless
the other job finished no shard). A corrupt manifest is named; ``overwrite`` starts over from it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from verl_difficulty.data.io import TMP_MARK, add_score_columns, atomic_write, atomic_write_bytes, write_parquet
from verl_difficulty.scoring.shards import Shard

FORMAT = "verl-difficulty-scores/1"
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
MERGED = "scored.parquet"
BAD_ROWS = "bad_rows.jsonl"
SUMMARY = "summary.json"


class CorruptOutput(ValueError):
    """An output directory the engine cannot read (corrupt manifest): the message says how to recover."""


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def assemble_shard(table: Any, result: dict, fields: list, provenance: dict) -> Any:
    """Input rows of a shard minus its bad rows, plus score columns, provenance, and their ``extra_info`` mirror."""
    import pyarrow as pa

    scores = result["scores"]
    keep = [s is not None for s in scores]
    kept = [s for s in scores if s is not None]
    t = table.filter(pa.array(keep, type=pa.bool_())) if not all(keep) else table
    cols = {name: pa.array([s.get(name) for s in kept], type=typ) for name, typ in fields}
    return add_score_columns(t, cols, provenance)


class OutputDir:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.shards = os.path.join(self.path, SHARDS_DIR)
        self.manifest_path = os.path.join(self.path, MANIFEST)
        self.merged = os.path.join(self.path, MERGED)
        self.bad_rows = os.path.join(self.path, BAD_ROWS)
        self.summary = os.path.join(self.path, SUMMARY)
        self.manifest: dict = {}
        self._verified: dict[str, tuple] = {}

    def shard_file(self, shard: Shard) -> str:
        return os.path.join(self.shards, shard.stem + ".parquet")

    def bad_file(self, shard: Shard) -> str:
        return os.path.join(self.shards, shard.stem + ".bad.jsonl")

    def clean_temporaries(self) -> int:
        n = 0
        for d in (self.path, self.shards):
            for p in glob.glob(os.path.join(d, "*" + TMP_MARK + "*")):
                try:
                    os.unlink(p)
                    n += 1
                except OSError:
                    pass
        return n

    def _load_manifest(self, overwrite: bool) -> Optional[dict]:
        """The existing manifest, None if there is none (or it is corrupt and ``overwrite``)."""
        if not os.path.exists(self.manifest_path):
            return None
        try:
            with open(self.manifest_path) as f:
                old = json.load(f)
            if not isinstance(old, dict) or not isinstance(old.get("done", {}), dict) or "fingerprint" not in old:
                raise ValueError("not a scoring manifest")
        except ValueError as e:
            if overwrite:
                return {}
            raise CorruptOutput(f"{self.manifest_path} is corrupt ({type(e).__name__}: {' '.join(str(e).split())}"
                                "); rerun with --overwrite to start over, or use another --output directory") from e
        return old

    def _clear(self) -> None:
        for p in glob.glob(os.path.join(self.shards, "*")):
            os.unlink(p)
        for p in (self.merged, self.bad_rows, self.summary, self.manifest_path):
            if os.path.exists(p):
                os.unlink(p)

    def open(self, fingerprint: str, job_desc: dict, overwrite: bool,
             log: Callable[[str], None] = lambda s: None) -> dict:
        """Load the manifest of the same job, or start a new one (refusing to mix two jobs in one directory).

        A directory whose job committed no shard (it died before its first one) is taken over by a job with other
        settings: nothing of it is worth keeping, so a corrected rerun is never blocked by it.
        """
        os.makedirs(self.shards, exist_ok=True)
        old = self._load_manifest(overwrite)
        if old is not None:
            if old.get("fingerprint") == fingerprint and not overwrite:
                self.manifest = old
                self.clean_temporaries()
                return self.manifest
            if not overwrite and old.get("done"):
                diff = sorted(k for k in set(old.get("job", {})) | set(job_desc)
                              if old.get("job", {}).get(k) != job_desc.get(k))
                raise FileExistsError(
                    f"{self.path} holds the output of another scoring job (settings differ in: {', '.join(diff)}). "
                    "Rerun with the same settings to resume it, pass --overwrite to start over, or use another "
                    "--output directory."
                )
            if not overwrite:
                log(f"{self.path}: replacing the output of a job that finished no shard")
            self._clear()
        self.clean_temporaries()
        self.manifest = {"format": FORMAT, "fingerprint": fingerprint, "job": job_desc,
                         "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "done": {},
                         "complete": False}
        self.save()
        return self.manifest

    def save(self) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def check_done(self, shard: Shard) -> Optional[str]:
        """None if the shard is committed and its files are intact, else why not (``"not done"`` if it never was).

        Intact: the parquet file has the recorded size and SHA-256 (a file verified earlier in this process and not
        changed since, by size and mtime, is not hashed again), its bad-row file exists when it had bad rows.
        """
        entry = self.manifest.get("done", {}).get(str(shard.id))
        if not entry:
            return "not done"
        path = self.shard_file(shard)
        try:
            st = os.stat(path)
        except OSError:
            return f"{path} is missing"
        if st.st_size != entry.get("bytes"):
            return f"{path} has {st.st_size} bytes, {entry.get('bytes')} were committed"
        want = entry.get("sha256")
        if want and self._verified.get(path) != (st.st_size, st.st_mtime_ns, want):
            got = sha256_file(path)
            if got != want:
                return f"{path} is corrupt (SHA-256 {got[:12]}..., {want[:12]}... was committed)"
            self._verified[path] = (st.st_size, st.st_mtime_ns, want)
        if entry.get("bad") and not os.path.exists(self.bad_file(shard)):
            return f"{self.bad_file(shard)} is missing"
        return None

    def is_done(self, shard: Shard) -> bool:
        return self.check_done(shard) is None

    def forget(self, shard: Shard) -> None:
        """Drop a shard's manifest entry (it will be redone); the manifest is saved."""
        if self.manifest.get("done", {}).pop(str(shard.id), None) is not None:
            self.manifest["complete"] = False
            self.save()

    def commit(self, shard: Shard, table: Any, bad: list, info: dict) -> None:
        """Write a shard's files atomically, then record it in the manifest (the commit point)."""
        if bad:
            data = "".join(json.dumps(b, sort_keys=True) + "\n" for b in bad).encode()
            atomic_write_bytes(self.bad_file(shard), data)
        elif os.path.exists(self.bad_file(shard)):
            os.unlink(self.bad_file(shard))
        path = self.shard_file(shard)
        write_parquet(path, table)
        st = os.stat(path)
        digest = sha256_file(path)
        self._verified[path] = (st.st_size, st.st_mtime_ns, digest)
        entry = {"rows_in": shard.rows, "rows_out": table.num_rows, "bad": len(bad), "bytes": st.st_size,
                 "sha256": digest, **info}
        self.manifest.setdefault("done", {})[str(shard.id)] = entry
        self.save()

    def merged_ok(self) -> Optional[str]:
        """None if ``scored.parquet`` is the recorded, intact merge of a complete job, else why not."""
        if not self.manifest.get("complete"):
            return "the job is not complete"
        if not os.path.exists(self.merged):
            return f"{self.merged} is missing"
        if os.path.getsize(self.merged) != self.manifest.get("merged_bytes"):
            return f"{self.merged} has another size than the one recorded"
        if sha256_file(self.merged) != self.manifest.get("merged_sha256"):
            return f"{self.merged} is corrupt (SHA-256 differs from the one recorded)"
        return None


def merge(out: OutputDir, shards: list[Shard]) -> None:
    """Concatenate the shards in input order into ``scored.parquet`` and their bad rows into ``bad_rows.jsonl``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [out.shard_file(s) for s in shards]
    schemas = [pq.read_schema(p) for p in paths]
    target = schemas[0]
    if any(not s.equals(target, check_metadata=False) for s in schemas[1:]):
        target = pa.unify_schemas(schemas, promote_options="permissive")
    target = target.with_metadata(schemas[0].metadata)

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, target, compression="snappy") as writer:
            for p in paths:
                t = pq.read_table(p)
                if not t.schema.equals(target, check_metadata=False):
                    t = t.cast(target)
                writer.write_table(t.replace_schema_metadata(target.metadata))

    atomic_write(out.merged, write)
    chunks = []
    for s in shards:
        if os.path.exists(out.bad_file(s)):
            with open(out.bad_file(s), "rb") as f:
                chunks.append(f.read())
    atomic_write_bytes(out.bad_rows, b"".join(chunks))
