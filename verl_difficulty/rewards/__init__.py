"""verl-difficulty's rewards: graders, settings, compute_score functions and verl reward managers.

=========================  =========================================================================================
module                     what it holds
=========================  =========================================================================================
:mod:`.results`            :class:`GradeResult` and the keys it reports (``reason``, ``score``, ``pred``, extras)
:mod:`.extract`            response coercion/truncation, ``\\boxed{}`` / tag / answer extraction, format rules
:mod:`.math_grading`       normalisation, choice letters, math equivalence, ``grade_math``, ``grade_r1v``
:mod:`.perception`         boxes (IoU, matching), OCR similarity, counting: ``grade_bbox/ocr/count``
:mod:`.pool`               :class:`SafeGrader`: grader subprocesses with a hard time limit, the task registry
:mod:`.config`             :class:`RewardSettings` (strictly parsed), each reward's defaults, where they are read
:mod:`.functions`          the scoring shared by managers and functions; verl ``compute_score`` functions
:mod:`.managers`           verl reward-loop managers ``math_acc_format``, ``r1v_acc``, ``perception``
=========================  =========================================================================================

Importing this package (or any module but :mod:`.managers`) does not import verl or torch: scoring workers and
grader subprocesses use the graders without paying for verl. The managers register in verl's reward-loop registry
when :mod:`verl_difficulty.rewards.managers` is imported; the plugin entry point imports it when verl imports its
reward-manager registry.

The compute_score functions are reached as ``verl_difficulty.rewards.functions.<name>`` (the package attribute
``perception`` is the module :mod:`.perception`, not the function of the same name).
"""

from verl_difficulty.rewards.config import RewardSettings, resolve_settings, settings_from_config
from verl_difficulty.rewards.functions import score_response
from verl_difficulty.rewards.pool import SafeGrader, shared_grader
from verl_difficulty.rewards.results import GradeResult

__all__ = [
    "RewardSettings",
    "resolve_settings",
    "settings_from_config",
    "score_response",
    "GradeResult",
    "SafeGrader",
    "shared_grader",
]
