"""verl-difficulty's rewards: graders, reward managers (registered on import) and compute_score functions.

Importing this package registers the reward managers ``math_acc_format``, ``r1v_acc`` and ``perception`` in verl's
reward-loop registry (:mod:`verl_difficulty.rewards.managers`); the plugin entry point imports it when verl's
registry module is imported. See :mod:`verl_difficulty.rewards.functions` for which of managers and functions a
recipe should use, and :mod:`verl_difficulty.rewards.graders` for the grading rules and the time-limit mechanism.
"""

from verl_difficulty.rewards import functions, graders
from verl_difficulty.rewards.functions import RewardSettings, math_acc_format, perception, r1v_acc
from verl_difficulty.rewards.graders import GradeResult, SafeGrader, shared_grader
from verl_difficulty.rewards.managers import (
    REGISTERED,
    MathAccFormatRewardManager,
    PerceptionRewardManager,
    R1VAccRewardManager,
)

__all__ = [
    "functions",
    "graders",
    "RewardSettings",
    "math_acc_format",
    "r1v_acc",
    "perception",
    "GradeResult",
    "SafeGrader",
    "shared_grader",
    "REGISTERED",
    "MathAccFormatRewardManager",
    "R1VAccRewardManager",
    "PerceptionRewardManager",
]
