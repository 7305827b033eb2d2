"""Module-level metric collector of the advantage estimators.

verl's estimator interface returns only ``(advantages, returns)``, so an estimator ``record``s its metrics here and
the plugin's trainer seam calls ``pop_all()`` after each advantage step and merges the result into verl's step
metrics. Names are built by :func:`verl_difficulty.schema.metric`: ``difficulty/weighting/<name>`` (P2) and
``difficulty/durian/<name>`` (P3), e.g. ``difficulty/weighting/weight_mean``.

Within one step a later ``record`` of the same name overwrites the earlier value (e.g. when an estimator runs more
than once per step). Thread-safe; the values are plain Python floats.
"""

from __future__ import annotations

import threading

__all__ = ["record", "pop_all"]

_LOCK = threading.Lock()
_PENDING: dict[str, float] = {}


def record(metrics: dict[str, float]) -> None:
    """Add ``metrics`` (full names -> numbers) to the pending metrics of this step."""
    clean = {str(k): float(v) for k, v in metrics.items()}
    with _LOCK:
        _PENDING.update(clean)


def pop_all() -> dict[str, float]:
    """Return every pending metric and clear the collector."""
    with _LOCK:
        out = dict(_PENDING)
        _PENDING.clear()
    return out
