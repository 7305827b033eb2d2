"""``verl-difficulty doctor``: prove the plugin is registered where verl will look for it.

verl imports ``verl.plugins`` entry points inside ``import verl`` and swallows their errors
(``verl/__init__.py:55-76``), so a broken install silently trains without the plugin. The doctor imports verl in a
FRESH Python process and in a Ray worker process (where verl's workers run) and checks every registration; it exits
non-zero naming what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

ENTRY_POINT = "verl_difficulty"
PLUGIN_MODULE = "verl_difficulty.plugin"


def _check(problems: list[str], ok: list[str], cond: bool, what: str, hint: str = "") -> None:
    (ok if cond else problems).append(what if cond else f"{what}{' (' + hint + ')' if hint else ''}")


def collect_status() -> dict:
    """Import verl in this process and report which plugin registrations exist. Never raises."""
    import importlib
    from importlib.metadata import entry_points

    problems: list[str] = []
    ok: list[str] = []
    eps = [ep for ep in entry_points(group="verl.plugins") if ep.name == ENTRY_POINT]
    _check(problems, ok, bool(eps), "entry point 'verl_difficulty' in group 'verl.plugins'",
           "reinstall the package: pip install verl-difficulty")
    try:
        import verl  # noqa: F401  (loads entry points)
    except Exception:
        problems.append("import verl failed:\n" + traceback.format_exc())
        return {"pid": os.getpid(), "ok": ok, "problems": problems}

    loaded = PLUGIN_MODULE in sys.modules
    if not loaded:
        policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto")
        try:
            importlib.import_module(PLUGIN_MODULE)
            problems.append(
                f"'import verl' did not load the plugin entry point (VERL_USE_EXTERNAL_PLUGINS={policy!r}); "
                "unset it or include 'verl_difficulty'"
            )
        except Exception:
            problems.append("the plugin entry point raises on import (verl swallowed this):\n" + traceback.format_exc())
            return {"pid": os.getpid(), "ok": ok, "problems": problems}
    else:
        ok.append("plugin loaded by 'import verl'")

    plugin = sys.modules[PLUGIN_MODULE]
    for name, (module, _) in plugin.REGISTRATIONS.items():
        try:
            importlib.import_module(module)
        except Exception:
            problems.append(f"registration {name}: importing {module} failed:\n{traceback.format_exc()}")
    for name, tb in plugin.ERRORS.items():
        problems.append(f"registration {name} raised:\n{tb}")

    from verl.plugin.platform.platform_manager import PlatformRegistry
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    _check(problems, ok, PlatformRegistry.get("cpu") is not None, "platform 'cpu'")
    for est in ("difficulty_weighted", "durian"):
        _check(problems, ok, est in core_algos.ADV_ESTIMATOR_REGISTRY, f"advantage estimator '{est}'")
    _check(problems, ok, "difficulty" in TRAINER_REGISTRY, "trainer mode 'difficulty'")
    lm = EngineRegistry._engines.get("language_model", {})
    _check(problems, ok, "cpu" in lm.get("fsdp2", {}), "FSDP2 engine for device 'cpu'")
    _check(problems, ok, "transformers" in RolloutReplicaRegistry._registry, "rollout replica 'transformers'")
    _check(problems, ok, ("transformers", "async") in rollout_base._ROLLOUT_REGISTRY, "rollout adapter 'transformers'")
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    names = set(REWARD_MANAGER)
    for mgr in ("math_acc_format", "r1v_acc", "perception"):
        _check(problems, ok, mgr in names, f"reward manager '{mgr}'")
    return {"pid": os.getpid(), "ok": ok, "problems": problems}


def _fresh_process_status() -> dict:
    code = "import json, verl_difficulty.doctor as d; print('@@' + json.dumps(d.collect_status()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    return {"ok": [], "problems": [f"fresh process failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"]}


def _ray_worker_status() -> dict:
    try:
        import ray
    except Exception:
        return {"ok": [], "problems": ["ray is not importable:\n" + traceback.format_exc()]}
    started = False
    try:
        if not ray.is_initialized():
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            started = True
        remote = ray.remote(num_cpus=0)(collect_status)
        return ray.get(remote.remote(), timeout=600)
    except Exception:
        return {"ok": [], "problems": ["Ray worker check failed:\n" + traceback.format_exc()]}
    finally:
        if started:
            ray.shutdown()


def run_doctor(ray_worker: bool = True, stream=None) -> int:
    """Print a report; return 0 when every registration exists in a fresh process (and a Ray worker)."""
    stream = stream or sys.stdout
    reports = {"fresh python process": _fresh_process_status()}
    if ray_worker:
        reports["Ray worker process"] = _ray_worker_status()
    failed = False
    for where, rep in reports.items():
        print(f"== {where} ==", file=stream)
        for item in rep.get("ok", []):
            print(f"  ok       {item}", file=stream)
        for item in rep.get("problems", []):
            failed = True
            print(f"  MISSING  {item}", file=stream)
    print("verl-difficulty doctor: " + ("FAILED" if failed else "all registrations present"), file=stream)
    return 1 if failed else 0
