r"""P3 Durian as a verl advantage estimator (``durian``).

Paper P3, Durian: "Enhancing Multi-Modal LLMs Reasoning via Difficulty-Aware Group Normalization" (arXiv
2602.21743; PAPERS.md "P3. Durian"). For prompt ``s`` with rollouts ``i`` and scalar rewards ``r_{s,i}``:

* perceptual difficulty ``H_s``: visual entropy of the prompt's image(s), precomputed offline (schema
  ``visual_entropy``); prompts are split into 3 groups at the 25th / 75th percentile of H over the batch's prompts
  (or at fixed dataset-level edges);
* reasoning difficulty ``L_s``: mean over the prompt's rollouts of the length-normalised sequence log-probability
  ``mean_t old_log_prob_t`` (option ``sum_prob``: ``sum_t exp(old_log_prob_t)``, the literal Eq. 14); prompts are
  split into ``b`` equal-frequency quantile groups of L over the batch's prompts;
* for a group ``a``: ``sigma_a`` = unbiased std of the pooled rewards of all rollouts of all prompts in ``a``, and
  ``A^X_{s,i} = (r_{s,i} - mean_i r_{s,i}) / (sigma_{a(s)} + eps)`` (only the denominator is shared);
* ``A = alpha_ori A^GRPO + alpha_percep A^percep + alpha_reason A^reason``, with
  ``A^GRPO_{s,i} = (r_{s,i} - mean_i r_{s,i}) / (std_i r_{s,i} + eps)`` (always std-normalised, as in the paper;
  ``algorithm.norm_adv_by_std_in_grpo`` is not read).

Quantile groups, defined precisely (both branches):

* The values grouped are one per prompt present in the batch (prompts with >= 1 non-empty response); a prompt's value
  is the mean over its non-empty responses (for H these are normally all equal).
* Edges are linear-interpolation quantiles (numpy/torch default ``linear`` method) of those values: the edge for
  fraction ``q`` sits at sorted position ``q (P - 1)``. Fractions are kept exact: reasoning edges are ``k / b``,
  ``k = 1..b-1``, computed in integer arithmetic; configured percentile fractions are converted to the nearest
  fraction with denominator <= 1e6 (0.25 -> 1/4 exactly). An edge at an integer position is exactly that value.
* A prompt goes to group ``j`` = number of edges strictly below its value (``numpy.searchsorted(side="left")``):
  ``g0 = {v <= e1}``, ``g1 = {e1 < v <= e2}``, ... **Ties at an edge go to the lower group**, so equal values always
  share a group and the assignment does not depend on the order of prompts.
* **All prompts with the same value** (or a single prompt): every edge equals that value, every prompt is in group
  0, and ``sigma_0`` is the pooled std of the whole batch. The other groups are empty and ignored.
* With fewer prompts than groups, groups are as equal as the interpolated edges make them (distinct values each get
  their own group); empty groups are ignored. Equal-frequency is therefore "up to ties".
* Groups with < 2 pooled rollouts or all pooled rewards equal have ``sigma_a = 0``; their numerators are then 0 too, so
  ``A^X = 0 / eps = 0``.

Missing inputs: ``alpha_percep > 0`` needs a finite visual entropy on every non-empty response (error, or with
``on_missing_entropy: warn`` a warning once per process and the branch dropped for that step without renormalising
the other weights); ``alpha_reason > 0`` needs ``old_log_probs``. A branch with alpha = 0 reads nothing.
Empty rows, singleton groups and non-finite rewards: see ``difficulty_weighted``'s module docstring.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from fractions import Fraction
from itertools import repeat
from typing import Any, Optional

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from verl_difficulty.estimators.common import (
    TokenBatch,
    batch_group_metrics,
    check_finite,
    finish,
    named_metrics,
    read_batch,
    read_float_column,
    reward_groups,
    summary_stats,
)
from verl_difficulty.estimators.config import DurianConfig
from verl_difficulty.estimators.groups import (
    STAT_DTYPE,
    GroupMoments,
    as_array,
    group_mean,
    pooled_moments,
    row_sums,
)
from verl_difficulty.schema import EXTRA_INFO, VISUAL_ENTROPY
from verl_difficulty.seam.inputs import SEAM_HELP, with_seam_inputs

__all__ = [
    "ESTIMATOR_NAME",
    "METRIC_PART",
    "quantile_edges",
    "quantile_group_ids",
    "durian_advantage",
    "response_confidence",
    "read_visual_entropy",
    "compute_durian_advantage",
]

ESTIMATOR_NAME = "durian"
METRIC_PART = "durian"
_WARNED: dict[str, bool] = {"missing_entropy": False}

_ENTROPY_HELP = (
    f"looked in non_tensor_batch[{VISUAL_ENTROPY!r}] and non_tensor_batch[{EXTRA_INFO!r}][i][{VISUAL_ENTROPY!r}]. "
    f"Produce the {VISUAL_ENTROPY!r} column offline (mirrored into {EXTRA_INFO!r}; the forward-pass visual-entropy "
    f"scorer is a planned `verl-difficulty score` scorer), {SEAM_HELP} so {EXTRA_INFO!r} reaches the "
    "estimator, or set algorithm.difficulty.durian.alpha_percep=0 (or on_missing_entropy=warn to drop the branch)"
)


def _missing_entropy_message(alpha: float, missing: int, total: int) -> str:
    return (
        f"durian: alpha_percep={alpha} needs the visual entropy of every prompt, but {missing} of {total} non-empty "
        f"responses have no finite {VISUAL_ENTROPY!r}; {_ENTROPY_HELP}"
    )


def _missing_log_probs_message(alpha: float) -> str:
    return (
        f"durian: alpha_reason={alpha} needs old_log_probs (bs, response_length), which stock verl does not pass to "
        f"registered estimators: {SEAM_HELP}; "
        "or set algorithm.difficulty.durian.alpha_reason=0"
    )


# ======================================================================================================================
# quantile groups
# ======================================================================================================================
def _fractions(qs: Sequence[float]) -> list[Fraction]:
    return [Fraction(q).limit_denominator(10**6) if not isinstance(q, Fraction) else q for q in qs]


def quantile_edges(values: Any, fractions: Sequence[Fraction | float]) -> np.ndarray:
    r"""Linear-interpolation quantiles of ``values`` at exact rational ``fractions`` (P3 regrouping, arXiv 2602.21743).

    Same as ``numpy.quantile(values, q, method="linear")`` but the sorted position ``q (P - 1)`` is computed in
    integer arithmetic, so an edge at an integer position is exactly a data value (ties at edges are then
    deterministic).

    Args:
        values: (P,) float (array or tensor), P >= 1.
        fractions: k increasing fractions in [0, 1].
    Returns:
        (k,) non-decreasing float64 edges.
    """
    fr = _fractions(fractions)
    sv = np.sort(as_array(values, STAT_DTYPE))
    last = sv.size - 1
    num = np.array([f.numerator for f in fr], dtype=np.int64) * last
    den = np.array([f.denominator for f in fr], dtype=np.int64)
    lo = num // den
    rem = num - lo * den
    hi = np.minimum(lo + 1, last)
    v_lo, v_hi = sv[lo], sv[hi]
    interp = np.minimum(v_lo + (v_hi - v_lo) * (rem / den), v_hi)
    return np.where(rem == 0, v_lo, interp)


def quantile_group_ids(
    values: Any,
    fractions: Sequence[Fraction | float],
    edges: Optional[Sequence[float]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Group index of each value: the number of edges strictly below it (ties at an edge -> lower group).

    P3 regrouping (arXiv 2602.21743): perceptual 25th/75th percentiles, reasoning b equal-frequency groups.

    Args:
        values: (P,) float, one per prompt (array or tensor).
        fractions: the k quantile fractions (k + 1 groups) used when ``edges`` is None.
        edges: k fixed non-decreasing edges (dataset-level), or None for batch quantiles of ``values``.
    Returns:
        groups: (P,) int64 in [0, k].
        edges: (k,) float64, the edges used.
    """
    values = as_array(values, STAT_DTYPE)
    if edges is None:
        if values.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(len(fractions), dtype=STAT_DTYPE)
        e = quantile_edges(values, fractions)
    else:
        e = np.asarray(list(edges), dtype=STAT_DTYPE)
    return np.searchsorted(e, values, side="left").astype(np.int64, copy=False), e


# ======================================================================================================================
# Durian core
# ======================================================================================================================
def _branch(
    name: str,
    prompt_values: np.ndarray,
    present_idx: np.ndarray,
    fractions: Sequence[Fraction | float],
    edges: Optional[Sequence[float]],
    m: GroupMoments,
    eps: float,
    metrics: dict[str, Any],
) -> np.ndarray:
    """One regrouped P3 branch (arXiv 2602.21743): quantile groups of the present prompts' (G,) values, the pooled
    sigma_a of each group's rollouts, and the (G,) per-prompt factor ``1 / (sigma_{a(s)} + eps)`` of
    ``A^X = (r - mu_s) / (sigma_a + eps)``. ``present_idx``: the prompts with rollouts. Adds its metrics."""
    num_pools = len(fractions) + 1
    values = prompt_values[present_idx]
    metrics.update(summary_stats("entropy" if name == "percep" else "confidence", values))
    groups, used_edges = quantile_group_ids(values, fractions, edges)
    # absent prompts (no rollouts) stay in pool 0: they add nothing to any pool
    pool_of_prompt = np.zeros(m.count.size, dtype=np.int64)
    pool_of_prompt[present_idx] = groups
    pool = pooled_moments(m, pool_of_prompt, num_pools)

    n_prompts = np.bincount(groups, minlength=num_pools)
    for j in range(num_pools):
        metrics[f"{name}_prompts/g{j}"] = float(n_prompts[j])
        if name == "percep" or pool.present[j]:
            metrics[f"{name}_std/g{j}"] = float(pool.std[j])
    if name == "percep" and (edges is not None or groups.size > 0):
        for k, e in enumerate(used_edges.tolist()):
            metrics[f"{name}_edge/{k}"] = e
    metrics.update(summary_stats(f"{name}_std", pool.std[pool.present]))
    return 1.0 / (pool.std[pool_of_prompt] + eps)


def durian_advantage(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: DurianConfig,
    *,
    entropy: Optional[Any] = None,
    confidence: Optional[Any] = None,
    valid: Optional[torch.Tensor] = None,
    num_groups: Optional[int] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Per-response Durian advantages (pure tensor core; P3 Durian, arXiv 2602.21743).

    ``A = alpha_ori (r - mu_s)/(std_s + eps) + alpha_percep (r - mu_s)/(sigma_{percep(s)} + eps)
    + alpha_reason (r - mu_s)/(sigma_{reason(s)} + eps)``; see the module docstring for the grouping rules.

    Args:
        scores: (bs,) float scalar rewards r.
        group_ids: (bs,) integer prompt (group) id of each response.
        cfg: the estimator's settings; a branch with alpha 0 is skipped and needs no input.
        entropy: (bs,) float visual entropy per response (NaN = missing; tensor or array); needed when
            ``alpha_percep > 0``.
        confidence: (bs,) float per-response confidence (length-normalised sequence log-prob, or summed token
            probability; tensor or array); needed when ``alpha_reason > 0``. The prompt's L is the mean over its
            non-empty responses.
        valid: (bs,) bool, False for empty responses (advantage 0, excluded from every statistic).
        num_groups: G when ``group_ids`` already are dense ids ``0..G-1`` (saves a check); else None.

    Returns:
        advantages: (bs,) dtype and device of ``scores`` (float32 if integer).
        metrics: ``difficulty/durian/*`` floats: percep_std/g0..g2, percep_prompts/g0..g2, percep_edge/0..1,
            reason_std/g*, reason_prompts/g*, *_std_mean/min/max, entropy_* and confidence_* (mean/min/max over
            prompts), percep_active, group_size_*, zero_variance_frac, singleton_frac, num_prompts, empty_responses.

    Raises:
        ValueError: non-finite rewards or confidences (how many, which indices); a missing input of an active branch.
    """
    g = reward_groups(scores, group_ids, valid, num_groups)
    gid, num_groups, valid, m = g.gid, g.num_groups, g.valid, g.moments
    present_idx = np.flatnonzero(m.present)
    eps = cfg.epsilon

    metrics: dict[str, Any] = batch_group_metrics(m, valid)
    # A = (r - mu_s) * factor_s, factor_s = sum over the active branches of alpha / (that branch's std + eps)
    factor = np.zeros(num_groups, dtype=STAT_DTYPE)
    if cfg.alpha_ori > 0:
        factor += cfg.alpha_ori / (m.std + eps)

    if cfg.alpha_percep > 0:
        entropy = None if entropy is None else as_array(entropy, STAT_DTYPE)
        missing = int(valid.sum()) if entropy is None else int((valid & ~np.isfinite(entropy)).sum())
        if missing:
            message = _missing_entropy_message(cfg.alpha_percep, missing, int(valid.sum()))
            if cfg.on_missing_entropy == "error":
                raise ValueError(message)
            if not _WARNED["missing_entropy"]:
                _WARNED["missing_entropy"] = True
                warnings.warn(message + ". Dropping the perceptual branch (warned once).", RuntimeWarning,
                              stacklevel=2)
            metrics["percep_active"] = 0.0
        else:
            metrics["percep_active"] = 1.0
            h = group_mean(entropy, gid, num_groups, valid, m.count)
            factor += cfg.alpha_percep * _branch("percep", h, present_idx, cfg.percep_quantiles, cfg.percep_edges, m,
                                                 eps, metrics)

    if cfg.alpha_reason > 0:
        if confidence is None:
            raise ValueError(
                f"durian: alpha_reason={cfg.alpha_reason} needs per-response confidences (from old_log_probs); "
                "set algorithm.difficulty.durian.alpha_reason=0 to run without them"
            )
        conf = as_array(confidence, STAT_DTYPE)
        check_finite(np.where(valid, conf, 0.0), "confidence (mean old_log_prob)")
        lval = group_mean(conf, gid, num_groups, valid, m.count)
        fractions = [Fraction(k, cfg.reason_groups) for k in range(1, cfg.reason_groups)]
        factor += cfg.alpha_reason * _branch("reason", lval, present_idx, fractions, None, m, eps, metrics)

    return g.advantages(m.centred * factor[gid]), named_metrics(METRIC_PART, metrics)


# ======================================================================================================================
# verl wrapper
# ======================================================================================================================
def read_visual_entropy(non_tensor_batch: Optional[dict], bs: int) -> Optional[np.ndarray]:
    """(bs,) float64 visual entropy per response, NaN where missing; None if there is no source at all.

    P3 (arXiv 2602.21743) perceptual difficulty, precomputed offline by the visual-entropy scorer.

    Sources, first found: a flat ``non_tensor_batch["visual_entropy"]`` column, else
    ``non_tensor_batch["extra_info"][i]["visual_entropy"]``.
    """
    col = read_float_column(non_tensor_batch, VISUAL_ENTROPY, bs)
    if col is not None:
        return col
    extra = None if non_tensor_batch is None else non_tensor_batch.get(EXTRA_INFO, None)
    if extra is None:
        return None
    if len(extra) != bs:
        raise ValueError(f"non_tensor_batch[{EXTRA_INFO!r}] must have length {bs}, got {len(extra)}")

    try:  # fast path: the seam's rows are plain dicts that all hold a number
        return np.fromiter(map(dict.get, extra, repeat(VISUAL_ENTROPY, bs)), dtype=np.float64, count=bs)
    except (TypeError, ValueError):  # a row that is no dict, a missing or non-numeric value
        pass
    vals = [e.get(VISUAL_ENTROPY) if isinstance(e, Mapping) else None for e in extra]
    try:  # None -> NaN
        return np.array(vals, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        bad = next((v for v in vals if v is not None and not isinstance(v, (int, float, np.number))), vals)
        raise ValueError(f"{EXTRA_INFO}[i][{VISUAL_ENTROPY!r}] must be a number, got {bad!r}") from exc


def _confidence(lp_sum: torch.Tensor, lengths: torch.Tensor, sum_prob: bool) -> np.ndarray:
    """(bs,) masked log-prob sums (or probability sums), (bs,) lengths -> (bs,) float64 confidence; 0 on empty rows."""
    total = as_array(lp_sum, STAT_DTYPE)
    if sum_prob:
        return total
    lengths = as_array(lengths, STAT_DTYPE)
    return np.where(lengths > 0, total / np.maximum(lengths, 1.0), 0.0)


def response_confidence(
    old_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    lengths: Optional[torch.Tensor] = None,
    sum_prob: bool = False,
) -> torch.Tensor:
    r"""Per-response confidence from the old policy's log-probs (P3 reasoning difficulty, arXiv 2602.21743, Eq. 14).

    Only the response's own tokens (``mask != 0``) enter, by selection: a ``-inf`` or NaN log-prob at a masked
    position (padding) does not change the row (see :func:`~verl_difficulty.estimators.groups.row_sums`).

    Args:
        old_log_probs: (bs, T) float.
        response_mask: (bs, T) 0/1 response mask, any dtype.
        lengths: (bs,) number of response tokens; computed from the mask when None.
        sum_prob: False: ``sum_{t in response} lp_t / len`` (length-normalised sequence log-prob); True:
            ``sum_{t in response} exp(lp_t)`` (the literal Eq. 14).
    Returns:
        (bs,) float64; 0 on empty rows.
    """
    dtype = response_mask.dtype if response_mask.is_floating_point() else torch.float32
    sums = row_sums(response_mask, None, old_log_probs, exp_log_probs=sum_prob, dtype=dtype)
    conf = _confidence(sums.log_prob_sum, sums.lengths if lengths is None else lengths, sum_prob)
    return torch.from_numpy(conf).to(old_log_probs.device)


@register_adv_est(ESTIMATOR_NAME)
@with_seam_inputs
def compute_durian_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: Optional[np.ndarray] = None,
    non_tensor_batch: Optional[dict] = None,
    old_log_probs: Optional[torch.Tensor] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""verl estimator ``durian`` (P3 Durian, arXiv 2602.21743).

    Args:
        token_level_rewards: (bs, T) float; r = sum over T.
        response_mask: (bs, T) any dtype (0/1).
        config: verl's ``algorithm`` config; settings under ``difficulty.durian`` (``DurianConfig``).
        index: (bs,) object array of uid per response (verl's group id).
        non_tensor_batch: seam input; ``visual_entropy`` or ``extra_info[i]["visual_entropy"]`` is read when
            ``alpha_percep > 0``.
        old_log_probs: (bs, T) seam input; needed when ``alpha_reason > 0``.
        **kwargs: ignored.

    Returns:
        (advantages, returns): the same (bs, T) tensor twice, ``A[:, None] * response_mask``.
    """
    cfg = DurianConfig.from_algorithm_config(config)
    with torch.no_grad():
        lp = old_log_probs if cfg.alpha_reason > 0 else None
        entropy = None if cfg.alpha_percep <= 0 else read_visual_entropy(non_tensor_batch, token_level_rewards.shape[0])
        batch = read_batch(token_level_rewards, response_mask, index, non_tensor_batch, lp, exp_log_probs=cfg.sum_prob)
        entropy, confidence = _branch_inputs(cfg, batch, entropy, old_log_probs)
        adv, metrics = durian_advantage(batch.scores, batch.gid, cfg, entropy=entropy, confidence=confidence,
                                        valid=batch.valid, num_groups=batch.num_groups)
        return finish(adv, metrics, response_mask, batch)


def _branch_inputs(
    cfg: DurianConfig, batch: TokenBatch, entropy: Optional[np.ndarray], old_log_probs: Optional[torch.Tensor]
) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(bs,) float64 visual entropy (as read by :func:`read_visual_entropy`, None: no source) and confidence for the
    active branches; every missing input is named at once."""
    problems = []
    if cfg.alpha_reason > 0 and old_log_probs is None:
        problems.append(_missing_log_probs_message(cfg.alpha_reason))
    if problems and entropy is None and cfg.alpha_percep > 0 and cfg.on_missing_entropy == "error":
        n_valid = int(batch.valid.sum())
        problems.append(_missing_entropy_message(cfg.alpha_percep, n_valid, n_valid))
    if problems:
        raise ValueError("\n".join(problems))
    confidence = None
    if cfg.alpha_reason > 0:
        confidence = _confidence(batch.log_prob_sum, batch.lengths, cfg.sum_prob)
    return entropy, confidence
