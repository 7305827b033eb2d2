r"""P2 online advantage differentiation as a verl advantage estimator (``difficulty_weighted``).

Paper P2, "Unlocking the Potential of Difficulty Prior in RL-based Multimodal Reasoning" (arXiv 2505.13261;
PAPERS.md "P2. Online advantage differentiation"): for prompt ``s`` with rollouts ``i = 1..n``,

    p_s     = fraction of correct responses in the group of s                     (online difficulty, low = hard)
    A_{s,i} = w(p_s) * (r_{s,i} - mean_i r_{s,i})   [ / (std_i r_{s,i} + eps) if keep_std ]

broadcast over the response tokens and masked. ``w`` is decreasing in ``p``; see ``DifficultyWeightingConfig``.

**Correctness** is the trainer seam's one verdict per response, ``non_tensor_batch["correct"]`` (``schema.CORRECT``:
1 / 0, NaN for an empty response), the same array the difficulty sampler receives. Without it (direct calls, stock
verl) the same rule is applied here: :func:`verl_difficulty.seam.inputs.response_verdicts` of the rewards, the
reward manager's ``acc`` when present and the response lengths, with its default threshold. ``p_s`` is the mean of
the finite verdicts of the non-empty responses of ``s``; a prompt without any such verdict gets the neutral weight 1.

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
* **Token level** (:mod:`~verl_difficulty.estimators.groups`): the rewards are read once (their row sums); the
  mask is read once, by the final write ``A[:, None] * mask`` (here: plus one column, to find empty responses; in
  ``durian`` also by the masked log-prob sums, together with ``old_log_probs``). All group math runs on (bs,) / (G,)
  numpy float64 vectors on the host (a few thousand numbers: numpy's per-call cost is a fraction of torch's).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from verl_difficulty import schema
from verl_difficulty.estimators.common import (
    batch_group_metrics,
    finish,
    named_metrics,
    read_batch,
    read_float_column,
    reward_groups,
    summary_stats,
)
from verl_difficulty.estimators.config import DifficultyWeightingConfig
from verl_difficulty.estimators.groups import STAT_DTYPE, as_array, group_count, group_mean
from verl_difficulty.seam.inputs import response_verdicts, with_seam_inputs

__all__ = [
    "ESTIMATOR_NAME",
    "METRIC_PART",
    "difficulty_weight",
    "pass_rates",
    "response_correct",
    "difficulty_weighted_advantage",
    "compute_difficulty_weighted_advantage",
]

ESTIMATOR_NAME = "difficulty_weighted"
METRIC_PART = "weighting"


# ======================================================================================================================
# P2 core
# ======================================================================================================================
def difficulty_weight(p: Any, cfg: DifficultyWeightingConfig) -> np.ndarray:
    r"""P2 weight ``w(p)``, decreasing in the pass rate ``p`` (P2, arXiv 2505.13261; the ``steep_exp`` formula is ours).

    With ``x = 1 - p``: ``steep_exp``: ``exp(beta * x**k)``; ``exponential``: ``exp(beta * x)``; ``linear``:
    ``1 + beta * x``; ``constant``: 1.

    Args:
        p: (G,) float pass rates in [0, 1] (array or tensor).
    Returns:
        (G,) float64 weights.
    """
    x = 1.0 - as_array(p, STAT_DTYPE)
    if cfg.weight == "constant":
        return np.ones_like(x)
    if cfg.weight == "linear":
        return 1.0 + cfg.beta * x
    if cfg.weight == "exponential":
        return np.exp(cfg.beta * x)
    if cfg.weight == "steep_exp":
        return np.exp(cfg.beta * x ** cfg.steep_power)
    raise ValueError(f"unknown weight family {cfg.weight!r}")  # pragma: no cover (config validates)


def pass_rates(correct: Any, gid: Any, num_groups: int, valid: Any) -> tuple[np.ndarray, np.ndarray]:
    """P2's online difficulty ``p_s``: per-prompt mean of the verdicts (what the difficulty sampler averages too).

    Args:
        correct: (bs,) float verdicts in [0, 1]; NaN = no verdict (an empty response), left out.
        gid: (bs,) int64 dense prompt ids in ``[0, num_groups)``.
        num_groups: G.
        valid: (bs,) bool, non-empty responses (the others are left out as well).
    Returns:
        p: (G,) float64 pass rates (0 where a prompt has no verdict).
        judged: (G,) float64 number of verdicts behind each ``p``.
    """
    c = as_array(correct, STAT_DTYPE)
    has = as_array(valid, bool) & ~np.isnan(c)
    judged = group_count(gid, num_groups, has)
    return group_mean(c, gid, num_groups, has, judged), judged


def difficulty_weighted_advantage(
    scores: torch.Tensor,
    group_ids: torch.Tensor,
    correct: Any,
    cfg: DifficultyWeightingConfig,
    valid: Optional[torch.Tensor] = None,
    num_groups: Optional[int] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Per-response P2 advantages (pure tensor core, no verl types).

    P2 (arXiv 2505.13261, online advantage differentiation):
    ``p_s = mean_i correct_{s,i}``, ``A_{s,i} = w(p_s) (r_{s,i} - mean_i r_{s,i})``, with ``/ (std_s + eps)`` on top
    when ``cfg.keep_std``; ``w`` renormalised to batch mean 1 over prompts when ``cfg.renormalize``.

    Args:
        scores: (bs,) float scalar rewards r.
        group_ids: (bs,) integer group (prompt) id of each response; any integer labels.
        correct: (bs,) bool or float in [0, 1] (tensor or array); fractional values are averaged as given; NaN = no
            verdict (left out of ``p``; a prompt without any verdict gets weight 1).
        cfg: the estimator's settings.
        valid: (bs,) bool, False for empty responses (advantage 0, excluded from statistics); default all True.
        num_groups: G when ``group_ids`` already are dense ids ``0..G-1`` (saves a check); else None.

    Returns:
        advantages: (bs,) same dtype and device as ``scores`` (float32 if integer).
        metrics: ``difficulty/weighting/*`` floats: weight_mean/min/max, pass_rate_mean/min/max (over prompts with a
            verdict), group_size_*, zero_variance_frac, singleton_frac, num_prompts, empty_responses.

    Raises:
        ValueError: non-finite scores (how many, which indices) or verdicts outside [0, 1].
    """
    if tuple(correct.shape) != tuple(scores.shape):
        raise ValueError(f"correct must be (bs,) like scores {tuple(scores.shape)}, got {tuple(correct.shape)}")
    g = reward_groups(scores, group_ids, valid, num_groups)
    m = g.moments
    c = as_array(correct, STAT_DTYPE)
    with np.errstate(invalid="ignore"):  # NaN compares False; it is allowed below
        in_range = ((c >= 0) & (c <= 1)) | np.isnan(c)
    if not in_range.all():
        raise ValueError("correctness values must lie in [0, 1] (1 / 0 per response, NaN for no verdict); "
                         f"non_tensor_batch[{schema.CORRECT!r}] is the seam's verdict")

    p, judged = pass_rates(c, g.gid, g.num_groups, g.valid)
    w = np.where(judged > 0, difficulty_weight(p, cfg), 1.0)
    present = m.present
    if cfg.renormalize and present.any():
        w = w / w[present].mean()
    scale = w if not cfg.keep_std else w / (m.std + cfg.epsilon)
    adv = m.centred * scale[g.gid]

    metrics = summary_stats("weight", w[present])
    metrics.update(summary_stats("pass_rate", p[present & (judged > 0)]))
    metrics.update(batch_group_metrics(m, g.valid))
    return g.advantages(adv), named_metrics(METRIC_PART, metrics)


# ======================================================================================================================
# verl wrapper
# ======================================================================================================================
def response_correct(non_tensor_batch: Optional[dict], scores: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """(bs,) float64 verdicts: the seam's ``non_tensor_batch["correct"]`` when present, else the seam's rule
    :func:`~verl_difficulty.seam.inputs.response_verdicts` (``acc`` when reported, else ``reward >= 0.5``; NaN for
    an empty response) of ``scores`` (bs,), with ``valid`` (bs,) bool as the lengths (the rule only asks whether a
    length is 0). P2's correctness behind ``p_s``."""
    bs = scores.shape[0]
    seam = read_float_column(non_tensor_batch, schema.CORRECT, bs)
    if seam is not None:
        return seam
    acc = None if non_tensor_batch is None else non_tensor_batch.get(schema.ACC, None)
    return response_verdicts(scores.detach().cpu().numpy(), acc=acc, lengths=valid.detach().cpu().numpy())


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
        non_tensor_batch: optional seam input; ``correct`` (bs,) float 1/0/NaN is the verdict per response (else
            derived from ``acc`` / the reward, see :func:`response_correct`).
        **kwargs: ignored (``old_log_probs``, ``reward_baselines``, ...).

    Returns:
        (advantages, returns): the same (bs, T) tensor twice, ``A[:, None] * response_mask``.
    """
    cfg = DifficultyWeightingConfig.from_algorithm_config(config)
    with torch.no_grad():
        batch = read_batch(token_level_rewards, response_mask, index, non_tensor_batch)
        correct = response_correct(non_tensor_batch, batch.scores, batch.valid)
        adv, metrics = difficulty_weighted_advantage(batch.scores, batch.gid, correct, cfg, valid=batch.valid,
                                                     num_groups=batch.num_groups)
        return finish(adv, metrics, response_mask, batch)
