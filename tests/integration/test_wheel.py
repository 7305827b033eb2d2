"""The built wheel works without the source checkout: configs and recipes ship as package data.

Builds the wheel of this checkout, installs it with ``pip install --no-deps --target SITE`` and runs Python with
``PYTHONPATH=SITE`` from an unrelated directory, so that the wheel's copy of ``verl_difficulty`` (not the checkout,
not the editable install) is what every process imports; the dependencies (verl, torch, ...) come from the test's
environment. Then:

1. the installed package, its config groups and its recipes are found (``importlib.resources``);
2. hydra composes the smoke recipe from the installed files with verl's trainer config (``pkg://`` search paths);
3. ``verl-difficulty smoke`` runs one training step of stock ``main_ppo`` from the installed recipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("wheel")
    dist, site, elsewhere = root / "dist", root / "site", root / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dist), str(REPO)], check=True, capture_output=True)
    wheels = list(dist.glob("verl_difficulty-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheels[0])], check=True,
                   capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(site))
    return {"site": site, "cwd": elsewhere, "env": env}


def _python(installed: dict, code: str, timeout: int = 120) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_wheel_is_what_python_imports(installed):
    out = _python(installed, """
        import importlib.resources as r
        import verl_difficulty, verl_difficulty.config, verl_difficulty.recipes
        print(verl_difficulty.__file__)
        print((r.files("verl_difficulty.config") / "difficulty.yaml").is_file())
        print((r.files("verl_difficulty.recipes") / "cpu_smoke" / "grpo_tiny_vl.yaml").is_file())
    """)
    path, config_ok, recipe_ok = out.split()
    assert Path(path).resolve().is_relative_to(installed["site"].resolve()), path
    assert config_ok == "True" and recipe_ok == "True"


def test_smoke_config_composes_from_the_installed_files(installed):
    out = _python(installed, """
        from hydra import compose, initialize_config_dir
        from verl_difficulty.cli.smoke import smoke_recipe_dir
        with initialize_config_dir(config_dir=str(smoke_recipe_dir()), version_base=None):
            cfg = compose("grpo_tiny_vl")
        print(smoke_recipe_dir())
        print(cfg.trainer.v1.trainer_mode, cfg.difficulty.sampler.enable, cfg.algorithm.adv_estimator,
              cfg.algorithm.difficulty.weighting.weight, cfg.difficulty.correct_threshold)
    """)
    recipe_dir, values = out.strip().splitlines()
    assert Path(recipe_dir).resolve().is_relative_to(installed["site"].resolve()), recipe_dir
    assert values.split() == ["difficulty", "True", "difficulty_weighted", "steep_exp", "0.5"]


def test_smoke_runs_from_the_wheel(installed, tmp_path):
    work = tmp_path / "smoke"
    proc = subprocess.run(
        [sys.executable, "-m", "verl_difficulty.cli", "smoke", "--workdir", str(work), "--steps", "1"],
        cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # the command it ran composed the recipe from the installed package, not from a checkout
    launch = next(line for line in out.splitlines() if "verl.trainer.main_ppo" in line)
    assert str(installed["site"]) in launch and str(REPO / "recipes") not in launch, launch
    assert "step:1" in out


def test_recipes_list_export_and_check_from_the_wheel(installed, tmp_path):
    """A pip-installed user gets every recipe folder: listed, exported (launchers executable), pin-checked."""
    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "verl_difficulty.cli", "recipes", *args], cwd=installed["cwd"],
                              env=installed["env"], capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = cli("list")
    assert rc == 0, out
    shipped = sorted(p.parent.name for p in (REPO / "recipes").glob("*/*.yaml"))
    for name in set(shipped):
        assert name in out, out
    assert str(installed["site"]) in out  # listed from the installed package, not the checkout
    dest = tmp_path / "p3"
    rc, out = cli("export", "p3_durian", str(dest))
    assert rc == 0, out
    repo_files = sorted(p.relative_to(REPO / "recipes" / "p3_durian") for p in (REPO / "recipes" / "p3_durian").rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    assert sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file()) == repo_files
    for f in repo_files:
        assert (dest / f).read_bytes() == (REPO / "recipes" / "p3_durian" / f).read_bytes(), f
    assert os.access(dest / "run_qwen2_5_vl_7b.sh", os.X_OK) and os.access(dest / "slurm.sbatch", os.X_OK)
    rc, out = cli("export", "p3_durian", str(dest))  # the same files again: nothing differs, nothing refused
    assert rc == 0, out
    (dest / "durian_grpo.yaml").write_text("edited by the user\n")
    rc, out = cli("export", "p3_durian", str(dest))
    assert rc == 2 and "--force" in out and (dest / "durian_grpo.yaml").read_text() == "edited by the user\n"
    rc, out = cli("check", "p3_durian")
    assert rc == 0 and "recipe p3_durian: verl 0.9.1" in out, out
