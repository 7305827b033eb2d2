"""``verl-difficulty demo [-o DIR]``: the whole flow (data -> model -> score -> select -> train -> report) on built-in
data on a CPU (:mod:`verl_difficulty.demo`). The option flags come from
:class:`verl_difficulty.demo.settings.DemoSettings` (help, defaults, bounds); a bad value exits 2 naming the flag."""

from __future__ import annotations

import argparse
import re
import typing

from verl_difficulty.cli.score import _list_arg as _list_of
from verl_difficulty.cli.select import param_flag as _flag
from verl_difficulty.config import ConfigError, describe

EPILOG = """\
stages (each reuses its result when its settings and inputs are unchanged; a killed run resumes):
  data    the synthetic dataset (4 tasks x 4 known difficulty levels) or --data
  model   the tiny Qwen2.5-VL warmed up to partial competence, or --model
  score   every scorer on every row (Ray workers; resumes by shard)
  select  P1, P2, P4 selections and their true-difficulty mix vs random subsets
  train   GRPO steps through stock verl main_ppo: Durian + difficulty sampler, then plain GRPO
  report  DIR/report/index.html (+ plots/, demo_summary.json)

examples:
  verl-difficulty demo                              # default sizes, ~9 min on 2 CPU cores, into outputs/demo
  verl-difficulty demo --quick -o /tmp/demo         # the reduced run of the CI test (~4 min)
  verl-difficulty demo --force train                # redo the training (and the report that reads it)
  verl-difficulty demo --only report                # rebuild the report of a finished run
  verl-difficulty demo --data my.parquet --model /models/Qwen2.5-VL-3B-Instruct --scorers passk,visual_entropy

logs: DIR/logs/<stage>.log (train: train_<run>.log) hold verl's, Ray's and the libraries' own output.
"""


def _base(tp):
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


LIST_ITEMS = {"warmup_exposure": float, "scorers": str}
"""Item type of the list settings (comma-separated on the command line)."""


def add_parser(sub) -> None:
    from verl_difficulty.demo.settings import QUICK, STAGES, DemoSettings

    p = sub.add_parser(
        "demo",
        help="the whole flow on built-in data on a CPU: score -> select -> train (stock verl) -> report",
        description="Generate a synthetic multimodal dataset with known difficulty, warm a tiny Qwen2.5-VL up to "
        "partial competence, score every row with every scorer, select per paper, run a few GRPO steps through stock "
        "verl with Durian + the difficulty sampler and with plain GRPO, and write a report that compares the scores "
        "with the true difficulty. The console shows stages, progress bars and a summary per stage; a second run "
        "reuses finished stages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to run")
    g.add_argument("--only", choices=STAGES, metavar="STAGE",
                   help=f"run only this stage ({', '.join(STAGES)}); the stages before it must have finished")
    g.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo this stage even if it finished (repeatable, or 'all'); the stages that read it are "
                   "redone too")
    g.add_argument("--quick", action="store_true",
                   help="the reduced sizes of the CI test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                   + " (explicit flags win)")
    g = p.add_argument_group("demo settings")
    for st in describe(DemoSettings):
        tp = _base(st.type)
        default = ",".join(str(v) for v in st.default) if isinstance(st.default, (list, tuple)) else st.default
        help_text = f"{st.help} (default {default})".replace("%", "%%")
        names = ["-o", "--output"] if st.name == "output" else [_flag(st.name)]
        kw: dict = {"dest": f"setting:{st.name}", "default": None, "help": help_text}
        if st.name in LIST_ITEMS:
            kw.update(type=_list_of(LIST_ITEMS[st.name]), metavar="A,B,...")
        elif tp in (int, float):
            kw.update(type=tp, metavar="N" if tp is int else "X")
        else:
            metavar = {"output": "DIR", "model": "DIR", "data": "PARQUET"}.get(st.name, "S")
            kw.update(type=str, metavar=None if st.choices else metavar, choices=st.choices)
        g.add_argument(*names, **kw)
    p.set_defaults(fn=_run)


def _flag_names(message: str) -> str:
    """A settings error with ``demo.<field>`` replaced by its flag."""
    return re.sub(r"\bdemo\.([a-z_]+)", lambda m: "-o/--output" if m.group(1) == "output" else _flag(m.group(1)),
                  message)


def settings_from_args(args):
    """The :class:`DemoSettings` of parsed arguments (``--quick`` preset first, explicit flags on top)."""
    from verl_difficulty.demo.settings import QUICK, make_settings

    values = dict(QUICK) if args.quick else {}
    values.update({k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("setting:") and v is not None})
    return make_settings(values)


def _run(args) -> int:
    import sys

    from verl_difficulty.demo import run_demo

    try:
        settings = settings_from_args(args)
    except ConfigError as e:
        print(f"verl-difficulty demo: {_flag_names(str(e))}", file=sys.stderr)
        return 2
    return run_demo(settings, only=args.only, force=args.force)
