"""Difficulty-aware advantage estimators for verl.

Importing this package registers two estimators in verl's registry (``verl.trainer.ppo.core_algos``):

* ``difficulty_weighted`` (P2 online advantage differentiation, arXiv 2505.13261):
  ``algorithm.adv_estimator=difficulty_weighted``;
* ``durian`` (P3 Durian, arXiv 2602.21743): ``algorithm.adv_estimator=durian``.

Modules: ``groups.py`` (the group math both share, pure functions on (bs,) / (G,) vectors, plus the one read of the
(bs, T) inputs and the one write of the output), ``common.py`` (what the two verl wrappers share),
``difficulty_weighted.py`` and ``durian.py`` (each a pure tensor core plus a thin registered wrapper), ``config.py``
(settings under ``algorithm.difficulty.{weighting,durian}``, defaults shipped in ``config/algorithm_difficulty.yaml``)
and ``metrics.py`` (the collector the trainer seam pops after each advantage step).
"""

from verl_difficulty.estimators import metrics
from verl_difficulty.estimators.config import AlgorithmDifficultyConfig, DifficultyWeightingConfig, DurianConfig
from verl_difficulty.estimators.difficulty_weighted import (
    compute_difficulty_weighted_advantage,
    difficulty_weight,
    difficulty_weighted_advantage,
    pass_rates,
)
from verl_difficulty.estimators.durian import compute_durian_advantage, durian_advantage

__all__ = [
    "AlgorithmDifficultyConfig",
    "DifficultyWeightingConfig",
    "DurianConfig",
    "compute_difficulty_weighted_advantage",
    "compute_durian_advantage",
    "difficulty_weight",
    "difficulty_weighted_advantage",
    "durian_advantage",
    "metrics",
    "pass_rates",
]
