"""Configuration of the difficulty-aware advantage estimators.

Both estimators read their settings from verl's ``algorithm`` config, under ``algorithm.difficulty.weighting`` (P2,
``difficulty_weighted``) and ``algorithm.difficulty.durian`` (P3, ``durian``). The defaults below are mirrored in
``verl_difficulty/config/algorithm_difficulty.yaml``, which recipes mount under ``algorithm``; a single key can also
be set on the command line, e.g. ``+algorithm.difficulty.durian.reason_groups=16``.

Each field says where its default comes from: the paper's value, or "UNSPECIFIED in the paper; ours".
Papers: P2 = "Unlocking the Potential of Difficulty Prior in RL-based Multimodal Reasoning" (arXiv 2505.13261),
online advantage differentiation; P3 = Durian, "Enhancing Multi-Modal LLMs Reasoning via Difficulty-Aware Group
Normalization" (arXiv 2602.21743). Both are summarised in the project's PAPERS.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Optional

__all__ = [
    "WEIGHT_FAMILIES",
    "CORRECTNESS_SOURCES",
    "MISSING_ENTROPY_POLICIES",
    "DifficultyWeightingConfig",
    "DurianConfig",
    "read_difficulty_section",
]

WEIGHT_FAMILIES = ("steep_exp", "exponential", "linear", "constant")
CORRECTNESS_SOURCES = ("auto", "acc", "reward")
MISSING_ENTROPY_POLICIES = ("error", "warn")


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def _to_plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python containers; anything else unchanged."""
    try:  # omegaconf is a verl dependency, but keep this module importable without it
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def read_difficulty_section(config: Any, name: str) -> dict:
    """``config.get("difficulty", {}).get(name, {})`` as a plain dict.

    Args:
        config: verl's ``algorithm`` config (an OmegaConf ``DictConfig``, verl's ``AlgoConfig`` or any mapping with
            ``.get``), a plain dict, or ``None``.
        name: ``"weighting"`` or ``"durian"``.
    """
    if config is None:
        return {}
    if not hasattr(config, "get"):
        raise TypeError(f"algorithm config must be a mapping (DictConfig, dict) or None, got {type(config).__name__}")
    section = config.get("difficulty", None)
    if section is None:
        return {}
    section = _to_plain(section)
    if not isinstance(section, Mapping):
        raise TypeError(f"algorithm.difficulty must be a mapping, got {type(section).__name__}: {section!r}")
    sub = section.get(name, None)
    if sub is None:
        return {}
    sub = _to_plain(sub)
    if not isinstance(sub, Mapping):
        raise TypeError(f"algorithm.difficulty.{name} must be a mapping, got {type(sub).__name__}: {sub!r}")
    return dict(sub)


def _build(cls, values: Mapping, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    return cls(**values)


def _check_number(where: str, name: str, value: Any, *, low: Optional[float] = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}.{name} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}.{name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{where}.{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    return value


def _check_bool(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{name} must be true or false, got {type(value).__name__}: {value!r}")
    return value


def _check_choice(where: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}.{name} must be one of {list(choices)}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------------------
# P2: difficulty-weighted GRPO advantage
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class DifficultyWeightingConfig:
    r"""Settings of the ``difficulty_weighted`` estimator (P2, arXiv 2505.13261, online advantage differentiation).

    ``A_{s,i} = w(p_s) * (r_{s,i} - mean_i r_{s,i})`` (optionally ``/ (std_s + epsilon)``), where ``p_s`` is the
    fraction of correct responses in prompt ``s``'s group and ``w`` is decreasing in ``p``.

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
            gives 1.03 / 1.65 / 3.08 / 4.62 at p = 7/8, 1/2, 1/4, 1/8. Must be >= 0 (``beta = 0`` is constant).
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
        correctness (`str`, *optional*, defaults to `"auto"`):
            Where per-response correctness comes from. ``"acc"``: the reward manager's ``acc`` column in
            ``non_tensor_batch`` (error if absent); ``"reward"``: ``reward >= correct_threshold``; ``"auto"``:
            ``acc`` when present, else the threshold. The paper's default is a reward threshold.
        correct_threshold (`float`, *optional*, defaults to `0.5`):
            A response counts as correct when its scalar reward (sum of token-level rewards) is ``>=`` this value.
            UNSPECIFIED in the paper; ours: 0.5 separates 0/1 rewards and ``0.9 acc + 0.1 format`` rewards.
    """

    weight: str = field(default="steep_exp", metadata={"help": "steep_exp | exponential | linear | constant."})
    beta: float = field(default=2.0, metadata={"help": "Steepness of w; UNSPECIFIED in the paper; ours."})
    steep_power: float = field(default=2.0, metadata={"help": "Exponent k of (1-p) in steep_exp; ours."})
    renormalize: bool = field(default=False, metadata={"help": "Rescale weights to batch mean 1 over prompts; ours."})
    keep_std: bool = field(default=False, metadata={"help": "Also divide by GRPO's group std + epsilon."})
    epsilon: float = field(default=1e-6, metadata={"help": "Std epsilon when keep_std is on (verl's GRPO value)."})
    correctness: str = field(default="auto", metadata={"help": "Correctness source: auto, acc, reward."})
    correct_threshold: float = field(default=0.5, metadata={"help": "reward >= threshold counts as correct; ours."})

    def __post_init__(self) -> None:
        where = "algorithm.difficulty.weighting"
        self.weight = _check_choice(where, "weight", self.weight, WEIGHT_FAMILIES)
        self.beta = _check_number(where, "beta", self.beta, low=0.0)
        self.steep_power = _check_number(where, "steep_power", self.steep_power, low=0.0, low_open=True)
        self.renormalize = _check_bool(where, "renormalize", self.renormalize)
        self.keep_std = _check_bool(where, "keep_std", self.keep_std)
        self.epsilon = _check_number(where, "epsilon", self.epsilon, low=0.0, low_open=True)
        self.correctness = _check_choice(where, "correctness", self.correctness, CORRECTNESS_SOURCES)
        self.correct_threshold = _check_number(where, "correct_threshold", self.correct_threshold)

    @classmethod
    def from_algorithm_config(cls, config: Any) -> "DifficultyWeightingConfig":
        """Read ``config.difficulty.weighting`` (``config``: verl's algorithm DictConfig, a dict, or None)."""
        return _build(cls, read_difficulty_section(config, "weighting"), "algorithm.difficulty.weighting")


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
            25th and 75th percentiles). Linear interpolation (``torch.quantile``'s default). ``0 < q1 < q2 < 1``.
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

    alpha_ori: float = field(default=0.4, metadata={"help": "Weight of A_grpo; (0.4,0.3,0.3) is a paper ablation row."})
    alpha_percep: float = field(default=0.3, metadata={"help": "Weight of the perceptual branch; 0 = off."})
    alpha_reason: float = field(default=0.3, metadata={"help": "Weight of the reasoning branch; 0 = off."})
    percep_quantiles: tuple = field(default=(0.25, 0.75), metadata={"help": "Batch quantiles of H (paper)."})
    percep_edges: Optional[tuple] = field(default=None, metadata={"help": "Fixed dataset-level H edges [e1, e2]."})
    reason_groups: int = field(default=12, metadata={"help": "b confidence groups; ours (paper: 12-16)."})
    sum_prob: bool = field(default=False, metadata={"help": "Confidence = sum of token probs (Eq. 14)."})
    epsilon: float = field(default=1e-6, metadata={"help": "Std epsilon (verl's GRPO value)."})
    on_missing_entropy: str = field(default="error", metadata={"help": "error | warn (drop the branch); ours."})

    def __post_init__(self) -> None:
        where = "algorithm.difficulty.durian"
        self.alpha_ori = _check_number(where, "alpha_ori", self.alpha_ori, low=0.0)
        self.alpha_percep = _check_number(where, "alpha_percep", self.alpha_percep, low=0.0)
        self.alpha_reason = _check_number(where, "alpha_reason", self.alpha_reason, low=0.0)
        if self.alpha_ori + self.alpha_percep + self.alpha_reason <= 0:
            raise ValueError(f"{where}: alpha_ori, alpha_percep and alpha_reason are all 0; at least one must be > 0")
        self.percep_quantiles = self._pair(where, "percep_quantiles", self.percep_quantiles)
        q1, q2 = self.percep_quantiles
        if not (0.0 < q1 < q2 < 1.0):
            raise ValueError(f"{where}.percep_quantiles must satisfy 0 < q1 < q2 < 1, got {[q1, q2]}")
        if self.percep_edges is not None:
            self.percep_edges = self._pair(where, "percep_edges", self.percep_edges)
            if self.percep_edges[0] > self.percep_edges[1]:
                raise ValueError(f"{where}.percep_edges must satisfy e1 <= e2, got {list(self.percep_edges)}")
        if isinstance(self.reason_groups, bool) or not isinstance(self.reason_groups, int) or self.reason_groups < 1:
            raise ValueError(f"{where}.reason_groups must be an integer >= 1, got {self.reason_groups!r}")
        self.sum_prob = _check_bool(where, "sum_prob", self.sum_prob)
        self.epsilon = _check_number(where, "epsilon", self.epsilon, low=0.0, low_open=True)
        self.on_missing_entropy = _check_choice(
            where, "on_missing_entropy", self.on_missing_entropy, MISSING_ENTROPY_POLICIES
        )

    @staticmethod
    def _pair(where: str, name: str, value: Any) -> tuple[float, float]:
        value = _to_plain(value)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"{where}.{name} must be a list of two numbers, got {value!r}")
        return tuple(_check_number(where, f"{name}[{k}]", v) for k, v in enumerate(value))

    @classmethod
    def from_algorithm_config(cls, config: Any) -> "DurianConfig":
        """Read ``config.difficulty.durian`` (``config``: verl's algorithm DictConfig, a dict, or None)."""
        return _build(cls, read_difficulty_section(config, "durian"), "algorithm.difficulty.durian")
