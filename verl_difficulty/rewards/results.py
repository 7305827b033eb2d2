"""The outcome of one grading call (:class:`GradeResult`) and the keys it reports.

The keys are those of a grading result and of the reward managers' ``reward_extra_info``: ``acc`` and ``format``
(from :mod:`verl_difficulty.schema`), :data:`REASON`, :data:`SCORE`, :data:`PRED` and the task extras :data:`IOU`,
:data:`SIMILARITY`, :data:`METHOD`. This module imports nothing heavy: grader subprocesses load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from verl_difficulty.schema import ACC, FORMAT

REASON = "reason"
"""Key of the reason string in a grading result and in ``reward_extra_info`` (empty when grading went fine)."""
SCORE = "score"
"""Key of the task score (the reward before format weighting; fractional for multi-box ``bbox``)."""
PRED = "pred"
"""Key of the extracted answer (<= :data:`PRED_MAX_CHARS` characters; verl's validation uses ``pred`` for maj@N)."""
IOU = "iou"
"""Extra of ``bbox``: IoU of the single pair, else the mean IoU of the matched pairs."""
SIMILARITY = "similarity"
"""Extra of ``ocr``: normalised similarity of the answer to the ground truth."""
METHOD = "method"
"""Extra of the math graders: which rule found the answer equal (``exact``, ``math_verify``, ``choice`` ...)."""

PRED_MAX_CHARS = 200


@dataclass
class GradeResult:
    """Outcome of one grading call.

    ``acc``: 1.0 if the answer is correct, else 0.0. ``format``: 1.0 if the response follows the format rule asked for
    (0.0 if none was asked). ``reason``: empty when grading went normally (a wrong answer has an empty reason); else
    why the response scored 0 (no answer found, malformed box, timeout, invalid UTF-8, grader error...).
    ``score``: the task score in [0, 1] (== ``acc`` except for multi-box ``bbox``). ``pred``: the extracted answer.
    ``extras``: task-specific values (``iou``, ``similarity``, ``method``).
    """

    acc: float = 0.0
    format: float = 0.0
    reason: str = ""
    score: Optional[float] = None
    pred: str = ""
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.score is None:
            self.score = float(self.acc)

    def to_dict(self) -> dict:
        out = {ACC: float(self.acc), FORMAT: float(self.format), REASON: self.reason, SCORE: float(self.score),
               PRED: self.pred}
        out.update(self.extras)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "GradeResult":
        d = dict(d)
        extras = dict(d.pop("extras", {}) or {})
        return cls(acc=float(d.get("acc", 0.0)), format=float(d.get("format", 0.0)), reason=str(d.get("reason", "")),
                   score=d.get("score"), pred=str(d.get("pred", "")), extras=extras)


def fail(reason: str, **extras) -> GradeResult:
    """A zero result with ``reason`` (and task extras such as ``iou=0.0``)."""
    return GradeResult(acc=0.0, reason=reason, extras=extras)


def short(s: Optional[str]) -> str:
    """``s`` cut to :data:`PRED_MAX_CHARS` characters (``""`` for None)."""
    if not s:
        return ""
    return s if len(s) <= PRED_MAX_CHARS else s[:PRED_MAX_CHARS]


def default_extras(task: str) -> dict:
    """The extras a task always reports, with their value for a response that could not be graded."""
    if task == "bbox":
        return {IOU: 0.0}
    if task == "ocr":
        return {SIMILARITY: 0.0}
    return {}


__all__ = ["GradeResult", "REASON", "SCORE", "PRED", "IOU", "SIMILARITY", "METHOD", "PRED_MAX_CHARS", "fail", "short",
           "default_extras"]
