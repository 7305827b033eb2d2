"""A CPU platform for verl's platform layer (``verl.plugin.platform``), for smoke tests, CI and the demo.

verl 0.9.1 ships CUDA / NPU / ROCm platforms only and falls back to CUDA+NCCL when no accelerator is found
(``verl/plugin/platform/platform_manager.py:113-117``). This platform is registered under the name ``cpu`` and is used
ONLY when selected explicitly with ``VERL_PLATFORM=cpu``: its ``is_platform_available`` is always False, so verl's
auto-detection never picks it on a GPU machine.

Not for speed: everything runs on the CPU with gloo collectives.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any, Optional

import torch

PLATFORM_NAME = "cpu"
ENV_VAR = "VERL_PLATFORM"


def cpu_platform_selected() -> bool:
    """True when the user asked verl for the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get(ENV_VAR, "").strip().lower() == PLATFORM_NAME


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover - psutil is a ray dependency
        return 0


class _CpuDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes on ``get_torch_device()``.

    verl calls ``memory_allocated``/``memory_reserved``/``mem_get_info``/``get_device_name``/``empty_cache``/RNG state
    functions on the device module for metrics and bookkeeping; ``torch.cpu`` lacks most of them. Memory figures are
    the process RSS (there is no separate device memory on the CPU).
    """

    def __init__(self) -> None:
        super().__init__("verl_difficulty.cpu.device")
        self._peak = 0

    def __getattr__(self, name: str) -> Any:  # delegate everything else to torch.cpu
        return getattr(torch.cpu, name)

    # --- availability / devices -------------------------------------------------------------------------------------
    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def current_device(self) -> int:
        return 0

    def set_device(self, device: Any) -> None:
        return None

    def get_device_name(self, device: Any = None) -> str:
        return "cpu"

    def synchronize(self, device: Any = None) -> None:
        return None

    # --- memory -----------------------------------------------------------------------------------------------------
    def empty_cache(self) -> None:
        return None

    def ipc_collect(self) -> None:
        return None

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None:
        return None

    def memory_allocated(self, device: Any = None) -> int:
        rss = _rss_bytes()
        self._peak = max(self._peak, rss)
        return rss

    memory_reserved = memory_allocated

    def max_memory_allocated(self, device: Any = None) -> int:
        return max(self._peak, _rss_bytes())

    max_memory_reserved = max_memory_allocated

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self._peak = 0

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        try:
            import psutil

            vm = psutil.virtual_memory()
            return int(vm.available), int(vm.total)
        except Exception:  # pragma: no cover
            return 0, 0

    # --- RNG --------------------------------------------------------------------------------------------------------
    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed


CPU_DEVICE_MODULE = _CpuDeviceModule()


def _platform_base():
    from verl.plugin.platform.platform_base import PlatformBase

    return PlatformBase


def make_platform_class():
    """Build the ``PlatformBase`` subclass (done lazily so that importing this module does not import verl)."""
    PlatformBase = _platform_base()

    class PlatformCPU(PlatformBase):
        """verl platform for CPU-only machines: device ``cpu``, gloo collectives, a ``GPU`` Ray resource name.

        The Ray resource stays ``GPU`` because verl's resource pools count GPUs/NPUs only; a CPU run starts Ray with a
        logical ``num_gpus`` (``+ray_kwargs.ray_init.num_gpus=N``) so that the pool check passes.
        """

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return CPU_DEVICE_MODULE

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # Never auto-detected: selected only with VERL_PLATFORM=cpu.
            return False

        def current_device(self) -> str:
            # verl moves tensors with ``x.to(get_device_id())``; an int would mean ``cuda:<int>`` to torch.
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "GPU"

        def ray_noset_envvars(self) -> list[str]:
            return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    return PlatformCPU


def register_platform() -> None:
    """Register the CPU platform in verl's ``PlatformRegistry`` under ``cpu`` (idempotent)."""
    from verl.plugin.platform.platform_manager import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is not None and getattr(
        PlatformRegistry.get(PLATFORM_NAME), "_verl_difficulty", False
    ):
        return
    cls = make_platform_class()
    cls._verl_difficulty = True
    PlatformRegistry.register(platform=PLATFORM_NAME)(cls)
