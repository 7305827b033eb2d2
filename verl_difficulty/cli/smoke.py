"""``verl-difficulty smoke``: the CPU smoke training run (tiny Qwen2.5-VL + synthetic image data through stock verl
``main_ppo`` with the plugin)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SMOKE_RECIPE = "cpu_smoke"


def smoke_recipe_dir() -> Path:
    """The folder of the smoke recipe: ``recipes/cpu_smoke`` of a checkout, or the same files shipped in the wheel
    (package ``verl_difficulty.recipes``, see setup.py)."""
    from importlib.resources import files

    return Path(str(files("verl_difficulty.recipes") / SMOKE_RECIPE))


def smoke_command(workdir: str, steps: int = 2, extra: list[str] | None = None) -> list[str]:
    """The stock ``python -m verl.trainer.main_ppo`` command line of the CPU smoke run."""
    work = Path(workdir).resolve()
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(smoke_recipe_dir()),
        "--config-name",
        "grpo_tiny_vl",
        f"actor_rollout_ref.model.path={work / 'tiny_qwen25vl'}",
        f"data.train_files={work / 'data' / 'train.parquet'}",
        f"data.val_files={work / 'data' / 'val.parquet'}",
        f"trainer.default_local_dir={work / 'checkpoints'}",
        f"trainer.total_training_steps={steps}",
        *(extra or []),
    ]


def prepare_smoke(workdir: str, n_train: int = 64, n_val: int = 8, seed: int = 0, warmup_steps: int = 300) -> None:
    """Build the tiny model and the synthetic data in ``workdir`` and warm the model up on the training rows."""
    import pyarrow.parquet as pq

    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.models.tiny import build_tiny_model_dir
    from verl_difficulty.models.warmup import warm_up

    work = Path(workdir)
    model_dir = build_tiny_model_dir(str(work / "tiny_qwen25vl"), seed=seed)
    if not (work / "data" / "train.parquet").exists():
        write_dataset(str(work / "data"), n_train=n_train, n_val=n_val, seed=seed)
    rows = pq.read_table(work / "data" / "train.parquet").to_pylist()
    warm_up(model_dir, rows, steps=warmup_steps, seed=seed)


def _run(args) -> int:
    recipe = smoke_recipe_dir() / "grpo_tiny_vl.yaml"
    if not recipe.is_file():
        print(f"verl-difficulty smoke: the recipe {recipe} is missing from the installed package; reinstall "
              "verl-difficulty", file=sys.stderr)
        return 2
    prepare_smoke(args.workdir)
    cmd = smoke_command(args.workdir, steps=args.steps, extra=args.overrides)
    env = dict(os.environ, VERL_PLATFORM="cpu")
    print("+ VERL_PLATFORM=cpu " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "smoke",
        help="CPU smoke training: tiny Qwen2.5-VL + synthetic image data through stock verl main_ppo with the plugin",
    )
    p.add_argument("--workdir", default="outputs/smoke")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="extra hydra overrides, e.g. algorithm.adv_estimator=durian")
    p.set_defaults(fn=_run)
