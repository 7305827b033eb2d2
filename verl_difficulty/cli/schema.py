"""``verl-difficulty schema``: print every difficulty field the plugin reads or writes (:mod:`verl_difficulty.schema`)."""

from __future__ import annotations


def _run(args) -> int:
    from verl_difficulty import schema

    rows = schema.fields()
    width = max(len(f.name) for f in rows)
    for f in rows:
        print(f"{f.name:<{width}}  {f.type:<22}  {f.meaning}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("schema", help="print every difficulty field the plugin reads or writes, with its meaning")
    p.set_defaults(fn=_run)
