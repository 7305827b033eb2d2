"""The plugin's rewards as verl ``compute_score`` functions, their settings, and the scoring shared with the managers.

Two ways to use the rewards in a recipe:

* **Reward managers (recommended)**: ``reward.reward_manager.name=math_acc_format`` (or ``r1v_acc``, ``perception``)
  with the default ``reward.reward_manager.source=register``. The managers (:mod:`verl_difficulty.rewards.managers`)
  are the verl-native fit for the reward loop: they decode the response themselves, read ``extra_info`` /
  ``reward_model`` of the row (``perception`` picks its verifier from ``task_type``), always report the same
  ``reward_extra_info`` keys (``acc``, ``format``, ``reason``, ``score``, ``pred``; the difficulty estimators and the
  sampler read ``acc``), check that the grader subprocesses start when the reward worker starts, and take their
  settings from the trainer config (``reward.reward_kwargs`` / ``difficulty.reward``, see :class:`RewardSettings`).
* **Functions** (this module), for users who keep verl's default ``naive`` manager:
  ``reward.custom_reward_function.path=pkg://verl_difficulty.rewards.functions`` and
  ``reward.custom_reward_function.name=math_acc_format`` (or ``r1v_acc``, ``perception``); settings are passed as
  ``reward.custom_reward_function.reward_kwargs.<key>=...`` (same keys as :class:`RewardSettings`). verl's naive
  manager copies every key of the returned dict into ``reward_extra_info``, so ``acc`` reaches the estimators too.

Both run the same scoring (:func:`score_response`) through the same process-wide
:class:`~verl_difficulty.rewards.graders.SafeGrader` (grader subprocesses with a hard time limit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from verl_difficulty.rewards.graders import (
    IOU,
    PRED,
    REASON,
    SCORE,
    SIMILARITY,
    GradeResult,
    SafeGrader,
    shared_grader,
)
from verl_difficulty.schema import ACC, FORMAT, TASK_TYPE

logger = logging.getLogger(__name__)

MANAGER_NAMES = ("math_acc_format", "r1v_acc", "perception")
PERCEPTION_TASKS = ("bbox", "ocr", "count")


@dataclass(frozen=True)
class RewardSettings:
    """Settings of the plugin's rewards (all optional).

    Where the managers read them, later wins: the defaults of the manager (below), the plugin section
    ``difficulty.reward`` of the trainer config, then verl's ``reward.reward_kwargs`` (the dict verl's DAPO manager
    reads too). In each, flat keys apply to every manager and a sub-dict named after a manager
    (``reward.reward_kwargs.math_acc_format.acc_weight=0.8``) to that one only. The functions take the same keys as
    keyword arguments (``reward.custom_reward_function.reward_kwargs``).
    """

    acc_weight: float = 1.0
    """reward = acc_weight * task score + format_weight * format (math_acc_format: 0.9)."""
    format_weight: float = 0.0
    """(math_acc_format: 0.1)."""
    format_style: str = "think_answer"
    """Format rule: ``think_boxed`` (math_acc_format), ``think_answer`` (r1v_acc, perception), ``boxed``, ``answer``,
    ``none``."""
    think_open: str = "<think>"
    think_close: str = "</think>"
    answer_open: str = "<answer>"
    answer_close: str = "</answer>"
    require_think_open: bool = True
    """False when the chat template already puts ``<think>`` in the prompt (the response starts inside it)."""
    require_reasoning: bool = True
    """The think block must contain non-blank text."""
    require_boxed: bool = False
    """math_acc_format: accuracy only from the last ``\\boxed{}`` (True); else answer tag / whole text as fallbacks."""
    iou_threshold: float = 0.2
    ocr_threshold: float = 0.5
    max_chars: int = 8000
    """Responses are cut to their last ``max_chars`` characters before grading accuracy (format sees all of it)."""
    timeout_s: float = 5.0
    """Hard time limit of one grading call (grader subprocess killed and replaced on timeout)."""
    num_procs: int = 2
    """Grader subprocesses per process (per reward loop worker)."""
    max_memory_mb: int = 4096
    """Address-space limit of a grader subprocess."""
    grader_mode: str = "subprocess"
    """``subprocess`` (time limit) or ``inline`` (no time limit; debugging only)."""

    def grader_kwargs(self) -> dict:
        return dict(timeout_s=self.timeout_s, max_chars=self.max_chars, num_procs=self.num_procs,
                    max_memory_mb=self.max_memory_mb, mode=self.grader_mode)

    def format_opts(self) -> dict:
        return dict(think_open=self.think_open, think_close=self.think_close, answer_open=self.answer_open,
                    answer_close=self.answer_close, require_think_open=self.require_think_open,
                    require_reasoning=self.require_reasoning)

    @property
    def answer_tags(self) -> tuple[str, str]:
        return (self.answer_open, self.answer_close)


MANAGER_DEFAULTS: dict[str, dict] = {
    "math_acc_format": dict(acc_weight=0.9, format_weight=0.1, format_style="think_boxed", require_boxed=True),
    "r1v_acc": dict(acc_weight=1.0, format_weight=0.0, format_style="think_answer"),
    "perception": dict(acc_weight=1.0, format_weight=0.0, format_style="think_answer"),
}

_FIELDS = {f.name: f for f in fields(RewardSettings)}
_IGNORED_KEYS = {"overlong_buffer_cfg", "max_resp_len"}  # verl's DAPO manager reads these from the same dict
_WARNED: set = set()


def _coerce(name: str, value: Any) -> Any:
    default = getattr(RewardSettings, name)
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


def resolve_settings(manager: str, *sources: Optional[Mapping]) -> RewardSettings:
    """Settings of ``manager``: its defaults, then each mapping of ``sources`` in order (flat keys, then the
    sub-dict named ``manager``). Unknown keys are reported once with a warning; a bad value raises ``ValueError``."""
    if manager not in MANAGER_DEFAULTS:
        raise ValueError(f"unknown reward {manager!r}; expected one of {MANAGER_NAMES}")
    values = dict(MANAGER_DEFAULTS[manager])
    for src in sources:
        if not src:
            continue
        src = dict(src)
        for layer in (src, src.get(manager) or {}):
            for k, v in dict(layer).items():
                if k in _FIELDS:
                    values[k] = _coerce(k, v)
                elif k not in MANAGER_NAMES and k not in _IGNORED_KEYS and (manager, k) not in _WARNED:
                    _WARNED.add((manager, k))
                    logger.warning("verl-difficulty reward %s: unknown setting %r ignored", manager, k)
    s = RewardSettings(**values)
    if s.format_style not in ("think_boxed", "think_answer", "boxed", "answer", "none"):
        raise ValueError(f"unknown format_style {s.format_style!r}")
    if s.grader_mode not in ("subprocess", "inline"):
        raise ValueError(f"unknown grader_mode {s.grader_mode!r}")
    if s.timeout_s <= 0:
        raise ValueError("timeout_s must be > 0")
    return s


def _to_container(x: Any) -> Optional[dict]:
    if x is None:
        return None
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(x, DictConfig):
            return OmegaConf.to_container(x, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(x) if isinstance(x, Mapping) else None


def _select(config: Any, path: str) -> Any:
    node = config
    for part in path.split("."):
        if node is None:
            return None
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # noqa: BLE001 - struct configs, missing keys
            return None
    return node


def settings_from_config(config: Any, manager: str) -> RewardSettings:
    """Settings of a manager from the trainer config: ``difficulty.reward`` then ``reward.reward_kwargs``."""
    return resolve_settings(manager, _to_container(_select(config, "difficulty.reward")),
                            _to_container(_select(config, "reward.reward_kwargs")))


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


def score_response(manager: str, text: Any, ground_truth: Any, settings: RewardSettings,
                   grader: Optional[SafeGrader] = None, task_type: str = "") -> tuple[float, dict]:
    """Score one decoded response with reward ``manager``; returns ``(reward, reward_extra_info)``. Never raises."""
    keys = extra_keys(manager)
    try:
        grader = grader or shared_grader(**settings.grader_kwargs())
        fmt_opts = settings.format_opts()
        if manager == "math_acc_format":
            res = grader.grade("math", text, ground_truth,
                               {"require_boxed": settings.require_boxed, "answer_tags": settings.answer_tags,
                                "think_close": settings.think_close},
                               settings.format_style, fmt_opts)
        elif manager == "r1v_acc":
            res = grader.grade("r1v", text, ground_truth,
                               {"answer_tags": settings.answer_tags, "think_close": settings.think_close},
                               settings.format_style, fmt_opts)
        elif manager == "perception":
            task = task_type if task_type in PERCEPTION_TASKS else "math"
            opts: dict = {"answer_tags": settings.answer_tags, "think_close": settings.think_close}
            if task == "bbox":
                opts["iou_threshold"] = settings.iou_threshold
            elif task == "ocr":
                opts["threshold"] = settings.ocr_threshold
            elif task == "math":
                opts["require_boxed"] = False
            res = grader.grade(task, text, ground_truth, opts, settings.format_style, fmt_opts)
        else:
            raise ValueError(f"unknown reward {manager!r}")
    except Exception as e:  # noqa: BLE001
        res = GradeResult(reason=f"reward failed: {type(e).__name__}: {e}")
    reward = settings.acc_weight * float(res.score) + settings.format_weight * float(res.format)
    d = res.to_dict()
    info = {k: d.get(k) for k in keys}
    info[SCORE] = float(reward)
    return float(reward), info


# --------------------------------------------------------------------------------------------------------------------
# compute_score functions (verl signature)
# --------------------------------------------------------------------------------------------------------------------
def _function(manager: str, data_source, solution_str, ground_truth, extra_info, kwargs) -> dict:
    kwargs = {k: v for k, v in kwargs.items() if k not in ("reward_router_address", "reward_model_tokenizer")}
    reward_model = kwargs.pop("reward_model", None)
    settings = resolve_settings(manager, kwargs)
    task = task_type_of(extra_info if isinstance(extra_info, Mapping) else None,
                        reward_model if isinstance(reward_model, Mapping) else None)
    reward, info = score_response(manager, solution_str, ground_truth, settings, task_type=task)
    info["score"] = reward
    return info


def math_acc_format(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Optional[dict] = None,
                    **kwargs) -> dict:
    """0.9 * accuracy + 0.1 * format (P3, P4). Returns ``{"score", "acc", "format", "reason", "pred"}``."""
    return _function("math_acc_format", data_source, solution_str, ground_truth, extra_info, kwargs)


def r1v_acc(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Optional[dict] = None,
            **kwargs) -> dict:
    """Binary accuracy (P1): math-verify on the completion, fallback exact match of the answer-tag content (with a
    tag pair, only its content is graded; see :func:`verl_difficulty.rewards.graders.grade_r1v`)."""
    return _function("r1v_acc", data_source, solution_str, ground_truth, extra_info, kwargs)


def perception(data_source: Any, solution_str: Any, ground_truth: Any, extra_info: Optional[dict] = None,
               **kwargs) -> dict:
    """Perception verifiers by ``extra_info["task_type"]``: ``bbox`` (IoU >= 0.2), ``ocr`` (similarity >= 0.5),
    ``count`` (exact integer); other task types: math accuracy. Adds ``iou`` and ``similarity`` (None if n/a).
    verl's naive manager does not pass ``reward_model`` to a function, so here the task type must be in
    ``extra_info`` (the managers also read ``reward_model["task_type"]``)."""
    return _function("perception", data_source, solution_str, ground_truth, extra_info, kwargs)


__all__ = [
    "RewardSettings",
    "MANAGER_DEFAULTS",
    "resolve_settings",
    "settings_from_config",
    "score_response",
    "extra_keys",
    "task_type_of",
    "math_acc_format",
    "r1v_acc",
    "perception",
]
