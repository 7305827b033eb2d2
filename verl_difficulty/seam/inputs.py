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
