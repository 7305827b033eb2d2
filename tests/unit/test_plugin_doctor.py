"""The plugin is registered through verl's entry point, in fresh processes and Ray workers; doctor fails loudly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import verl_difficulty

PKG = Path(verl_difficulty.__file__).resolve().parent


def _doctor(env=None, extra_path=None, ray=False, cwd=None):
    env = dict(os.environ, **(env or {}))
    if extra_path:
        env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    args = [sys.executable, "-m", "verl_difficulty.cli", "doctor"] + ([] if ray else ["--no-ray"])
    # cwd matters: `python -m` puts the working directory first on sys.path
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900, cwd=cwd)


def test_fresh_import_of_verl_registers_everything():
    code = (
        "import sys, verl\n"
        "assert 'verl_difficulty.plugin' in sys.modules, 'entry point not loaded'\n"
        "from verl.trainer.ppo import core_algos\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "from verl.plugin.platform.platform_manager import PlatformRegistry\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
        "from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER\n"
        "print(sorted(k for k in core_algos.ADV_ESTIMATOR_REGISTRY if k in ('durian','difficulty_weighted')))\n"
        "print(get_trainer_cls('difficulty').__name__)\n"
        "print(PlatformRegistry.get('cpu').__name__)\n"
        "print('transformers' in RolloutReplicaRegistry._registry)\n"
        "print(sorted(k for k in REWARD_MANAGER if k in ('math_acc_format','r1v_acc','perception')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-5:]
    assert lines == [
        "['difficulty_weighted', 'durian']",
        "DifficultyTrainer",
        "PlatformCPU",
        "True",
        "['math_acc_format', 'perception', 'r1v_acc']",
    ]


def test_plugin_import_is_lazy():
    """`import verl` must not drag verl's trainer/engines into every process (the plugin registers lazily)."""
    code = (
        "import sys, verl\n"
        "heavy = [m for m in ('verl.trainer.ppo.v1.trainer_base', 'verl.workers.engine.fsdp.transformer_impl')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_cpu_platform_is_never_auto_detected():
    code = (
        "import os; os.environ.pop('VERL_PLATFORM', None)\n"
        "import verl\n"
        "from verl.plugin.platform.platform_manager import _detect_platform_name\n"
        "print(_detect_platform_name())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] != "cpu"


def test_cpu_platform_selected_explicitly():
    code = (
        "import verl\n"
        "from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device\n"
        "d = get_torch_device()\n"
        "print(get_device_name(), get_nccl_backend(), d.memory_allocated() > 0, d.is_available())\n"
    )
    env = dict(os.environ, VERL_PLATFORM="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "cpu gloo True True"


def test_doctor_passes_in_fresh_process_and_ray_worker():
    res = _doctor(ray=True)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "== Ray worker process ==" in res.stdout
    assert "MISSING" not in res.stdout
    assert "ok       trainer mode 'difficulty'" in res.stdout


def test_doctor_fails_when_plugins_are_disabled():
    res = _doctor(env={"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert res.returncode == 1
    assert "did not load the plugin entry point" in res.stdout
    assert "FAILED" in res.stdout


def test_doctor_fails_loudly_when_the_entry_point_is_broken(tmp_path):
    """A copy of the package whose entry-point module raises: verl swallows it, the doctor must not."""
    shadow = tmp_path / "shadow"
    shutil.copytree(PKG, shadow / "verl_difficulty", ignore=shutil.ignore_patterns("__pycache__"))
    plugin = shadow / "verl_difficulty" / "plugin.py"
    plugin.write_text("raise ImportError('simulated broken dependency: no module named totally_missing')\n")
    res = _doctor(extra_path=str(shadow), cwd=str(tmp_path))
    assert res.returncode == 1, res.stdout
    assert "the plugin entry point raises on import" in res.stdout
    assert "totally_missing" in res.stdout
