"""Difficulty-aware advantage estimators for verl.

Importing this package registers two estimators in verl's registry (``verl.trainer.ppo.core_algos``):

* ``difficulty_weighted`` (P2 online advantage differentiation, arXiv 2505.13261):
  ``algorithm.adv_estimator=difficulty_weighted``;
* ``durian`` (P3 Durian, arXiv 2602.21743): ``algorithm.adv_estimator=durian``.

Settings live under ``algorithm.difficulty.{weighting,durian}`` (``config.py``, ``config/algorithm_difficulty.yaml``);
metrics are collected in ``metrics.py`` for the trainer seam to pop after each advantage step.
"""

from verl_difficulty.estimators import metrics
from verl_difficulty.estimators.config import DifficultyWeightingConfig, DurianConfig
from verl_difficulty.estimators.difficulty_weighted import (
    compute_difficulty_weighted_advantage,
    difficulty_weight,
    difficulty_weighted_advantage,
)
from verl_difficulty.estimators.durian import compute_durian_advantage, durian_advantage

__all__ = [
    "DifficultyWeightingConfig",
    "DurianConfig",
    "compute_difficulty_weighted_advantage",
    "compute_durian_advantage",
    "difficulty_weight",
    "difficulty_weighted_advantage",
    "durian_advantage",
    "metrics",
]
