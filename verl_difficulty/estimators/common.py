"""What the two verl wrappers share: reading verl's arguments, input checks, metrics, the final write.

Both registered estimators (P2 ``difficulty_weighted``, P3 ``durian``) are a thin wrapper around a pure (bs,) tensor
core: :func:`read_batch` turns verl's (bs, T) tensors and uid labels into per-response scalars with one read of each
token tensor (:func:`~verl_difficulty.estimators.groups.row_sums`), the core computes (bs,) advantages and metrics,
and :func:`finish` records the metrics and writes the (bs, T) advantage once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from verl_difficulty import schema
from verl_difficulty.estimators import metrics as collector
from verl_difficulty.estimators.groups import (
    STAT_DTYPE,
    GroupMoments,
    as_array,
    broadcast_to_tokens,
    dense_ids,
    group_ids,
    group_moments,
    row_sums,
)

__all__ = [
    "TokenBatch",
    "read_batch",
    "RewardGroups",
    "reward_groups",
    "finish",
    "check_finite",
    "read_float_column",
    "summary_stats",
    "batch_group_metrics",
    "named_metrics",
]

_MAX_LISTED = 20


@dataclass
class TokenBatch:
    """A verl batch reduced to per-response scalars (see :func:`read_batch`).

    Attributes:
        scores: (bs,) reward ``r`` of each response (sum of its token-level rewards), ``dtype``.
        valid: (bs,) bool, non-empty responses.
        lengths: (bs,) valid tokens per response, ``dtype``; only with ``log_probs`` (else None).
        log_prob_sum: (bs,) masked sum of ``log_probs`` (or of their ``exp``), or None.
        mask_copy: (bs, T) the mask converted to ``dtype`` (a fresh tensor) when the pass made one, else None.
        gid: (bs,) int64 dense prompt ids ``0..G-1`` from verl's uid.
        num_groups: G.
        dtype: the output dtype (that of ``token_level_rewards``; float32 if it is not floating).
    """

    scores: torch.Tensor
    valid: torch.Tensor
    lengths: Optional[torch.Tensor]
    log_prob_sum: Optional[torch.Tensor]
    mask_copy: Optional[torch.Tensor]
    gid: torch.Tensor
    num_groups: int
    dtype: torch.dtype


def read_batch(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    non_tensor_batch: Optional[dict],
    log_probs: Optional[torch.Tensor] = None,
    exp_log_probs: bool = False,
) -> TokenBatch:
    """verl's estimator arguments -> :class:`TokenBatch`; each (bs, T) tensor is read once.

    Raises:
        ValueError: mismatched shapes, missing or misshaped uid labels.
    """
    if response_mask.shape != token_level_rewards.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} must match token_level_rewards "
                         f"{tuple(token_level_rewards.shape)}")
    if log_probs is not None and log_probs.shape != response_mask.shape:
        raise ValueError(f"old_log_probs {tuple(log_probs.shape)} must match response_mask "
                         f"{tuple(response_mask.shape)}")
    dtype = token_level_rewards.dtype if token_level_rewards.is_floating_point() else torch.float32
    bs = token_level_rewards.shape[0]
    gid, num_groups = group_ids(index, bs, non_tensor_batch)
    sums = row_sums(response_mask, token_level_rewards, log_probs, exp_log_probs=exp_log_probs, dtype=dtype)
    return TokenBatch(scores=sums.scores, valid=sums.valid, lengths=sums.lengths, log_prob_sum=sums.log_prob_sum,
                      mask_copy=sums.mask_copy, gid=gid.to(token_level_rewards.device), num_groups=num_groups, dtype=dtype)


@dataclass
class RewardGroups:
    """The first step of both tensor cores (see :func:`reward_groups`); numpy arrays.

    Attributes:
        r: (bs,) float64 rewards.
        gid: (bs,) int64 dense prompt ids ``0..G-1``.
        num_groups: G.
        valid: (bs,) bool, non-empty responses.
        moments: the (G,) :class:`~verl_difficulty.estimators.groups.GroupMoments` of ``r`` per prompt.
        out_dtype: torch dtype of the advantages (that of the scores; float32 if they are integers).
        device: torch device of the scores (the advantages go back there).
    """

    r: np.ndarray
    gid: np.ndarray
    num_groups: int
    valid: np.ndarray
    moments: GroupMoments
    out_dtype: torch.dtype
    device: torch.device

    def advantages(self, adv: np.ndarray) -> torch.Tensor:
        """(bs,) float64 advantages -> a torch tensor of the scores' dtype and device."""
        return torch.from_numpy(adv).to(device=self.device, dtype=self.out_dtype)


def reward_groups(
    scores: torch.Tensor, group_ids: Any, valid: Optional[Any], num_groups: Optional[int] = None
) -> RewardGroups:
    """Check the (bs,) rewards and prompt labels and compute the rewards' per-prompt moments (numpy float64).

    Args:
        scores: (bs,) torch rewards; every one must be finite (empty rows included).
        group_ids: (bs,) integer prompt labels, any values (tensor or array).
        valid: (bs,) bool or None (all valid).
        num_groups: G when ``group_ids`` already are dense ids ``0..G-1`` (as :func:`read_batch` makes them).

    Raises:
        ValueError: misshaped ``group_ids``; non-finite rewards (how many, which indices).
    """
    bs = scores.shape[0]
    if tuple(group_ids.shape) != (bs,):
        raise ValueError(f"group_ids must be (bs,) = ({bs},), got {tuple(group_ids.shape)}")
    r = as_array(scores, STAT_DTYPE)
    check_finite(r, "reward")
    valid = np.ones(bs, dtype=bool) if valid is None else as_array(valid, bool)
    if num_groups is None:
        ids, num_groups = dense_ids(torch.as_tensor(as_array(group_ids)))
        gid = ids.numpy()
    else:
        gid = as_array(group_ids, np.int64)
    return RewardGroups(r=r, gid=gid, num_groups=num_groups, valid=valid,
                        moments=group_moments(r, gid, num_groups, valid),
                        out_dtype=scores.dtype if scores.is_floating_point() else torch.float32,
                        device=scores.device)


def finish(adv: torch.Tensor, metrics: dict[str, float], response_mask: torch.Tensor,
           batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Record ``metrics`` for the seam and write the (bs,) advantages over the tokens (into ``batch.mask_copy`` when
    the token pass made one): ``(out, out)`` as verl wants (advantages, returns)."""
    collector.record(metrics)
    out = broadcast_to_tokens(adv, response_mask, batch.dtype, batch.mask_copy)
    return out, out


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` naming how many and which entries of ``values`` (shape (n,)) are NaN or +-inf.

    Shared by P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743). Lists the first 20 indices.
    """
    bad = ~np.isfinite(values)
    if bad.any():
        idx = np.flatnonzero(bad).tolist()
        shown = ", ".join(str(i) for i in idx[:_MAX_LISTED]) + (", ..." if len(idx) > _MAX_LISTED else "")
        raise ValueError(
            f"{len(idx)} of {values.size} responses have a non-finite {what} (NaN or inf), "
            f"at response indices [{shown}]"
        )


def read_float_column(non_tensor_batch: Optional[dict], key: str, bs: int) -> Optional[np.ndarray]:
    """``non_tensor_batch[key]`` as a (bs,) float64 array (None -> NaN), or None when the column is absent.

    Seam inputs: the verdict ``correct`` (P2) and ``visual_entropy`` (P3).
    """
    if non_tensor_batch is None or key not in non_tensor_batch:
        return None
    col = non_tensor_batch[key]
    if isinstance(col, torch.Tensor):
        col = col.detach().cpu().numpy()
    arr = np.asarray(col)
    if arr.shape != (bs,):
        raise ValueError(f"non_tensor_batch[{key!r}] must have shape ({bs},), got {arr.shape}")
    if arr.dtype == object:
        try:
            return np.array([np.nan if v is None else float(v) for v in arr], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"non_tensor_batch[{key!r}] must hold numbers: {exc}") from exc
    return arr.astype(np.float64)


def summary_stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    """(k,) array -> {prefix_mean, prefix_min, prefix_max} (nothing if empty)."""
    if values.size == 0:
        return {}
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_min": float(values.min()),
            f"{prefix}_max": float(values.max())}


def batch_group_metrics(m: GroupMoments, valid: np.ndarray) -> dict[str, float]:
    """Prompt count, group sizes, zero-variance / singleton fractions and empty responses of a batch.

    Args:
        m: the (G,) reward moments of the batch's prompts.
        valid: (bs,) bool, non-empty responses.
    """
    present = m.present
    n = int(present.sum())
    out = {
        "num_prompts": float(n),
        "zero_variance_frac": int(m.const.sum()) / max(n, 1),
        "singleton_frac": int((m.count == 1).sum()) / max(n, 1),
        "empty_responses": float(valid.size - int(valid.sum())),
    }
    out.update(summary_stats("group_size", m.count[present]))
    return out


def named_metrics(part: str, metrics: dict[str, Any]) -> dict[str, float]:
    """{``name`` or ``name/detail``: number} -> {``difficulty/<part>/name[/detail]``: float} (names built by
    :func:`verl_difficulty.schema.metric`)."""
    return {_metric_name(part, k): float(v) for k, v in metrics.items()}


@functools.lru_cache(maxsize=1024)
def _metric_name(part: str, key: str) -> str:
    return schema.metric(part, *key.split("/"))
