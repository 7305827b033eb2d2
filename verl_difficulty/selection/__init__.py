"""Offline data selection from scored datasets (``verl-difficulty select {p1,p2,p4}``).

One module per method, each registering its selection function
(:func:`~verl_difficulty.selection.common.register_selection`):

* :mod:`.p1` (arXiv 2511.06722): PISM or CMAB buckets; GRPO on medium+hard, the same-size random, fullset and
  unsolved baselines, and the SFT(one bucket) -> GRPO(another bucket) paradigm;
* :mod:`.p2` (arXiv 2505.13261): the U-shape accuracy band and the two-stage split (stage 2 flagged for hints);
* :mod:`.p4` (arXiv 2506.04755): CDE -> ACE -> DRM (paper) and the official selection script (reference_code).

:mod:`.common` holds the registry and the shared readers, :mod:`.io` the inputs and the output folder (its docstring
lists every file). :func:`run_selection` is the whole command from Python; a selection that keeps no row raises
:class:`EmptySelectionError` (a ``ValueError``; the command exits 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from verl_difficulty.config import ConfigError, parse
from verl_difficulty.selection.common import EmptySelectionError, get_selection, selection_classes

__all__ = ["run_selection", "selection_classes", "get_selection", "parse_params", "EmptySelectionError"]


def parse_params(method: str, values: dict) -> Any:
    """The method's ``Params`` from a mapping (``ConfigError`` naming ``select.<method>.<param>``)."""
    cls = get_selection(method)
    params = parse(cls.Params, values, f"select.{method}")
    if params.mode not in cls.modes:
        raise ConfigError(f"select.{method}.mode: {method} implements {list(cls.modes)}, got {params.mode!r}")
    return params


def run_selection(method: str, inputs: list, outdir: str, params: Optional[dict] = None,
                  overwrite: bool = False) -> dict:
    """Select from the scored ``inputs`` into ``outdir``; returns the ``selection.json`` record.

    Errors: ``ConfigError``/``ValueError``/``FileNotFoundError``/``FileExistsError`` for bad parameters, inputs
    (``ValueError`` when they hold no row) or OUTDIR, before anything is written; :class:`EmptySelectionError` when
    the selection keeps no row (the record of the empty selection is written to OUTDIR unless OUTDIR holds a finished
    selection or foreign files; see :mod:`verl_difficulty.selection.io`)."""
    from verl_difficulty import __version__
    from verl_difficulty.selection import io

    p = parse_params(method, params or {})
    plain = dataclasses.asdict(p)
    table, info = io.read_inputs(list(inputs))
    if table.num_rows == 0:
        raise ValueError(f"{', '.join(i['path'] for i in info)}: the input holds no rows; nothing to select from")
    ids = io.row_ids(table)
    record = {"method": method, "mode": p.mode, "params": plain, "inputs": info,
              "fingerprint": io.fingerprint(method, p.mode, plain, info), "version": __version__}
    outcome = get_selection(method).select(table, ids, p)
    if not any(d.kept for d in outcome.decisions):
        err = dict(method=method, mode=p.mode, counts=io.counts(outcome), loosen=dict(outcome.loosen), params=plain,
                   outdir=outdir)
        busy = io.occupied(outdir, info)
        if busy:
            unwritten = {**record, "status": io.STATUS_EMPTY, "counts": err["counts"]}
            raise EmptySelectionError(**err, kept_because=busy, record=unwritten)
        io.prepare_outdir(outdir, record, False, info)  # free, or another empty selection's record (removed)
        cause = EmptySelectionError(**err).cause()
        full = io.write_empty(outdir, ids, outcome, {**record, "created": io.now()}, cause)
        raise EmptySelectionError(**err, written=True, record=full)
    created = io.prepare_outdir(outdir, record, overwrite, info)
    record["created"] = created or io.now()
    return io.write_selection(outdir, table, ids, outcome, record)
