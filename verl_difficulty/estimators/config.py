"""Configuration of the difficulty-aware advantage estimators (``algorithm.difficulty.{weighting,durian}``).

Both estimators read their settings from verl's ``algorithm`` config: ``algorithm.difficulty.weighting`` (P2,
``difficulty_weighted``) and ``algorithm.difficulty.durian`` (P3, ``durian``). The dataclasses below are declared
with the plugin's one configuration mechanism (:mod:`verl_difficulty.config`): every field states its type, default,
bounds and where the default comes from (``source``: the paper's value, one of its ablation rows, verl's, or "ours"
where the paper gives none). ``verl_difficulty/config/algorithm_difficulty.yaml`` ships the same defaults (a test
holds them equal, keys and values) and is mounted under ``algorithm`` by recipes; a single key can be set on the
command line, e.g. ``algorithm.difficulty.durian.reason_groups=16``.

Which responses count as correct is not an estimator setting: the trainer seam makes one verdict per response
(``schema.CORRECT``, threshold ``difficulty.correct_threshold``) for the estimators and the sampler alike.

Papers: P2 = "Unlocking the Potential of Difficulty Prior in RL-based Multimodal Reasoning" (arXiv 2505.13261),
online advantage differentiation; P3 = Durian, "Enhancing Multi-Modal LLMs Reasoning via Difficulty-Aware Group
Normalization" (arXiv 2602.21743). Both are summarised in the project's PAPERS.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from verl_difficulty.config import ConfigError, parse, setting, to_plain

__all__ = [
    "WEIGHT_FAMILIES",
    "MISSING_ENTROPY_POLICIES",
    "MAX_EXP_BETA",
    "SECTION",
    "DifficultyWeightingConfig",
    "DurianConfig",
    "AlgorithmDifficultyConfig",
]

SECTION = "algorithm.difficulty"
WEIGHT_FAMILIES = ("steep_exp", "exponential", "linear", "constant")
MISSING_ENTROPY_POLICIES = ("error", "warn")
MAX_EXP_BETA = math.floor(math.log(float(np.finfo(np.float32).max)) * 100) / 100
"""88.72: the largest ``beta`` (2 decimals) whose ``exp(beta)``, the largest exponential weight, is finite in float32."""


# ----------------------------------------------------------------------------------------------------------------------
# P2: difficulty-weighted GRPO advantage
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class DifficultyWeightingConfig:
    r"""Settings of the ``difficulty_weighted`` estimator (P2, arXiv 2505.13261, online advantage differentiation).

    ``A_{s,i} = w(p_s) * (r_{s,i} - mean_i r_{s,i})`` (optionally ``/ (std_s + epsilon)``), where ``p_s`` is the
    pass rate of prompt ``s`` (mean of the seam's per-response verdicts ``correct``, empty responses left out) and
    ``w`` is decreasing in ``p``.

    Parameters:
        weight (`str`, *optional*, defaults to `"steep_exp"`):
            Weight family ``w(p)``, with ``x = 1 - p`` (0 = every rollout correct, 1 = none):

            - ``"steep_exp"``: ``w = exp(beta * x ** steep_power)``. The paper's choice is a "steep exponential"
              whose formula it does not give; this formula and its constants are ours (see ``beta``).
            - ``"exponential"``: ``w = exp(beta * x)``.
            - ``"linear"``: ``w = 1 + beta * x``.
            - ``"constant"``: ``w = 1`` (Dr.GRPO-style mean-centred advantage; for tests and ablations).
        beta (`float`, *optional*, defaults to `2.0`):
            Steepness of the non-constant families. UNSPECIFIED in the paper; ours. With ``beta = 2`` every family
            gives ``w(1) = 1`` on the easiest prompts and the exponential ones ``w(0) = e^2 ~ 7.4``; ``steep_exp``
            gives 1.03 / 1.65 / 3.08 / 4.62 at p = 7/8, 1/2, 1/4, 1/8. Must be >= 0 (``beta = 0`` is constant);
            with ``exponential`` / ``steep_exp`` at most 88.72, so that ``exp(beta)`` is finite in float32.
        steep_power (`float`, *optional*, defaults to `2.0`):
            Exponent ``k`` of ``x`` in ``steep_exp``. UNSPECIFIED in the paper; ours. ``k = 2`` keeps the weight
            near 1 for easy-to-moderate prompts and makes it rise steepest for the hardest ones
            (``dw/dx = 2 beta x w``); ``k = 1`` is ``exponential``. Must be > 0.
        renormalize (`bool`, *optional*, defaults to `False`):
            Divide every weight by the batch mean of ``w(p_s)`` over the batch's prompts (prompts with at least one
            non-empty response), so the mean weight is 1 and only the relative emphasis changes. The paper
            mentions no renormalisation; off by default (ours).
        keep_std (`bool`, *optional*, defaults to `False`):
            Also divide by GRPO's group std: ``A = w(p) * (r - mean) / (std + epsilon)``. The paper replaces the std
            normalisation by the weight, so off by default (paper).
        epsilon (`float`, *optional*, defaults to `1e-6`):
            Added to the std when ``keep_std`` is on; verl's GRPO value. Must be > 0.
    """

    weight: str = setting(
        "steep_exp",
        choices=WEIGHT_FAMILIES,
        source="P2 (steep exponential; the formula is ours)",
        help="weight family w(p), x = 1 - p: steep_exp exp(beta x^k), exponential exp(beta x), linear 1 + beta x, "
        "constant 1",
    )
    beta: float = setting(
        2.0,
        ge=0.0,
        source="ours (UNSPECIFIED in P2)",
        help="steepness of w; 0 makes every family constant; exponential families need beta <= 88.72 (float32)",
    )
    steep_power: float = setting(
        2.0, gt=0.0, source="ours (UNSPECIFIED in P2)", help="exponent k of x = 1 - p in steep_exp; 1 = exponential"
    )
    renormalize: bool = setting(
        False, source="ours (P2 mentions none)", help="divide the weights by their batch mean over prompts"
    )
    keep_std: bool = setting(
        False, source="P2 (the weight replaces GRPO's std)", help="also divide by GRPO's group std + epsilon"
    )
    epsilon: float = setting(1e-6, gt=0.0, source="verl (GRPO's epsilon)", help="added to the std when keep_std")

    def check(self, where: str) -> None:
        """Cross-field checks (called by :func:`verl_difficulty.config.parse`)."""
        if self.weight in ("exponential", "steep_exp") and self.beta > MAX_EXP_BETA:
            raise ConfigError(
                f"{where}.beta: {self.beta!r} overflows float32 with weight={self.weight} (the hardest prompts get "
                f"w = exp(beta) = inf); use beta <= {MAX_EXP_BETA}, or weight=linear for a larger range"
            )

    @classmethod
    def from_algorithm_config(cls, config: Any) -> "DifficultyWeightingConfig":
        """Read ``algorithm.difficulty.weighting`` (``config``: verl's algorithm DictConfig / AlgoConfig, a dict, or
        None); errors name the full dotted key."""
        return AlgorithmDifficultyConfig.from_algorithm_config(config).weighting


# ----------------------------------------------------------------------------------------------------------------------
# P3: Durian
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class DurianConfig:
    r"""Settings of the ``durian`` estimator (P3 Durian, arXiv 2602.21743).

    ``A = alpha_ori * A_grpo + alpha_percep * A_percep + alpha_reason * A_reason`` where
    ``A_X[s,i] = (r[s,i] - mean_i r[s,i]) / (sigma_a(s) + epsilon)`` and ``sigma_a`` is the unbiased std of the pooled
    rewards of all rollouts of all prompts in prompt ``s``'s perceptual (X = percep) or reasoning (X = reason) group.

    Parameters:
        alpha_ori (`float`, *optional*, defaults to `0.4`):
            Weight of the plain GRPO advantage. Defaults are UNSPECIFIED in the paper; (0.4, 0.3, 0.3) is one row of
            its ablation. Weights must be >= 0 and not all 0; they are used as given (not renormalised).
        alpha_percep (`float`, *optional*, defaults to `0.3`):
            Weight of the perceptual branch (groups by visual entropy). 0 switches the branch off, and then no
            visual entropy is needed. Paper ablation row.
        alpha_reason (`float`, *optional*, defaults to `0.3`):
            Weight of the reasoning branch (groups by confidence). 0 switches the branch off, and then no
            ``old_log_probs`` are needed. Paper ablation row.
        percep_quantiles (`list[float]`, *optional*, defaults to `[0.25, 0.75]`):
            Quantiles of the prompts' visual entropy H over the batch that split the 3 perceptual groups (paper:
            25th and 75th percentiles). Linear interpolation (the default of ``numpy.quantile``).
            ``0 < q1 < q2 < 1``.
        percep_edges (`list[float]` or `None`, *optional*, defaults to `None`):
            Fixed edges ``[e1, e2]`` (e.g. dataset-level 25th/75th percentiles of H computed offline), used instead
            of the batch quantiles; the paper's option of dataset-level quantiles. ``e1 <= e2``.
        reason_groups (`int`, *optional*, defaults to `12`):
            Number b of equal-frequency quantile groups of confidence over the batch's prompts. UNSPECIFIED in the
            paper (its sweep plateaus at 12-16); ours: 12. Must be >= 1.
        sum_prob (`bool`, *optional*, defaults to `False`):
            Confidence of a response as the literal Eq. 14, the sum of its token probabilities
            ``sum_t exp(old_log_prob_t)``, instead of the default length-normalised sequence log-probability
            ``mean_t old_log_prob_t`` (ours: comparable across lengths).
        epsilon (`float`, *optional*, defaults to `1e-6`):
            Added to every std (GRPO's and the groups'); verl's GRPO value. Must be > 0.
        on_missing_entropy (`str`, *optional*, defaults to `"error"`):
            What to do when ``alpha_percep > 0`` but a response has no finite ``visual_entropy``. ``"error"``:
            raise; ``"warn"``: warn once (first step) and drop the perceptual branch for that step (the other
            weights are not renormalised). Ours.
    """

    alpha_ori: float = setting(
        0.4, ge=0.0, source="P3 ablation row (0.4, 0.3, 0.3)", help="weight of the plain GRPO advantage A_grpo"
    )
    alpha_percep: float = setting(
        0.3,
        ge=0.0,
        source="P3 ablation row (0.4, 0.3, 0.3)",
        help="weight of the perceptual branch (visual-entropy groups); 0 = off, no visual_entropy needed",
    )
    alpha_reason: float = setting(
        0.3,
        ge=0.0,
        source="P3 ablation row (0.4, 0.3, 0.3)",
        help="weight of the reasoning branch (confidence groups); 0 = off, no old_log_probs needed",
    )
    percep_quantiles: tuple[float, float] = setting(
        default_factory=lambda: (0.25, 0.75),
        gt=0.0,
        lt=1.0,
        source="P3 (25th / 75th percentile)",
        help="batch quantiles [q1, q2] of the prompts' visual entropy that split the 3 perceptual groups; q1 < q2",
    )
    percep_edges: Optional[tuple[float, float]] = setting(
        None,
        source="ours (P3's dataset-level option)",
        help="fixed entropy edges [e1, e2] (e1 <= e2) used instead of the batch quantiles; null = batch quantiles",
    )
    reason_groups: int = setting(
        12,
        ge=1,
        source="ours (UNSPECIFIED in P3; its sweep plateaus at 12-16)",
        help="number b of equal-frequency confidence groups of the batch's prompts",
    )
    sum_prob: bool = setting(
        False,
        source="ours (true = P3 Eq. 14 literally)",
        help="confidence = sum of token probabilities (Eq. 14) instead of the mean token log-probability",
    )
    epsilon: float = setting(1e-6, gt=0.0, source="verl (GRPO's epsilon)", help="added to every std")
    on_missing_entropy: str = setting(
        "error",
        choices=MISSING_ENTROPY_POLICIES,
        source="ours",
        help="alpha_percep > 0 without a finite visual_entropy: error, or warn once and drop the branch for the step",
    )

    def check(self, where: str) -> None:
        """Cross-field checks (called by :func:`verl_difficulty.config.parse`)."""
        if self.alpha_ori + self.alpha_percep + self.alpha_reason <= 0:
            raise ConfigError(
                f"{where}: alpha_ori, alpha_percep and alpha_reason are all 0; set at least one > 0 "
                "(e.g. alpha_ori=1 for plain GRPO)"
            )
        q1, q2 = self.percep_quantiles
        if not q1 < q2:
            raise ConfigError(f"{where}.percep_quantiles: must satisfy 0 < q1 < q2 < 1, got {[q1, q2]}")
        if self.percep_edges is not None and self.percep_edges[0] > self.percep_edges[1]:
            raise ConfigError(f"{where}.percep_edges: must satisfy e1 <= e2, got {list(self.percep_edges)}")

    @classmethod
    def from_algorithm_config(cls, config: Any) -> "DurianConfig":
        """Read ``algorithm.difficulty.durian`` (``config``: verl's algorithm DictConfig / AlgoConfig, a dict, or
        None); errors name the full dotted key."""
        return AlgorithmDifficultyConfig.from_algorithm_config(config).durian


# ----------------------------------------------------------------------------------------------------------------------
# the whole section
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class AlgorithmDifficultyConfig:
    """The ``algorithm.difficulty`` section (``config/algorithm_difficulty.yaml``): both estimators' settings.

    Parameters:
        weighting (`DifficultyWeightingConfig`): ``difficulty_weighted`` (P2).
        durian (`DurianConfig`): ``durian`` (P3).
    """

    weighting: DifficultyWeightingConfig = setting(
        default_factory=DifficultyWeightingConfig, source="P2", help="settings of the difficulty_weighted estimator"
    )
    durian: DurianConfig = setting(default_factory=DurianConfig, source="P3", help="settings of the durian estimator")

    @classmethod
    def from_algorithm_config(cls, config: Any) -> "AlgorithmDifficultyConfig":
        """Parse ``config.difficulty`` (``config``: verl's ``algorithm`` DictConfig / AlgoConfig, a mapping, or None).

        The whole section is checked, so a misspelt ``algorithm.difficulty.duran`` is an error too.
        """
        if config is None:
            return cls()
        if not (isinstance(config, Mapping) or callable(getattr(config, "get", None))):
            raise ConfigError(f"algorithm: expected a mapping (verl's algorithm config), got {type(config).__name__}")
        return parse(cls, to_plain(config.get("difficulty", None)), SECTION)
