"""The plugin's reward managers, registered in verl's reward-loop registry.

=====================  =================================================================================================
registered name        reward
=====================  =================================================================================================
``math_acc_format``    0.9 * acc + 0.1 * format (P3, P4). acc: math equivalence of the last ``\\boxed{}`` answer
                       (math-verify, mathruler normalisers, choice letters, units, percent); format:
                       ``<think>reasoning</think>`` then a ``\\boxed{}`` answer.
``r1v_acc``            acc (P1): math-verify on the completion, fallback exact match of the ``<answer>`` content
                       (with a tag pair only its content is graded: R1-V's literal rule lets a number in the
                       reasoning count, see ``math_grading.grade_r1v``); format (reported, weight 0):
                       ``<think>...</think><answer>...</answer>``.
``perception``         by the row's ``extra_info["task_type"]`` (or ``reward_model["task_type"]``): ``bbox`` (IoU >=
                       0.2, optimal one-to-one matching, score = fraction of gt boxes matched), ``ocr`` (normalised
                       similarity >= 0.5), ``count`` (exact integer, digits or words); other types: math accuracy.
=====================  =================================================================================================

Select one with ``reward.reward_manager.name=<name>`` (``source=register``, verl's default), or with
``source=importlib``, ``module.path=pkg://verl_difficulty.rewards.managers``, ``name=<ClassName>``.
Settings: :class:`verl_difficulty.rewards.config.RewardSettings` (``difficulty.reward`` or ``reward.reward_kwargs``;
an unknown key or a wrong type fails the reward worker's start with the full dotted key).

This is the only module of :mod:`verl_difficulty.rewards` that imports verl: the managers register when it is imported
(the plugin entry point imports it when verl imports its reward-manager registry).

``run_single`` returns ``{"reward_score": float, "reward_extra_info": {...}}`` with always the same keys
(``acc``, ``format``, ``reason``, ``score``, ``pred``; ``perception`` adds ``iou`` and ``similarity``, None where not
applicable): verl stacks ``reward_extra_info`` across responses with ``np.array([info[key] ...])`` using the keys of
the first response, so a missing key would fail the batch. Nothing raises out of ``run_single``: a failure scores 0
with its ``reason``. A ``compute_score`` function handed to these managers by verl is ignored (they carry their own
graders); use verl's ``naive`` manager with :mod:`verl_difficulty.rewards.functions` for the function route.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from verl_difficulty.rewards.config import settings_from_config
from verl_difficulty.rewards.functions import extra_keys, score_response, task_type_of
from verl_difficulty.rewards.pool import shared_grader
from verl_difficulty.rewards.results import REASON
from verl_difficulty.schema import DATA_SOURCE, EXTRA_INFO

logger = logging.getLogger(__name__)


class DifficultyRewardManagerBase(RewardManagerBase):
    """Shared decoding and grading of the plugin's managers (subclasses set ``NAME``)."""

    NAME: ClassVar[str] = ""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, **kwargs: Any):
        super().__init__(config, tokenizer, compute_score)
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer
        self.settings = settings_from_config(config, self.NAME)
        self.grader = shared_grader(**self.settings.grader_kwargs())
        if self.grader.pool is not None:
            try:
                self.grader.pool.ping()
            except Exception as e:  # fail at worker start, not with silently zero rewards during training
                raise RuntimeError(f"verl-difficulty reward {self.NAME}: grader subprocesses did not start: {e}") from e

    # ---------------------------------------------------------------------------------------------------------------
    def decode_response(self, data_item) -> str:
        """Decode the valid response tokens exactly as verl's naive manager does."""
        response_ids = data_item.batch["responses"]
        response_length = response_ids.shape[-1]
        valid_response_length = data_item.batch["attention_mask"][-response_length:].sum()
        valid_response_ids = response_ids[:valid_response_length]
        return self.tokenizer.decode(valid_response_ids, skip_special_tokens=True)

    def score_text(self, text: Any, ground_truth: Any, extra_info: Any = None, reward_model: Any = None,
                   row: Any = None) -> tuple[float, dict]:
        """Score one decoded response (also usable without a DataProto)."""
        task = task_type_of(extra_info, reward_model, row) if self.NAME == "perception" else ""
        return score_response(self.NAME, text, ground_truth, self.settings, self.grader, task_type=task)

    def failed(self, reason: str) -> dict:
        info = {k: None for k in extra_keys(self.NAME)}
        info.update({"acc": 0.0, "format": 0.0, "score": 0.0, "pred": "", REASON: reason})
        return {"reward_score": 0.0, "reward_extra_info": info}

    async def run_single(self, data: DataProto) -> dict:
        try:
            loop = asyncio.get_running_loop()
            data_item = data[-1:][0]  # multi-sequence outputs: the last sequence is scored (as verl's naive)
            ntb = data_item.non_tensor_batch
            reward_model = ntb.get("reward_model") or {}
            ground_truth = reward_model.get("ground_truth") if hasattr(reward_model, "get") else None
            extra_info = ntb.get(EXTRA_INFO) or {}
            text = await loop.run_in_executor(None, self.decode_response, data_item)
            score, info = await loop.run_in_executor(
                None, self.score_text, text, ground_truth, extra_info, reward_model, ntb
            )
            return {"reward_score": float(score), "reward_extra_info": info}
        except Exception as e:  # noqa: BLE001 - a reward never breaks the rollout
            source = None
            try:
                source = data[-1:][0].non_tensor_batch.get(DATA_SOURCE)
            except Exception:  # noqa: BLE001
                pass
            logger.warning("verl-difficulty reward %s failed on a response (data_source=%s): %r", self.NAME, source, e)
            return self.failed(f"reward manager error: {type(e).__name__}: {e}")


@register("math_acc_format")
class MathAccFormatRewardManager(DifficultyRewardManagerBase):
    """0.9 * accuracy + 0.1 * format (weights, tags configurable)."""

    NAME = "math_acc_format"


@register("r1v_acc")
class R1VAccRewardManager(DifficultyRewardManagerBase):
    """Binary accuracy: math-verify on the completion, fallback exact match of the answer-tag content."""

    NAME = "r1v_acc"


@register("perception")
class PerceptionRewardManager(DifficultyRewardManagerBase):
    """bbox / ocr / count verifiers by the row's task type; math accuracy for other task types."""

    NAME = "perception"


__all__ = [
    "DifficultyRewardManagerBase",
    "MathAccFormatRewardManager",
    "R1VAccRewardManager",
    "PerceptionRewardManager",
]
