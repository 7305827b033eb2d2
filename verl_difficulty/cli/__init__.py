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
    from verl_difficulty.models.tiny import build_tiny_model_dir

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


def _cmd_smoke(args) -> int:
    if not (SMOKE_RECIPE_DIR / "grpo_tiny_vl.yaml").exists():
        print(f"recipe not found at {SMOKE_RECIPE_DIR}: run from a source checkout (pip install -e .)", file=sys.stderr)
        return 2
    prepare_smoke(args.workdir)
    cmd = smoke_command(args.workdir, steps=args.steps, extra=args.overrides)
    env = dict(os.environ, VERL_PLATFORM="cpu")
    print("+ VERL_PLATFORM=cpu " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env)


_SCORE_EPILOG = """\
examples:
  # local: all three scorers, Ray started in this process with 2 CPU workers
  verl-difficulty score data/train.parquet --model /models/Qwen2.5-VL-7B-Instruct -o scores/ \\
      --scorers passk,pism,cde --num-workers 2
  # one GPU per worker with vLLM on an existing Ray cluster (or inside `ray job submit`)
  verl-difficulty score /shared/data/ --model /shared/qwen25vl7b -o /shared/scores --backend vllm \\
      --ray-address auto --scorers pism
  # rerun the same command after a crash or Ctrl-C: finished shards are kept, the rest is redone

output (in --output): scored.parquet (input rows + score columns, mirrored in extra_info, with provenance),
bad_rows.jsonl (skipped rows and why), summary.json, manifest.json, shards/ (one parquet per shard).
Column meanings: `verl-difficulty schema`.
"""


def _json_arg(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _ratios_arg(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {e}") from e


def _add_score_parser(sub) -> None:
    from verl_difficulty.scoring.cde import CdeParams
    from verl_difficulty.scoring.passk import PassKParams
    from verl_difficulty.scoring.pism import PismParams

    pk, pi, cd = PassKParams(), PismParams(), CdeParams()
    p = sub.add_parser(
        "score",
        help="offline difficulty scores (pass@k, PISM, CDE) of a verl parquet with the base model, on Ray",
        description="Score every row of a verl-schema parquet (a file, several, or a directory of *.parquet) with "
        "generation-based difficulty scorers: passk (P2 accuracy over k rollouts), pism (P1 failure mask ratio "
        "lambda* and bucket), cde (P4 accuracy with vs without the image). Work is split into fixed shards, each "
        "committed atomically; rerunning the same command resumes a killed job with identical results.",
        epilog=_SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to score")
    g.add_argument("inputs", nargs="+", metavar="INPUT", help="verl parquet file(s) or director(ies) of *.parquet")
    g.add_argument("-o", "--output", required=True, help="output directory (created; holds scored.parquet)")
    g.add_argument("--scorers", default="passk", help="comma-separated, run in this order: passk,pism,cde "
                   "(default: passk)")
    g.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    g.add_argument("--overwrite", action="store_true",
                   help="discard an existing output of a job with other settings (default: refuse; same settings "
                   "resume)")
    g = p.add_argument_group("model and generation backend")
    g.add_argument("--model", required=True, help="local checkpoint directory of the base model")
    g.add_argument("--backend", default="transformers", choices=["transformers", "vllm"],
                   help="transformers (CPU/GPU, batched generate) or vllm (GPU, pip install 'verl-difficulty[gpu]')")
    g.add_argument("--device", default="auto", help="transformers: auto|cpu|cuda (default auto)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU)|float32|bfloat16|float16")
    g.add_argument("--backend-kwargs", type=_json_arg, default=None, metavar="JSON",
                   help='extra backend arguments, e.g. \'{"gpu_memory_utilization": 0.8, "max_model_len": 8192}\'')
    g.add_argument("--system-prompt", default="keep", choices=["keep", "drop"],
                   help="keep the rows' system message or drop it (P1's scoring used none)")
    g = p.add_argument_group("verifier")
    g.add_argument("--reward", default="r1v_acc", choices=["r1v_acc", "math_acc_format", "perception"],
                   help="which of the plugin's rewards decides correctness (default r1v_acc)")
    g.add_argument("--reward-kwargs", type=_json_arg, default=None, metavar="JSON",
                   help='reward settings, e.g. \'{"timeout_s": 5, "require_boxed": true}\'')
    g.add_argument("--verifier", type=_json_arg, default=None, metavar="JSON",
                   help='advanced: a verifier spec replacing --reward, e.g. \'{"name": "my_pkg.grading:MyVerifier"}\' '
                   "(a class with verify(responses, rows) -> list[bool] and describe() -> dict)")
    g = p.add_argument_group("determinism, sharding, batching")
    g.add_argument("--seed", type=int, default=0, help="job seed; every sample and mask derives from (seed, row id, "
                   "scorer, ratio/arm, try)")
    g.add_argument("--shard-size", type=int, default=128, help="rows per committed shard (default 128)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="requests per generate call (default: transformers 16, vllm whole shard)")
    g = p.add_argument_group("Ray")
    g.add_argument("--num-workers", type=int, default=None,
                   help="model replicas (default: one per GPU, else 1); 0 = in this process without Ray")
    g.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs per worker (= torch threads, also with --num-workers 0; default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (default 1 if the cluster "
                   "has GPUs and --device is not cpu)")
    g.add_argument("--ray-address", default=None, help="existing cluster (auto, HOST:PORT); default: $RAY_ADDRESS "
                   "or a local ray.init()")
    g.add_argument("--max-attempts", type=int, default=3, help="tries per shard when a worker dies (default 3)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("passk: P2 accuracy over k rollouts")
    g.add_argument("--passk-k", type=int, help=f"rollouts per row (default {pk.k})")
    g.add_argument("--passk-temperature", type=float, help=f"(default {pk.temperature})")
    g.add_argument("--passk-top-p", type=float, help=f"(default {pk.top_p})")
    g.add_argument("--passk-max-tokens", type=int, help=f"max new tokens (default {pk.max_tokens})")
    g = p.add_argument_group("pism: P1 progressive image semantic masking")
    g.add_argument("--pism-mode", choices=["rect", "pixel"], help="rect = one black rectangle of sqrt(ratio)-scaled "
                   "sides (reference code, default); pixel = that fraction of random pixels (paper text)")
    g.add_argument("--pism-ratios", type=_ratios_arg, metavar="R0,R1,...",
                   help="mask ratios, ascending from 0 (default 0,0.1,...,0.9)")
    g.add_argument("--pism-k", type=int, help=f"masked versions per ratio (default {pi.k})")
    g.add_argument("--pism-tau", type=float, help=f"fail if P_c(ratio) < tau (default {pi.tau})")
    g.add_argument("--pism-temperature", type=float, help=f"(default {pi.temperature})")
    g.add_argument("--pism-top-p", type=float, help=f"(default {pi.top_p})")
    g.add_argument("--pism-max-tokens", type=int, help=f"max new tokens (default {pi.max_tokens})")
    g.add_argument("--pism-scan-all", action="store_true", default=None,
                   help="also try ratios above lambda* (non-monotone analysis; costs more)")
    g.add_argument("--pism-no-early-exit", action="store_true", default=None,
                   help="run all K tries at every tried ratio (exact P_c in the pass vector; costs more)")
    g.add_argument("--pism-at-medium-max", choices=["easy", "medium"],
                   help="bucket of lambda* == --pism-medium-max: easy (paper text, default) or medium (appendix)")
    g.add_argument("--pism-hard-max", type=float, help=f"hard if lambda* <= this (default {pi.hard_max})")
    g.add_argument("--pism-medium-max", type=float, help=f"medium if lambda* < this (default {pi.medium_max})")
    g.add_argument("--pism-tries-per-round", type=int,
                   help="tries per row per generation round; >1 speculates (bigger batches, same values)")
    g = p.add_argument_group("cde: P4 causal discrepancy (with vs without the image)")
    g.add_argument("--cde-m", type=int, help=f"rollouts per arm (default {cd.m})")
    g.add_argument("--cde-temperature", type=float, help=f"(default {cd.temperature})")
    g.add_argument("--cde-top-p", type=float, help=f"(default {cd.top_p})")
    g.add_argument("--cde-max-tokens", type=int, help=f"max new tokens (default {cd.max_tokens})")
    p.set_defaults(fn=_cmd_score)


_SCORER_FLAGS = {
    "passk": {"passk_k": "k", "passk_temperature": "temperature", "passk_top_p": "top_p",
              "passk_max_tokens": "max_tokens"},
    "pism": {"pism_mode": "mode", "pism_ratios": "ratios", "pism_k": "k", "pism_tau": "tau",
             "pism_temperature": "temperature", "pism_top_p": "top_p", "pism_max_tokens": "max_tokens",
             "pism_scan_all": "scan_all", "pism_at_medium_max": "at_medium_max", "pism_hard_max": "hard_max",
             "pism_medium_max": "medium_max", "pism_tries_per_round": "tries_per_round"},
    "cde": {"cde_m": "m", "cde_temperature": "temperature", "cde_top_p": "top_p", "cde_max_tokens": "max_tokens"},
}


def _cmd_score(args) -> int:
    from verl_difficulty.scoring import SCORERS
    from verl_difficulty.scoring.engine import ScoreJob, run_scoring

    names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCORERS]
    if not names or unknown:
        print(f"--scorers: unknown {unknown}; choose from {sorted(SCORERS)}", file=sys.stderr)
        return 2
    scorers = {}
    for name in names:
        params = {key: getattr(args, flag) for flag, key in _SCORER_FLAGS[name].items()
                  if getattr(args, flag) is not None}
        if name == "pism" and args.pism_no_early_exit:
            params["early_exit"] = False
        scorers[name] = params
    backend_kwargs = dict(args.backend_kwargs or {})
    if args.backend == "transformers":
        backend_kwargs.setdefault("device", args.device)
    backend_kwargs.setdefault("dtype", args.dtype)
    job = ScoreJob(
        inputs=list(args.inputs), output_dir=args.output, model_path=args.model, scorers=scorers,
        backend=args.backend, backend_kwargs=backend_kwargs,
        verifier=dict(args.verifier) if args.verifier else {"name": "reward", "reward": args.reward,
                                                            **(args.reward_kwargs or {})},
        seed=args.seed, shard_size=args.shard_size, batch_size=args.batch_size, system_prompt=args.system_prompt,
        limit=args.limit, num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, ray_address=args.ray_address, max_attempts=args.max_attempts,
        progress=not args.no_progress, overwrite=args.overwrite,
    )
    try:
        summary = run_scoring(job)
    except (FileExistsError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"verl-difficulty score: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"verl-difficulty score: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary["output"])
    return 0


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

    _add_score_parser(sub)

    args = parser.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
