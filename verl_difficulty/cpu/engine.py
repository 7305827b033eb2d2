"""verl's FSDP2 training engines, registered for the ``cpu`` device.

verl registers its FSDP engines for ``cuda``/``npu`` only (``verl/workers/engine/fsdp/transformer_impl.py:1143,1594``).
The CPU variants below are the same classes with one change: FSDP2's ``CPUOffloadPolicy`` is built with
``pin_memory=False`` (verl hard-codes ``pin_memory=True`` for forward-only engines such as the reference model,
``transformer_impl.py:459-462``, and a CUDA build of torch cannot pin memory without a driver). On the CPU there is
nothing to offload to anyway. Use ``strategy=fsdp2``: FSDP1 needs an accelerator.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def _unpinned_offload_policy(impl_module):
    original = impl_module.CPUOffloadPolicy
    if original is None:
        yield
        return

    def unpinned(*args, **kwargs):
        kwargs["pin_memory"] = False
        return original(*args, **kwargs)

    impl_module.CPUOffloadPolicy = unpinned
    try:
        yield
    finally:
        impl_module.CPUOffloadPolicy = original


def register_cpu_engines() -> None:
    """Register CPU subclasses of verl's FSDP LM-head and value-head engines (idempotent)."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl as impl

    def _cpu(base):
        class CpuEngine(base):
            __doc__ = f"{base.__name__} for the CPU platform (unpinned CPU offload policy)."

            def _build_fsdp_module(self, module):
                with _unpinned_offload_policy(impl):
                    return super()._build_fsdp_module(module)

        CpuEngine.__name__ = CpuEngine.__qualname__ = f"Cpu{base.__name__}"
        return CpuEngine

    for model_type, base in (("language_model", impl.FSDPEngineWithLMHead), ("value_model", impl.FSDPEngineWithValueHead)):
        registry = EngineRegistry._engines.get(model_type, {})
        if all("cpu" in registry.get(b, {}) for b in ("fsdp", "fsdp2")):
            continue
        EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(_cpu(base))
