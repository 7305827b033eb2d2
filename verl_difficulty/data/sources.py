"""The sources a recipe's ``prepare_data.py`` reads, as released: named splits of raw records, in source order.

:func:`open_source` opens a local parquet file or directory (the Hugging Face layout
``[data/]<split>-00000-of-00001.parquet``), jsonl/json files (one split, ``train``), or a dataset id that
``datasets.load_dataset`` loads (read through Arrow, so images keep their original bytes). A record that cannot even be
parsed comes as a :class:`RecordError` in its place, so the converter counts it and goes on. Used by
:mod:`verl_difficulty.data.convert`, which re-exports these names for the recipes.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterator, Optional

RECORD_MALFORMED = "record: malformed"
"""The skip reason of a record that is not a usable object (the other reasons live in :mod:`.convert`)."""

SPLIT_RANKS = {"train": 0, "validation": 1, "val": 1, "dev": 1, "test": 2, "mini_train": 3}
"""Known split names and their rank (the stable-index offset of a split is its rank times ``SPLIT_STRIDE``)."""


class RecordError(Exception):
    """A source record that cannot become a row: ``kind`` is one of the reason constants, ``detail`` says more."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


class SourceError(Exception):
    """The source itself cannot be read (missing path, no data files, unknown format): a usage error."""


class Splits:
    """Named splits of a source, their record counts and their raw records (dicts; a record that cannot even be
    parsed comes as a :class:`RecordError`) in source order."""

    label: str = ""
    roots: list[str]

    def names(self) -> list[str]: ...

    def count(self, split: str) -> int: ...

    def rows(self, split: str) -> Iterator[Any]: ...

    def first(self, split: str) -> Optional[dict]:
        """The first parseable record of ``split`` (format detection), or None."""
        return next((r for r in self.rows(split) if isinstance(r, dict)), None)


def _split_of(path: str) -> str:
    """``train-00000-of-00002.parquet`` -> train, ``test.parquet`` -> test, ``default/train/0000.parquet`` -> train."""
    stem = os.path.basename(path)[: -len(".parquet")]
    return os.path.basename(os.path.dirname(path)) if stem.isdigit() else re.split(r"-\d{5}-of-\d{5}", stem)[0]


class ParquetSplits(Splits):
    """Parquet files, ``{split: [files in order]}``."""

    def __init__(self, files: dict, roots: list[str], label: str):
        self.files, self.roots, self.label = files, roots, label

    def names(self) -> list[str]:
        return sorted(self.files)

    def count(self, split: str) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files.get(split, []))

    def rows(self, split: str) -> Iterator[Any]:
        import pyarrow.parquet as pq

        for f in self.files.get(split, []):
            for batch in pq.ParquetFile(f).iter_batches(batch_size=64):
                yield from batch.to_pylist()


class JsonlSplits(Splits):
    """jsonl files (one object per line, blank lines ignored) or json files holding a list of objects, read in name
    order as one split, ``train``."""

    def __init__(self, files: list[str], roots: list[str], label: str):
        self.files, self.roots, self.label = sorted(files), roots, label

    def names(self) -> list[str]:
        return ["train"]

    def count(self, split: str) -> int:
        return sum(1 for _ in self.rows(split))

    def rows(self, split: str) -> Iterator[Any]:
        for f in self.files if split == "train" else []:
            with open(f, encoding="utf-8") as fh:
                if f.endswith(".json"):
                    data = json.load(fh)
                    items: Iterator[Any] = iter(data if isinstance(data, list) else [data])
                else:
                    items = (_json_line(line) for line in fh if line.strip())
                for item in items:
                    ok = isinstance(item, (dict, RecordError))
                    yield item if ok else RecordError(RECORD_MALFORMED, "not a JSON object")


def _json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as e:
        return RecordError(RECORD_MALFORMED, f"invalid JSON line: {e}")


class HubSplits(Splits):
    """A dataset ``datasets.load_dataset`` loads (a Hugging Face dataset id: from the local cache, or downloaded when
    the network allows), read through Arrow so that images keep their original bytes."""

    def __init__(self, name: str, roots: list[str], cache_dir: Optional[str] = None):
        import datasets

        try:
            self.ds = datasets.load_dataset(name, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - any loader failure means the source is not readable
            raise SourceError(f"cannot load {name!r} with datasets.load_dataset: {type(e).__name__}: {e}") from e
        self.roots, self.label = roots, name

    def names(self) -> list[str]:
        return sorted(self.ds)

    def count(self, split: str) -> int:
        return self.ds[split].num_rows if split in self.ds else 0

    def rows(self, split: str) -> Iterator[Any]:
        for table in self.ds[split].with_format("arrow").iter(batch_size=64) if split in self.ds else []:
            yield from table.to_pylist()


def open_source(source: str, kind: str, image_roots: Optional[list[str]] = None) -> Splits:
    """The splits of ``source`` for ``kind`` = ``parquet`` or ``jsonl`` (jsonl and json files): one file (a parquet
    file whose name is no known split counts as train), a directory (its ``data/`` files, else its top-level files,
    else any below it), or, when no such path exists, a dataset id (parquet only). Relative image paths resolve
    against the source's directory, then ``image_roots``."""
    extra = [os.path.abspath(r) for r in image_roots or []]
    exts = {"parquet": (".parquet",), "jsonl": (".jsonl", ".json")}[kind]
    if os.path.isfile(source):
        if not source.endswith(exts):
            raise SourceError(f"{source} is not a {'/'.join(exts)} file")
        files, roots = [source], [os.path.dirname(os.path.abspath(source))] + extra
    elif os.path.isdir(source):
        files = []
        for pattern in (("data", "*"), ("*",), ("**", "*")):
            files = sorted(f for e in exts for f in glob.glob(os.path.join(source, *pattern) + e, recursive=True))
            if files:
                break
        if not files:
            raise SourceError(f"no {'/'.join(exts)} files under {source}")
        roots = [os.path.abspath(source)] + extra
    elif kind == "parquet" and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return HubSplits(source, extra)
    else:
        raise SourceError(f"source not found: {source}")
    if kind == "jsonl":
        return JsonlSplits(files, roots, source)
    by_split: dict = {}
    for f in files:
        split = _split_of(f)
        by_split.setdefault(split if len(files) > 1 or split in SPLIT_RANKS else "train", []).append(f)
    return ParquetSplits(by_split, roots, source)
