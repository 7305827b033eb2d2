"""``verl-difficulty score``: offline difficulty scoring of verl parquet files (:mod:`verl_difficulty.scoring`).

The job flags take their help, defaults and choices from :class:`~verl_difficulty.scoring.job.ScoreJob`; the flags of
each scorer, ``--<scorer>-<param>``, are generated from the scorer's parameter dataclass
(:func:`verl_difficulty.config.describe`) for every registered scorer: built-in, entry points, and the modules given
with ``--scorer-module`` (imported before the parser is built). Values are checked by
:func:`verl_difficulty.config.parse`; errors name the flag.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import types
import typing
from typing import Any, Union

from verl_difficulty.config import ConfigError, Setting, describe, parse

EPILOG = """\
examples:
  # local: all three scorers, Ray started in this process with 2 CPU workers
  verl-difficulty score data/train.parquet --model /models/Qwen2.5-VL-7B-Instruct -o scores/ \\
      --scorers passk,pism,cde --num-workers 2
  # one GPU per worker with vLLM on an existing Ray cluster (or inside `ray job submit`)
  verl-difficulty score /shared/data/ --model /shared/qwen25vl7b -o /shared/scores --backend vllm \\
      --ray-address auto --scorers pism
  # vLLM samples, a transformers copy of the same checkpoint on the same GPU runs the attention pass
  verl-difficulty score data/train.parquet --model /models/Qwen2.5-VL-7B-Instruct -o scores/ --backend vllm \\
      --scorers cmab,ace --backend-kwargs '{"gpu_memory_utilization": 0.5}' --forward-dtype bfloat16
  # a scorer of your own module (registered with @register_scorer), with its generated --<name>-<param> flags
  verl-difficulty score data/train.parquet --model M -o scores/ --scorer-module my_pkg.my_scorer --scorers mine
  # rerun the same command after a crash or Ctrl-C: finished shards are kept, the rest is redone

output (in --output): scored.parquet (input rows + score columns, mirrored in extra_info, with provenance),
bad_rows.jsonl (skipped rows and why), summary.json, manifest.json, shards/ (one parquet per shard).
Column meanings: `verl-difficulty schema`.
"""

JOB_FLAGS = {"inputs": "INPUT", "output_dir": "--output", "model_path": "--model", "progress": "--no-progress",
             "dtype": "--dtype"}
"""ScoreJob fields whose flag is not ``--<field-with-dashes>``."""


def preload_scorer_modules(argv: list[str]) -> None:
    """Import the ``--scorer-module`` modules of ``argv`` (their scorers then get flags)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--scorer-module", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    if known.scorer_module:
        from verl_difficulty.scoring.registry import load_scorer_module

        for module in known.scorer_module:
            load_scorer_module(module)


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _list_arg(item: type):
    def convert(text: str) -> list:
        try:
            return [item(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values: {e}") from e
    return convert


def _base_type(tp: Any) -> Any:
    """``X`` of ``Optional[X]``; else ``tp``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _help(st: Setting, prefix: str = "") -> str:
    default = st.default
    if isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
    source = f"; {st.source}" if st.source and st.source != "ours" else ""
    return f"{prefix}{st.help} (default {default}{source})".replace("%", "%%")


def _add_scorer_setting(group, scorer: str, st: Setting) -> None:
    """The flag ``--<scorer>-<param>`` of a parameter (a bool also gets ``--<scorer>-no-<param>``; a list takes
    comma-separated values); its value lands in ``args`` under ``scorer:<scorer>:<param>`` (None = not given)."""
    tp = _base_type(st.type)
    flag, dest, default = scorer_flag(scorer, st.name), f"scorer:{scorer}:{st.name}", None
    if tp is bool:
        on, off = flag, scorer_flag(scorer, "no_" + st.name)
        shown, hidden = (off, on) if st.default else (on, off)
        group.add_argument(shown, dest=dest, action="store_const", const=not st.default, default=default,
                           help=_help(st, f"turn {st.name} off ({on} is the default): " if st.default else ""))
        group.add_argument(hidden, dest=dest, action="store_const", const=bool(st.default), help=argparse.SUPPRESS)
        return
    kw: dict[str, Any] = {"dest": dest, "default": default, "help": _help(st)}
    if typing.get_origin(tp) in (list, tuple):
        item = (typing.get_args(tp) or (str,))[0]
        kw.update(type=_list_arg(item), metavar=f"{item.__name__.upper()},...")
    elif tp in (int, float, str):
        kw.update(type=tp, choices=st.choices, metavar=None if st.choices else {int: "N", float: "X", str: "S"}[tp])
    group.add_argument(flag, **kw)


def scorer_flag(scorer: str, param: str) -> str:
    """``--<scorer>-<param>``, underscores as dashes."""
    return f"--{scorer}-{param}".replace("_", "-")


def _job_flag(field: str) -> str:
    return JOB_FLAGS.get(field, "--" + field.replace("_", "-"))


def _name_flags(message: str, names: list[str]) -> str:
    """A config error with ``job.<field>`` and ``<scorer>.<param>`` keys replaced by their command line flags."""
    message = re.sub(r"\bjob\.([a-z_]+)", lambda m: _job_flag(m.group(1)), message)
    for name in names:
        message = re.sub(rf"\b{re.escape(name)}\.([a-z_0-9]+)", lambda m, n=name: scorer_flag(n, m.group(1)), message)
    return message


def add_parser(sub) -> None:
    from verl_difficulty.scoring.backends import BACKENDS
    from verl_difficulty.scoring.job import ScoreJob
    from verl_difficulty.scoring.registry import scorer_classes
    from verl_difficulty.scoring.scorer import FORWARD
    from verl_difficulty.scoring.verifier import REWARDS

    classes = scorer_classes()
    job = {st.name: st for st in describe(ScoreJob)}
    default_scorers = ",".join(n for n, c in classes.items() if c.default_selected)
    listing = "; ".join(f"{n} ({c.title})" if c.title else n for n, c in classes.items())
    p = sub.add_parser(
        "score",
        help=f"offline difficulty scores ({', '.join(classes)}) of a verl parquet with the base model, on Ray",
        description="Score every row of a verl-schema parquet (a file, several, or a directory of *.parquet) with "
        f"difficulty scorers: {listing}. Work is split into fixed shards, each committed atomically; rerunning the "
        "same command resumes a killed job with identical results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def flag(group, field: str, *names: str, **kw) -> None:
        st = job[field]
        names = names or (_job_flag(field),)
        if kw.get("action") in ("store_true", "store_false"):
            kw.setdefault("help", st.help)
        else:
            kw.setdefault("help", _help(st).replace(" (default None)", ""))
            kw.setdefault("default", st.default)
            kw.setdefault("choices", st.choices)
            kw.setdefault("metavar", None if kw["choices"] else names[-1].lstrip("-").upper().replace("-", "_"))
        group.add_argument(*names, dest=field, **kw)

    g = p.add_argument_group("what to score")
    g.add_argument("inputs", nargs="+", metavar="INPUT", help=job["inputs"].help)
    flag(g, "output_dir", "-o", "--output", required=True)
    g.add_argument("--scorers", default=default_scorers,
                   help=f"comma-separated, run in this order: {','.join(classes)} (default: {default_scorers})")
    g.add_argument("--scorer-module", action="append", default=[], metavar="MODULE",
                   help="import MODULE first: the scorers it registers (@register_scorer) can then be chosen, with "
                   "their --<scorer>-<param> flags (repeatable)")
    flag(g, "limit", type=int)
    flag(g, "overwrite", action="store_true")
    g = p.add_argument_group("model and generation backend")
    flag(g, "model_path", required=True)
    flag(g, "backend", metavar="{" + ",".join(BACKENDS) + "} or MODULE:CLASS")
    g.add_argument("--device", default="auto", help="transformers: auto|cpu|cuda (default auto; for another backend "
                   "see --forward-device)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU)|float32|bfloat16|float16")
    g.add_argument("--backend-kwargs", type=_json_arg, default=None, metavar="JSON",
                   help='extra backend arguments, e.g. \'{"gpu_memory_utilization": 0.8, "max_model_len": 8192}\'')
    flag(g, "system_prompt")
    forward_scorers = ", ".join(n for n, c in classes.items() if FORWARD in c.needs) or "none registered"
    g = p.add_argument_group("forward model (two-backend jobs)", textwrap.fill(
        "When the generation backend cannot run forward passes (vllm, or a MODULE:CLASS backend without forward / "
        f"vision_features) and a selected scorer needs them ({forward_scorers}), each worker also loads a "
        "transformers copy of the --model checkpoint, at its first forward pass (a job of generation scorers only "
        "never loads it): the backend samples the responses, the forward model teacher-forces them after the row's "
        "prompt as its own processor renders it (a row whose prompt token ids differ from those the backend "
        "sampled from is a bad row naming the difference); eager attention only when a scorer reads attention. On "
        "one GPU, vLLM takes gpu_memory_utilization of the WHOLE GPU at start and the forward model (its weights "
        "plus one batch of activations) must fit in the rest: the vllm backend then defaults to "
        "gpu_memory_utilization 0.5 instead of 0.85 (set it with --backend-kwargs; 0.5 leaves room for a 7B bf16 "
        "forward model on an 80 GB GPU), or put the forward model elsewhere (--forward-device cpu or cuda:N). "
        "These settings are part of the job's identity (resume) and of the scorers' provenance "
        "(generation_backend, forward_backend, forward_model).", width=110, initial_indent="  ",
        subsequent_indent="  "))
    flag(g, "forward_device")
    flag(g, "forward_dtype")
    flag(g, "forward_batch_size", type=int)
    g = p.add_argument_group("verifier")
    g.add_argument("--reward", default=REWARDS[0], choices=list(REWARDS),
                   help=f"which of the plugin's rewards decides correctness (default {REWARDS[0]})")
    g.add_argument("--reward-kwargs", type=_json_arg, default=None, metavar="JSON",
                   help='reward settings, e.g. \'{"timeout_s": 5, "require_boxed": true}\'')
    g.add_argument("--verifier", type=_json_arg, default=None, metavar="JSON",
                   help='advanced: a verifier spec replacing --reward, e.g. \'{"name": "my_pkg.grading:MyVerifier"}\' '
                   "(a class with verify(responses, rows) -> list[bool] and describe() -> dict)")
    g = p.add_argument_group("determinism, sharding, batching")
    flag(g, "seed", type=int)
    flag(g, "shard_size", type=int)
    flag(g, "batch_size", type=int)
    g = p.add_argument_group("Ray")
    flag(g, "num_workers", type=int)
    flag(g, "cpus_per_worker", type=float)
    flag(g, "gpus_per_worker", type=float)
    flag(g, "ray_address")
    flag(g, "progress", "--no-progress", action="store_false", help="no progress bar")
    g = p.add_argument_group("faults")
    flag(g, "max_attempts", type=int)
    flag(g, "retry_backoff_s", type=float)
    flag(g, "max_bad_fraction", type=float)
    g.add_argument("--debug", action="store_true", help="show the traceback of an error (and debug logs)")
    for name, cls in classes.items():
        g = p.add_argument_group(f"{name}: {cls.title}" if cls.title else name)
        for st in describe(cls.Params):
            if st.cli:
                _add_scorer_setting(g, name, st)
    p.set_defaults(fn=run)


def build_job(args) -> Any:
    """The :class:`~verl_difficulty.scoring.job.ScoreJob` of parsed arguments (``ConfigError`` naming the flag)."""
    from verl_difficulty.scoring.job import ScoreJob
    from verl_difficulty.scoring.registry import get_scorer, scorer_names

    names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    unknown = [n for n in names if n not in scorer_names()]
    if not names or unknown:
        raise ConfigError(f"--scorers: unknown {unknown}; choose from {scorer_names()}")
    scorers = {}
    for name in names:
        prefix = f"scorer:{name}:"
        scorers[name] = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}
        try:
            get_scorer(name)(**scorers[name])
        except ConfigError as e:
            raise ConfigError(_name_flags(str(e), [name])) from e
    backend_kwargs = dict(args.backend_kwargs or {})
    if args.backend == "transformers":
        backend_kwargs.setdefault("device", args.device)
    backend_kwargs.setdefault("dtype", args.dtype)
    verifier = dict(args.verifier) if args.verifier else {"name": "reward", "reward": args.reward,
                                                          **(args.reward_kwargs or {})}
    fields = {st.name for st in describe(ScoreJob)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(inputs=list(args.inputs), scorers=scorers, backend_kwargs=backend_kwargs, verifier=verifier)
    try:
        return parse(ScoreJob, values, "job")
    except ConfigError as e:
        raise ConfigError(_name_flags(str(e), [])) from e


def _one_line(e: BaseException, limit: int = 2000) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit]


def _os_error(e: OSError) -> str:
    """An OS error with its path and what to do."""
    import errno

    path = e.filename or "a file of the job"
    what = e.strerror or _one_line(e)
    if e.errno == errno.ENOSPC or e.errno == getattr(errno, "EDQUOT", -1):
        todo = "free some space (or use another --output)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "fix the permissions (or use another --output)"
    else:
        todo = "fix the cause"
    return (f"{path}: {what}; {todo}, then rerun the same command (finished shards are kept, the "
            "output stays consistent)")


def run(args) -> int:
    import logging

    from verl_difficulty.scoring.engine import run_scoring

    debug = bool(getattr(args, "debug", False))
    if debug:
        logging.basicConfig(level=logging.DEBUG)
    try:
        job = build_job(args)
        summary = run_scoring(job)
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error ends as one line (--debug: with its traceback)
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(e, (ConfigError, FileExistsError, ValueError, TypeError)):
            code, msg = 2, _one_line(e)  # the job as given cannot run (nothing was scored)
        elif isinstance(e, OSError):
            code, msg = 1, _os_error(e)
        elif isinstance(e, RuntimeError):
            code, msg = 1, _one_line(e)
        else:
            code, msg = 1, f"{type(e).__name__}: {_one_line(e)}"
        print(f"verl-difficulty score: {msg}", file=sys.stderr)
        return code
    print(summary["output"])
    return 0
