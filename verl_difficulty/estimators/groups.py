r"""Group math shared by the difficulty-aware advantage estimators (P2 ``difficulty_weighted``, P3 ``durian``).

Pure functions, no verl types. Shapes: ``bs`` responses of ``T`` tokens, ``G`` groups (prompts: verl's ``uid``),
``P`` pools (groups of prompts, P3's difficulty groups).

Token level (the only functions that touch (bs, T) tensors):

* :func:`row_sums` reads the token tensors once, in row blocks that stay in cache, and returns per-response scalars:
  the reward ``r = sum_t token_level_rewards`` (all T tokens, as verl's GRPO), the length ``sum_t mask`` and,
  for P3, the masked sum of the log-probabilities (or of the probabilities).
* :func:`broadcast_to_tokens` writes the final advantage once: ``A[:, None] * mask`` into a fresh (bs, T) tensor.

Everything else works on (bs,) and (G,) vectors in float64:

* :func:`group_ids` / :func:`dense_ids`: verl's uid labels (or any integer labels) -> dense ids ``0..G-1``.
* :func:`group_count`, :func:`group_sum`, :func:`group_mean`: masked per-group reductions (``index_add``, no loop).
* :func:`group_moments`: count, mean, unbiased std, zero-variance flag and the centred values ``r - mean``.
* :func:`pooled_moments`: the same statistics with the responses of several prompts pooled (P3's sigma_a).

Conventions (both estimators): a response with an empty mask (``valid`` False) takes part in no statistic; its
centred value is 0. Groups with fewer than 2 valid responses have std 0 and centred values exactly 0; so have groups
whose values are all equal (max == min, exact).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "STAT_DTYPE",
    "RowSums",
    "row_sums",
    "broadcast_to_tokens",
    "group_ids",
    "dense_ids",
    "group_count",
    "group_sum",
    "group_mean",
    "unbiased_std",
    "GroupMoments",
    "group_moments",
    "pooled_moments",
]

STAT_DTYPE = torch.float64
"""dtype of every per-response / per-group statistic: they are small (bs,) / (G,) vectors."""

BLOCK_BYTES = 1 << 19
"""Bytes of one token tensor per row block in :func:`row_sums` on CPU: a block's rewards, mask and log-probs stay in
L2 while they are reduced, and the per-call overhead is small against the block's work."""

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


# ======================================================================================================================
# token level: one read of the inputs, one write of the output
# ======================================================================================================================
@dataclass
class RowSums:
    """Per-response scalars of a batch (see :func:`row_sums`).

    Attributes:
        lengths: (bs,) float, valid tokens per response (``sum_t mask``; the mask is 0/1).
        valid: (bs,) bool, ``lengths > 0`` (non-empty responses).
        scores: (bs,) float, ``sum_t token_level_rewards`` over all T tokens, or None.
        log_prob_sum: (bs,) float, ``sum_{t: mask != 0} x_t`` with ``x = log_probs`` (or ``exp(log_probs)``), or None.
    """

    lengths: torch.Tensor
    valid: torch.Tensor
    scores: Optional[torch.Tensor] = None
    log_prob_sum: Optional[torch.Tensor] = None


def row_sums(
    response_mask: torch.Tensor,
    token_level_rewards: Optional[torch.Tensor] = None,
    log_probs: Optional[torch.Tensor] = None,
    *,
    exp_log_probs: bool = False,
    dtype: torch.dtype = torch.float32,
) -> RowSums:
    r"""Per-response reductions of the (bs, T) token tensors, reading each input once.

    On CPU the rows are reduced in blocks of about ``BLOCK_BYTES`` per tensor (numpy kernels, the row ranges split
    over ``torch.get_num_threads()`` threads): a block's mask is read from memory once and reused from cache for the
    length and the masked log-prob sum, and a non-float mask is converted per block, so there is no (bs, T)
    temporary and no per-operation thread synchronisation. Elsewhere (accelerators, dtypes numpy lacks) plain torch
    reductions.

    The masked sum **selects** the tokens with ``mask != 0``: what sits at a masked position (padding, ``-inf``,
    NaN) never enters a response's sum. It is computed as the dot product of the row with its 0/1 mask, which equals
    the selection exactly for every finite value; a response whose product is not finite (a non-finite value at a
    masked position, or at a real token) is recomputed by explicit selection (``torch.where``). Explicit selection
    over every token would cost a ``torch.where`` pass over (bs, T), several times slower than the product on CPU.

    Args:
        response_mask: (bs, T) 0/1, any dtype.
        token_level_rewards: (bs, T) or None; summed over all T tokens (verl's outcome reward convention).
        log_probs: (bs, T) or None.
        exp_log_probs: sum ``exp(log_probs)`` (token probabilities) instead of ``log_probs``.
        dtype: floating dtype of the sums (the estimators' output dtype).

    Returns:
        :class:`RowSums` with (bs,) tensors of ``dtype`` (``valid``: bool).
    """
    bs, T = response_mask.shape
    for name, t in (("token_level_rewards", token_level_rewards), ("log_probs", log_probs)):
        if t is not None and tuple(t.shape) != (bs, T):
            raise ValueError(f"{name} {tuple(t.shape)} must match response_mask {(bs, T)}")
    tensors = [t for t in (response_mask, token_level_rewards, log_probs) if t is not None]
    if dtype in _NUMPY_DTYPES and all(t.device.type == "cpu" and t.dtype != torch.bfloat16 for t in tensors):
        lengths, scores, lp_sum = _row_sums_numpy(response_mask, token_level_rewards, log_probs, exp_log_probs, dtype)
    else:
        lengths, scores, lp_sum = _row_sums_torch(response_mask, token_level_rewards, log_probs, exp_log_probs, dtype)
    if lp_sum is not None:
        redo = torch.nonzero(~torch.isfinite(lp_sum)).flatten()
        if redo.numel():  # explicit selection for the rows the product could not settle
            x = log_probs[redo].to(dtype)
            x = torch.exp(x) if exp_log_probs else x
            keep = response_mask[redo] != 0
            lp_sum[redo] = torch.where(keep, x, torch.zeros((), dtype=dtype, device=x.device)).sum(-1)
    return RowSums(lengths=lengths, valid=lengths > 0, scores=scores, log_prob_sum=lp_sum)


def _row_sums_torch(mask, rewards, log_probs, exp_log_probs, dtype):
    """Whole-tensor torch reductions (accelerators: each is one fused kernel)."""
    m = mask if mask.dtype == dtype else mask.to(dtype)
    scores = None if rewards is None else rewards.sum(-1, dtype=dtype)
    lp_sum = None
    if log_probs is not None:
        x = log_probs.to(dtype)
        lp_sum = torch.linalg.vecdot(torch.exp(x) if exp_log_probs else x, m)
    return m.sum(-1), scores, lp_sum


def _pool() -> ThreadPoolExecutor:
    """The helper threads of :func:`row_sums` (created on first use; threads start on demand)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                       thread_name_prefix="verl-difficulty-rows")
        return _POOL


def _row_sums_numpy(mask, rewards, log_probs, exp_log_probs, dtype):
    """CPU: row blocks with numpy kernels (they release the GIL), row ranges split over the torch thread count."""
    bs, T = mask.shape
    np_dtype = _NUMPY_DTYPES[dtype]
    m_all = mask.detach().numpy()
    r_all = None if rewards is None else rewards.detach().numpy()
    x_all = None if log_probs is None else log_probs.detach().numpy()
    lengths = np.empty(bs, dtype=np_dtype)
    scores = None if r_all is None else np.empty(bs, dtype=np_dtype)
    lp_sum = None if x_all is None else np.empty(bs, dtype=np_dtype)
    rows = max(1, BLOCK_BYTES // max(1, T * np.dtype(np_dtype).itemsize))

    def work(lo: int, hi: int) -> None:
        n = min(rows, hi - lo)

        def buffer(src, convert):  # a per-thread block buffer for an input that needs a dtype conversion (or exp)
            return np.empty((n, T), dtype=np_dtype) if src is not None and (convert or src.dtype != np_dtype) else None

        def block(src, buf, a, b):  # rows a:b of src as np_dtype: a view, or converted into buf
            if buf is None:
                return src[a:b]
            np.copyto(buf[: b - a], src[a:b], casting="unsafe")
            return buf[: b - a]

        m_buf, r_buf, x_buf = buffer(m_all, False), buffer(r_all, False), buffer(x_all, exp_log_probs)
        with np.errstate(all="ignore"):  # inf * 0 at a masked position is settled by selection afterwards
            for a in range(lo, hi, rows):
                b = min(a + rows, hi)
                m = block(m_all, m_buf, a, b)
                np.einsum("ij->i", m, out=lengths[a:b])  # einsum: a SIMD row sum, 3x np.sum's pairwise speed
                if scores is not None:
                    np.einsum("ij->i", block(r_all, r_buf, a, b), out=scores[a:b])
                if lp_sum is not None:
                    x = block(x_all, x_buf, a, b)
                    if exp_log_probs:
                        np.exp(x, out=x)  # x is this thread's buffer here
                    np.einsum("ij,ij->i", x, m, out=lp_sum[a:b])

    n_blocks = -(-bs // rows) if bs else 0
    workers = max(1, min(torch.get_num_threads(), n_blocks))
    if workers == 1:
        work(0, bs)
    else:  # contiguous row ranges of whole blocks; this thread takes the first
        step = -(-n_blocks // workers) * rows
        futures = [_pool().submit(work, lo, min(bs, lo + step)) for lo in range(step, bs, step)]
        work(0, min(bs, step))
        for f in futures:
            f.result()

    def tensor(a):
        return None if a is None else torch.from_numpy(a)

    return tensor(lengths), tensor(scores), tensor(lp_sum)


def broadcast_to_tokens(values: torch.Tensor, response_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(bs,) per-response values, (bs, T) 0/1 mask -> (bs, T) ``values[:, None] * mask`` of ``dtype``, written once.

    One pass over the mask into a fresh output (the caller's mask is never modified); a mask of another dtype is
    promoted inside the multiply, without a converted copy. ``values`` must be finite (0 at masked tokens).
    """
    col = values.to(device=response_mask.device, dtype=dtype).unsqueeze(-1)
    if response_mask.dtype == dtype:
        return col * response_mask
    out = torch.empty(response_mask.shape, dtype=dtype, device=response_mask.device)
    return torch.mul(response_mask, col, out=out)


# ======================================================================================================================
# group ids
# ======================================================================================================================
def group_ids(index: Any, bs: int, non_tensor_batch: Optional[dict] = None) -> tuple[torch.Tensor, int]:
    """verl's ``index`` (uid per response; else ``non_tensor_batch["uid"]``) -> (bs,) int64 dense ids and G.

    Equal labels <-> equal ids, numbered ``0..G-1`` in order of first appearance (``pandas.factorize``); without
    pandas or for unhashable labels ``np.unique(..., return_inverse=True)``, comparing labels as strings when numpy
    cannot order them (like ``verl.utils.groupwise.as_torch_index``).

    Raises:
        ValueError: no labels at all, or not one per response.
    """
    if index is None and non_tensor_batch is not None:
        index = non_tensor_batch.get("uid", None)
    if index is None:
        raise ValueError(
            "the estimator needs the group id of every response: verl's `index` argument (the `uid` column) "
            "was not given and non_tensor_batch has no 'uid'"
        )
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    arr = np.asarray(index)
    if arr.ndim != 1 or arr.shape[0] != bs:
        raise ValueError(f"index/uid must be a 1-D array of length {bs} (one per response), got shape {arr.shape}")
    try:  # hash-based, O(bs): ~5x faster than np.unique on uuid strings
        import pandas as pd

        codes = pd.factorize(arr, use_na_sentinel=False)[0]
    except (ImportError, TypeError):  # no pandas, or unhashable labels
        try:
            _, codes = np.unique(arr, return_inverse=True)
        except TypeError:
            _, codes = np.unique(np.array([str(x) for x in arr], dtype=object), return_inverse=True)
    codes = np.ascontiguousarray(codes.reshape(-1), dtype=np.int64)
    return torch.from_numpy(codes), int(codes.max()) + 1 if bs else 0


def dense_ids(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(bs,) integer labels -> (bs,) int64 ids in ``0..G-1`` (equal labels <-> equal ids) and G.

    Labels that already are dense (every id in ``0..G-1`` used) are returned as they are, without a sort.
    """
    labels = labels.reshape(-1)
    if labels.numel() == 0:
        return labels.to(torch.int64), 0
    if not labels.dtype.is_floating_point and int(labels.min()) == 0:
        num_groups = int(labels.max()) + 1
        if num_groups <= labels.numel() and bool((torch.bincount(labels.to(torch.int64), minlength=num_groups) > 0)
                                                 .all()):
            return labels.to(torch.int64), num_groups
    uniq, inverse = torch.unique(labels, return_inverse=True)
    return inverse, int(uniq.numel())


# ======================================================================================================================
# masked per-group reductions on (bs,) vectors
# ======================================================================================================================
def group_count(gid: torch.Tensor, num_groups: int, valid: torch.Tensor) -> torch.Tensor:
    """(bs,) ids, (bs,) bool -> (G,) float64 number of valid responses per group."""
    return torch.zeros(num_groups, dtype=STAT_DTYPE, device=gid.device).index_add_(0, gid, valid.to(STAT_DTYPE))


def group_sum(values: torch.Tensor, gid: torch.Tensor, num_groups: int, valid: torch.Tensor) -> torch.Tensor:
    """(bs,) values, ids, bool -> (G,) float64 sum of the valid values per group (invalid rows are selected out, so
    a NaN there does not leak)."""
    vals = torch.where(valid, values.to(STAT_DTYPE), torch.zeros((), dtype=STAT_DTYPE, device=values.device))
    return torch.zeros(num_groups, dtype=STAT_DTYPE, device=values.device).index_add_(0, gid, vals)


def group_mean(
    values: torch.Tensor,
    gid: torch.Tensor,
    num_groups: int,
    valid: torch.Tensor,
    count: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(bs,) values, ids, bool -> (G,) float64 mean of the valid values per group; 0 for a group without any.

    ``count``: the (G,) :func:`group_count` of ``valid`` when already known.
    """
    count = group_count(gid, num_groups, valid) if count is None else count
    return group_sum(values, gid, num_groups, valid) / count.clamp(min=1.0)


def unbiased_std(sum_sq: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(G,) sums of squared deviations and counts -> (G,) unbiased std ``sqrt(ss / (n - 1))``; 0 where n < 2."""
    std = torch.sqrt(sum_sq / (count - 1.0).clamp(min=1.0))
    return torch.where(count >= 2, std, torch.zeros_like(std))


@dataclass
class GroupMoments:
    """Per-group statistics of per-response values over the valid responses (see :func:`group_moments`).

    Attributes:
        count:   (G,) float64, valid responses per group.
        mean:    (G,) float64, mean (0 for a group without valid responses).
        std:     (G,) float64, unbiased std; 0 when count < 2 or when all values are equal.
        const:   (G,) bool, count >= 2 and every value equal (max == min, exact).
        centred: (bs,) float64, ``value - mean[group]``; exactly 0 in constant groups, singletons and invalid rows.
    """

    count: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    const: torch.Tensor
    centred: torch.Tensor

    @property
    def present(self) -> torch.Tensor:
        """(G,) bool, groups with at least one valid response."""
        return self.count > 0


def group_moments(values: torch.Tensor, gid: torch.Tensor, num_groups: int, valid: torch.Tensor) -> GroupMoments:
    """Two-pass per-group count / mean / unbiased std of (bs,) ``values`` (``index_add``, no loop over groups).

    The GRPO group statistics of P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743).

    Args:
        values: (bs,) float (finite on valid rows).
        gid: (bs,) int64 in ``[0, num_groups)``.
        num_groups: G.
        valid: (bs,) bool, rows that take part (non-empty responses).
    Returns:
        :class:`GroupMoments` with (G,) count / mean / std / const and (bs,) centred, all float64 (const bool).
    """
    vals = values.to(STAT_DTYPE)
    count = group_count(gid, num_groups, valid)
    mean = group_mean(vals, gid, num_groups, valid, count)
    inf = torch.full((num_groups,), torch.inf, dtype=STAT_DTYPE, device=vals.device)
    vmax = (-inf).scatter_reduce(0, gid, torch.where(valid, vals, -torch.inf), reduce="amax")
    vmin = inf.scatter_reduce(0, gid, torch.where(valid, vals, torch.inf), reduce="amin")
    const = (count >= 2) & (vmax == vmin)
    flat = const | (count < 2)  # singletons: value - mean is 0 anyway; make it exact
    centred = torch.where(valid & ~flat[gid], vals - mean[gid], torch.zeros((), dtype=STAT_DTYPE, device=vals.device))
    sum_sq = torch.zeros(num_groups, dtype=STAT_DTYPE, device=vals.device).index_add_(0, gid, centred * centred)
    return GroupMoments(count=count, mean=mean, std=unbiased_std(sum_sq, count), const=const, centred=centred)


def pooled_moments(
    values: torch.Tensor,
    gid: torch.Tensor,
    pool_of_group: torch.Tensor,
    num_pools: int,
    valid: torch.Tensor,
) -> tuple[GroupMoments, torch.Tensor]:
    """Statistics of the responses of several groups pooled together (P3's sigma_a, arXiv 2602.21743).

    Args:
        values: (bs,) per-response values (rewards).
        gid: (bs,) group (prompt) id of each response.
        pool_of_group: (G,) int64 pool in ``[0, num_pools)`` of each group.
        num_pools: P.
        valid: (bs,) bool.
    Returns:
        (moments, pool): :class:`GroupMoments` over the P pools (``std`` is the unbiased std of all valid responses
        of all prompts of the pool) and the (bs,) pool of each response.
    """
    pool = pool_of_group[gid]
    return group_moments(values, pool, num_pools, valid), pool
