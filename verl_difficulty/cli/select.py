"""``verl-difficulty select {p1,p2,p4} SCORED... -o OUTDIR``: offline data selection (:mod:`verl_difficulty.selection`).

One sub-subcommand per registered selection; its ``--<param>`` flags (``--mode``, ``--seed`` and the method's
options) are generated from the method's ``Params`` dataclass (:func:`verl_difficulty.config.describe`): help,
default, source and choices come from the dataclass, values are checked by :func:`verl_difficulty.config.parse` and an
error names the flag. A bool parameter that defaults to true gets ``--no-<param>``; a list takes comma-separated
values.

Exit status: 0 = selected (the summary on stdout); 2 = a usage, parameter, input or OUTDIR error, nothing written;
1 = the selection kept no row (an empty train set, :class:`verl_difficulty.selection.EmptySelectionError`): one line on
stderr with the rows read, the count per reason and the flags to loosen; no train.parquet (nor other row table) is
written, only decisions.parquet and a selection.json with ``status: empty`` for inspection (nothing at all when OUTDIR
holds a finished selection or foreign files), and the next selection into OUTDIR replaces that record. Any other
failure exits 1 too.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing

from verl_difficulty.cli.score import _base_type, _help, _list_arg, _one_line
from verl_difficulty.config import ConfigError, Setting, describe

EPILOG = """\
examples:
  verl-difficulty select p1 scores/scored.parquet -o sel/p1 --bucket-source pism --lambda-boundary appendix
  verl-difficulty select p2 scores/scored.parquet -o sel/p2 --low 0.1 --high 0.87 --stage2-size 600
  verl-difficulty select p4 scores/scored.parquet -o sel/p4 --mode reference_code

output (in -o): train.parquet (kept rows, verl RLHF schema), decisions.parquet (one row per input row: index, kept,
reason, bucket, stage, subset), selection.json (method, mode, params, inputs, counts, outputs), plus the method's
files (P1 subsets/*.parquet, sft.parquet, grpo.parquet; P2 stage1.parquet, stage2.parquet).

exit status: 0 selected; 2 usage, parameter, input or OUTDIR error (nothing written); 1 no row kept (empty train
set: stderr names the counts per reason and the flags to loosen; only decisions.parquet and selection.json with
status "empty" are written, for inspection) or another failure.
"""


def param_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_setting(group, st: Setting) -> None:
    """The flag of one parameter; its value lands in ``args`` under ``param:<name>`` (None = not given)."""
    tp, dest, flag = _base_type(st.type), f"param:{st.name}", param_flag(st.name)
    if tp is bool:  # the flag that changes the default is shown, its opposite accepted
        for name, value in ((flag, True), (param_flag("no_" + st.name), False)):
            group.add_argument(name, dest=dest, action="store_const", const=value, default=None,
                               help=_help(st, f"turn {st.name} off: " if st.default else "")
                               if value != bool(st.default) else argparse.SUPPRESS)
        return
    listed = typing.get_origin(tp) in (list, tuple)
    item = (typing.get_args(tp) or (str,))[0] if listed else tp
    metavar = f"{item.__name__.upper()},..." if listed else None if st.choices else \
        {int: "N", float: "X"}.get(tp, "S")
    group.add_argument(flag, dest=dest, default=None, type=_list_arg(item) if listed else tp,
                       choices=None if listed else st.choices, metavar=metavar, help=_help(st))


def add_parser(sub) -> None:
    from verl_difficulty.selection import selection_classes

    classes = selection_classes()
    p = sub.add_parser("select", help=f"offline data selection from scored parquet files ({', '.join(classes)})",
                       description="Select training data from scored parquet files (verl-difficulty score) with a "
                       "paper's method; writes train.parquet, decisions.parquet and selection.json.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = p.add_subparsers(dest="method", required=True, metavar="{" + ",".join(classes) + "}")
    for name, sel in classes.items():
        m = methods.add_parser(name, help=sel.title, description=sys.modules[sel.module].__doc__ or sel.title,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        m.add_argument("inputs", nargs="+", metavar="SCORED", help="scored parquet files or directories of them")
        m.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="the selection folder")
        m.add_argument("--overwrite", action="store_true", help="replace a different selection already in OUTDIR")
        m.add_argument("--debug", action="store_true", help="show the traceback of an error")
        g = m.add_argument_group(f"{name} options")
        for st in describe(sel.Params):
            if st.cli:
                _add_setting(g, st)
    p.set_defaults(fn=run)


def _name_flags(message: str) -> str:
    """A config error with ``select.<method>.<param>`` keys replaced by their flags."""
    return re.sub(r"\bselect\.[a-z0-9_]+\.([a-z_0-9]+)", lambda mt: param_flag(mt.group(1)), message)


def loosen_flag(name: str, value) -> str:
    """The flag that loosens parameter ``name`` (now ``value``): ``--no-<param>`` for a bool that is on."""
    from verl_difficulty.selection.common import show_value

    if isinstance(value, bool):
        return param_flag(("no_" if value else "") + name)
    return f"{param_flag(name)} (now {show_value(value)})"


def run(args) -> int:
    from verl_difficulty.selection import EmptySelectionError, run_selection
    from verl_difficulty.selection.io import summary_text

    params = {k[len("param:"):]: v for k, v in vars(args).items() if k.startswith("param:") and v is not None}
    try:
        record = run_selection(args.method, args.inputs, args.output, params, overwrite=args.overwrite)
    except Exception as e:  # noqa: BLE001 - every error ends as one line (--debug: with its traceback)
        if args.debug:
            import traceback

            traceback.print_exc()
        if isinstance(e, EmptySelectionError):  # a ValueError, but the inputs and options were valid: exit 1
            text, code = e.describe(loosen_flag), 1
        else:
            text = _name_flags(_one_line(e))
            code = 2 if isinstance(e, (ConfigError, ValueError, FileExistsError, FileNotFoundError)) else 1
        print(f"verl-difficulty select {args.method}: {text}", file=sys.stderr)
        return code
    print(summary_text(record))
    return 0
