"""verl plugin entry point (``[project.entry-points."verl.plugins"]``): registers everything into verl's registries.

``import verl`` imports this module in every process (driver, TaskRunner, Ray workers, reward workers;
``verl/__init__.py:55-76``) and SWALLOWS any exception it raises, so: this module must never fail, must stay cheap
(~20 processes import it), and ``verl-difficulty doctor`` checks from outside that the registrations happened.

To stay cheap, each registration runs when the verl module it extends is imported (a post-import hook), or at once
if that module is already loaded:

==========================================  =====================================================================
verl module                                 what is registered
==========================================  =====================================================================
``verl.plugin.platform.platform_manager``   CPU platform ``cpu`` (selected only by ``VERL_PLATFORM=cpu``)
``verl.trainer.ppo.core_algos``             advantage estimators ``difficulty_weighted``, ``durian``
``verl.experimental.reward_loop.reward_manager``  reward managers ``math_acc_format``, ``r1v_acc``, ``perception``
``verl.trainer.ppo.v1``                     trainer mode ``difficulty``
``verl.workers.engine.fsdp.transformer_impl``  FSDP/FSDP2 engines for device ``cpu``
``verl.workers.rollout.base`` / ``.replica``   rollout backend ``transformers``
``verl.utils.tensordict_utils``             same-length M-RoPE fix of ``index_select_tensor_dict``/``chunk_tensordict``
==========================================  =====================================================================
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
import threading
import traceback
from typing import Callable

logger = logging.getLogger("verl_difficulty.plugin")

#: errors raised by registrations in this process: {target: traceback}. ``doctor`` reports them.
ERRORS: dict[str, str] = {}
#: registrations that ran in this process.
DONE: set[str] = set()

_HOOKS: dict[str, list[tuple[str, Callable[[], None]]]] = {}
_LOCK = threading.RLock()


def _run(name: str, fn: Callable[[], None]) -> None:
    if name in DONE:
        return
    try:
        fn()
        DONE.add(name)
    except Exception:  # never break verl's import; doctor surfaces this
        ERRORS[name] = traceback.format_exc()
        logger.warning("verl-difficulty: registration %s failed:\n%s", name, ERRORS[name])


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, fullname: str):
        self.inner = inner
        self.fullname = fullname

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        for name, fn in _HOOKS.pop(self.fullname, []):
            _run(name, fn)

    def __getattr__(self, item):
        return getattr(self.inner, item)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _Loader):
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


_FINDER = _Finder()


def when_imported(module: str, name: str, fn: Callable[[], None]) -> None:
    """Run ``fn`` once ``module`` is imported (now, if it already is)."""
    with _LOCK:
        if module in sys.modules and getattr(sys.modules[module], "__spec__", None) is not None:
            _run(name, fn)
            return
        _HOOKS.setdefault(module, []).append((name, fn))
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


# ---------------------------------------------------------------------------------------------------- registrations
def _platform():
    from verl_difficulty.cpu.platform import register_platform

    register_platform()


def _estimators():
    importlib.import_module("verl_difficulty.estimators")


def _rewards():
    importlib.import_module("verl_difficulty.rewards.managers")


def _trainer():
    from verl_difficulty.seam.trainer import register_trainer_mode

    register_trainer_mode()


def _engines():
    from verl_difficulty.cpu.engine import register_cpu_engines

    register_cpu_engines()


def _rollout():
    from verl_difficulty.cpu.rollout import register_rollout

    register_rollout()


def _cpu_compat():
    from verl_difficulty.cpu.compat import patch_process_group_init

    patch_process_group_init()


def _cpu_torchrun_compat():
    from verl_difficulty.cpu.compat import patch_torchrun_process_group_init

    patch_torchrun_process_group_init()


def _mrope_same_length():
    from verl_difficulty.cpu.compat import patch_mrope_same_length

    patch_mrope_same_length()


REGISTRATIONS = {
    "platform": ("verl.plugin.platform.platform_manager", _platform),
    "estimators": ("verl.trainer.ppo.core_algos", _estimators),
    "rewards": ("verl.experimental.reward_loop.reward_manager", _rewards),
    "trainer": ("verl.trainer.ppo.v1", _trainer),
    "engines": ("verl.workers.engine.fsdp.transformer_impl", _engines),
    "rollout": ("verl.workers.rollout.replica", _rollout),
    # not CPU specific: see verl_difficulty/cpu/compat.py, item 2
    "mrope_same_length": ("verl.utils.tensordict_utils", _mrope_same_length),
}


#: only on the CPU platform (VERL_PLATFORM=cpu): see verl_difficulty/cpu/compat.py
CPU_ONLY = {
    "cpu_process_group": ("verl.workers.engine_workers", _cpu_compat),
    "cpu_torchrun_process_group": ("verl.utils.distributed", _cpu_torchrun_compat),
}


def install() -> None:
    from verl_difficulty.cpu.platform import cpu_platform_selected

    for name, (module, fn) in REGISTRATIONS.items():
        when_imported(module, name, fn)
    if cpu_platform_selected():
        for name, (module, fn) in CPU_ONLY.items():
            when_imported(module, name, fn)


install()
