"""The two places where the CPU backend must adjust a verl function binding at run time (CPU platform only).

Both are installed only when ``VERL_PLATFORM=cpu`` (see :mod:`verl_difficulty.plugin`), in the worker processes, by
rebinding a name in the importing verl module; verl's files are untouched. Check them on a verl upgrade:

1. ``verl/workers/engine_workers.py:89`` calls ``initialize_global_process_group_ray()`` whose default backend string
   is ``f"cpu:gloo,{device}:{backend}"`` (``verl/utils/distributed.py:89``). With device ``cpu`` that is
   ``"cpu:gloo,cpu:gloo"``, which torch 2.11 rejects ("Duplicate device type cpu"). On the CPU platform the default
   becomes ``"cpu:gloo"``.
"""

from __future__ import annotations

import functools


def patch_process_group_init() -> None:
    """Default the process-group backend to ``cpu:gloo`` in verl's training workers (CPU platform only)."""
    from verl.workers import engine_workers

    original = engine_workers.initialize_global_process_group_ray
    if getattr(original, "_verl_difficulty_cpu", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    initialize_global_process_group_ray._verl_difficulty_cpu = True
    engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray
