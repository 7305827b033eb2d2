"""The plugin's rewards as verl ``compute_score`` functions, and the scoring they share with the reward managers.

Two ways to use the rewards in a recipe:

* **Reward managers (recommended)**: ``reward.reward_manager.name=math_acc_format`` (or ``r1v_acc``, ``perception``)
  with the default ``reward.reward_manager.source=register``. The managers (:mod:`verl_difficulty.rewards.managers`)
  are the verl-native fit for the reward loop: they decode the response themselves, read ``extra_info`` /
  ``reward_model`` of the row (``perception`` picks its verifier from ``task_type``), always report the same
  ``reward_extra_info`` keys (``acc``, ``format``, ``reason``, ``score``, ``pred``; the difficulty estimators and the
  sampler read ``acc``), check that the grader subprocesses start when the reward worker starts, and take their
  settings from the trainer config (``difficulty.reward`` / ``reward.reward_kwargs``, see
  :mod:`verl_difficulty.rewards.config`).
* **Functions** (this module), for users who keep verl's default ``naive`` manager:
  ``reward.custom_reward_function.path=pkg://verl_difficulty.rewards.functions`` and
  ``reward.custom_reward_function.name=math_acc_format`` (or ``r1v_acc``, ``perception``); settings are passed as
  ``reward.custom_reward_function.reward_kwargs.<key>=...`` (the keys of
  :class:`~verl_difficulty.rewards.config.RewardSettings`, parsed as strictly: an unknown key or a wrong type raises).
  verl's naive manager copies every key of the returned dict into ``reward_extra_info``, so ``acc`` reaches the
  estimators too.

Both run the same scoring (:func:`score_response`) through the same process-wide
:class:`~verl_difficulty.rewards.pool.SafeGrader` (grader subprocesses with a hard time limit). This module does not
import verl.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from verl_difficulty.rewards.config import RewardSettings, resolve_settings
from verl_difficulty.rewards.pool import SafeGrader, shared_grader
from verl_difficulty.rewards.results import IOU, PRED, REASON, SCORE, SIMILARITY, GradeResult
from verl_difficulty.schema import ACC, FORMAT, TASK_TYPE

PERCEPTION_TASKS = ("bbox", "ocr", "count")
FUNCTION_KWARGS_KEY = "reward.custom_reward_function.reward_kwargs"
"""Where verl's naive manager takes a function's settings from (the prefix of their error messages)."""
CALL_KWARGS = ("reward_router_address", "reward_model_tokenizer", "reward_model")
"""Keyword arguments of a call that are not settings (verl passes the first two when a reward model is used)."""


# --------------------------------------------------------------------------------------------------------------------
# Scoring shared by managers and functions
# --------------------------------------------------------------------------------------------------------------------
def extra_keys(manager: str) -> tuple[str, ...]:
    """The keys of ``reward_extra_info`` a manager always reports (the same for every response: verl stacks them)."""
    base = (ACC, FORMAT, REASON, SCORE, PRED)
    return base + (IOU, SIMILARITY) if manager == "perception" else base


def task_type_of(extra_info: Optional[Mapping], reward_model: Optional[Mapping], row: Optional[Mapping] = None) -> str:
    """``extra_info["task_type"]``, else ``reward_model["task_type"]``, else the flat column; ``""`` if none."""
    for src in (extra_info, reward_model, row):
        try:
            v = src.get(TASK_TYPE) if src is not None and hasattr(src, "get") else None
        except Exception:  # noqa: BLE001
            v = None
        if v is not None and str(v):
            return str(v)
    return ""


def grading_request(manager: str, settings: RewardSettings, task_type: str = "") -> tuple[str, dict]:
    """The grader task (a key of :data:`verl_difficulty.rewards.pool.GRADERS`) and its options for reward
    ``manager``; ``perception`` picks the task by ``task_type`` (math accuracy for other task types)."""
    opts: dict = {"answer_tags": settings.answer_tags, "think_close": settings.think_close}
    if manager == "math_acc_format":
        return "math", {**opts, "require_boxed": settings.require_boxed}
    if manager == "r1v_acc":
        return "r1v", opts
    if manager == "perception":
        task = task_type if task_type in PERCEPTION_TASKS else "math"
        task_opts = {"bbox": {"iou_threshold": settings.iou_threshold}, "ocr": {"threshold": settings.ocr_threshold},
                     "count": {}, "math": {"require_boxed": False}}[task]
        return task, {**opts, **task_opts}
    raise ValueError(f"unknown reward {manager!r}")


def score_response(manager: str, text: Any, ground_truth: Any, settings: RewardSettings,
                   grader: Optional[SafeGrader] = None, task_type: str = "") -> tuple[float, dict]:
    """Score one decoded response with reward ``manager``; returns ``(reward, reward_extra_info)``. Never raises."""
    try:
        grader = grader or shared_grader(**settings.grader_kwargs())
        task, opts = grading_request(manager, settings, task_type)
        res = grader.grade(task, text, ground_truth, opts, settings.format_style, settings.format_opts())
    except Exception as e:  # noqa: BLE001
        res = GradeResult(reason=f"reward failed: {type(e).__name__}: {e}")
    reward = settings.acc_weight * float(res.score) + settings.format_weight * float(res.format)
    d = res.to_dict()
    info = {k: d.get(k) for k in extra_keys(manager)}
    info[SCORE] = float(reward)
    return float(reward), info


# --------------------------------------------------------------------------------------------------------------------
# compute_score functions (verl signature)
# --------------------------------------------------------------------------------------------------------------------
_SETTINGS_CACHE: dict[tuple[str, str], RewardSettings] = {}


def _function_settings(manager: str, kwargs: dict) -> RewardSettings:
    """The settings of a function call, parsed once per distinct ``kwargs`` (verl passes the same ones every call)."""
    key = (manager, repr(sorted(kwargs.items(), key=lambda kv: str(kv[0]))))
    settings = _SETTINGS_CACHE.get(key)
    if settings is None:
        settings = resolve_settings(manager, kwargs, FUNCTION_KWARGS_KEY)
        if len(_SETTINGS_CACHE) < 64:
            _SETTINGS_CACHE[key] = settings
    return settings


def _function(manager: str, solution_str: Any, ground_truth: Any, extra_info: Any, kwargs: dict) -> dict:
    """A compute_score function's result: ``reward_extra_info`` with ``score`` the reward."""
    call = {k: kwargs.pop(k) for k in CALL_KWARGS if k in kwargs}
    settings = _function_settings(manager, kwargs)
    reward_model = call.get("reward_model")
    task = task_type_of(extra_info if isinstance(extra_info, Mapping) else None,
                        reward_model if isinstance(reward_model, Mapping) else None)
    _, info = score_response(manager, solution_str, ground_truth, settings, task_type=task)
    return info


def math_acc_format(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Optional[dict] = None,
                    **kwargs) -> dict:
    """0.9 * accuracy + 0.1 * format (P3, P4). Returns ``{"score", "acc", "format", "reason", "pred"}``."""
    return _function("math_acc_format", solution_str, ground_truth, extra_info, kwargs)


def r1v_acc(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Optional[dict] = None,
            **kwargs) -> dict:
    """Binary accuracy (P1): math-verify on the completion, fallback exact match of the answer-tag content (with a
    tag pair, only its content is graded; see :func:`verl_difficulty.rewards.math_grading.grade_r1v`)."""
    return _function("r1v_acc", solution_str, ground_truth, extra_info, kwargs)


def perception(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Optional[dict] = None,
               **kwargs) -> dict:
    """Perception verifiers by ``extra_info["task_type"]``: ``bbox`` (IoU >= 0.2), ``ocr`` (similarity >= 0.5),
    ``count`` (exact integer); other task types: math accuracy. Adds ``iou`` and ``similarity`` (None if n/a).
    verl's naive manager does not pass ``reward_model`` to a function, so here the task type must be in
    ``extra_info`` (the managers also read ``reward_model["task_type"]``)."""
    return _function("perception", solution_str, ground_truth, extra_info, kwargs)


__all__ = [
    "PERCEPTION_TASKS",
    "extra_keys",
    "task_type_of",
    "grading_request",
    "score_response",
    "math_acc_format",
    "r1v_acc",
    "perception",
]
