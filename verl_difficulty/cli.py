"""The ``verl-difficulty`` command line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_RECIPE_DIR = REPO_ROOT / "recipes" / "cpu_smoke"


def _cmd_doctor(args) -> int:
    from verl_difficulty.doctor import run_doctor

    return run_doctor(ray_worker=not args.no_ray)


def _cmd_schema(args) -> int:
    from verl_difficulty import schema

    rows = schema.fields()
    width = max(len(f.name) for f in rows)
    for f in rows:
        print(f"{f.name:<{width}}  {f.type:<22}  {f.meaning}")
    return 0


def _cmd_tiny_model(args) -> int:
    from verl_difficulty.tiny import build_tiny_model_dir

    print(build_tiny_model_dir(args.out, seed=args.seed))
    return 0


def _cmd_synth(args) -> int:
    from verl_difficulty.data.synthetic import write_dataset

    paths = write_dataset(args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def smoke_command(workdir: str, steps: int = 2, extra: list[str] | None = None) -> list[str]:
    """The stock ``python -m verl.trainer.main_ppo`` command line of the CPU smoke run."""
    work = Path(workdir).resolve()
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(SMOKE_RECIPE_DIR),
        "--config-name",
        "grpo_tiny_vl",
        f"actor_rollout_ref.model.path={work / 'tiny_qwen25vl'}",
        f"data.train_files={work / 'data' / 'train.parquet'}",
        f"data.val_files={work / 'data' / 'val.parquet'}",
        f"trainer.default_local_dir={work / 'checkpoints'}",
        f"trainer.total_training_steps={steps}",
        *(extra or []),
    ]


def prepare_smoke(workdir: str, n_train: int = 64, n_val: int = 8, seed: int = 0) -> None:
    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.tiny import build_tiny_model_dir

    work = Path(workdir)
    build_tiny_model_dir(str(work / "tiny_qwen25vl"), seed=seed)
    if not (work / "data" / "train.parquet").exists():
        write_dataset(str(work / "data"), n_train=n_train, n_val=n_val, seed=seed)


def _cmd_smoke(args) -> int:
    if not (SMOKE_RECIPE_DIR / "grpo_tiny_vl.yaml").exists():
        print(f"recipe not found at {SMOKE_RECIPE_DIR}: run from a source checkout (pip install -e .)", file=sys.stderr)
        return 2
    prepare_smoke(args.workdir)
    cmd = smoke_command(args.workdir, steps=args.steps, extra=args.overrides)
    env = dict(os.environ, VERL_PLATFORM="cpu")
    print("+ VERL_PLATFORM=cpu " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verl-difficulty", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check that verl loads the plugin (fresh process and Ray worker)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray worker check")
    p.set_defaults(fn=_cmd_doctor)

    p = sub.add_parser("schema", help="print every difficulty field the plugin reads or writes, with its meaning")
    p.set_defaults(fn=_cmd_schema)

    p = sub.add_parser("tiny-model", help="build a tiny random Qwen2.5-VL (model, tokenizer, processor) in a directory")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_tiny_model)

    p = sub.add_parser("synth", help="write the synthetic multimodal dataset (known difficulty) as verl parquet")
    p.add_argument("out")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_synth)

    p = sub.add_parser(
        "smoke",
        help="CPU smoke training: tiny Qwen2.5-VL + synthetic image data through stock verl main_ppo with the plugin",
    )
    p.add_argument("--workdir", default="outputs/smoke")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="extra hydra overrides, e.g. algorithm.adv_estimator=durian")
    p.set_defaults(fn=_cmd_smoke)

    args = parser.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
