"""Drawing the sampler's batches: uniform, stratified and target draws, band admission, fallbacks.

A :class:`Drawer` decides one batch at a time from the current :class:`~verl_difficulty.sampling.curriculum.Setting`
and the tracker's estimates:

* ``uniform``: a seeded permutation per epoch (dataset order with ``shuffle: false``) of the pool (all valid rows or
  ``include_buckets``).
* ``stratified``: per-batch bucket counts by largest remainder on the mix with carried residuals; within a bucket a
  seeded permutation (a bucket that runs dry starts a new pass, counted as ``pool_recycled``) or, with
  ``replacement``, uniform draws.
* ``target``: the prompts nearest the target (or sampled around it, ``target_temperature > 0``) through the sorted
  index of :mod:`verl_difficulty.sampling.nearest`, without repeating a prompt within an epoch unless
  ``replacement``.

**Band-pass**: a row whose estimate is outside ``[low, high]`` is skipped and banned; it is admitted again (once)
when its ban has lasted ``readmit_after`` steps, and judged afresh after it is drawn. When a pool cannot fill its
share of a batch with admissible prompts, a fallback fills the rest (nearest to the band first, or random), and
repeats prompts only when the pool is smaller than its share.

**Randomness**: every random choice comes from a generator seeded by ``(seed, purpose, epoch, batch or pass)``, so
the counters in the state are the RNG state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from verl_difficulty.sampling.config import SamplerConfig
from verl_difficulty.sampling.curriculum import Curriculum, Setting
from verl_difficulty.sampling.nearest import NEVER, TargetIndex
from verl_difficulty.sampling.rows import Rows

logger = logging.getLogger(__name__)

# purposes of the derived random streams
_RNG_PERM, _RNG_BATCH = 1, 2
_TOTALS = ("drawn", "skipped", "fallback", "repeats", "recycled", "fallback_batches")


@dataclass
class Draw:
    """Book-keeping of one batch decision."""

    band: Optional[tuple]
    rng: np.random.Generator
    skipped: int = 0
    fallback: int = 0
    repeats: int = 0
    fallback_pools: list = field(default_factory=list)


class Drawer:
    """Pools, epoch position and band state of the sampler; decides batches of ``batch_size`` prompts."""

    def __init__(self, config: SamplerConfig, rows: Rows, est: np.ndarray, curriculum: Curriculum, batch_size: int):
        self.config = cfg = config
        self.est = est  # the tracker's estimates (updated in place)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.uses_band = curriculum.uses_band()
        n = len(rows)
        buckets = tuple(cfg.buckets)
        if cfg.mode == "stratified":
            self.pool_names = list(buckets)
            pools = [np.flatnonzero(rows.valid & (rows.bucket_codes == k)) for k in range(len(buckets))]
            for mix in curriculum.mixes():
                for k in np.flatnonzero(mix > 0):
                    if len(pools[k]) == 0:
                        raise ValueError(
                            f"difficulty.sampler: the mix gives bucket {buckets[k]!r} weight {mix[k]:.3g} but no "
                            f"dataset row is in that bucket (field {cfg.bucket_key!r})"
                        )
        else:
            self.pool_names = ["all"]
            keep = rows.valid.copy()
            if cfg.include_buckets is not None:
                keep &= np.isin(rows.bucket_codes, [buckets.index(b) for b in cfg.include_buckets])
            pools = [np.flatnonzero(keep)]
        self.pools = [p.astype(np.int32 if n < 2**31 else np.int64) for p in pools]
        del pools  # the int64 row lists (8 MB at 1M rows) are not kept through the index build below
        self.epoch_size = self._epoch_size(int(sum(len(p) for p in self.pools)))

        self.banned_until = np.zeros(n, dtype=np.int32)
        self.drawn = np.zeros(n, dtype=bool) if (cfg.mode == "target" and not cfg.replacement) else None
        k = len(self.pools)
        self.epoch = self.position = self.batch_in_epoch = 0
        self.cursor = np.zeros(k, dtype=np.int64)
        self.passes = np.zeros(k, dtype=np.int64)
        self.carry = np.zeros(k, dtype=np.float64)
        self.carry_mix: Optional[np.ndarray] = None
        self.pending = np.zeros(0, dtype=np.int64)
        self.pending_offset = 0
        self.totals = dict.fromkeys(_TOTALS, 0)
        self.step = 1
        self._perm_cache: dict[int, tuple[int, int, np.ndarray]] = {}
        self._warned_step = -1
        self.index: Optional[TargetIndex] = None
        if cfg.mode == "target":
            self.index = TargetIndex(self.pools[0], est, self.banned_until, self.drawn,
                                     probes=self.uses_band and cfg.band.readmit_after is not None,
                                     band_used=self.uses_band)

    def _epoch_size(self, eligible: int) -> int:
        cfg, b = self.config, self.batch_size
        if eligible == 0:
            raise ValueError("difficulty.sampler: no dataset row is eligible for drawing")
        if cfg.epoch_size is not None:
            if cfg.epoch_size < b:
                raise ValueError(f"difficulty.sampler.epoch_size={cfg.epoch_size} < batch size {b}")
            return (cfg.epoch_size // b) * b
        if eligible < b:
            raise ValueError(
                f"difficulty.sampler: only {eligible} eligible rows for a batch of {b}; "
                "set difficulty.sampler.epoch_size (and replacement: true) to draw more than the data holds"
            )
        return (eligible // b) * b

    # ------------------------------------------------------------------ position
    def rng(self, purpose: int, *counters: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, purpose, *[int(c) for c in counters]])

    def needs_batch(self) -> bool:
        return self.pending_offset >= len(self.pending)

    def epoch_done(self) -> bool:
        return self.position >= self.epoch_size

    def new_epoch(self) -> None:
        self.epoch += 1
        self.position = self.batch_in_epoch = 0
        self.cursor[:] = 0
        self.passes[:] = 0
        if self.drawn is not None:
            self.drawn[:] = False
            self.index.new_epoch()

    def pop(self) -> int:
        i = int(self.pending[self.pending_offset])
        self.pending_offset += 1
        self.position += 1
        return i

    # ------------------------------------------------------------------ one batch
    def decide(self, setting: Setting, step: int) -> tuple[np.ndarray, Draw]:
        """The next batch's rows for training step ``step``; they become the pending indices."""
        self.step = int(step)
        b = min(self.batch_size, self.epoch_size - self.position)
        d = Draw(band=setting.band, rng=self.rng(_RNG_BATCH, self.epoch, self.batch_in_epoch))
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
        if setting.band is not None or self.uses_band:
            self.banned_until[rows] = 0  # a drawn prompt is judged afresh on its next encounter
        if self.drawn is not None:
            self.drawn[rows] = True
        if self.index is not None:
            self.index.drawn_rows(rows)
        self.pending, self.pending_offset = rows, 0
        self._count(rows, d)
        return rows, d

    def _count(self, rows: np.ndarray, d: Draw) -> None:
        t = self.totals
        t["drawn"] += len(rows)
        t["skipped"] += d.skipped
        t["fallback"] += d.fallback
        t["repeats"] += d.repeats
        if d.fallback:
            t["fallback_batches"] += 1
            if self._warned_step != self.step:
                self._warned_step = self.step
                logger.warning(
                    "difficulty sampler, step %d: too few prompts inside the band [%.3g, %.3g] in pool(s) %s; "
                    "filled %d of %d by fallback=%s",
                    self.step, d.band[0], d.band[1], sorted(set(d.fallback_pools)), d.fallback, len(rows),
                    self.config.band.fallback,
                )

    def _perm(self, k: int) -> np.ndarray:
        key = (self.epoch, int(self.passes[k]))
        hit = self._perm_cache.get(k)
        if hit is not None and hit[:2] == key:
            return hit[2]
        m = len(self.pools[k])
        if self.config.mode == "uniform" and not self.config.shuffle:
            perm = np.arange(m, dtype=np.int64)
        else:
            perm = self.rng(_RNG_PERM, self.epoch, k, key[1]).permutation(m)
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

    def _scan(self, rows: np.ndarray, need: int, d: Draw, taken: np.ndarray) -> tuple[np.ndarray, int]:
        """The first ``need`` admissible rows of ``rows`` not in ``taken``, and how many rows were consumed (those
        looked at: out-of-band ones among them are banned and counted as skipped)."""
        adm, newly = self._admit(rows, d.band)
        fresh = ~np.isin(rows, taken) if len(taken) else np.ones(len(rows), dtype=bool)
        ok = np.flatnonzero(adm & fresh)[:need]
        consumed = int(ok[-1]) + 1 if len(ok) == need else len(rows)
        newly = rows[:consumed][newly[:consumed]]
        if len(newly):
            ra = self.config.band.readmit_after
            self.banned_until[newly] = NEVER if ra is None else min(NEVER - 1, self.step + ra)
        d.skipped += int((~adm[:consumed]).sum())
        return rows[ok], consumed

    def _take(self, k: int, n: int, d: Draw, chosen: np.ndarray) -> np.ndarray:
        """``n`` rows of pool ``k`` (not in ``chosen``) that pass the band, in pool order; fallback when short."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        pool = self.pools[k]
        m = len(pool)
        out: list[np.ndarray] = []
        need = n
        scanned = 0
        budget = 2 * m + 4 * n if self.config.replacement else (m - int(self.cursor[k])) + m
        while need > 0 and scanned < budget:
            taken = np.concatenate([chosen, *out]) if out else chosen
            if self.config.replacement:
                rows = pool[d.rng.choice(m, size=min(m, max(2 * need, 64)), replace=False)].astype(np.int64)
                got, consumed = self._scan(rows, need, d, taken)
            else:
                if self.cursor[k] >= m:
                    self.passes[k] += 1
                    self.cursor[k] = 0
                    self.totals["recycled"] += 1
                start = int(self.cursor[k])
                stop = min(m, start + max(2 * need, 256), start + (budget - scanned))
                got, consumed = self._scan(pool[self._perm(k)[start:stop]].astype(np.int64), need, d, taken)
                self.cursor[k] = start + consumed
            out.append(got)
            need -= len(got)
            scanned += consumed
        got = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        if need > 0:
            got = np.concatenate([got, self._fallback(pool.astype(np.int64), need, d, np.concatenate([chosen, got]),
                                                      self.pool_names[k])])
        return got

    def _fallback(self, pool: np.ndarray, need: int, d: Draw, chosen: np.ndarray, pool_name: str) -> np.ndarray:
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

    def _take_nearest(self, n: int, target: float, d: Draw) -> np.ndarray:
        """Target mode: ``n`` admissible rows nearest ``target`` (sampled around it if T > 0), O(n log N)."""
        ix = self.index
        d.skipped += ix.prepare(self.step, d.band, self.config.band.readmit_after)
        fresh = True
        if self.drawn is not None:
            have = ix.count(d.band, self.step)
            if have < n:  # every admissible prompt was drawn this epoch: allow repeats
                d.repeats += n - have
                fresh = False
        picked = ix.pick(n, target, d.band, self.step, d.rng, self.config.target_temperature, fresh)
        if len(picked) < n:
            picked = np.concatenate([picked, self._fallback(self.pools[0].astype(np.int64), n - len(picked), d,
                                                            picked, "all")])
        return picked

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

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "position": self.position,
            "batch_in_epoch": self.batch_in_epoch,
            "cursor": self.cursor.copy(),
            "passes": self.passes.copy(),
            "carry": self.carry.copy(),
            "carry_mix": None if self.carry_mix is None else self.carry_mix.copy(),
            "pending": self.pending.copy(),
            "pending_offset": self.pending_offset,
            "banned_until": self.banned_until.copy(),
            "drawn": None if self.drawn is None else np.packbits(self.drawn),
            "totals": dict(self.totals),
            "index": None if self.index is None else self.index.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        if int(state["batch_size"]) != self.batch_size:
            logger.warning("difficulty sampler: batch size changed from %s to %s on resume",
                           state["batch_size"], self.batch_size)
        if len(state["cursor"]) != len(self.cursor) or (state["drawn"] is None) != (self.drawn is None):
            raise ValueError("difficulty sampler checkpoint has another number of pools or no per-epoch draw mask "
                             "(mode, buckets or replacement changed)")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.cursor = np.asarray(state["cursor"], dtype=np.int64).copy()
        self.passes = np.asarray(state["passes"], dtype=np.int64).copy()
        self.carry = np.asarray(state["carry"], dtype=np.float64).copy()
        self.carry_mix = None if state["carry_mix"] is None else np.asarray(state["carry_mix"], dtype=np.float64)
        self.pending = np.asarray(state["pending"], dtype=np.int64).copy()
        self.pending_offset = int(state["pending_offset"])
        # in place: the target index shares these arrays
        self.banned_until[:] = state["banned_until"]
        if self.drawn is not None:
            self.drawn[:] = np.unpackbits(state["drawn"], count=len(self.drawn)).astype(bool)
        self.totals = {k: int(state["totals"].get(k, 0)) for k in _TOTALS}
        self._perm_cache = {}
        self.step = int(step)
        if self.index is not None:
            self.index.load_state_dict(state["index"], step)

    def nbytes(self) -> int:
        arrays = [self.banned_until, self.drawn, *self.pools] + [p for _, _, p in self._perm_cache.values()]
        return sum(a.nbytes for a in arrays if a is not None) + (self.index.nbytes() if self.index else 0)
