"""From a public dataset as released to verl RLHF parquet rows: the shared part of every recipe's ``prepare_data.py``.

A recipe script gives a :class:`Job`: the source (:func:`~verl_difficulty.data.sources.open_source`, re-exported
here: a local file or directory as released, parquet in the Hugging Face layout ``[data/]<split>-00000-of-00001.parquet``
or jsonl/json plus image folders, or a dataset id that ``datasets.load_dataset`` loads, read through Arrow so images
keep their bytes), a ``read`` function (one raw
record -> :class:`SourceRecord`) and a :class:`RowSpec` (data_source, :class:`PromptStyle`: the system prompt and/or
instruction its reward expects). :func:`cli` reads the records in file order, in batches (flat memory), and writes:

* **One row per record** (:func:`make_row`): ``data_source``; ``prompt`` (chat messages, one ``<image>`` per image in
  the user turn: the question's own placeholders when their count matches, prepended when it has none); ``images``
  as ``{"bytes", "path"}`` (PNG/JPEG bytes kept as they are, other formats re-encoded as PNG); ``ability``;
  ``reward_model {"style": "rule", "ground_truth"}``; ``extra_info`` with ``index``, ``split`` (train/val),
  ``source_split``, ``source_row``, ``source_id``, ``question``, ``answer``, ``task_type``. Every row passes
  :func:`verl_difficulty.data.rows.validate_row` before it is written.
* **Stable ids**: ``index = index_base + split_offset(source split) + row number in that split`` (records counted in
  file order, broken ones included, files of a split in name order): never a shuffle, ``--limit`` or skipped rows,
  so a source gives the same ids on every run. Source ids (strings, hashes or absent) go to ``source_id``.
* **Bad records** (no image, an image missing or undecodable, no answer, no question text, a placeholder count that
  does not match the images, a malformed record) are skipped and counted with their reason and source row; the
  summary goes to stdout and ``prepare_summary.json``; the run fails only when no training row could be written.
* **Validation rows**: the source's own split when the recipe names one (``--val-size N``: a seeded sample of N of
  its rows), else a seeded held-out slice of ``--val-size`` training records. Files are written atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Optional

from verl_difficulty.data.io import atomic_write, atomic_write_bytes
from verl_difficulty.data.rows import (ABILITY, GROUND_TRUTH, IMAGE_PLACEHOLDER, PROMPT, REWARD_MODEL, as_list,
                                      validate_row)
from verl_difficulty.data.sources import (RECORD_MALFORMED, SPLIT_RANKS, HubSplits, JsonlSplits,  # noqa: F401
                                         ParquetSplits, RecordError, SourceError, Splits, open_source)
from verl_difficulty.schema import DATA_SOURCE, EXTRA_INFO, IMAGES, PROMPT_ID, TASK_TYPE

# Reasons a source record is skipped (the keys of the summary).
IMAGE_MISSING = "image: missing"
IMAGE_UNREADABLE = "image: unreadable"
PLACEHOLDER_MISMATCH = "image: placeholder mismatch"
ANSWER_MISSING = "answer: missing"
QUESTION_MISSING = "question: missing"
ROW_INVALID = "row: invalid"

SPLIT_STRIDE = 10**8  # index distance between the splits of one source (a split holds fewer rows)
DATASET_STRIDE = 10**12  # unit of RowSpec.index_base: datasets a recipe mixes use different multiples
DEFAULT_VAL_SIZE = 256  # records held out for val.parquet (no validation split, no --val-size)
OUTPUTS = ("train", "val")
SUMMARY_FILE = "prepare_summary.json"
_KEPT_FORMATS = ("PNG", "JPEG")
_FLUSH_ROWS = 128
_PROGRESS_MIN = 500


@dataclass
class SourceRecord:
    """One record of a source, in the source's terms (what a recipe's ``read`` function returns)."""

    question: Any
    """The question text; may already hold ``<image>`` placeholders (one per image) or none."""
    answer: Any
    images: list = field(default_factory=list)
    """Image entries: ``{"bytes", "path"}`` dicts, raw bytes, PIL images or file paths (``file://`` allowed)."""
    source_id: Any = None
    ability: Optional[str] = None
    task_type: Optional[str] = None
    data_source: Optional[str] = None


@dataclass(frozen=True)
class PromptStyle:
    """How a question becomes chat messages: an optional system prompt, an optional instruction after the question."""

    system_prompt: Optional[str] = None
    instruction: Optional[str] = None
    separator: str = " "

    def messages(self, question: str) -> list[dict]:
        user = f"{question}{self.separator}{self.instruction}" if self.instruction else question
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return out + [{"role": "user", "content": user}]


@dataclass(frozen=True)
class RowSpec:
    """What every row of a recipe's dataset shares."""

    data_source: str
    style: PromptStyle
    ability: str = "math"
    task_type: str = "math"
    index_base: int = 0


# ====================================================================================================================
# One record -> one row
# ====================================================================================================================
def answer_text(answer: Any) -> str:
    """The ground truth as a string (numbers plainly, lists/dicts as JSON); :class:`RecordError` if there is none."""
    if isinstance(answer, (list, tuple)) and len(answer) == 1:
        answer = answer[0]
    if answer is None or answer == [] or answer == {} or (isinstance(answer, float) and math.isnan(answer)):
        raise RecordError(ANSWER_MISSING, "no answer")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, (list, tuple, dict)):
        answer = json.dumps(answer, ensure_ascii=False)
    elif not isinstance(answer, (str, int, float)):  # bool is an int
        raise RecordError(RECORD_MALFORMED, f"answer of type {type(answer).__name__}")
    if not str(answer).strip():
        raise RecordError(ANSWER_MISSING, "empty answer")
    return str(answer).strip()


def with_placeholders(question: Any, n_images: int) -> str:
    """``question`` with exactly one ``<image>`` per image: kept when the count matches, prepended when it has none."""
    if not isinstance(question, str):
        raise RecordError(RECORD_MALFORMED if question is not None else QUESTION_MISSING,
                          f"question of type {type(question).__name__}")
    question = question.strip()
    if not question.replace(IMAGE_PLACEHOLDER, "").strip():
        raise RecordError(QUESTION_MISSING, "no question text")
    found = question.count(IMAGE_PLACEHOLDER)
    if found == 0:
        return IMAGE_PLACEHOLDER * n_images + question
    if found != n_images:
        raise RecordError(PLACEHOLDER_MISMATCH, f"{found} {IMAGE_PLACEHOLDER} placeholders for {n_images} images")
    return question


def resolve_image_path(path: Any, roots: list[str]) -> Optional[str]:
    """An existing file for an image path: as given (``file://`` stripped), then under each root, then under each root
    with the path's leading directories removed one at a time (released image lists may keep the absolute prefix of
    the machine they were made on). None if no file is found."""
    p = str(path).removeprefix("file://")
    if os.path.isabs(p) and os.path.isfile(p):
        return p
    parts = [x for x in p.replace("\\", "/").split("/") if x not in ("", ".")]
    for root in roots:
        for k in range(len(parts)):
            if os.path.isfile(os.path.join(root, *parts[k:])):
                return os.path.join(root, *parts[k:])
    return p if os.path.isfile(p) else None


def encode_image(entry: Any, roots: list[str]) -> tuple[dict, Any]:
    """One image entry -> (``{"bytes": PNG or JPEG bytes, "path"}``, the decoded PIL image); :class:`RecordError`
    ``image: missing`` (no data, no such file, a remote URL: nothing is downloaded) or ``image: unreadable``."""
    from PIL import Image

    data, path = (entry.get("bytes"), entry.get("path")) if isinstance(entry, dict) else (None, None)
    if isinstance(entry, dict) and not data and path:
        entry = path
    if isinstance(entry, Image.Image):
        data, path = _png(entry), getattr(entry, "filename", None) or None
    elif isinstance(entry, (bytes, bytearray, memoryview)):
        data = bytes(entry)
    elif isinstance(entry, (str, os.PathLike)):
        path = str(entry).removeprefix("file://")
        remote = re.match(r"^https?://", path) is not None
        found = None if remote else resolve_image_path(path, roots)
        if found is None:
            raise RecordError(IMAGE_MISSING, f"{'remote, not downloaded' if remote else 'file not found'}: {path}")
        with open(found, "rb") as f:
            data = f.read()
    elif not isinstance(entry, dict):
        raise RecordError(RECORD_MALFORMED, f"image entry of type {type(entry).__name__}")
    if not data:
        raise RecordError(IMAGE_MISSING, "image without bytes or path")
    try:
        pil = Image.open(io.BytesIO(data))
        fmt = pil.format
        pil.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure makes the record unusable
        why = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the image bytes", str(e))
        raise RecordError(IMAGE_UNREADABLE, f"{type(e).__name__}: {why}") from None
    return {"bytes": bytes(data) if fmt in _KEPT_FORMATS else _png(pil), "path": path}, pil


def _png(pil: Any) -> bytes:
    if pil.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
        pil = pil.convert("RGBA" if "A" in pil.mode else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def chat_question(messages: Any) -> tuple[str, list]:
    """The question of a chat (user turns only, system and assistant turns dropped) and the image entries named in
    its content parts: string contents are kept as they are; in a list of parts each image part becomes an
    ``<image>`` placeholder at its place (``image``/``image_url``/``url``/``path`` key, ``file://`` allowed). ShareGPT
    turns (``from``/``value``, role ``human``) work too."""
    texts: list[str] = []
    images: list = []
    for message in as_list(messages):
        if not isinstance(message, dict):
            raise RecordError(RECORD_MALFORMED, f"chat message of type {type(message).__name__}")
        role = message.get("role", message.get("from", "user"))
        if role not in ("user", "human"):
            continue
        content = message.get("content", message.get("value"))
        if isinstance(content, str):
            texts.append(content)
            continue
        parts = []
        for part in as_list(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append(part.get("text") or "")
            elif isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                parts.append(IMAGE_PLACEHOLDER)
                src = next((part[k] for k in ("image", "image_url", "url", "path") if part.get(k)), None)
                images.append(src.get("url") if isinstance(src, dict) else src)
        texts.append("".join(parts))
    return "\n".join(t for t in texts if t), [im for im in images if im is not None]


def read_problem_answer(raw: dict) -> SourceRecord:
    """A record of the EasyR1 / Hugging Face layout ``images`` (list of ``{bytes, path}``), ``problem`` (with its
    ``<image>`` placeholders), ``answer``: Geometry3K (hiyouga/geometry3k), K12-freeform (xyliu6/k12-freeform)."""
    images = raw["images"] if "images" in raw else [raw.get("image")]
    return SourceRecord(question=raw.get("problem"), answer=raw.get("answer"), images=images, source_id=raw.get("id"))


def split_offset(split: str) -> int:
    """Index offset of a source split: train 0, validation/val/dev 1, test 2, mini_train 3 (x :data:`SPLIT_STRIDE`);
    other names a fixed rank from a CRC32 of the name (16 .. 4111)."""
    rank = SPLIT_RANKS.get(split)
    return (16 + zlib.crc32(split.encode("utf-8")) % 4096 if rank is None else rank) * SPLIT_STRIDE


def stable_index(spec: RowSpec, split: str, position: int) -> int:
    """``extra_info.index`` of the record at ``position`` of source split ``split``."""
    if not 0 <= position < SPLIT_STRIDE:
        raise ValueError(f"row number {position} outside [0, {SPLIT_STRIDE})")
    return int(spec.index_base) + split_offset(split) + int(position)


def make_row(record: SourceRecord, spec: RowSpec, *, split: str, out_split: str, position: int,
             roots: list[str]) -> dict:
    """The verl row of one source record (raises :class:`RecordError` with the reason it cannot be one)."""
    answer = answer_text(record.answer)
    entries = [e for e in as_list(record.images) if e is not None]
    if not entries:
        raise RecordError(IMAGE_MISSING, "the record has no image")
    question = with_placeholders(record.question, len(entries))
    encoded, decoded = [], []
    for k, entry in enumerate(entries):
        try:
            enc, pil = encode_image(entry, roots)
        except RecordError as e:
            raise RecordError(e.kind, f"image {k}: {e.detail}") from None
        encoded.append(enc)
        decoded.append(pil)
    extra = {PROMPT_ID: stable_index(spec, split, position), "split": out_split, "source_split": split,
             "source_row": int(position), "source_id": None if record.source_id is None else str(record.source_id),
             "question": question, "answer": answer, TASK_TYPE: record.task_type or spec.task_type}
    row = {DATA_SOURCE: record.data_source or spec.data_source, PROMPT: spec.style.messages(question),
           IMAGES: encoded, ABILITY: record.ability or spec.ability,
           REWARD_MODEL: {"style": "rule", GROUND_TRUTH: answer}, EXTRA_INFO: extra}
    # the images were decoded above: validate with those (same bytes) instead of decoding every image twice
    problem = validate_row({**row, IMAGES: decoded})
    if problem:
        raise RecordError(ROW_INVALID, problem)
    return row


def parquet_schema() -> Any:
    """The explicit pyarrow schema of a prepared recipe parquet (fixed, so files are identical run to run)."""
    import pyarrow as pa

    text = pa.string()
    extra = [(PROMPT_ID, pa.int64()), ("split", text), ("source_split", text), ("source_row", pa.int64()),
             ("source_id", text), ("question", text), ("answer", text), (TASK_TYPE, text)]
    return pa.schema([
        (DATA_SOURCE, text), (PROMPT, pa.list_(pa.struct([("role", text), ("content", text)]))),
        (IMAGES, pa.list_(pa.struct([("bytes", pa.binary()), ("path", text)]))), (ABILITY, text),
        (REWARD_MODEL, pa.struct([("style", text), (GROUND_TRUTH, text)])), (EXTRA_INFO, pa.struct(extra)),
    ])


# ====================================================================================================================
# The run: read, convert, write, summarise
# ====================================================================================================================
@dataclass
class Summary:
    """Rows written per output, records skipped per reason (the first :attr:`MAX_LISTED` with split and row)."""

    recipe: str
    source: str
    val_from: str = ""
    written: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skipped_rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    MAX_LISTED = 1000

    def skip(self, split: str, position: int, err: RecordError) -> None:
        self.skipped[err.kind] += 1
        if len(self.skipped_rows) < self.MAX_LISTED:
            self.skipped_rows.append({"split": split, "row": position, "reason": err.kind, "detail": err.detail})

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "source": self.source, "val_from": self.val_from, "notes": self.notes,
                "written": {k: self.written[k] for k in OUTPUTS}, "skipped": dict(sorted(self.skipped.items())),
                "skipped_total": sum(self.skipped.values()), "skipped_rows": self.skipped_rows}

    def report(self) -> str:
        total = sum(self.skipped.values())
        lines = [f"[{self.recipe}] {self.source}", *(f"  note: {n}" for n in self.notes),
                 f"  train.parquet: {self.written['train']} rows",
                 f"  val.parquet: {self.written['val']} rows ({self.val_from})",
                 f"  skipped: {total} source rows" + (":" if total else "")]
        for kind, n in sorted(self.skipped.items()):
            rows = [f"{r['split']}:{r['row']}" for r in self.skipped_rows if r["reason"] == kind]
            lines.append(f"    {kind:<28} {n:>7}   rows {', '.join(rows[:8])}" + (" ..." if len(rows) > 8 else ""))
        return "\n".join(lines)


@dataclass
class Job:
    """What a recipe script hands to :func:`cli`."""

    recipe: str
    splits: Splits
    read: Callable[[dict], SourceRecord]
    spec: RowSpec
    train_split: str = "train"
    val_split: Optional[str] = None
    """The source's own validation split (held out from train when None or absent from the source)."""


class NothingWritten(Exception):
    """No training row could be converted (``summary`` says why)."""


def _pick(n: int, k: int, seed: int) -> set:
    import numpy as np

    k = max(0, min(int(k), n))
    return set(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist()) if k else set()


def _write_all(paths: dict, produce: Callable[[dict], None]) -> None:
    """Call ``produce({name: temporary path})``, then rename every temporary file onto its path (none if it raises)."""
    names = list(paths)

    def nest(i: int, tmps: dict) -> None:
        if i == len(names):
            return produce(tmps)
        atomic_write(paths[names[i]], lambda tmp: nest(i + 1, {**tmps, names[i]: tmp}))

    nest(0, {})


def _convert(job: Job, raw: Any, split: str, out: str, position: int) -> dict:
    if isinstance(raw, RecordError):
        raise raw
    try:
        record = job.read(raw)
    except RecordError:
        raise
    except Exception as e:  # noqa: BLE001 - a record of unexpected shape is a bad record, not a crash
        raise RecordError(RECORD_MALFORMED, f"{type(e).__name__}: {e}") from None
    return make_row(record, job.spec, split=split, out_split=out, position=position, roots=job.splits.roots)


def prepare(job: Job, output: str, *, val_size: Optional[int] = None, limit: Optional[int] = None,
            seed: int = 0, progress: bool = True) -> Summary:
    """Convert ``job``'s source into ``output``/train.parquet and val.parquet (+ ``prepare_summary.json``); returns the
    summary. Raises :class:`NothingWritten`, leaving the output files as they were, when no training row converts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    splits, summary, schema = job.splits, Summary(job.recipe, job.splits.label), parquet_schema()
    cap = (lambda n: n) if limit is None else (lambda n: min(n, max(0, int(limit))))
    n_train = cap(splits.count(job.train_split))
    if n_train == 0:
        raise SourceError(f"{splits.label} has no records in split {job.train_split!r} (splits: {splits.names()})")
    val_split = job.val_split
    if val_split is not None and splits.count(val_split) == 0:
        summary.notes.append(f"the source has no {val_split!r} split: validation rows are held out from train")
        val_split = None
    if val_split is not None:
        n_val = cap(splits.count(val_split))
        chosen = None if val_size is None else _pick(n_val, val_size, seed)
        summary.val_from = f"source split {val_split!r}" + (f", {len(chosen)} rows sampled with seed {seed}"
                                                            if chosen is not None else "")
        plan = [(job.train_split, n_train, lambda pos: "train"),
                (val_split, n_val, lambda pos: "val" if chosen is None or pos in chosen else None)]
    else:
        want = DEFAULT_VAL_SIZE if val_size is None else val_size
        held = _pick(n_train, min(want, n_train // 2), seed)
        if len(held) < want:
            summary.notes.append(f"--val-size {want} capped to {len(held)} (half of the {n_train} training records)")
        summary.val_from = f"{len(held)} records held out from {job.train_split!r} with seed {seed}"
        plan = [(job.train_split, n_train, lambda pos: "val" if pos in held else "train")]

    def produce(tmps: dict) -> None:
        writers = {name: pq.ParquetWriter(tmps[name], schema, compression="snappy") for name in OUTPUTS}
        buffers: dict = {name: [] for name in OUTPUTS}

        def flush(name: str, at_least: int) -> None:
            if len(buffers[name]) >= at_least:
                writers[name].write_table(pa.Table.from_pylist(buffers[name], schema=schema))
                buffers[name] = []

        try:
            for split, count, route in plan:
                records = tqdm(islice(splits.rows(split), count), total=count, desc=f"{job.recipe} {split}",
                               unit="row", disable=not progress or count < _PROGRESS_MIN, file=sys.stderr)
                for position, raw in enumerate(records):
                    out = route(position)
                    if out is None:
                        continue
                    try:
                        buffers[out].append(_convert(job, raw, split, out, position))
                    except RecordError as err:
                        summary.skip(split, position, err)
                        continue
                    summary.written[out] += 1
                    flush(out, _FLUSH_ROWS)
            for name in OUTPUTS:
                flush(name, 1)
        finally:
            for writer in writers.values():
                writer.close()
        if summary.written["train"] == 0:
            raise NothingWritten("no training row could be converted")

    os.makedirs(output, exist_ok=True)
    try:
        _write_all({name: os.path.join(output, f"{name}.parquet") for name in OUTPUTS}, produce)
    except NothingWritten as e:
        e.summary = summary
        raise
    atomic_write_bytes(os.path.join(output, SUMMARY_FILE),
                       (json.dumps(summary.to_json(), indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return summary


def build_parser(description: str, *, source_help: str, val_help: str) -> argparse.ArgumentParser:
    """The arguments every ``prepare_data.py`` shares (a script adds its own)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help=source_help)
    p.add_argument("--output", required=True,
                   help="output directory: train.parquet, val.parquet and prepare_summary.json (written atomically)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="read only the first N records of each source split used (quick runs); ids do not change")
    p.add_argument("--val-size", type=int, default=None, metavar="N", help=val_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation slice or sample (default 0)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="another directory to resolve relative image paths against (repeatable; the source's own "
                        "directory is tried first)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def cli(parser: argparse.ArgumentParser, make_job: Callable[[argparse.Namespace], Job],
        argv: Optional[list[str]] = None) -> int:
    """Parse ``argv``, build the job, prepare the data, print the summary. Exit status: 0 when rows were written
    (records skipped or not), 1 when no training row could be written, 2 when the source cannot be read."""
    args = parser.parse_args(argv)
    try:
        summary = prepare(make_job(args), args.output, val_size=args.val_size, limit=args.limit, seed=args.seed,
                          progress=not args.no_progress)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NothingWritten as e:
        print(e.summary.report(), file=sys.stderr)
        print(f"error: {e}; train.parquet and val.parquet were not written", file=sys.stderr)
        return 1
    print(summary.report())
    return 0
