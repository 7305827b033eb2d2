"""Per-sample inputs for advantage estimators, handed over by the trainer seam (no verl imports here).

verl 0.9.1 calls a registered estimator with ``token_level_rewards``, ``response_mask``, ``config`` and ``index``
only (``verl/trainer/ppo/ray_trainer.py:254-282``). The plugin's trainer mode (:mod:`verl_difficulty.seam`) fetches
the extra per-sample fields from TransferQueue and publishes them here for the duration of the advantage call; the
:func:`with_seam_inputs` decorator passes them to the estimator as keyword arguments (``non_tensor_batch``,
``old_log_probs``) unless the caller already passed them, which is what verl would do natively once upstream PR
verl-project/verl#7473 lands.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class SeamInputs:
    non_tensor_batch: dict[str, np.ndarray]
    old_log_probs: Any = None


_CURRENT: contextvars.ContextVar[Optional[SeamInputs]] = contextvars.ContextVar("verl_difficulty_seam", default=None)


@contextlib.contextmanager
def seam_inputs(non_tensor_batch: dict[str, np.ndarray], old_log_probs: Any = None):
    """Publish per-sample estimator inputs for the enclosed advantage computation."""
    token = _CURRENT.set(SeamInputs(non_tensor_batch=non_tensor_batch, old_log_probs=old_log_probs))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> Optional[SeamInputs]:
    return _CURRENT.get()


DEFAULT_CORRECT_THRESHOLD = 0.5
"""``difficulty.correct_threshold``'s default: separates 0/1 rewards and ``0.9 acc + 0.1 format`` rewards (ours)."""


def response_verdicts(
    scores: Any, acc: Any = None, lengths: Any = None, threshold: float = DEFAULT_CORRECT_THRESHOLD
) -> np.ndarray:
    """The one verdict per response that the seam hands the estimators and the sampler (``schema.CORRECT``).

    Args:
        scores: (bs,) scalar reward of each response (the sum of its token-level rewards).
        acc: (bs,) the reward manager's ``acc`` (``reward_extra_info``), or None. Used when every value is finite.
        lengths: (bs,) response lengths (valid tokens), or None. An empty response (length 0) gets NaN: it is left
            out of every pass rate (estimator groups and sampler estimates alike).
        threshold: ``reward >= threshold`` is correct when no ``acc`` is reported (``difficulty.correct_threshold``).

    Returns:
        float64 (bs,) array of 1.0 / 0.0 / NaN.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    verdict = None
    if acc is not None:
        a = np.asarray(acc)
        if a.dtype.kind in "fiub" and a.shape == scores.shape and np.isfinite(a.astype(np.float64)).all():
            verdict = (a.astype(np.float64) > 0.5).astype(np.float64)
    if verdict is None:
        verdict = (scores >= float(threshold)).astype(np.float64)
    if lengths is not None:
        verdict[np.asarray(lengths).reshape(-1) <= 0] = np.nan
    return verdict


SEAM_HELP = (
    "run the v1 trainer with the plugin's trainer mode (trainer.use_v1=true trainer.v1.trainer_mode=difficulty); "
    "the legacy trainer (trainer.use_v1=false) and verl's stock trainer modes do not give estimators per-sample data"
)


def with_seam_inputs(fn: Callable) -> Callable:
    """Fill ``non_tensor_batch`` / ``old_log_probs`` keyword arguments from the seam when the caller did not.

    Also checks that the seam's rows are the estimator's rows (same ``uid`` order); a mismatch is a bug in the
    seam and raises instead of silently mixing samples.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = current()
        if ctx is not None:
            if kwargs.get("non_tensor_batch") is None:
                kwargs["non_tensor_batch"] = ctx.non_tensor_batch
                index = kwargs.get("index")
                uid = ctx.non_tensor_batch.get("uid")
                if index is not None and uid is not None:
                    if len(index) != len(uid) or not np.array_equal(np.asarray(index, dtype=object), uid):
                        raise RuntimeError(
                            "verl-difficulty seam: the per-sample fields are not aligned with the estimator's batch "
                            f"({len(uid)} seam rows vs {len(index)} estimator rows)"
                        )
            if kwargs.get("old_log_probs") is None and ctx.old_log_probs is not None:
                kwargs["old_log_probs"] = ctx.old_log_probs
        return fn(*args, **kwargs)

    return wrapper
