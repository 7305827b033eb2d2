r"""P2 online advantage differentiation as a verl advantage estimator (``difficulty_weighted``).

Paper P2, "Unlocking the Potential of Difficulty Prior in RL-based Multimodal Reasoning" (arXiv 2505.13261;
PAPERS.md "P2. Online advantage differentiation"): for prompt ``s`` with rollouts ``i = 1..n``,

    p_s     = fraction of correct responses in the group of s                     (online difficulty, low = hard)
    A_{s,i} = w(p_s) * (r_{s,i} - mean_i r_{s,i})   [ / (std_i r_{s,i} + eps) if keep_std ]

broadcast over the response tokens and masked. ``w`` is decreasing in ``p``; see ``DifficultyWeightingConfig``.

This module also holds the group helpers the ``durian`` estimator shares (scalar rewards, group ids, per-group
moments, the token-level broadcast).

Conventions shared by both estimators (documented here once):

* **Rewards** ``r = token_level_rewards.sum(-1)``. A non-finite ``r`` (NaN or +-inf) anywhere in the batch raises
  ``ValueError`` naming how many responses and which indices (the first 20), empty rows included: a non-finite reward
  is an upstream bug and must not be averaged into a group.
* **Empty responses** (``response_mask`` all zero on a row) are not responses of the policy: their advantage is 0 and
  they are left out of every group statistic (count, mean, std, pass rate, entropy, confidence). A group whose rows
  are all empty simply has no statistics.
* **Singleton groups** (one non-empty response): advantage 0, since ``r - mean = 0``. NOTE: verl's GRPO gives a
  singleton ``r / (1 + eps)`` (it uses mean 0, std 1 for them); we follow the equations instead.
* **Zero-variance groups** (all rewards equal, detected exactly as max == min): ``r - mean`` is set to exactly 0.
* **Token level**: one pass per input and one masked broadcast into the output: ``rewards.sum(-1)``,
  ``mask.sum(-1)`` (lengths, empty rows), for durian the masked log-prob sum as a per-row dot product (``np.einsum``
  on CPU, no (bs, T) temporary), then ``A[:, None] * mask``. A non-float mask is converted once and that buffer becomes
  the output (in-place multiply).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from verl_difficulty.seam.inputs import SEAM_HELP, with_seam_inputs

from verl_difficulty.estimators.config import DifficultyWeightingConfig
from verl_difficulty.estimators.metrics import metric_name, record
from verl_difficulty.schema import ACC

__all__ = [
    "ESTIMATOR_NAME",
    "difficulty_weight",
    "difficulty_weighted_advantage",
    "compute_difficulty_weighted_advantage",
    "GroupMoments",
    "group_moments",
    "group_ids_from_index",
    "check_finite",
    "row_dot",
]

ESTIMATOR_NAME = "difficulty_weighted"
METRIC_GROUP = "weighting"
_STAT_DTYPE = torch.float64  # per-response / per-group statistics are tiny (bs,) vectors: compute them in float64
_MAX_LISTED = 20


# ======================================================================================================================
# shared helpers (also used by durian.py)
# ======================================================================================================================
def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming how many and which entries of ``values`` (shape (n,)) are NaN or +-inf.

    Shared by P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743). Lists the first 20 indices.
    """
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(str(i) for i in idx[:_MAX_LISTED]) + (", ..." if len(idx) > _MAX_LISTED else "")
        raise ValueError(
            f"{len(idx)} of {values.numel()} responses have a non-finite {what} (NaN or inf), "
            f"at response indices [{shown}]"
        )


def row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(bs, T), (bs, T) -> (bs,) per-row dot product ``(x * y).sum(-1)``.

    On CPU (same float dtype, contiguous) this is ``np.einsum("ij,ij->i")``: a fused multiply-accumulate loop over
    both inputs with no (bs, T) temporary (measured 4x faster than ``torch.bmm`` of (1, T) x (T, 1) and 8x faster than
    ``(x * y).sum(-1)`` at 16384 x 1024, single thread). Elsewhere ``(x * y).sum(-1)``. Used for P3's (arXiv
    2602.21743) masked sequence log-probability.
    """
    if (x.device.type == "cpu" and y.device.type == "cpu" and x.dtype == y.dtype
            and x.dtype in (torch.float32, torch.float64) and x.dim() == 2 and x.shape == y.shape
            and x.is_contiguous() and y.is_contiguous() and not x.requires_grad and not y.requires_grad):
        return torch.from_numpy(np.einsum("ij,ij->i", x.numpy(), y.numpy()))
    return (x * y).sum(-1)


def float_mask(response_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """(bs, T) ``response_mask`` as ``dtype`` and whether that is a fresh tensor this module owns (then it is reused
    as the output buffer, so an int64/bool mask costs one conversion and no extra broadcast temporary).

    Shared by P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743).
    """
    if response_mask.dtype == dtype:
        return response_mask, False
    return response_mask.to(dtype), True


def broadcast_to_tokens(adv: torch.Tensor, mask_f: torch.Tensor, owned: bool) -> torch.Tensor:
    """(bs,) scalars, (bs, T) float mask -> (bs, T) ``adv[:, None] * mask`` (in place into ``mask_f`` if owned).

    The outcome advantage broadcast over response tokens of P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743).
    """
    adv = adv.to(mask_f.dtype).unsqueeze(-1)
    if owned:
        return mask_f.mul_(adv)
    return adv * mask_f


def output_dtype(token_level_rewards: torch.Tensor) -> torch.dtype:
    """dtype of the (bs, T) advantages: that of ``token_level_rewards`` (float32 if not floating)."""
    return token_level_rewards.dtype if token_level_rewards.is_floating_point() else torch.float32


def group_ids_from_index(index: Any, non_tensor_batch: Optional[dict], bs: int) -> torch.Tensor:
    """verl's ``index`` (object array of uid per response; else ``non_tensor_batch["uid"]``) -> (bs,) int64 ids.

    Ids are ``pandas.factorize`` codes (equal labels <-> equal ids); without pandas or for unhashable labels
    ``np.unique(..., return_inverse=True)``, comparing labels as strings when numpy cannot order them (like
    ``verl.utils.groupwise.as_torch_index``). The prompt groups of P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743).
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
    return torch.from_numpy(np.ascontiguousarray(codes.reshape(-1), dtype=np.int64))


def read_float_column(non_tensor_batch: Optional[dict], key: str, bs: int) -> Optional[np.ndarray]:
    """``non_tensor_batch[key]`` as a (bs,) float64 array (None -> NaN), or None when the column is absent.

    Seam inputs of P2 (``acc``, arXiv 2505.13261) and P3 (``visual_entropy``, arXiv 2602.21743).
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


class GroupMoments:
    """Per-group statistics of per-response values over the non-empty responses.

    Attributes (G = number of groups, n = number of responses):
        count:   (G,) float64, non-empty responses per group.
        mean:    (G,) float64, mean (0 for a group without responses).
        std:     (G,) float64, unbiased std; 0 when count < 2 or when all values are equal.
        const:   (G,) bool, count >= 2 and every value equal (max == min, exact).
        centred: (n,) float64, ``value - mean[group]``; exactly 0 in constant groups, singletons and empty rows.
    """

    __slots__ = ("count", "mean", "std", "const", "centred")

    def __init__(self, count, mean, std, const, centred):
        self.count, self.mean, self.std, self.const, self.centred = count, mean, std, const, centred


def group_moments(values: torch.Tensor, gid: torch.Tensor, num_groups: int, valid: torch.Tensor) -> GroupMoments:
    """Two-pass per-group count / mean / unbiased std with ``index_add_`` (no loop over groups).

    The GRPO group statistics of P2 (arXiv 2505.13261) and the pooled sigma_a of P3 (arXiv 2602.21743).

    Args:
        values: (n,) float64.
        gid: (n,) int64 in [0, num_groups).
        num_groups: G.
        valid: (n,) bool, rows that take part (non-empty responses).
    Returns:
        ``GroupMoments`` with (G,) count / mean / std / const and (n,) centred.
    """
    w = valid.to(values.dtype)
    vals = torch.where(valid, values, torch.zeros_like(values))
    zeros = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    count = zeros.index_add(0, gid, w)
    mean = zeros.index_add(0, gid, vals) / count.clamp(min=1.0)
    inf = torch.full((num_groups,), float("inf"), dtype=values.dtype, device=values.device)
    vmax = (-inf).scatter_reduce(0, gid, torch.where(valid, values, -torch.inf), reduce="amax")
    vmin = inf.scatter_reduce(0, gid, torch.where(valid, values, torch.inf), reduce="amin")
    const = (count >= 2) & (vmax == vmin)
    flat = const | (count < 2)  # singletons: value - mean is 0 anyway; make it exact
    centred = torch.where(valid & ~flat[gid], values - mean[gid], torch.zeros_like(values))
    ss = zeros.index_add(0, gid, centred * centred)
    std = torch.where(count >= 2, torch.sqrt(ss / (count - 1.0).clamp(min=1.0)), torch.zeros_like(ss))
    return GroupMoments(count, mean, std, const, centred)


def summary_stats(prefix: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    """(k,) tensor -> {prefix_mean, prefix_min, prefix_max} as 0-d tensors (nothing if empty). Metrics of P2/P3."""
    if values.numel() == 0:
        return {}
    return {f"{prefix}_mean": values.mean(), f"{prefix}_min": values.min(), f"{prefix}_max": values.max()}


def to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """{name: 0-d tensor} -> {name: float} with one host transfer. Metrics of P2/P3 (arXiv 2505.13261, 2602.21743)."""
    if not metrics:
        return {}
    keys = list(metrics)
    vals = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float64).reshape(()) for k in keys]).tolist()
    return dict(zip(keys, vals))


def batch_group_metrics(m: GroupMoments, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Group sizes, zero-variance / singleton fractions and prompt count of a batch ((G,) moments, (n,) valid).

    Shared by P2 (arXiv 2505.13261) and P3 (arXiv 2602.21743).
    """
    present = m.count > 0
    num = present.sum().clamp(min=1).to(torch.float64)
    out = {
        "num_prompts": present.sum().to(torch.float64),
        "zero_variance_frac": m.const.sum().to(torch.float64) / num,
        "singleton_frac": (m.count == 1).sum().to(torch.float64) / num,
        "empty_responses": (~valid).sum().to(torch.float64),
    }
    out.update(summary_stats("group_size", m.count[present]))
    return out


# ======================================================================================================================
# P2 core
# ======================================================================================================================
def difficulty_weight(p: torch.Tensor, cfg: DifficultyWeightingConfig) -> torch.Tensor:
    r"""P2 weight ``w(p)``, decreasing in the pass rate ``p`` (P2, arXiv 2505.13261; the ``steep_exp`` formula is ours).

    With ``x = 1 - p``: ``steep_exp``: ``exp(beta * x**k)``; ``exponential``: ``exp(beta * x)``; ``linear``:
    ``1 + beta * x``; ``constant``: 1.

    Args:
        p: (G,) float pass rates in [0, 1].
    Returns:
        (G,) weights, same dtype as ``p``.
    """
    x = 1.0 - p
    if cfg.weight == "constant":
        return torch.ones_like(p)
    if cfg.weight == "linear":
        return 1.0 + cfg.beta * x
    if cfg.weight == "exponential":
        return torch.exp(cfg.beta * x)
    if cfg.weight == "steep_exp":
        return torch.exp(cfg.beta * x.pow(cfg.steep_power))
    raise ValueError(f"unknown weight family {cfg.weight!r}")  # pragma: no cover (config validates)


def difficulty_weighted_advantage(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    correct: torch.Tensor,
    cfg: DifficultyWeightingConfig,
    valid: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Per-response P2 advantages (pure tensor core, no verl types).

    P2 (arXiv 2505.13261, online advantage differentiation):
    ``p_s = mean_i correct_{s,i}``, ``A_{s,i} = w(p_s) (r_{s,i} - mean_i r_{s,i})``, with ``/ (std_s + eps)`` on top
    when ``cfg.keep_std``; ``w`` renormalised to batch mean 1 over prompts when ``cfg.renormalize``.

    Args:
        scores: (bs,) float scalar rewards r.
        group_ids: (bs,) integer group (prompt) id of each response; any integer labels.
        correct: (bs,) bool or float in [0, 1]; fractional values are averaged as given.
        cfg: the estimator's settings.
        valid: (bs,) bool, False for empty responses (advantage 0, excluded from statistics); default all True.

    Returns:
        advantages: (bs,) same dtype as ``scores`` (float32 if integer).
        metrics: ``difficulty/weighting/*`` floats: weight_mean/min/max, pass_rate_mean/min/max, group_size_*,
            zero_variance_frac, singleton_frac, num_prompts, empty_responses.

    Raises:
        ValueError: non-finite scores (how many, which indices) or correctness outside [0, 1].
    """
    bs = scores.shape[0]
    if group_ids.shape != (bs,) or correct.shape != (bs,):
        raise ValueError(f"scores, group_ids, correct must all be (bs,); got {scores.shape}, {group_ids.shape}, "
                         f"{correct.shape}")
    check_finite(scores, "reward")
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    dev = scores.device
    valid = torch.ones(bs, dtype=torch.bool, device=dev) if valid is None else valid.to(dev, torch.bool)
    r = scores.to(_STAT_DTYPE)
    c = correct.to(dev, _STAT_DTYPE)
    if not bool(((c >= 0) & (c <= 1)).all()):
        raise ValueError("correctness values must lie in [0, 1] (acc is 0/1 per response)")

    _, gid = torch.unique(group_ids.to(dev), return_inverse=True)
    num_groups = int(gid.max()) + 1 if bs else 0
    m = group_moments(r, gid, num_groups, valid)
    present = m.count > 0
    p = torch.zeros(num_groups, dtype=_STAT_DTYPE, device=dev).index_add(0, gid, torch.where(valid, c, 0.0))
    p = p / m.count.clamp(min=1.0)

    w = difficulty_weight(p, cfg)
    if cfg.renormalize and bool(present.any()):
        w = w / w[present].mean()
    scale = w if not cfg.keep_std else w / (m.std + cfg.epsilon)
    adv = m.centred * scale[gid]

    metrics = summary_stats("weight", w[present])
    metrics.update(summary_stats("pass_rate", p[present]))
    metrics.update(batch_group_metrics(m, valid))
    metrics = {metric_name(METRIC_GROUP, k): v for k, v in metrics.items()}
    return adv.to(out_dtype), to_floats(metrics)


# ======================================================================================================================
# verl wrapper
# ======================================================================================================================
def response_correctness(
    cfg: DifficultyWeightingConfig, scores: torch.Tensor, non_tensor_batch: Optional[dict]
) -> torch.Tensor:
    """(bs,) correctness: ``non_tensor_batch["acc"]`` (cfg "acc", or "auto" when present) or ``r >= threshold``.

    P2 (arXiv 2505.13261): the per-response correctness behind the pass rate p_s. ``scores``: (bs,).
    """
    bs = scores.shape[0]
    acc = None if cfg.correctness == "reward" else read_float_column(non_tensor_batch, ACC, bs)
    if acc is None:
        if cfg.correctness == "acc":
            raise ValueError(
                f"algorithm.difficulty.weighting.correctness='acc' but non_tensor_batch has no {ACC!r} column: "
                "use a plugin reward manager (it reports acc in reward_extra_info) and "
                f"{SEAM_HELP}; or set correctness to 'auto'/'reward'"
            )
        return scores >= cfg.correct_threshold
    acc_t = torch.from_numpy(acc).to(scores.device)
    if not bool(torch.isfinite(acc_t).all()):
        bad = torch.nonzero(~torch.isfinite(acc_t)).flatten().tolist()
        raise ValueError(f"{len(bad)} responses have a missing/non-finite {ACC!r}, at indices {bad[:_MAX_LISTED]}")
    return acc_t


@register_adv_est(ESTIMATOR_NAME)
@with_seam_inputs
def compute_difficulty_weighted_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: Optional[np.ndarray] = None,
    non_tensor_batch: Optional[dict] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""verl estimator ``difficulty_weighted`` (P2 online advantage differentiation, arXiv 2505.13261).

    Args:
        token_level_rewards: (bs, T) float; r = sum over T.
        response_mask: (bs, T) any dtype (0/1).
        config: verl's ``algorithm`` config; settings under ``difficulty.weighting`` (``DifficultyWeightingConfig``).
        index: (bs,) object array of uid per response (verl's group id).
        non_tensor_batch: optional seam input; ``acc`` (bs,) float 0/1 is used for correctness when present.
        **kwargs: ignored (``old_log_probs``, ``reward_baselines``, ...).

    Returns:
        (advantages, returns): the same (bs, T) tensor twice, ``A[:, None] * response_mask``.
    """
    cfg = DifficultyWeightingConfig.from_algorithm_config(config)
    with torch.no_grad():
        bs = token_level_rewards.shape[0]
        if response_mask.shape != token_level_rewards.shape:
            raise ValueError(f"response_mask {tuple(response_mask.shape)} must match token_level_rewards "
                             f"{tuple(token_level_rewards.shape)}")
        mask_f, owned = float_mask(response_mask, output_dtype(token_level_rewards))
        scores = token_level_rewards.to(mask_f.dtype).sum(-1)
        valid = mask_f.sum(-1) != 0
        gid = group_ids_from_index(index, non_tensor_batch, bs)
        correct = response_correctness(cfg, scores, non_tensor_batch)
        adv, metrics = difficulty_weighted_advantage(scores, gid, correct, cfg, valid=valid)
        record(metrics)
        out = broadcast_to_tokens(adv, mask_f, owned)
    return out, out

