"""Verifiers of the offline scorers: the plugin's rewards behind a small protocol, so tests can script correctness.

:class:`RewardVerifier` grades with the same code as training (:func:`verl_difficulty.rewards.functions.score_response`
through the process-wide :class:`~verl_difficulty.rewards.pool.SafeGrader`: grader subprocesses with a hard time
limit, so hostile model output never hangs a scoring worker). A response is correct when the reward's ``acc`` is 1,
well formatted when its ``format`` is 1 (the reward's format check, ``format_style``, whatever its weight in the
reward): :meth:`RewardVerifier.grade` reports both (:class:`~verl_difficulty.scoring.context.Verdict`),
:meth:`RewardVerifier.verify` the correctness only.

Rewards (``--reward``): ``r1v_acc`` (P1: math-verify on the completion, fallback exact match of the ``<answer>``
content; the default), ``math_acc_format`` (P3/P4: math equivalence of the ``\\boxed{}`` answer), ``perception``
(verifier by ``extra_info.task_type``: ``bbox`` IoU, ``ocr`` similarity, ``count`` exact integer, else math).

:func:`make_verifier` builds a verifier from a JSON-able spec: ``{"name": "reward", "reward": "r1v_acc", **settings}``,
``{"name": "scripted", ...}`` (:class:`verl_difficulty.scoring.scripted.ScriptedVerifier`) or
``{"name": "package.module:ClassName", **kwargs}``.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from verl_difficulty.schema import ACC, FORMAT
from verl_difficulty.data.rows import ScoringRow
from verl_difficulty.scoring.context import Verdict

REWARDS = ("r1v_acc", "math_acc_format", "perception")


class RewardVerifier:
    """Correctness by one of the plugin's rewards.

    Args:
        reward: ``r1v_acc`` | ``math_acc_format`` | ``perception``.
        settings: :class:`verl_difficulty.rewards.config.RewardSettings` keys (``timeout_s``, ``num_procs``,
            ``require_boxed``, ``iou_threshold`` ...).
    """

    def __init__(self, reward: str = "r1v_acc", **settings: Any):
        from verl_difficulty.rewards.config import resolve_settings

        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; expected one of {REWARDS}")
        self.reward = reward
        self.settings = resolve_settings(reward, settings)
        self._settings_dict = dict(settings)
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.settings.num_procs))

    def _one(self, args: tuple[str, ScoringRow]) -> Verdict:
        from verl_difficulty.rewards.functions import score_response

        text, row = args
        _, info = score_response(self.reward, text, row.ground_truth, self.settings, task_type=row.task_type)
        return Verdict(float(info.get(ACC) or 0.0) >= 0.5, float(info.get(FORMAT) or 0.0) >= 0.5)

    def grade(self, responses: Sequence[str], rows: Sequence[ScoringRow]) -> list[Verdict]:
        """(correct, formatted) of each response."""
        if len(responses) != len(rows):
            raise ValueError("responses and rows differ in length")
        return list(self._pool.map(self._one, list(zip(responses, rows))))

    def verify(self, responses: Sequence[str], rows: Sequence[ScoringRow]) -> list[bool]:
        return [v.correct for v in self.grade(responses, rows)]

    def describe(self) -> dict:
        return {"verifier": "reward", "reward": self.reward, **self._settings_dict}


def make_verifier(spec: dict):
    """Build a verifier from a JSON-able spec (see the module docstring)."""
    spec = dict(spec)
    name = spec.pop("name", "reward")
    if name == "reward":
        return RewardVerifier(**spec)
    if name == "scripted":
        from verl_difficulty.scoring.scripted import ScriptedVerifier

        return ScriptedVerifier(**spec)
    if ":" in name:
        module, _, cls = name.partition(":")
        return getattr(importlib.import_module(module), cls)(**spec)
    raise ValueError(f"unknown verifier {name!r}")
