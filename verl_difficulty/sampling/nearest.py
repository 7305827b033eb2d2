"""Target-mode draws in O(batch * log N): a sorted index of the pool's pass-rate estimates.

The index keeps the pool's rows sorted by (estimate, row) in numpy arrays (``keys``/``order``), with Fenwick trees
(binary indexed trees) counting, per sorted position, the rows a draw may take: ``alive`` (not dirty), ``avail``
(alive and not drawn this epoch), ``probe`` (alive and re-admitted by the band-pass) and ``probe_avail``. A row
whose estimate changes becomes *dirty*: it leaves the trees and is handled by brute force (a small array) until
the dirty set outgrows ``max_dirty`` and the index is rebuilt by merging the dirty rows back in (O(N), amortised
over ~``max_dirty / batch`` steps).

What a draw takes depends only on the logical state (estimates, drawn and banned rows, the dirty set, the step) and
the batch's random stream, never on where stale slots sit, so a resumed sampler (which rebuilds the index from its
state) draws exactly what an uninterrupted one draws.

* ``target_temperature == 0``: the ``n`` candidates nearest the target; ties at the boundary distance are broken
  uniformly at random: ``rng.choice(len(tied), k, replace=False)`` over the tied rows in (estimate, row) order.
* ``target_temperature = T > 0``: sampling without replacement with weights ``exp(-|p - target| / T)`` (the law of
  the Gumbel top-k of the O(N) implementation), by rejection from distance bins of width T (acceptance >= 1/e).
  Rows whose weight underflows against the nearest one's (ratio < 1e-300) are only taken once the others are
  exhausted.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

NEVER = np.iinfo(np.int32).max
_EMPTY = np.zeros(0, dtype=np.int64)
_MAX_BINS = 746  # exp(-745) underflows a float64


class Fenwick:
    """Counts of set bits over positions ``0..n-1``; every operation is vectorised over positions or ranks."""

    def __init__(self, bits: np.ndarray):
        self.bits = np.asarray(bits, dtype=bool).copy()
        self.n = n = len(self.bits)
        self.tree = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(self.bits, dtype=np.int32, out=self.tree[1:])
        # tree[i] = c[i] - c[i - lowbit(i)] from the cumsum c, in place: per level k (ascending) the indices
        # i = 2^k (2j + 1) as strided slices; i - 2^k has a larger lowbit, so it still holds c
        t = self.tree
        for k in range(n.bit_length()):
            w = 1 << k
            hi = t[w::2 * w]
            hi -= t[0::2 * w][: len(hi)]
        self.levels = n.bit_length()
        self.top = 1 << (n.bit_length() - 1) if n else 0

    def set(self, pos: np.ndarray, value: bool) -> None:
        pos = np.unique(np.asarray(pos, dtype=np.int64))
        pos = pos[self.bits[pos] != value]
        if not len(pos):
            return
        self.bits[pos] = value
        if len(pos) > self.n >> 6:  # many positions: rebuilding is cheaper than climbing the tree from each
            self.__init__(self.bits)
            return
        i = pos + 1
        while len(i):
            np.add.at(self.tree, i, 1 if value else -1)
            i = i + (i & -i)
            i = i[i <= self.n]

    def prefix(self, pos) -> np.ndarray:
        """Set bits in ``[0, pos)`` (``pos`` an array or a number)."""
        i = np.array(pos, dtype=np.int64, copy=True)
        out = np.zeros(i.shape, dtype=np.int64)
        for _ in range(self.levels):  # tree[0] == 0: finished queries add nothing
            out += self.tree[i]
            i -= i & -i
        return out

    def find(self, k: np.ndarray) -> np.ndarray:
        """Position of the ``k``-th set bit (``k`` 1-based, at most the number of set bits)."""
        k = np.asarray(k, dtype=np.int64)
        pos = np.zeros(k.shape, dtype=np.int64)
        rem = k.copy()
        step = self.top
        while step:
            nxt = pos + step
            t = self.tree[np.minimum(nxt, self.n)]
            go = (nxt <= self.n) & (t < rem)
            pos = np.where(go, nxt, pos)
            rem = np.where(go, rem - t, rem)
            step >>= 1
        return pos

    def nbytes(self) -> int:
        return self.bits.nbytes + self.tree.nbytes


def _count(segs: Sequence[tuple], lo, hi) -> np.ndarray:
    """Candidates in positions ``[lo, hi)`` (arrays or numbers) over the segments ``(start, stop, tree)``."""
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    out = np.zeros(np.broadcast(lo, hi).shape, dtype=np.int64)
    for start, stop, tree in segs:
        a, b = np.broadcast_arrays(np.clip(lo, start, stop), np.clip(hi, start, stop))
        pa, pb = tree.prefix(np.stack([a, b])).reshape((2,) + out.shape)
        out += np.where(b > a, pb - pa, 0)
    return out


def _kth(segs: Sequence[tuple], lo, hi, ranks) -> np.ndarray:
    """Position of the candidate of 0-based rank ``ranks`` within ``[lo, hi)`` (arrays broadcast together)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    lo = np.broadcast_to(np.asarray(lo, dtype=np.int64), ranks.shape)
    hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), ranks.shape)
    out = np.full(ranks.shape, -1, dtype=np.int64)
    left = ranks.copy()
    for start, stop, tree in segs:
        a, b = np.clip(lo, start, stop), np.clip(hi, start, stop)
        before, after = tree.prefix(np.stack([a, b]))
        inside = np.where(b > a, after - before, 0)
        here = (out < 0) & (left < inside)
        if here.any():
            out[here] = tree.find(before[here] + left[here] + 1)
        left = np.where(out < 0, left - inside, left)
    return out


class TargetIndex:
    """Sorted index over ``pool`` (ascending rows) for nearest-to-target draws.

    It shares the drawer's arrays ``banned_until`` (int32 per row, 0 = not banned) and ``drawn`` (bool per row,
    drawn this epoch; ``None`` with replacement), updated in place by the drawer.
    """

    def __init__(self, pool: np.ndarray, est: np.ndarray, banned_until: np.ndarray, drawn: Optional[np.ndarray],
                 probes: bool, band_used: bool, max_dirty: Optional[int] = None):
        n_rows = len(est)
        self.pool = pool
        self.est = est
        self.banned_until = banned_until
        self.drawn = drawn
        self.probes = probes  # the band re-admits rows (readmit_after is set)
        self.band_used = band_used
        self.max_dirty = int(max_dirty or max(1024, 16 * math.isqrt(max(len(self.pool), 1))))
        self.dirty = np.zeros(n_rows, dtype=bool)
        self.slot = np.full(n_rows, -1, dtype=np.int32)
        self._dirty_parts: list[np.ndarray] = []
        self.n_dirty = 0
        self._recheck: list[np.ndarray] = []  # rows drawn or re-estimated since the last band-active draw
        self._recheck_len = 0
        self._band_seen: Any = None  # band of the last band-active draw (None: the next one scans the pool)
        self._queue: list[tuple[int, np.ndarray]] = []  # (banned_until, rows) not yet re-admitted
        self._probe_step = 0
        self._build(self.pool)

    # ------------------------------------------------------------------ building
    def _build(self, rows: np.ndarray) -> None:
        """Sort ``rows`` (ascending, not dirty) by (estimate, row) and count the candidates."""
        keys = self.est[rows]
        perm = np.argsort(keys, kind="stable")  # ties keep the ascending row order
        self.order = rows[perm].astype(np.int32, copy=False)
        del perm  # the peak of a build at 1M rows: free the int64 permutation before anything else is allocated
        keys.sort()  # equal keys are equal numbers: sorting the values in place gives est[order] without a copy
        self.keys = keys
        self._index()

    def _index(self) -> None:
        self.slot[:] = -1
        self.slot[self.order] = np.arange(len(self.order), dtype=np.int32)
        alive = self._alive_bits()
        # ``alive`` (drawn rows included) is only needed once an epoch runs out of fresh rows: built on demand
        self.avail = Fenwick(alive & ~self.drawn[self.order]) if self.drawn is not None else Fenwick(alive)
        self.alive = None if self.drawn is not None else self.avail
        if self.probes:
            bu = self.banned_until[self.order]
            probe = alive & (bu > 0) & (bu <= self._probe_step)
            self.probe = Fenwick(probe)
            self.probe_avail = Fenwick(probe & ~self.drawn[self.order]) if self.drawn is not None else self.probe

    def _alive_bits(self) -> np.ndarray:
        return ~self.dirty[self.order] if self.n_dirty else np.ones(len(self.order), dtype=bool)

    def _alive(self) -> Fenwick:
        if self.alive is None:
            self.alive = Fenwick(self._alive_bits())
        return self.alive

    def _in_pool(self, rows: np.ndarray) -> np.ndarray:
        return (self.slot[rows] >= 0) | self.dirty[rows]

    def _trees(self) -> list[Fenwick]:
        trees = [self.alive, self.avail] + ([self.probe, self.probe_avail] if self.probes else [])
        return list({id(t): t for t in trees if t is not None}.values())

    def dirty_rows(self) -> np.ndarray:
        if len(self._dirty_parts) > 1:
            self._dirty_parts = [np.concatenate(self._dirty_parts)]
        return self._dirty_parts[0] if self._dirty_parts else _EMPTY

    def _merge_dirty(self) -> None:
        """Put the dirty rows back in sorted place (O(N)): the index is exact again and the dirty set empty."""
        d = self.dirty_rows()
        keep = ~self.dirty[self.order]
        order, keys = self.order[keep], self.keys[keep]
        d = d[np.lexsort((d, self.est[d]))]
        e = self.est[d]
        ins = _lex_rank(keys, order, e, d)
        self.order = np.insert(order, ins, d.astype(np.int32))
        self.keys = np.insert(keys, ins, e)
        self.dirty[d] = False
        self._dirty_parts, self.n_dirty = [], 0
        self._index()

    # ------------------------------------------------------------------ events
    def changed(self, rows: np.ndarray) -> None:
        """The estimates of ``rows`` changed: they leave the sorted order until the next merge."""
        rows = rows[self.slot[rows] >= 0]
        rows = rows[~self.dirty[rows]]
        if not len(rows):
            return
        self.dirty[rows] = True
        self._dirty_parts.append(rows.astype(np.int64))
        self.n_dirty += len(rows)
        slots = self.slot[rows]
        slots = slots[slots >= 0]
        for tree in self._trees():
            tree.set(slots, False)
        self._note(rows)

    def drawn_rows(self, rows: np.ndarray) -> None:
        """``rows`` were drawn (the drawer marked them drawn and reset their ban)."""
        rows = rows[self._in_pool(rows)]
        slots = self.slot[rows]
        slots = slots[(slots >= 0) & ~self.dirty[rows]]
        if self.drawn is not None:
            self.avail.set(slots, False)
        if self.probes:
            self.probe.set(slots, False)
            self.probe_avail.set(slots, False)
        self._note(rows)

    def new_epoch(self) -> None:
        """The drawer cleared ``drawn``: every alive row is available again."""
        if self.drawn is not None:
            self.avail = Fenwick(self._alive_bits())
            if self.probes:
                self.probe_avail = Fenwick(self.probe.bits)

    def _note(self, rows: np.ndarray) -> None:
        if not self.band_used:
            return
        self._recheck.append(rows.astype(np.int64))
        self._recheck_len += len(rows)
        if self._recheck_len > len(self.pool):  # cheaper to scan the pool at the next band-active draw
            self._recheck, self._recheck_len, self._band_seen = [], 0, None

    # ------------------------------------------------------------------ per draw
    def prepare(self, step: int, band: Optional[tuple], readmit_after: Optional[int]) -> int:
        """Before a draw at ``step``: merge a large dirty set, re-admit due rows, ban rows newly out of ``band``.

        Returns the number of pool rows the band does not admit (``bandpass_skipped``).
        """
        if self.n_dirty > self.max_dirty:
            self._merge_dirty()
        if self.probes:
            self._readmit(step)
        if band is None:
            return 0
        if self._band_seen != band:  # scan the pool, in chunks (small temporaries)
            parts = [self.pool[i:i + 65536] for i in range(0, len(self.pool), 65536)]
        else:
            parts = [np.unique(np.concatenate(self._recheck or [_EMPTY]))]
        self._recheck, self._recheck_len, self._band_seen = [], 0, band
        newly = np.concatenate([rows[self._out(rows, band) & (self.banned_until[rows] == 0)] for rows in parts])
        if len(newly):
            until = NEVER if readmit_after is None else min(NEVER - 1, step + readmit_after)
            self.banned_until[newly] = until
            if self.probes and until != NEVER:
                self._queue.append((until, newly))
        return self._skipped(band, step)

    def _readmit(self, step: int) -> None:
        if step < self._probe_step:  # the step went back (set_step): recount from the bans
            self._probe_step = step
            self._queue = self._queue_from_bans()
            self._index()
            return
        self._probe_step = step
        due = [rows for until, rows in self._queue if until <= step]
        self._queue = [(until, rows) for until, rows in self._queue if until > step]
        if not due:
            return
        rows = np.concatenate(due)
        bu = self.banned_until[rows]
        rows = rows[(bu > 0) & (bu <= step) & ~self.dirty[rows]]
        slots = self.slot[rows]
        self.probe.set(slots, True)
        if self.drawn is not None:
            self.probe_avail.set(slots[~self.drawn[rows]], True)

    def _queue_from_bans(self) -> list[tuple[int, np.ndarray]]:
        bu = self.banned_until[self.pool]
        later = (bu > self._probe_step) & (bu < NEVER)
        rows, until = self.pool[later], bu[later]
        return [(int(u), rows[until == u]) for u in np.unique(until)]

    def _out(self, rows: np.ndarray, band: tuple) -> np.ndarray:
        p = self.est[rows]
        return (p < band[0]) | (p > band[1])

    def _band_slots(self, band: tuple) -> tuple[int, int]:
        return int(np.searchsorted(self.keys, band[0], "left")), int(np.searchsorted(self.keys, band[1], "right"))

    def _skipped(self, band: tuple, step: int) -> int:
        a, b = self._band_slots(band)
        out_slots = len(self.order) - (b - a)
        d = self.dirty_rows()
        stale = self.slot[d]
        stale = stale[stale >= 0]
        static_out = out_slots - int(((stale < a) | (stale >= b)).sum())
        if self.probes:
            static_out -= int(_count([(0, len(self.order), self.probe)], [0, b], [a, len(self.order)]).sum())
        bu = self.banned_until[d]
        return static_out + int((self._out(d, band) & ~((bu > 0) & (bu <= step))).sum())

    def _candidates(self, band: Optional[tuple], step: int, fresh: bool) -> tuple[list, np.ndarray]:
        """(segments, dirty candidate rows): ``fresh`` = not drawn this epoch too."""
        alive = self.avail if fresh else self._alive()
        probe = (self.probe_avail if fresh else self.probe) if self.probes else None
        ms = len(self.order)
        d = self.dirty_rows()
        ok = np.ones(len(d), dtype=bool)
        if fresh and self.drawn is not None:
            ok &= ~self.drawn[d]
        if band is None:
            return [(0, ms, alive)], d[ok]
        a, b = self._band_slots(band)
        # in position order (ranks run through the segments left to right)
        segs = [(0, a, probe), (a, b, alive), (b, ms, probe)] if probe is not None else [(a, b, alive)]
        bu = self.banned_until[d]
        ok &= ~self._out(d, band) | ((bu > 0) & (bu <= step))
        return segs, d[ok]

    def count(self, band: Optional[tuple], step: int, fresh: bool = True) -> int:
        segs, d = self._candidates(band, step, fresh)
        return int(_count(segs, 0, len(self.order))) + len(d)

    def pick(self, n: int, target: float, band: Optional[tuple], step: int, rng: np.random.Generator,
             temperature: float, fresh: bool = True) -> np.ndarray:
        """Up to ``n`` candidate rows (fewer only if fewer exist), nearest first / in sampling order."""
        segs, d = self._candidates(band, step, fresh)
        if n <= 0:
            return _EMPTY
        if temperature > 0:
            return _Tempered(self, segs, d, target, temperature, rng).take(n)
        return self._nearest(segs, d, n, target, rng)

    def _nearest(self, segs: list, d: np.ndarray, n: int, target: float, rng: np.random.Generator) -> np.ndarray:
        ms = len(self.order)
        s = int(np.searchsorted(self.keys, target, "left"))
        cl, cr = (int(c) for c in _count(segs, [0, s], [s, ms]))
        kl, kr = min(n, cl), min(n, cr)
        pos = _kth(segs, np.r_[np.zeros(kl, np.int64), np.full(kr, s)], np.r_[np.full(kl, s), np.full(kr, ms)],
                   np.r_[np.arange(cl - 1, cl - kl - 1, -1), np.arange(kr)])
        rows = np.concatenate([self.order[pos].astype(np.int64), d])
        dist = np.abs(self.est[rows] - target)
        if cl + cr + len(d) <= n:
            return rows[np.lexsort((rows, self.est[rows], dist))]
        d_star = np.partition(dist, n - 1)[n - 1]
        closer = rows[dist < d_star]
        closer = closer[np.lexsort((closer, self.est[closer], np.abs(self.est[closer] - target)))]
        need = n - len(closer)
        # the rows at distance d_star, in (estimate, row) order: static left, static right, dirty merged in
        left = (self._first(0, s, lambda k: target - k <= d_star), self._first(0, s, lambda k: target - k < d_star))
        right = (self._first(s, ms, lambda k: k - target >= d_star), self._first(s, ms, lambda k: k - target > d_star))
        c_left, c_right = (int(c) for c in _count(segs, [left[0], right[0]], [left[1], right[1]]))
        dt = d[np.abs(self.est[d] - target) == d_star]
        dt = dt[np.lexsort((dt, self.est[dt]))]
        lex = _lex_rank(self.keys, self.order, self.est[dt], dt)
        merged = (_count(segs, left[0], np.minimum(lex, left[1])) + _count(segs, right[0], np.minimum(lex, right[1]))
                  + np.arange(len(dt)))
        ranks = rng.choice(c_left + c_right + len(dt), size=need, replace=False)
        j = np.searchsorted(merged, ranks)
        is_dirty = (j < len(dt)) & (merged[np.minimum(j, len(dt) - 1)] == ranks) if len(dt) else np.zeros(need, bool)
        sr = ranks - j  # rank among the static tied rows
        in_left = sr < c_left
        pos = _kth(segs, np.where(in_left, left[0], right[0]), np.where(in_left, left[1], right[1]),
                   np.where(in_left, sr, sr - c_left))
        tied = np.where(is_dirty, dt[np.minimum(j, len(dt) - 1)] if len(dt) else 0,
                        self.order[np.maximum(pos, 0)].astype(np.int64))
        return np.concatenate([closer, tied]).astype(np.int64)

    def _first(self, lo: int, hi: int, pred) -> int:
        """First slot in ``[lo, hi)`` whose key satisfies the monotone predicate ``pred`` (``hi`` if none)."""
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(self.keys[mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"dirty": self.dirty_rows().copy()}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        """Rebuild from the drawer's (already loaded) arrays and the saved dirty set."""
        d = np.asarray(state["dirty"], dtype=np.int64)
        self.dirty[:] = False
        self.dirty[d] = True
        self._dirty_parts, self.n_dirty = ([d.copy()] if len(d) else []), len(d)
        self._recheck, self._recheck_len, self._band_seen = [], 0, None
        self._probe_step = int(step)
        self._queue = self._queue_from_bans() if self.probes else []
        self._build(self.pool[~self.dirty[self.pool]])

    def nbytes(self) -> int:
        arrays = [self.dirty, self.slot, self.order, self.keys]
        return sum(a.nbytes for a in arrays) + sum(t.nbytes() for t in self._trees())


def _lex_rank(keys: np.ndarray, order: np.ndarray, e: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Number of slots whose (key, row) is below (e, r), for each pair (``keys``/``order`` sorted by (key, row))."""
    lo = np.searchsorted(keys, e, "left").astype(np.int64)
    hi = np.searchsorted(keys, e, "right").astype(np.int64)
    while True:
        act = lo < hi
        if not act.any():
            return lo
        mid = (lo + hi) // 2
        less = order[np.minimum(mid, len(order) - 1)] < r
        lo = np.where(act & less, mid + 1, lo)
        hi = np.where(act & ~less, mid, hi)


class _Tempered:
    """Sampling without replacement with weights ``exp(-|p - target| / T)`` over the index's candidates."""

    def __init__(self, index: TargetIndex, segs: list, d: np.ndarray, target: float, tau: float,
                 rng: np.random.Generator):
        self.ix, self.segs, self.target, self.tau, self.rng = index, segs, target, tau, rng
        self.ms = len(index.order)
        self.fl = self.fr = int(np.searchsorted(index.keys, target, "left"))  # static frontiers
        self.d = d  # dirty candidates not taken yet
        self.dd = np.abs(index.est[d] - target)

    def _dist(self, rows: np.ndarray) -> np.ndarray:
        return np.abs(self.ix.est[rows] - self.target)

    def take(self, n: int) -> np.ndarray:
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            bins = self._bins()
            if bins is None:
                break
            rows = self._round(bins, n - got)
            if not len(rows):  # cannot happen: the nearest candidate's bin always has weight 1
                break
            out.append(rows)
            got += len(rows)
        return np.concatenate(out) if out else _EMPTY

    def _bins(self):
        """Distance bins of width T from the nearest remaining candidate: (lo, hi, count, nearest distance) per
        static bin (left side, then right side) and one bin per dirty candidate; ``None`` when none is left."""
        ix, segs, t = self.ix, self.segs, self.target
        cl, cr = (int(c) for c in _count(segs, [0, self.fr], [self.fl, self.ms]))
        if cl == 0 and cr == 0 and not len(self.d):
            return None
        near = []
        if cl:
            near.append(t - ix.keys[_kth(segs, 0, self.fl, cl - 1)])
        if cr:
            near.append(ix.keys[_kth(segs, self.fr, self.ms, 0)] - t)
        if len(self.d):
            near.append(self.dd.min())
        d0 = float(min(near))
        nb = int(min(_MAX_BINS, math.floor(max(0.0, 1.0 - d0) / self.tau) + 2))
        edges = d0 + self.tau * np.arange(nb + 1)
        lb = np.clip(np.searchsorted(ix.keys, t - edges, "right"), 0, self.fl)
        rb = np.clip(np.searchsorted(ix.keys, t + edges, "left"), self.fr, self.ms)
        lb[0], rb[0] = self.fl, self.fr
        lo = np.r_[lb[1:], rb[:-1]]
        hi = np.r_[lb[:-1], rb[1:]]
        cnt = _count(segs, lo, hi)
        # nearest candidate of each bin: the last of a left bin, the first of a right bin
        has = cnt > 0
        first = np.where(np.arange(len(lo)) < nb, cnt - 1, 0)
        pos = _kth(segs, lo[has], hi[has], first[has])
        bd = np.r_[edges[:-1], edges[:-1]]  # an empty bin: its inner edge
        bd[has] = np.abs(ix.keys[pos] - t)
        return lo, hi, cnt, bd, d0, nb

    def _round(self, bins, need: int) -> np.ndarray:
        lo, hi, cnt, bd, d0, nb = bins
        rel = np.exp(-(np.r_[bd, self.dd] - d0) / self.tau)
        cnt = np.r_[cnt, np.ones(len(self.d), dtype=np.int64)]
        # per side, the bins with a usable weight form a prefix (distances grow outwards)
        keep = np.r_[np.logical_and.accumulate(rel[:nb] > 0), np.logical_and.accumulate(rel[nb:2 * nb] > 0),
                     rel[2 * nb:] > 0]
        keep &= cnt > 0
        if int(cnt[keep].sum()) <= need:
            return self._take_all(lo, hi, cnt, keep, nb)
        w = np.where(keep, cnt * rel, 0.0)
        cum = np.cumsum(w)
        taken: dict[int, None] = {}
        while len(taken) < need:
            c = max(2 * need, 64)
            b = np.minimum(np.searchsorted(cum, self.rng.random(c) * cum[-1], "right"), len(w) - 1)
            rank = np.minimum((self.rng.random(c) * cnt[b]).astype(np.int64), cnt[b] - 1)
            static = b < len(lo)
            rows = np.empty(c, dtype=np.int64)
            bs = b[static]
            rows[static] = self.ix.order[_kth(self.segs, lo[bs], hi[bs], rank[static])]
            rows[~static] = self.d[b[~static] - len(lo)]
            accept = self.rng.random(c) < np.exp(-(self._dist(rows) - np.r_[bd, self.dd][b]) / self.tau)
            for r in rows[accept].tolist():
                if len(taken) < need:
                    taken.setdefault(r)
        return np.fromiter(taken, dtype=np.int64, count=len(taken))

    def _take_all(self, lo, hi, cnt, keep, nb) -> np.ndarray:
        """Every candidate of the kept bins, in Gumbel order; the frontiers move past them."""
        s = np.flatnonzero(keep[: len(lo)])
        q_lo, q_hi = np.repeat(lo[s], cnt[s]), np.repeat(hi[s], cnt[s])
        ranks = np.arange(int(cnt[s].sum())) - np.repeat(np.cumsum(cnt[s]) - cnt[s], cnt[s])
        rows = self.ix.order[_kth(self.segs, q_lo, q_hi, ranks)].astype(np.int64)
        dk = keep[len(lo):]
        rows = np.concatenate([rows, self.d[dk]])
        self.d, self.dd = self.d[~dk], self.dd[~dk]
        left, right = keep[:nb], keep[nb:2 * nb]
        if left.any():
            self.fl = int(lo[:nb][left].min())
        if right.any():
            self.fr = int(hi[nb:2 * nb][right].max())
        key = self._dist(rows) / self.tau - self.rng.gumbel(size=len(rows))
        return rows[np.argsort(key, kind="stable")]
