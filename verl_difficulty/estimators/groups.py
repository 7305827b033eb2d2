r"""Group math shared by the difficulty-aware advantage estimators (P2 ``difficulty_weighted``, P3 ``durian``).

Pure functions, no verl types. Shapes: ``bs`` responses of ``T`` tokens, ``G`` groups (prompts: verl's ``uid``),
``P`` pools (groups of prompts, P3's difficulty groups).

Token level (the only functions that touch (bs, T) tensors):

* :func:`row_sums` reads the token tensors once and returns per-response scalars: the reward
  ``r = sum_t token_level_rewards`` (all T tokens, as verl's GRPO), which rows are non-empty and, for P3, the length
  and the masked sum of the log-probabilities (or of the probabilities), in row blocks that stay in cache.
* :func:`broadcast_to_tokens` writes the final advantage once: ``A[:, None] * mask`` into a fresh (bs, T) tensor.

Everything else works on (bs,) and (G,) vectors: ids as torch int64, statistics as numpy float64 arrays (they take
torch tensors or arrays; :func:`as_array`):

* :func:`group_ids` / :func:`dense_ids`: verl's uid labels (or any integer labels) -> dense ids ``0..G-1``.
* :func:`group_count`, :func:`group_sum`, :func:`group_mean`: masked per-group reductions (``bincount``, no loop).
* :func:`group_moments`: count, mean, unbiased std, zero-variance flag and the centred values ``r - mean``.
* :func:`pooled_moments`: the std of the responses of several prompts pooled together (P3's sigma_a), from the
  prompts' own moments.

Conventions (both estimators): a response with an empty mask (``valid`` False) takes part in no statistic; its
centred value is 0. Groups with fewer than 2 valid responses have std 0 and centred values exactly 0; so have groups
whose values are all equal (max == min, exact).
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "STAT_DTYPE",
    "as_array",
    "RowSums",
    "row_sums",
    "nonempty_rows",
    "broadcast_to_tokens",
    "group_ids",
    "dense_ids",
    "group_count",
    "select",
    "group_sum",
    "group_mean",
    "unbiased_std",
    "GroupMoments",
    "group_moments",
    "PooledMoments",
    "pooled_moments",
]

STAT_DTYPE = np.float64
"""dtype of every per-response / per-group statistic: small (bs,) / (G,) numpy vectors (numpy's per-call cost on
vectors of a few thousand numbers is a fraction of torch's: durian's statistics at bs = 4096 took 1.7 ms in torch
with one intra-op thread, 0.4 ms in numpy)."""

BLOCK_BYTES = 1 << 20
"""Bytes of one token tensor per row block of :func:`row_sums` on CPU: a block's mask is still in cache when its
log-probs are multiplied with it, and the per-call overhead is small against the block's work."""

GUFUNC_MIN_ROWS = 512
"""Fewest rows per block of :func:`row_sums` on CPU: numpy releases the GIL in a row-wise ``vecdot`` only for more
than ~500 rows per call; with fewer, the helper threads of the pass would run one after the other."""

_NUMPY_OK = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


# ======================================================================================================================
# token level: one read of the inputs, one write of the output
# ======================================================================================================================
@dataclass
class RowSums:
    """Per-response scalars of a batch (see :func:`row_sums`).

    Attributes:
        valid: (bs,) bool, non-empty responses (some mask entry non-zero).
        lengths: (bs,) float, valid tokens per response (``sum_t mask``; the mask is 0/1); computed with the
            log-prob sum (the mask is read for it anyway), else None.
        scores: (bs,) float, ``sum_t token_level_rewards`` over all T tokens, or None.
        log_prob_sum: (bs,) float, ``sum_{t: mask != 0} x_t`` with ``x = log_probs`` (or ``exp(log_probs)``), or None.
        mask_copy: (bs, T) the mask converted to ``dtype`` when it had another dtype and was read in full (with
            ``log_probs``), else None. A fresh tensor: :func:`broadcast_to_tokens` may write the output into it.
    """

    valid: torch.Tensor
    lengths: Optional[torch.Tensor] = None
    scores: Optional[torch.Tensor] = None
    log_prob_sum: Optional[torch.Tensor] = None
    mask_copy: Optional[torch.Tensor] = None


def row_sums(
    response_mask: torch.Tensor,
    token_level_rewards: Optional[torch.Tensor] = None,
    log_probs: Optional[torch.Tensor] = None,
    *,
    exp_log_probs: bool = False,
    dtype: torch.dtype = torch.float32,
) -> RowSums:
    r"""Per-response reductions of the (bs, T) token tensors, reading each input once.

    Without ``log_probs`` nothing is selected per token: the rewards' row sum is one torch reduction (as in verl's
    GRPO) and the non-empty rows come from :func:`nonempty_rows`, which reads one mask column, not the mask.

    With ``log_probs``, the mask and the log-probs are reduced together (:func:`_masked_sums_cpu` on CPU: row blocks
    that stay in cache, split over threads, no (bs, T) temporary). A mask of another dtype (verl's is int64) is
    converted on the way into ``mask_copy``, which becomes the output buffer. The rewards' row sums are taken in the
    same pass when they have the output dtype (else one reduction of their own).

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
    dev = response_mask.device
    lengths = lp_sum = mask_copy = scores = None
    if log_probs is not None:  # first: its helper threads start before torch's thread pool has work
        lengths = torch.empty(bs, dtype=dtype, device=dev)
        lp_sum = torch.empty(bs, dtype=dtype, device=dev)
        mask_copy = None if response_mask.dtype == dtype else torch.empty(bs, T, dtype=dtype, device=dev)
        args = (response_mask, log_probs, exp_log_probs, lengths, lp_sum, mask_copy)
        numpy_ok = all(t.device.type == "cpu" and t.dtype in _NUMPY_OK for t in (response_mask, log_probs))
        if dev.type == "cpu" and dtype in (torch.float32, torch.float64) and numpy_ok:
            # the rewards' row sums ride along in the same pass when they are of the output dtype
            rewards = token_level_rewards if token_level_rewards is not None and token_level_rewards.dtype == dtype \
                and token_level_rewards.device.type == "cpu" else None
            scores = None if rewards is None else torch.empty(bs, dtype=dtype, device=dev)
            _masked_sums_cpu(*args, rewards, scores)
        else:
            _masked_sums_torch(*args)
    if token_level_rewards is not None and scores is None:
        if token_level_rewards.dtype == dtype:  # a matrix-vector product (BLAS gemv): faster than sum
            scores = torch.mv(token_level_rewards, torch.ones(T, dtype=dtype, device=token_level_rewards.device))
        else:  # integer rewards
            scores = token_level_rewards.sum(-1, dtype=dtype)
    if log_probs is None:
        return RowSums(valid=nonempty_rows(response_mask), scores=scores)
    redo = torch.nonzero(~torch.isfinite(lp_sum)).flatten()
    if redo.numel():  # explicit selection for the rows the product could not settle
        x = log_probs[redo].to(dtype)
        x = torch.exp(x) if exp_log_probs else x
        keep = response_mask[redo] != 0
        lp_sum[redo] = torch.where(keep, x, torch.zeros((), dtype=dtype, device=x.device)).sum(-1)
    return RowSums(valid=lengths > 0, lengths=lengths, scores=scores, log_prob_sum=lp_sum, mask_copy=mask_copy)


def _masked_sums_torch(mask, log_probs, exp_log_probs, lengths, lp_sum, mask_copy) -> None:
    """Lengths and mask-weighted log-prob sums with whole-tensor torch operations (accelerators, odd dtypes)."""
    dtype = lengths.dtype
    m = mask if mask_copy is None else mask_copy.copy_(mask)
    ones = torch.ones(mask.shape[1], dtype=dtype, device=mask.device)
    torch.mv(m, ones, out=lengths)
    x = log_probs.to(dtype)
    torch.mv((torch.exp(x) if exp_log_probs else x) * m, ones, out=lp_sum)


def _masked_sums_cpu(mask, log_probs, exp_log_probs, lengths, lp_sum, mask_copy, rewards=None, scores=None) -> None:
    """Lengths and mask-weighted log-prob sums on CPU (and, given ``rewards``, their row sums into ``scores``): numpy
    kernels over row blocks of ``BLOCK_BYTES`` (at least ``GUFUNC_MIN_ROWS`` rows), each row reduction a BLAS dot
    (``vecdot``).

    ``torch.get_num_threads()`` threads take blocks from one shared counter (numpy releases the GIL), so the pass has
    no per-operation thread synchronisation (torch's parallel kernels on every block would wait for the whole thread
    pool each time, which, on a CPU shared with other processes, cost 20x the pass), and a thread slowed down by
    another process (e.g. torch's OpenMP workers still spinning after the caller's last parallel kernel) simply takes
    fewer blocks. A block's mask is read from memory once (converted into ``mask_copy`` when given) and reused from
    cache for the length and the product.
    """
    bs, T = mask.shape
    np_dtype = np.float32 if lengths.dtype == torch.float32 else np.float64
    m_src, x_src = mask.detach().numpy(), log_probs.detach().numpy()
    m_dst = None if mask_copy is None else mask_copy.numpy()
    len_out, sum_out = lengths.numpy(), lp_sum.numpy()
    rows = max(GUFUNC_MIN_ROWS, BLOCK_BYTES // max(1, T * np.dtype(np_dtype).itemsize))
    convert_x = exp_log_probs or x_src.dtype != np_dtype
    ones = np.ones(T, dtype=np_dtype)
    r_src = None if rewards is None else rewards.detach().numpy()
    r_out = None if scores is None else scores.numpy()

    n_blocks = -(-bs // rows)
    blocks = itertools.count()  # shared by the threads: each takes the next block (next() is atomic under the GIL)

    def work() -> None:
        x_buf = np.empty((min(rows, bs), T), dtype=np_dtype) if convert_x else None
        with np.errstate(all="ignore"):  # inf * 0 at a masked position is settled by selection afterwards
            for k in blocks:
                a = k * rows
                if a >= bs:
                    return
                b = min(a + rows, bs)
                m = m_src[a:b]
                if m_dst is not None:
                    np.copyto(m_dst[a:b], m, casting="unsafe")
                    m = m_dst[a:b]
                _row_dot(m, ones, len_out[a:b])
                x = x_src[a:b]
                if convert_x:
                    x = x_buf[: b - a]
                    np.copyto(x, x_src[a:b], casting="unsafe")
                    if exp_log_probs:
                        np.exp(x, out=x)
                _row_dot(x, m, sum_out[a:b])
                if r_src is not None:
                    _row_dot(r_src[a:b], ones, r_out[a:b])

    workers = max(1, min(torch.get_num_threads(), n_blocks))
    futures = [_pool().submit(work) for _ in range(workers - 1)]
    work()
    for f in futures:
        f.result()


def _row_dot_vecdot(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    np.vecdot(x, y, out=out)


def _row_dot_einsum(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    np.einsum("ij,j->i" if y.ndim == 1 else "ij,ij->i", x, y, out=out)


_row_dot = _row_dot_vecdot if hasattr(np, "vecdot") else _row_dot_einsum
"""``out[i] = sum_t x[i, t] * y[(i,) t]``, in place: numpy >= 2's ``vecdot`` (a BLAS dot per row, 2-3x the speed of
the two-operand ``einsum`` on CPU), else ``einsum``."""


def _pool() -> ThreadPoolExecutor:
    """The helper threads of :func:`_masked_sums_cpu` (created on first use; threads start on demand)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                       thread_name_prefix="verl-difficulty-rows")
        return _POOL


def _forget_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: it makes its own pool on first use."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def nonempty_rows(response_mask: torch.Tensor) -> torch.Tensor:
    """(bs, T) mask -> (bs,) bool, rows with a non-zero entry, reading one column instead of the whole mask.

    A row whose first entry is set is non-empty; only the other rows (empty responses, or a response whose first
    token is masked, which verl's responses, starting with a generated token, do not have) are read in full.
    """
    bs, T = response_mask.shape
    if T == 0:
        return torch.zeros(bs, dtype=torch.bool, device=response_mask.device)
    valid = response_mask[:, 0] != 0
    rest = torch.nonzero(~valid).flatten()
    if rest.numel():
        valid[rest] = (response_mask.index_select(0, rest) != 0).any(-1)
    return valid


def broadcast_to_tokens(
    values: torch.Tensor,
    response_mask: torch.Tensor,
    dtype: torch.dtype,
    mask_copy: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(bs,) per-response values, (bs, T) 0/1 mask -> (bs, T) ``values[:, None] * mask`` of ``dtype``, written once.

    A mask of ``dtype``: one multiply into a fresh tensor. A mask of another dtype (verl's int64, bool): the
    multiply runs in place in ``mask_copy`` (the mask already converted to ``dtype``, a tensor the caller owns, e.g.
    :attr:`RowSums.mask_copy`) or in a converted copy made here; a conversion plus a same-dtype multiply is faster
    than torch's type-promoting multiply. The caller's ``response_mask`` is never modified. ``values`` must be finite.
    """
    col = values.to(device=response_mask.device, dtype=dtype).unsqueeze(-1)
    if response_mask.dtype == dtype:
        return col * response_mask
    out = response_mask.to(dtype) if mask_copy is None else mask_copy
    return out.mul_(col)


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
    codes = _run_codes(arr)
    if codes is None:
        codes = _factorize(arr)
    codes = np.ascontiguousarray(codes.reshape(-1), dtype=np.int64)
    return torch.from_numpy(codes), int(codes.max()) + 1 if bs else 0


def _factorize(arr: np.ndarray) -> np.ndarray:
    try:  # hash-based, O(bs): ~5x faster than np.unique on uuid strings
        import pandas as pd

        return pd.factorize(arr, use_na_sentinel=False)[0]
    except (ImportError, TypeError):  # no pandas, or unhashable labels
        try:
            return np.unique(arr, return_inverse=True)[1]
        except TypeError:
            return np.unique(np.array([str(x) for x in arr], dtype=object), return_inverse=True)[1]


def _run_codes(arr: np.ndarray) -> Optional[np.ndarray]:
    """Codes of labels that come in contiguous runs, one run per label (verl repeats each uid n times in a row):
    compare neighbours, factorize only the run heads. None when a label has several runs (or cannot be compared)."""
    if arr.shape[0] < 2:
        return None
    try:
        starts = np.empty(arr.shape[0], dtype=bool)
        starts[0] = True
        np.not_equal(arr[1:], arr[:-1], out=starts[1:])
    except (TypeError, ValueError):
        return None
    heads = np.flatnonzero(starts)
    if len(heads) > arr.shape[0] // 2:  # mostly singletons: no gain
        return None
    if int(_factorize(arr[heads]).max()) + 1 != len(heads):
        return None  # a label reappears later: not one run per label
    return np.cumsum(starts) - 1


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
# masked per-group reductions on (bs,) vectors (numpy float64)
# ======================================================================================================================
def as_array(x: Any, dtype: Any = None) -> np.ndarray:
    """A (k,) vector as a numpy array (a torch tensor of any device: its values on the host, no copy on CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.to(torch.float64)
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _sum_by(ids: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """(k,) ids in ``[0, n)``, (k,) float64 weights -> (n,) float64 per-id sums (``bincount``)."""
    return np.bincount(ids, weights=weights, minlength=n).astype(STAT_DTYPE, copy=False)


def group_count(gid: Any, num_groups: int, valid: Any) -> np.ndarray:
    """(bs,) ids, (bs,) bool -> (G,) float64 number of valid responses per group."""
    return _sum_by(as_array(gid), as_array(valid, bool).astype(STAT_DTYPE), num_groups)


def select(values: Any, valid: Any) -> np.ndarray:
    """(bs,) values, (bs,) bool -> (bs,) float64 values where valid, 0 elsewhere (by selection: a NaN at an invalid
    row does not leak into a sum)."""
    return np.where(as_array(valid, bool), as_array(values, STAT_DTYPE), 0.0)


def group_sum(values: Any, gid: Any, num_groups: int, valid: Any) -> np.ndarray:
    """(bs,) values, ids, bool -> (G,) float64 sum of the valid values per group (see :func:`select`)."""
    return _sum_by(as_array(gid), select(values, valid), num_groups)


def group_mean(values: Any, gid: Any, num_groups: int, valid: Any, count: Optional[np.ndarray] = None) -> np.ndarray:
    """(bs,) values, ids, bool -> (G,) float64 mean of the valid values per group; 0 for a group without any.

    ``count``: the (G,) :func:`group_count` of ``valid`` when already known.
    """
    count = group_count(gid, num_groups, valid) if count is None else count
    return group_sum(values, gid, num_groups, valid) / np.maximum(count, 1.0)


def unbiased_std(sum_sq: Any, count: Any) -> np.ndarray:
    """(G,) sums of squared deviations and counts -> (G,) unbiased std ``sqrt(ss / (n - 1))``; 0 where n < 2."""
    sum_sq, count = as_array(sum_sq, STAT_DTYPE), as_array(count, STAT_DTYPE)
    std = np.sqrt(sum_sq / np.maximum(count - 1.0, 1.0))
    std[count < 2] = 0.0
    return std


@dataclass
class GroupMoments:
    """Per-group statistics of per-response values over the valid responses (see :func:`group_moments`).

    Attributes (numpy arrays):
        count:   (G,) float64, valid responses per group.
        total:   (G,) float64, sum of the valid values.
        mean:    (G,) float64, mean (0 for a group without valid responses).
        sum_sq:  (G,) float64, sum of squared deviations from the mean (exactly 0 in constant groups).
        std:     (G,) float64, unbiased std; 0 when count < 2 or when all values are equal.
        vmin, vmax: (G,) float64, smallest / largest valid value (+inf / -inf for a group without any).
        const:   (G,) bool, count >= 2 and every value equal (max == min, exact).
        centred: (bs,) float64, ``value - mean[group]``; exactly 0 in constant groups, singletons and invalid rows.
    """

    count: np.ndarray
    total: np.ndarray
    mean: np.ndarray
    sum_sq: np.ndarray
    std: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    const: np.ndarray
    centred: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """(G,) bool, groups with at least one valid response."""
        return self.count > 0


def _extreme(values: np.ndarray, ids: np.ndarray, n: int, largest: bool) -> np.ndarray:
    """(k,) values, (k,) ids -> (n,) per-id max (``largest``) or min; -inf / +inf for an id without values."""
    out = np.full(n, -np.inf if largest else np.inf, dtype=STAT_DTYPE)
    (np.maximum if largest else np.minimum).at(out, ids, values)
    return out


def group_moments(values: Any, gid: Any, num_groups: int, valid: Any) -> GroupMoments:
    """Two-pass per-group count / mean / unbiased std of (bs,) ``values`` (``bincount``, no loop over groups).

    The GRPO group statistics of P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743).

    Args:
        values: (bs,) float (finite on valid rows); a torch tensor or an array.
        gid: (bs,) int64 in ``[0, num_groups)``.
        num_groups: G.
        valid: (bs,) bool, rows that take part (non-empty responses).
    Returns:
        :class:`GroupMoments`: (G,) statistics and (bs,) centred values, float64 numpy arrays (``const`` bool).
    """
    gid, valid = as_array(gid), as_array(valid, bool)
    vals = select(values, valid)
    count = _sum_by(gid, valid.astype(STAT_DTYPE), num_groups)
    total = _sum_by(gid, vals, num_groups)
    mean = total / np.maximum(count, 1.0)
    # zero variance, exactly: max == min over the valid values (a mean of equal values need not equal them)
    vmin = _extreme(np.where(valid, vals, np.inf), gid, num_groups, largest=False)
    vmax = _extreme(np.where(valid, vals, -np.inf), gid, num_groups, largest=True)
    const = (count >= 2) & (vmax == vmin)
    spread = ~(const | (count < 2))  # singletons: value - mean is 0 anyway; make it exact
    centred = np.where(valid & spread[gid], vals - mean[gid], 0.0)
    sum_sq = _sum_by(gid, centred * centred, num_groups)
    return GroupMoments(count=count, total=total, mean=mean, sum_sq=sum_sq, std=unbiased_std(sum_sq, count),
                        vmin=vmin, vmax=vmax, const=const, centred=centred)


@dataclass
class PooledMoments:
    """Statistics of the values of several groups pooled together (see :func:`pooled_moments`).

    Attributes (numpy arrays):
        count: (P,) float64, valid responses in each pool.
        std:   (P,) float64, unbiased std of all of them; exactly 0 when they are all equal, 0 when count < 2.
    """

    count: np.ndarray
    std: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """(P,) bool, pools with at least one valid response."""
        return self.count > 0


def pooled_moments(m: GroupMoments, pool_of_group: Any, num_pools: int) -> PooledMoments:
    """Std of the values of all groups in a pool, from the groups' own moments (P3's sigma_a, arXiv 2602.21743).

    With ``n_s, mu_s, SS_s`` the count, mean and sum of squared deviations of group ``s``: a pool ``a`` holds
    ``N_a = sum_s n_s`` values with mean ``mu_a = sum_s total_s / N_a`` and ``SS_a = sum_s SS_s + n_s (mu_s - mu_a)^2``
    (the exact decomposition of the pooled sum of squares), so ``sigma_a = sqrt(SS_a / (N_a - 1))``. Works on (G,)
    vectors only; a pool whose values are all equal (max == min over its groups) gets exactly 0.

    Args:
        m: the (G,) moments of the groups.
        pool_of_group: (G,) int64 pool in ``[0, num_pools)`` of each group (groups without values may be anywhere).
        num_pools: P.
    Returns:
        :class:`PooledMoments` with (P,) count and std.
    """
    pool_of_group = as_array(pool_of_group)
    count = _sum_by(pool_of_group, m.count, num_pools)
    mean = _sum_by(pool_of_group, m.total, num_pools) / np.maximum(count, 1.0)
    dev = m.mean - mean[pool_of_group]
    sum_sq = _sum_by(pool_of_group, m.sum_sq + m.count * dev * dev, num_pools)
    vmin = _extreme(m.vmin, pool_of_group, num_pools, largest=False)
    vmax = _extreme(m.vmax, pool_of_group, num_pools, largest=True)
    std = unbiased_std(sum_sq, count)
    std[vmax == vmin] = 0.0
    return PooledMoments(count=count, std=std)
