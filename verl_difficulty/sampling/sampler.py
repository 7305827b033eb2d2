"""The plugin's dataset sampler: draws prompts for verl's dataloader by difficulty and learns pass rates online.

verl 0.9.1 has no sampler hook (``data.sampler.*`` is silently ignored; ``verl/trainer/ppo/utils.py:140-168``); the
plugin's trainer mode (:mod:`verl_difficulty.seam`) builds verl's ``StatefulDataLoader`` around this sampler, tells
it the batch size, and feeds it every step's outcomes with the training step. Its whole state (epoch, position,
online estimates, curriculum state, the counters its random streams derive from) goes into verl's checkpoint through
the dataloader's ``state_dict`` (``data.pt``), so a resumed run draws the same next batches as an uninterrupted one.

**Modes** (``difficulty.sampler.mode``), all deciding one batch at a time, when the dataloader asks for its first
index (so a draw sees every update made before it; with verl's sync trainer the batch of step N is drawn at the start
of step N and the update of step N comes before the draw of step N+1):

* ``uniform``: a seeded permutation per epoch (dataset order with ``shuffle: false``), optionally restricted to
  ``include_buckets`` (e.g. P1's winner, GRPO on medium+hard only, in their natural proportions).
* ``stratified``: target proportions per bucket (``mix``, e.g. ``{medium: 0.3, hard: 0.5, unsolved: 0.2}``). The
  per-batch counts are a largest-remainder apportionment with carried residuals, so the running proportions follow
  the mix to within one prompt per bucket. Within a bucket, rows come from a seeded permutation (without
  replacement within an epoch; a bucket that runs dry starts a new pass, counted as ``pool_recycled``) or uniformly
  at random (``replacement: true``).
* ``target``: the prompts whose estimated pass rate is closest to a target (AdaRFT / DOTS style), without repeating a
  prompt within an epoch unless ``replacement: true``; ``target_temperature > 0`` samples with weights
  ``exp(-|p - target| / T)`` (Gumbel top-k) instead of taking the nearest.

**Schedules** (``difficulty.sampler.schedule``, :mod:`verl_difficulty.sampling.curriculum`): constant, linear, step-wise
phases, P2's two stages, adaptive target. The sampler knows the training step from the seam.

**Online difficulty**: per stable prompt id (``extra_info.index``) a running estimate of the pass rate from each
step's rollout outcomes: a Beta posterior mean (``estimator: beta``) or an EMA of the per-step group accuracy
(``estimator: ema``), both started from the row's offline score when it has one (``difficulty_score``, else
``pass_rate``).

**Band-pass** (``difficulty.sampler.band``): prompts whose estimate is outside ``[low, high]`` are skipped and
re-admitted after ``readmit_after`` steps; when a pool cannot fill its share of a batch with admissible prompts the
rest is filled by a fallback (never a short batch), counted and logged.

**Scale**: numpy arrays only (no per-prompt Python objects): prompt ids are looked up through a dense offset map or a
sorted-id array + ``searchsorted``; an update costs O(batch); a draw costs O(batch) in uniform/stratified mode
(amortised; a permutation is built once per pass) and O(N) vectorised in target mode.

**Randomness**: every random choice comes from a generator seeded by ``(seed, purpose, epoch, batch or pass
counter)``, so the counters in the state ARE the RNG state: no generator object needs saving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from verl_difficulty import schema
from verl_difficulty.sampling.curriculum import (
    BandConfig,
    Curriculum,
    ScheduleConfig,
    Setting,
    _integer,
    _number,
    reject_unknown_keys,
)

logger = logging.getLogger(__name__)

MODES = ("uniform", "stratified", "target")
ESTIMATORS = ("beta", "ema")
BAD_ROW_POLICIES = ("error", "skip")
STATE_VERSION = 2
_NEVER = np.iinfo(np.int32).max
# purposes of the derived random streams
_RNG_PERM, _RNG_BATCH = 1, 2
# settings that do not change what is drawn (a resumed run may change them freely)
_NON_DRAW_SETTINGS = ("enable", "trace_path", "on_bad_row")


@dataclass
class SamplerConfig:
    """Settings of the difficulty sampler (``difficulty.sampler`` in a recipe; defaults in
    ``verl_difficulty/config/difficulty.yaml``). "Ours" marks choices the papers do not make.

    Args:
        enable (`bool`, defaults to `False`):
            Replace verl's Random/Sequential sampler with this one (needs ``trainer.v1.trainer_mode=difficulty`` and
            ``data.dataloader_num_workers=0``).
        mode (`str`, defaults to `"uniform"`):
            ``uniform``, ``stratified`` or ``target`` (see the module docstring).
        seed (`int`, defaults to `1`):
            Seed of every random choice (permutations, tie-breaks, Gumbel noise); resumed runs reuse it.
        shuffle (`bool`, defaults to `True`):
            ``uniform``: a fresh seeded permutation each epoch; `False` keeps dataset order.
        replacement (`bool`, defaults to `False`):
            Draw with replacement within an epoch (a prompt may come back before the epoch ends). A batch never
            holds the same prompt twice unless its pool is smaller than its share of the batch.
        epoch_size (`int` or `None`, defaults to `None`):
            Prompts drawn per sampler epoch; `None`: the number of eligible rows rounded down to a multiple of the
            batch size (so no draw is wasted on a dropped partial batch).
        buckets (`list[str]`, defaults to `["easy", "medium", "hard", "unsolved"]`):
            Allowed bucket names (``schema.BUCKETS``, P1's buckets); a row with another name is a bad row.
        bucket_key (`str`, defaults to `"difficulty_bucket"`):
            Row field holding the bucket (flat column first, then ``extra_info``), e.g. ``pism_bucket``.
        score_keys (`list[str]`, defaults to `["difficulty_score", "pass_rate"]`):
            Row fields holding an offline pass rate in [0, 1] (first present wins); the online estimate starts there.
        include_buckets (`list[str]` or `None`, defaults to `None`):
            ``uniform``/``target``: draw only rows of these buckets (e.g. ``[medium, hard]``: P1's GRPO-only
            paradigm). Rows without a bucket are bad rows then.
        mix (`dict[str, float]` or `None`, defaults to `None`):
            ``stratified``: target proportion per bucket (normalised), e.g. ``{medium: 1, hard: 1}`` (P1) or
            ``{easy: 0.3, medium: 0.5, hard: 0.2}``. Required unless every schedule phase sets one.
        target (`float`, defaults to `0.5`):
            ``target``: the target pass rate (DOTS uses 0.5); the start value of linear/adaptive schedules.
        target_temperature (`float`, defaults to `0.0`):
            ``target``: 0 takes the prompts nearest to the target (random tie-break); > 0 samples with weights
            ``exp(-|p - target| / T)``. Ours.
        estimator (`str`, defaults to `"beta"`):
            Online pass-rate estimate: ``beta`` (posterior mean) or ``ema``. Ours (the papers define no tracker).
        prior_strength (`float`, defaults to `2.0`):
            ``beta``: pseudo-observations of an offline score p0: the posterior starts at
            Beta(beta_prior + s*p0, beta_prior + s*(1-p0)). Ours.
        beta_prior (`float`, defaults to `1.0`):
            ``beta``: base pseudo-count of each outcome (1 = uniform prior, 0.5 = Jeffreys). Ours.
        beta_discount (`float`, defaults to `1.0`):
            ``beta``: the prompt's counts are multiplied by this before each update (< 1 forgets old outcomes as
            the policy improves; 1 = plain posterior). Ours.
        ema_alpha (`float`, defaults to `0.3`):
            ``ema``: weight of a step's group accuracy: ``p <- (1 - a) * p + a * acc``. Ours.
        ema_init (`float`, defaults to `0.5`):
            ``ema``: start value of prompts without an offline score. Ours.
        band (`BandConfig`):
            Band-pass filter, see :class:`verl_difficulty.sampling.curriculum.BandConfig` (``difficulty.sampler.band.*``).
        schedule (`ScheduleConfig`):
            Curriculum schedule, see :class:`verl_difficulty.sampling.curriculum.ScheduleConfig`.
        on_bad_row (`str`, defaults to `"error"`):
            A row with a missing field the mode needs, an unknown bucket or a score outside [0, 1]: ``error`` stops
            at start-up naming the row and field (a data bug is cheapest to fix before training); ``skip`` leaves
            such rows out of every draw and counts them (``difficulty/sampler/bad_rows``, first rows logged).
            A missing or duplicate prompt id is always an error.
        trace_path (`str` or `None`, defaults to `None`):
            Append one JSON line per drawn batch (step, epoch, stage, rows, prompt ids) and per update (step, prompt
            ids, correctness) to this file: for audits and the exact-resume test.
    """

    enable: bool = False
    mode: str = "uniform"
    seed: int = 1
    shuffle: bool = True
    replacement: bool = False
    epoch_size: Optional[int] = None
    buckets: list = field(default_factory=lambda: list(schema.BUCKETS))
    bucket_key: str = schema.DIFFICULTY_BUCKET
    score_keys: list = field(default_factory=lambda: [schema.DIFFICULTY_SCORE, schema.PASS_RATE])
    include_buckets: Optional[list] = None
    mix: Optional[dict] = None
    target: float = 0.5
    target_temperature: float = 0.0
    estimator: str = "beta"
    prior_strength: float = 2.0
    beta_prior: float = 1.0
    beta_discount: float = 1.0
    ema_alpha: float = 0.3
    ema_init: float = 0.5
    band: BandConfig = field(default_factory=BandConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    on_bad_row: str = "error"
    trace_path: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.band, dict):
            self.band = BandConfig.from_dict(self.band)
        if isinstance(self.schedule, dict):
            self.schedule = ScheduleConfig.from_dict(self.schedule)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "SamplerConfig":
        d = dict(d or {})
        reject_unknown_keys(cls, d, "difficulty.sampler")
        d["band"] = BandConfig.from_dict(d.get("band"))
        d["schedule"] = ScheduleConfig.from_dict(d.get("schedule"))
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> "SamplerConfig":
        w = "difficulty.sampler"
        for name in ("enable", "shuffle", "replacement"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{w}.{name}: expected true/false, got {getattr(self, name)!r}")
        if self.mode not in MODES:
            raise ValueError(f"{w}.mode: {self.mode!r} is not one of {MODES}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"{w}.estimator: {self.estimator!r} is not one of {ESTIMATORS}")
        if self.on_bad_row not in BAD_ROW_POLICIES:
            raise ValueError(f"{w}.on_bad_row: {self.on_bad_row!r} is not one of {BAD_ROW_POLICIES}")
        self.seed = _integer(w, "seed", self.seed, 0)
        if self.epoch_size is not None:
            self.epoch_size = _integer(w, "epoch_size", self.epoch_size, 1)
        if not self.buckets or not all(isinstance(b, str) and b for b in self.buckets):
            raise ValueError(f"{w}.buckets: expected a non-empty list of names, got {self.buckets!r}")
        self.buckets = list(self.buckets)
        if len(set(self.buckets)) != len(self.buckets):
            raise ValueError(f"{w}.buckets: duplicate names in {self.buckets}")
        if len(self.buckets) > 127:
            raise ValueError(f"{w}.buckets: at most 127 buckets")
        if not isinstance(self.bucket_key, str) or not self.bucket_key:
            raise ValueError(f"{w}.bucket_key: expected a field name, got {self.bucket_key!r}")
        if isinstance(self.score_keys, str):
            self.score_keys = [self.score_keys]
        self.score_keys = list(self.score_keys or [])
        if self.include_buckets is not None:
            if self.mode == "stratified":
                raise ValueError(f"{w}.include_buckets: mode=stratified selects buckets by its mix; use mix")
            bad = [b for b in self.include_buckets if b not in self.buckets]
            if bad or not self.include_buckets:
                raise ValueError(f"{w}.include_buckets: unknown buckets {bad}; known: {self.buckets}")
            self.include_buckets = list(self.include_buckets)
        if self.mix is not None and not isinstance(self.mix, dict):
            raise ValueError(f"{w}.mix: expected a mapping bucket -> weight, got {self.mix!r}")
        self.target = _number(w, "target", self.target, 0.0, 1.0)
        self.target_temperature = _number(w, "target_temperature", self.target_temperature, 0.0)
        self.prior_strength = _number(w, "prior_strength", self.prior_strength, 0.0)
        self.beta_prior = _number(w, "beta_prior", self.beta_prior, 0.0)
        if self.beta_prior <= 0 and self.prior_strength <= 0:
            raise ValueError(f"{w}: beta_prior and prior_strength cannot both be 0 (the posterior would be empty)")
        self.beta_discount = _number(w, "beta_discount", self.beta_discount, 0.0, 1.0)
        if self.beta_discount <= 0:
            raise ValueError(f"{w}.beta_discount: must be > 0")
        self.ema_alpha = _number(w, "ema_alpha", self.ema_alpha, 0.0, 1.0)
        self.ema_init = _number(w, "ema_init", self.ema_init, 0.0, 1.0)
        if not isinstance(self.band, BandConfig):
            self.band = BandConfig.from_dict(self.band)
        self.band.validate()
        if not isinstance(self.schedule, ScheduleConfig):
            self.schedule = ScheduleConfig.from_dict(self.schedule)
        self.schedule.validate()
        if self.trace_path is not None and not isinstance(self.trace_path, str):
            raise ValueError(f"{w}.trace_path: expected a path, got {self.trace_path!r}")
        return self


def check_dataloader_workers(num_workers: Any) -> None:
    """The sampler needs ``data.dataloader_num_workers=0``: worker prefetch would draw indices ahead of the updates."""
    n = int(num_workers or 0)
    if n > 0:
        raise ValueError(
            f"difficulty.sampler.enable=true needs data.dataloader_num_workers=0 (got {n}): with worker processes the "
            "dataloader prefetches indices ahead of time, so draws would not see the latest pass-rate updates and "
            "curriculum steps (and verl's default of 8 workers copies the sampler into each worker). Set "
            "data.dataloader_num_workers=0; data loading stays in the trainer process (cheap for parquet rows)."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Reading the difficulty fields of a dataset (arrow-native: a 1M-row parquet reads in tens of milliseconds)
# ----------------------------------------------------------------------------------------------------------------------
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
        buckets = _BucketColumn(names, np.where(valid, codes, -1).astype(np.int32))
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
class _BucketColumn:
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
    names: list = []
    index_of: dict = {}
    codes = np.full(n, -1, dtype=np.int32)
    any_bucket = False
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
        b = schema.row_score(row, bucket_key)
        if b is not None:
            any_bucket = True
            key = b if isinstance(b, str) else repr(b)
            if key not in index_of:
                index_of[key] = len(names)
                names.append(key)
            codes[i] = index_of[key]
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
    return RowFields(prompt_ids, _BucketColumn(names, codes) if any_bucket else None, scores)


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


# ----------------------------------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------------------------------
class _Iterator:
    """One pass of the dataloader over the sampler; all state lives in the sampler (so checkpoints are complete).

    ``state_dict``/``load_state_dict`` are stubs: torchdata's batch-sampler iterator asserts that the sampler
    iterator is stateful when a checkpoint holds an iterator state (one written with verl's stock RandomSampler).
    """

    def __init__(self, sampler: "DifficultySampler"):
        self.sampler = sampler
        self.first = True

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            logger.warning(
                "difficulty sampler: the checkpoint's dataloader state comes from another sampler (verl's stock "
                "RandomSampler?); the difficulty sampler starts afresh (epoch 0, prior estimates)"
            )

    def __next__(self) -> int:
        s = self.sampler
        if self.first:
            self.first = False
            if s._pending_offset >= len(s._pending) and s.position >= s.epoch_size:
                s._new_epoch()
        return s._next_index()


@dataclass
class _Draw:
    """Book-keeping of one batch decision."""

    band: Optional[tuple]
    rng: np.random.Generator
    skipped: int = 0
    fallback: int = 0
    repeats: int = 0
    fallback_pools: list = field(default_factory=list)


def _fingerprint(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


class DifficultySampler(torch.utils.data.Sampler[int]):
    """Sampler over dataset rows by difficulty, with online per-prompt pass-rate estimates.

    Args:
        prompt_ids: stable prompt id of each dataset row, shape (N,).
        priors: offline prior pass rate per row in [0, 1] or NaN, shape (N,), or ``None``.
        config: :class:`SamplerConfig`.
        buckets: per row a bucket name (or ``None``), or a :class:`_BucketColumn`; ``None`` if the data has none.
        batch_size: prompts per dataloader batch (``data.gen_batch_size or data.train_batch_size``); the sampler
            decides one batch at a time.
    """

    def __init__(
        self,
        prompt_ids: np.ndarray,
        priors: Optional[np.ndarray] = None,
        config: Optional[SamplerConfig] = None,
        *,
        buckets: Any = None,
        batch_size: int = 1,
    ):
        cfg = (config or SamplerConfig()).validate()
        self.config = cfg
        self.buckets = tuple(cfg.buckets)
        self.batch_size = _integer("batch_size", "batch_size", batch_size, 1)
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        n = len(self.prompt_ids)
        self._build_id_map()
        self.fingerprint = _fingerprint(self.prompt_ids)

        # ---- rows: buckets, scores, bad rows
        priors = np.full(n, np.nan) if priors is None else np.asarray(priors, dtype=np.float64)
        if len(priors) != n:
            raise ValueError(f"priors has {len(priors)} rows, prompt_ids {n}")
        self.curriculum = Curriculum(cfg.schedule, cfg.mode, self.buckets, cfg.mix, cfg.target, cfg.band)
        needs_bucket = cfg.mode == "stratified" or cfg.include_buckets is not None
        bad = np.zeros(n, dtype=bool)
        reasons: list[str] = []
        self.bucket_codes = self._bucket_codes(buckets, n, needs_bucket, bad, reasons)
        out_of_range = np.isfinite(priors) & ((priors < 0) | (priors > 1)) | np.isinf(priors)
        if out_of_range.any():
            rows = np.flatnonzero(out_of_range)
            self._bad(rows, f"offline score ({'/'.join(cfg.score_keys)}) outside [0, 1]", priors, bad, reasons)
        self.bad_rows = int(bad.sum())
        if self.bad_rows:
            logger.warning(
                "difficulty sampler: skipping %d bad rows (on_bad_row=skip): %s", self.bad_rows, "; ".join(reasons[:5])
            )
        self.valid = ~bad
        priors = np.where(bad, np.nan, priors)

        # ---- pools
        self.pool_names: list[str]
        if cfg.mode == "stratified":
            self.pool_names = list(self.buckets)
            pools = [np.flatnonzero(self.valid & (self.bucket_codes == k)) for k in range(len(self.buckets))]
            for mix in self.curriculum.mixes():
                for k in np.flatnonzero(mix > 0):
                    if len(pools[k]) == 0:
                        raise ValueError(
                            f"difficulty.sampler: the mix gives bucket {self.buckets[k]!r} weight {mix[k]:.3g} but no "
                            f"dataset row is in that bucket (field {cfg.bucket_key!r})"
                        )
        else:
            self.pool_names = ["all"]
            keep = self.valid.copy()
            if cfg.include_buckets is not None:
                codes = [self.buckets.index(b) for b in cfg.include_buckets]
                keep &= np.isin(self.bucket_codes, codes)
            pools = [np.flatnonzero(keep)]
        self._pools = [p.astype(np.int32 if n < 2**31 else np.int64) for p in pools]
        eligible = int(sum(len(p) for p in self._pools))
        if eligible == 0:
            raise ValueError("difficulty.sampler: no dataset row is eligible for drawing")
        if cfg.epoch_size is not None:
            size = (cfg.epoch_size // self.batch_size) * self.batch_size
            if size == 0:
                raise ValueError(f"difficulty.sampler.epoch_size={cfg.epoch_size} < batch size {self.batch_size}")
        else:
            size = (eligible // self.batch_size) * self.batch_size
            if size == 0:
                raise ValueError(
                    f"difficulty.sampler: only {eligible} eligible rows for a batch of {self.batch_size}; "
                    "set difficulty.sampler.epoch_size (and replacement: true) to draw more than the data holds"
                )
        self.epoch_size = int(size)

        # ---- online estimates
        has = np.isfinite(priors)
        if cfg.estimator == "beta":
            s = float(cfg.prior_strength)
            self.alpha = np.full(n, cfg.beta_prior, dtype=np.float64)
            self.beta = np.full(n, cfg.beta_prior, dtype=np.float64)
            self.alpha[has] += s * priors[has]
            self.beta[has] += s * (1.0 - priors[has])
            self.est = self.alpha / (self.alpha + self.beta)
        else:
            self.alpha = self.beta = None
            self.est = np.where(has, priors, cfg.ema_init).astype(np.float64)
        self.seen = np.zeros(n, dtype=np.int32)
        self.banned_until = np.zeros(n, dtype=np.int32)
        self.drawn_epoch = np.zeros(n, dtype=bool) if (cfg.mode == "target" and not cfg.replacement) else None

        # ---- position and curriculum state
        k = len(self._pools)
        self.epoch = 0
        self.position = 0
        self.batch_in_epoch = 0
        self.step = 1
        self.cursor = np.zeros(k, dtype=np.int64)
        self.passes = np.zeros(k, dtype=np.int64)
        self.carry = np.zeros(k, dtype=np.float64)
        self.carry_mix: Optional[np.ndarray] = None
        self.target_state = float(cfg.target)
        self._pending = np.zeros(0, dtype=np.int64)
        self._pending_offset = 0
        self._perm_cache: dict[int, tuple[int, int, np.ndarray]] = {}
        self.unknown_ids = 0
        self.totals = {"skipped": 0, "fallback": 0, "repeats": 0, "recycled": 0, "fallback_batches": 0}
        self._acc = self._empty_acc()
        self._last: dict[str, float] = {}
        self._warned_step = -1

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_dataset(cls, dataset, config: SamplerConfig, batch_size: int = 1) -> "DifficultySampler":
        """Build from a verl RLHFDataset (arrow-backed ``.dataframe``), a ``datasets.Dataset`` or a list of rows."""
        config = config.validate()
        f = read_row_fields(dataset, config)
        return cls(f.prompt_ids, f.scores, config, buckets=f.buckets, batch_size=batch_size)

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
        if buckets is None:
            if needs:
                why = "mode=stratified" if cfg.mode == "stratified" else "include_buckets"
                self._bad(np.arange(n), f"missing field {cfg.bucket_key!r} (a difficulty bucket; {why} needs it)",
                          None, bad, reasons)
            return codes
        if not isinstance(buckets, _BucketColumn):
            names: list = []
            index_of: dict = {}
            raw = np.full(n, -1, dtype=np.int32)
            if len(buckets) != n:
                raise ValueError(f"buckets has {len(buckets)} rows, prompt_ids {n}")
            for i, b in enumerate(buckets):
                if b is None:
                    continue
                key = b if isinstance(b, str) else repr(b)
                raw[i] = index_of.setdefault(key, len(names))
                if raw[i] == len(names):
                    names.append(key)
            buckets = _BucketColumn(names, raw)
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
                why = "mode=stratified" if cfg.mode == "stratified" else "include_buckets"
                self._bad(np.flatnonzero(missing),
                          f"missing field {cfg.bucket_key!r} (a difficulty bucket; {why} needs it)", None, bad, reasons)
        codes[:] = mapped
        return codes

    # ------------------------------------------------------------------ lookups
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

    def pass_rate(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Current pass-rate estimate of all rows (or of ``rows``)."""
        return self.est if rows is None else self.est[rows]

    def estimate_for_ids(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Estimate per prompt id (NaN for ids not in the training set)."""
        rows = self.rows_of(prompt_ids)
        out = np.full(len(rows), np.nan)
        ok = rows >= 0
        out[ok] = self.est[rows[ok]]
        return out

    def setting(self) -> Setting:
        """What the sampler aims for at its current step (stage, mix, target, band)."""
        return self.curriculum.at(self.step, self.target_state)

    # ------------------------------------------------------------------ drawing
    def __len__(self) -> int:
        return self.epoch_size

    def __iter__(self) -> Iterator[int]:
        return _Iterator(self)

    def set_step(self, step: int) -> None:
        """Tell the sampler which training step the next draws are for (the seam passes it with each update)."""
        self.step = int(step)

    def _rng(self, purpose: int, *counters: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, purpose, *[int(c) for c in counters]])

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self.batch_in_epoch = 0
        self.cursor[:] = 0
        self.passes[:] = 0
        if self.drawn_epoch is not None:
            self.drawn_epoch[:] = False

    def _next_index(self) -> int:
        if self._pending_offset >= len(self._pending):
            if self.position >= self.epoch_size:
                raise StopIteration
            self._decide_batch()
        i = int(self._pending[self._pending_offset])
        self._pending_offset += 1
        self.position += 1
        return i

    def _perm(self, k: int) -> np.ndarray:
        key = (self.epoch, int(self.passes[k]))
        hit = self._perm_cache.get(k)
        if hit is not None and hit[:2] == key:
            return hit[2]
        m = len(self._pools[k])
        if self.config.mode == "uniform" and not self.config.shuffle:
            perm = np.arange(m, dtype=np.int64)
        else:
            perm = self._rng(_RNG_PERM, self.epoch, k, key[1]).permutation(m)
        self._perm_cache[k] = (key[0], key[1], perm)
        return perm

    def _admit(self, rows: np.ndarray, band: Optional[tuple]) -> tuple[np.ndarray, np.ndarray]:
        """(admissible, newly out of band) for ``rows``; pure. Out of band rows are admissible again once their
        exclusion has lasted ``readmit_after`` steps."""
        if band is None:
            return np.ones(len(rows), dtype=bool), np.zeros(len(rows), dtype=bool)
        p = self.est[rows]
        inside = (p >= band[0]) & (p <= band[1])
        bu = self.banned_until[rows]
        probe = (bu > 0) & (self.step >= bu)
        return inside | probe, ~inside & (bu == 0)

    def _ban(self, rows: np.ndarray) -> None:
        if len(rows):
            ra = self.config.band.readmit_after
            self.banned_until[rows] = _NEVER if ra is None else min(_NEVER - 1, self.step + ra)

    def _take(self, k: int, n: int, d: _Draw, chosen: np.ndarray) -> np.ndarray:
        """``n`` rows of pool ``k`` (not in ``chosen``) that pass the band, in pool order; fallback when short."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        pool = self._pools[k]
        m = len(pool)
        out: list[np.ndarray] = []
        need = n
        if self.config.replacement:
            budget = 2 * m + 4 * n
            scanned = 0
            while need > 0 and scanned < budget:
                c = min(m, max(2 * need, 64))
                rows = pool[d.rng.choice(m, size=c, replace=False)].astype(np.int64)
                adm, newly = self._admit(rows, d.band)
                taken_so_far = np.concatenate([chosen, *out]) if out else chosen
                fresh = ~np.isin(rows, taken_so_far)
                ok = np.flatnonzero(adm & fresh)[:need]
                consumed = int(ok[-1]) + 1 if len(ok) == need else c
                self._ban(rows[:consumed][newly[:consumed]])
                d.skipped += int((~adm[:consumed]).sum())
                out.append(rows[ok])
                need -= len(ok)
                scanned += consumed
        else:
            scanned, budget = 0, (m - int(self.cursor[k])) + m
            while need > 0 and scanned < budget:
                if self.cursor[k] >= m:
                    self.passes[k] += 1
                    self.cursor[k] = 0
                    self.totals["recycled"] += 1
                perm = self._perm(k)
                start = int(self.cursor[k])
                stop = min(m, start + max(2 * need, 256), start + (budget - scanned))
                rows = pool[perm[start:stop]].astype(np.int64)
                adm, newly = self._admit(rows, d.band)
                taken_so_far = np.concatenate([chosen, *out]) if out else chosen
                fresh = ~np.isin(rows, taken_so_far) if len(taken_so_far) else np.ones(len(rows), dtype=bool)
                ok = np.flatnonzero(adm & fresh)[:need]
                consumed = int(ok[-1]) + 1 if len(ok) == need else len(rows)
                self._ban(rows[:consumed][newly[:consumed]])
                d.skipped += int((~adm[:consumed]).sum())
                out.append(rows[ok])
                need -= len(ok)
                scanned += consumed
                self.cursor[k] = start + consumed
        got = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        if need > 0:
            got = np.concatenate([got, self._fallback(pool.astype(np.int64), need, d, np.concatenate([chosen, got]),
                                                      self.pool_names[k])])
        return got

    def _fallback(self, pool: np.ndarray, need: int, d: _Draw, chosen: np.ndarray, pool_name: str) -> np.ndarray:
        """Fill ``need`` rows from ``pool`` ignoring the band (nearest to it first, or random); repeats last."""
        cand = pool[~np.isin(pool, chosen)] if len(chosen) else pool
        picked = np.zeros(0, dtype=np.int64)
        if len(cand) and d.band is not None:
            take = min(need, len(cand))
            if self.config.band.fallback == "nearest":
                p = self.est[cand]
                dist = np.maximum(np.maximum(d.band[0] - p, p - d.band[1]), 0.0)
                key = dist + d.rng.random(len(cand)) * 1e-9
                picked = cand[np.argsort(key, kind="stable")[:take]]
            else:
                picked = cand[d.rng.choice(len(cand), size=take, replace=False)]
            d.fallback += take
            d.fallback_pools.append(pool_name)
        elif len(cand):  # no band: the pool's draws are exhausted for this batch only through duplicates
            take = min(need, len(cand))
            picked = cand[d.rng.choice(len(cand), size=take, replace=False)]
        left = need - len(picked)
        if left > 0:  # the pool is smaller than its share of the batch: repeat prompts
            picked = np.concatenate([picked, pool[d.rng.integers(0, len(pool), size=left)]])
            d.repeats += left
        return picked.astype(np.int64)

    def _take_nearest(self, n: int, target: float, d: _Draw) -> np.ndarray:
        """Target mode: the ``n`` admissible rows whose estimate is nearest to ``target`` (Gumbel top-k if T > 0)."""
        pool = self._pools[0].astype(np.int64)
        adm, newly = self._admit(pool, d.band)
        self._ban(pool[newly])
        d.skipped += int((~adm).sum())
        cand_mask = adm
        if self.drawn_epoch is not None:
            cand_mask = adm & ~self.drawn_epoch[pool]
            if cand_mask.sum() < n:  # every admissible prompt was drawn this epoch: allow repeats
                d.repeats += int(n - cand_mask.sum())
                cand_mask = adm
        cand = pool[cand_mask]
        picked = self._nearest(cand, min(n, len(cand)), target, d.rng)
        if len(picked) < n:
            picked = np.concatenate([picked, self._fallback(pool, n - len(picked), d, picked, "all")])
        return picked

    def _nearest(self, cand: np.ndarray, n: int, target: float, rng: np.random.Generator) -> np.ndarray:
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        dist = np.abs(self.est[cand] - target)
        tau = self.config.target_temperature
        if tau > 0:
            key = dist / tau - rng.gumbel(size=len(cand))
        else:
            key = dist + rng.random(len(cand)) * 1e-12
        if n < len(cand):
            part = np.argpartition(key, n - 1)[:n]
        else:
            part = np.arange(len(cand))
        part = part[np.argsort(key[part], kind="stable")]
        return cand[part]

    def _allocate(self, mix: np.ndarray, b: int) -> np.ndarray:
        """Per-bucket counts of a batch of ``b``: largest remainder on the mix plus the carried residuals."""
        if self.carry_mix is None or not np.array_equal(self.carry_mix, mix):
            # a moving mix (linear schedule) keeps what each bucket is owed; buckets leaving the mix forfeit theirs
            self.carry[mix <= 0] = 0.0
            live = mix > 0
            self.carry[live] -= self.carry[live].mean()
            self.carry_mix = mix.copy()
        q = self.carry + b * mix
        qp = np.where(mix > 0, np.maximum(q, 0.0), 0.0)
        scaled = qp * (b / qp.sum()) if qp.sum() > 0 else b * mix
        counts = np.floor(scaled + 1e-12).astype(np.int64)
        frac = np.where(mix > 0, scaled - counts, -1.0)
        deficit = b - int(counts.sum())
        if deficit > 0:
            counts[np.argsort(-frac, kind="stable")[:deficit]] += 1
        elif deficit < 0:
            for k in np.argsort(frac, kind="stable"):
                while deficit < 0 and counts[k] > 0:
                    counts[k] -= 1
                    deficit += 1
        self.carry = q - counts
        return counts

    def _decide_batch(self) -> None:
        b = min(self.batch_size, self.epoch_size - self.position)
        setting = self.setting()
        d = _Draw(band=setting.band, rng=self._rng(_RNG_BATCH, self.epoch, self.batch_in_epoch))
        mode = self.config.mode
        if mode == "uniform":
            rows = self._take(0, b, d, np.zeros(0, dtype=np.int64))
        elif mode == "stratified":
            counts = self._allocate(setting.mix, b)
            parts: list[np.ndarray] = []
            for k in np.flatnonzero(counts):
                chosen = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
                parts.append(self._take(int(k), int(counts[k]), d, chosen))
            rows = np.concatenate(parts)
            rows = rows[d.rng.permutation(len(rows))]
        else:
            rows = self._take_nearest(b, float(setting.target), d)
        rows = rows.astype(np.int64)
        self.batch_in_epoch += 1
        if setting.band is not None or self.curriculum.uses_band():
            self.banned_until[rows] = 0  # a drawn prompt is judged afresh on its next encounter
        if self.drawn_epoch is not None:
            self.drawn_epoch[rows] = True
        self._pending = rows
        self._pending_offset = 0
        self._record_draw(rows, setting, d)

    # ------------------------------------------------------------------ per-step book-keeping
    def _empty_acc(self) -> dict[str, Any]:
        return {
            "n": 0,
            "bucket_counts": np.zeros(len(self.buckets) + 1, dtype=np.int64),  # last = no bucket
            "est_sum": 0.0,
            "skipped": 0,
            "fallback": 0,
            "repeats": 0,
            "hash": "",
            "stage": 0,
            "target": None,
            "mix": None,
            "band": None,
        }

    def _record_draw(self, rows: np.ndarray, setting: Setting, d: _Draw) -> None:
        a = self._acc
        a["n"] += len(rows)
        a["bucket_counts"] += np.bincount(self.bucket_codes[rows].astype(np.int64) % (len(self.buckets) + 1),
                                          minlength=len(self.buckets) + 1)
        a["est_sum"] += float(self.est[rows].sum())
        a["skipped"] += d.skipped
        a["fallback"] += d.fallback
        a["repeats"] += d.repeats
        h = hashlib.blake2b(a["hash"].encode() + self.prompt_ids[rows].tobytes(), digest_size=8)
        a["hash"] = h.hexdigest()
        a["stage"], a["target"], a["band"] = setting.stage, setting.target, setting.band
        a["mix"] = None if setting.mix is None else setting.mix.tolist()
        self.totals["skipped"] += d.skipped
        self.totals["fallback"] += d.fallback
        self.totals["repeats"] += d.repeats
        if d.fallback:
            self.totals["fallback_batches"] += 1
            if self._warned_step != self.step:
                self._warned_step = self.step
                logger.warning(
                    "difficulty sampler, step %d: too few prompts inside the band [%.3g, %.3g] in pool(s) %s; "
                    "filled %d of %d by fallback=%s",
                    self.step, d.band[0], d.band[1], sorted(set(d.fallback_pools)), d.fallback, len(rows),
                    self.config.band.fallback,
                )
        if self.config.trace_path:
            self._trace({
                "event": "draw", "step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch - 1,
                "stage": setting.stage, "rows": rows.tolist(), "ids": self.prompt_ids[rows].tolist(),
                "fallback": d.fallback, "skipped": d.skipped,
            })

    def _trace(self, record: dict) -> None:
        with open(self.config.trace_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ learning
    def update(self, prompt_ids: Sequence[int], correct: Sequence[float], step: Optional[int] = None) -> None:
        """Add one step's outcomes: ``correct[i]`` in [0, 1] for a response of prompt ``prompt_ids[i]``. O(batch).

        ``step`` is the training step these outcomes belong to (verl's ``global_steps``); the next draws are for
        ``step + 1``. Without it the sampler advances its own step counter by one.
        """
        pids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        c = np.clip(np.asarray(correct, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if len(c) != len(pids):
            raise ValueError(f"update: {len(pids)} prompt ids but {len(c)} outcomes")
        rows = self.rows_of(pids)
        known = (rows >= 0) & np.isfinite(c)
        self.unknown_ids += int((rows < 0).sum())
        r, cc = rows[known], c[known]
        batch_acc = float(cc.mean()) if len(cc) else float("nan")
        if len(r):
            ur, inv = np.unique(r, return_inverse=True)
            succ = np.bincount(inv, weights=cc, minlength=len(ur))
            cnt = np.bincount(inv, minlength=len(ur)).astype(np.float64)
            if self.config.estimator == "beta":
                g = self.config.beta_discount
                self.alpha[ur] = g * self.alpha[ur] + succ
                self.beta[ur] = g * self.beta[ur] + (cnt - succ)
                self.est[ur] = self.alpha[ur] / (self.alpha[ur] + self.beta[ur])
            else:
                a = self.config.ema_alpha
                self.est[ur] = (1.0 - a) * self.est[ur] + a * (succ / cnt)
            self.seen[ur] += cnt.astype(np.int32)
            if self.config.schedule.type == "adaptive":
                self.target_state = self.curriculum.adapt(self.target_state, batch_acc)
        done_step = self.step if step is None else int(step)
        self._finish_step(done_step, batch_acc)
        if self.config.trace_path:
            self._trace({"event": "update", "step": done_step, "ids": pids.tolist(), "correct": c.tolist()})
        self.step = done_step + 1

    def _finish_step(self, step: int, batch_acc: float) -> None:
        a = self._acc
        stage = a["stage"] if a["n"] else self.curriculum.at(step, self.target_state).stage
        out: dict[str, float] = {"curriculum/step": float(step), "curriculum/stage": float(stage)}
        if a["n"]:
            fr = a["bucket_counts"] / a["n"]
            if a["bucket_counts"][: len(self.buckets)].sum():
                for k, name in enumerate(self.buckets):
                    out[f"difficulty/sampler/batch_frac/{name}"] = float(fr[k])
            out["difficulty/sampler/batch_pass_rate_est_mean"] = a["est_sum"] / a["n"]
            out["curriculum/batch_id_hash"] = float(int(a["hash"][:12], 16))  # 48 bits: exact in a float64
            out["difficulty/sampler/batch_prompts"] = float(a["n"])
        if a["target"] is not None:
            out["curriculum/target_pass_rate"] = float(a["target"])
        if a["mix"] is not None:
            for k, name in enumerate(self.buckets):
                out[f"curriculum/mix/{name}"] = float(a["mix"][k])
        if a["band"] is not None:
            out["curriculum/band_low"], out["curriculum/band_high"] = float(a["band"][0]), float(a["band"][1])
        if self.curriculum.uses_band():
            out["difficulty/sampler/bandpass_skipped"] = float(a["skipped"])
            out["difficulty/sampler/bandpass_fallback"] = float(a["fallback"])
        if a["repeats"]:
            out["difficulty/sampler/repeats"] = float(a["repeats"])
        if math.isfinite(batch_acc):
            out["difficulty/sampler/update_acc_mean"] = batch_acc
        self._last = out
        self._acc = self._empty_acc()

    def metrics(self) -> dict[str, float]:
        """``difficulty/sampler/*`` and ``curriculum/*`` entries for verl's step metrics (call after ``update``)."""
        p = self.est
        seen = self.seen > 0
        out = dict(self._last)
        out.update({
            "difficulty/sampler/epoch": float(self.epoch),
            "difficulty/sampler/prompts_seen": float(seen.sum()),
            "difficulty/sampler/pass_rate_mean": float(p[self.valid].mean()) if self.valid.any() else 0.0,
        })
        if seen.any():
            q = np.quantile(p[seen], [0.1, 0.5, 0.9])
            out.update({
                "difficulty/sampler/pass_rate_seen_mean": float(p[seen].mean()),
                "difficulty/sampler/pass_rate_seen_p10": float(q[0]),
                "difficulty/sampler/pass_rate_seen_p50": float(q[1]),
                "difficulty/sampler/pass_rate_seen_p90": float(q[2]),
            })
        band = self.setting().band
        if band is not None:
            v = self.valid
            out["difficulty/sampler/bandpass_out_of_band"] = float(((p < band[0]) | (p > band[1]))[v].sum())
        if self.curriculum.uses_band():
            out["difficulty/sampler/bandpass_fallback_total"] = float(self.totals["fallback"])
            out["difficulty/sampler/bandpass_skipped_total"] = float(self.totals["skipped"])
        if self.config.schedule.type == "adaptive":
            out["curriculum/target_pass_rate_next"] = float(self.target_state)
        if self.totals["recycled"]:
            out["difficulty/sampler/pool_recycled"] = float(self.totals["recycled"])
        if self.unknown_ids:
            out["difficulty/sampler/unknown_prompt_ids"] = float(self.unknown_ids)
        if self.bad_rows:
            out["difficulty/sampler/bad_rows"] = float(self.bad_rows)
        return out

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything the next draws depend on (numpy arrays; ~N * 30 bytes)."""
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "num_rows": len(self.prompt_ids),
            "fingerprint": self.fingerprint,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "position": self.position,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "cursor": self.cursor.copy(),
            "passes": self.passes.copy(),
            "carry": self.carry.copy(),
            "carry_mix": None if self.carry_mix is None else self.carry_mix.copy(),
            "target_state": self.target_state,
            "pending": self._pending.copy(),
            "pending_offset": self._pending_offset,
            "est": self.est.copy(),
            "alpha": None if self.alpha is None else self.alpha.copy(),
            "beta": None if self.beta is None else self.beta.copy(),
            "seen": self.seen.copy(),
            "banned_until": self.banned_until.copy(),
            "drawn_epoch": None if self.drawn_epoch is None else np.packbits(self.drawn_epoch),
            "unknown_ids": self.unknown_ids,
            "totals": dict(self.totals),
            "acc": {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._acc.items()},
            "last": dict(self._last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 1)) != STATE_VERSION:
            raise ValueError(
                f"difficulty sampler checkpoint has state version {state.get('version', 1)}, this plugin reads "
                f"{STATE_VERSION}: resume with the plugin version that wrote it or start the sampler afresh"
            )
        if int(state["num_rows"]) != len(self.prompt_ids) or state["fingerprint"] != self.fingerprint:
            raise ValueError(
                "difficulty sampler checkpoint was written for a different dataset (prompt ids differ); "
                "resume with the same train files"
            )
        old, new = state.get("config", {}), asdict(self.config)
        diff = sorted(k for k in new if k not in _NON_DRAW_SETTINGS and old.get(k) != new.get(k))
        if diff:
            logger.warning("difficulty sampler: resuming with changed settings %s: draws will differ from an "
                           "uninterrupted run", diff)
        if int(state["batch_size"]) != self.batch_size:
            logger.warning("difficulty sampler: batch size changed from %s to %s on resume",
                           state["batch_size"], self.batch_size)
        if (state["alpha"] is None) != (self.alpha is None):
            raise ValueError("difficulty sampler checkpoint used another estimator (beta vs ema)")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.step = int(state["step"])
        if len(state["cursor"]) != len(self.cursor):
            raise ValueError("difficulty sampler checkpoint has another number of pools (mode or buckets changed)")
        self.cursor = np.asarray(state["cursor"], dtype=np.int64).copy()
        self.passes = np.asarray(state["passes"], dtype=np.int64).copy()
        self.carry = np.asarray(state["carry"], dtype=np.float64).copy()
        self.carry_mix = None if state["carry_mix"] is None else np.asarray(state["carry_mix"], dtype=np.float64)
        self.target_state = float(state["target_state"])
        self._pending = np.asarray(state["pending"], dtype=np.int64).copy()
        self._pending_offset = int(state["pending_offset"])
        self.est = np.asarray(state["est"], dtype=np.float64).copy()
        if self.alpha is not None:
            self.alpha = np.asarray(state["alpha"], dtype=np.float64).copy()
            self.beta = np.asarray(state["beta"], dtype=np.float64).copy()
        self.seen = np.asarray(state["seen"], dtype=np.int32).copy()
        self.banned_until = np.asarray(state["banned_until"], dtype=np.int32).copy()
        if self.drawn_epoch is not None:
            if state["drawn_epoch"] is None:
                raise ValueError("difficulty sampler checkpoint has no per-epoch draw mask (mode changed)")
            self.drawn_epoch = np.unpackbits(state["drawn_epoch"], count=len(self.prompt_ids)).astype(bool)
        self.unknown_ids = int(state.get("unknown_ids", 0))
        self.totals = dict(state["totals"])
        acc = self._empty_acc()
        acc.update({k: (np.asarray(v).copy() if isinstance(v, np.ndarray) else v) for k, v in state["acc"].items()})
        self._acc = acc
        self._last = dict(state.get("last", {}))
        self._perm_cache = {}

    def state_nbytes(self) -> int:
        """Bytes held in the sampler's arrays (for the scale benchmark)."""
        total = 0
        for v in vars(self).values():
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, list) and v and isinstance(v[0], np.ndarray):
                total += sum(x.nbytes for x in v)
            elif isinstance(v, dict):
                total += sum(x[2].nbytes for x in v.values() if isinstance(x, tuple) and len(x) == 3)
        return total
