"""The ``verl-difficulty`` command line: one module per subcommand (``demo``, ``doctor``, ``schema``, ``tiny-model``,
``synth``, ``smoke``, ``score``, ``select``, ``report``, ``recipes``), each with ``add_parser(subparsers)``; :func:`main`
dispatches."""

from __future__ import annotations

import argparse
import sys

from verl_difficulty.cli import demo, doctor, recipes, report, schema, score, select, smoke, synth, tiny_model
from verl_difficulty.cli.smoke import prepare_smoke, smoke_command, smoke_recipe_dir

__all__ = ["main", "prepare_smoke", "smoke_command", "smoke_recipe_dir"]

SUBCOMMANDS = (doctor, schema, tiny_model, synth, smoke, score, report, select, recipes, demo)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["score"]:
        try:
            score.preload_scorer_modules(argv[1:])
        except Exception as e:  # noqa: BLE001 - a module that does not import is a usage error
            print(f"verl-difficulty score: --scorer-module: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="verl-difficulty", description="The verl-difficulty command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
