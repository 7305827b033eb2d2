"""What every selection shares: the registry, the common parameters, the per-row decision and the column readers.

A selection is a function registered with :func:`register_selection` in its own module of this package (the
registry imports every module of the package on first use, like the scorer registry), with:

* ``name`` (the ``verl-difficulty select <name>`` subcommand) and ``title``;
* ``params``: a dataclass deriving from :class:`CommonParams` whose fields are declared with
  :func:`verl_difficulty.config.setting` (the command line generates ``--<param>`` flags from it);
* ``modes``: the modes it implements (``paper``, ``reference_code``);
* the function ``select(table, ids, params) -> Outcome`` (``ids``: ``extra_info.index`` per row): one
  :class:`Decision` per input row (input order) and the extra output tables (P1 subsets, P2 stages ...), plus notes
  for the summary.

Input checks shared by all: :func:`values` reads a difficulty field (flat column first, else ``extra_info``) and a
missing one is an error naming the scorer and the command that writes it (:func:`require`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from typing import Any, Callable, Optional

from verl_difficulty import schema
from verl_difficulty.config import ConfigError, setting

MODES = ("paper", "reference_code")
"""Where a paper's text and its released code disagree, a selection implements both as named modes."""

SCORER_OF = {
    schema.PASS_RATE: "passk", schema.PISM_LAMBDA: "pism", schema.PISM_BUCKET: "pism",
    schema.CMAB_BUCKET: "cmab", schema.CMAB_RATIO: "cmab", schema.ACE_SCORE: "ace",
    schema.CDE_ACC_IMG: "cde", schema.CDE_ACC_TXT: "cde", schema.CDE_D: "cde", schema.CDE_ROLLOUTS: "cde",
    schema.CDE_IMG_CORRECT: "cde", schema.CDE_IMG_CORRECT_FORMATTED: "cde", schema.CDE_TXT_CORRECT_FORMATTED: "cde",
    schema.CDE_TXT_CORRECT: "cde",
}
"""Which scorer of ``verl-difficulty score`` writes each field a selection reads (for the error messages)."""

_SELECTIONS: dict[str, type] = {}
_loaded = False


@dataclasses.dataclass
class CommonParams:
    """Parameters of every selection."""

    mode: str = setting("paper", choices=MODES, help="paper = the paper's text; reference_code = the official code "
                        "where it differs (only where a method has released selection code)")
    seed: int = setting(0, ge=0, help="seed of every random draw of the selection (same seed, same output)")

    def check(self, where: str) -> None:  # overridden by methods with cross-field rules
        return None


@dataclasses.dataclass
class Decision:
    """The fate of one input row (one row of ``decisions.parquet``)."""

    kept: bool
    reason: str
    bucket: Optional[str] = None
    stage: Optional[int] = None
    subsets: tuple = ()


@dataclasses.dataclass
class Output:
    """An output table: the input rows at ``positions`` (in that order) plus ``columns`` (difficulty fields, name ->
    one value per INPUT row, mirrored in ``extra_info``) and ``plain`` (name -> one value per output row, top-level
    only, e.g. the SFT ``messages``)."""

    path: str
    positions: list
    columns: dict = dataclasses.field(default_factory=dict)
    plain: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Outcome:
    """What a selection returns: a decision per input row, the extra output tables and summary notes.

    ``columns``: difficulty fields to set on the written rows (name -> one value per input row), mirrored in
    ``extra_info``; ``extra``: output name -> :class:`Output`; ``loosen``: a dropping ``reason`` -> the parameters
    whose change would keep more of those rows (named by :class:`EmptySelectionError` when no row is kept; a reason
    left out is one no parameter undoes, e.g. ``no_score``).
    """

    decisions: list
    columns: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    loosen: dict = dataclasses.field(default_factory=dict)


def show_value(value: Any) -> str:
    """A parameter value as the command line writes it (a list comma-separated, None as ``unset``)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "''"
    return str(value)


class EmptySelectionError(ValueError):
    """A selection that keeps no input row: its train set would be empty (nothing to train on).

    Raised by :func:`verl_difficulty.selection.run_selection` after the selection ran; ``verl-difficulty select``
    exits 1 with :meth:`describe` (parameters named by their flags). Attributes: ``method``, ``mode``, ``counts``
    (as ``selection.json`` records them: ``input_rows``, ``by_reason`` ...), ``loosen`` (reason -> parameter names,
    :attr:`Outcome.loosen`), ``params`` (the values used), ``outdir``, ``written`` (True when ``decisions.parquet``
    and a ``selection.json`` with ``status: empty`` were written there for inspection; False when OUTDIR held another
    selection or foreign files, left as they were: ``kept_because`` says which), ``record`` (the record, written or
    not).
    """

    def __init__(self, method: str, mode: str, counts: dict, loosen: dict, params: dict, outdir: str,
                 written: bool = False, kept_because: str = "", record: Optional[dict] = None):
        self.method, self.mode, self.counts, self.loosen, self.params = method, mode, counts, loosen, params
        self.outdir, self.written, self.kept_because, self.record = outdir, written, kept_because, record or {}
        super().__init__(f"{method} ({mode}): {self.describe()}")

    def __reduce__(self):  # picklable (e.g. raised in a worker process)
        return (type(self), (self.method, self.mode, self.counts, self.loosen, self.params, self.outdir, self.written,
                             self.kept_because, self.record))

    def python_name(self, name: str, value: Any) -> str:
        return f"select.{self.method}.{name} (now {show_value(value)})"

    def cause(self, name: Optional[Callable[[str, Any], str]] = None) -> str:
        """Why nothing was kept: the rows read, the count per reason and the parameters to loosen, each written by
        ``name(param, value)`` (default: ``select.<method>.<param> (now <value>)``)."""
        name = name or self.python_name
        by_reason = self.counts.get("by_reason") or {}
        n = self.counts.get("input_rows", 0)
        text = (f"empty train set: kept 0 of {n} rows read ("
                + ", ".join(f"{r}={c}" for r, c in by_reason.items()) + ")")
        order = sorted(by_reason, key=lambda r: (-by_reason[r], r))
        params = list(dict.fromkeys(p for r in order for p in self.loosen.get(r, ()) if p in self.params))
        if params:
            text += "; to keep rows loosen " + ", ".join(name(p, self.params[p]) for p in params)
        stuck = [r for r in order if not [p for p in self.loosen.get(r, ()) if p in self.params]]
        if stuck:
            text += (f"; no parameter keeps the {', '.join(stuck)} rows" + (" (rescore them)" if any(
                r in ("no_score", "no_bucket") for r in stuck) else ""))
        return text

    def describe(self, name: Optional[Callable[[str, Any], str]] = None) -> str:
        """:meth:`cause` and what was left in OUTDIR (one line)."""
        if self.written:
            where = (f"only decisions.parquet and selection.json (status empty) written to {self.outdir} for "
                     "inspection, no train.parquet")
        else:
            where = f"nothing written: {self.kept_because}"
        return f"{self.cause(name)}; {where}"


@dataclasses.dataclass(frozen=True)
class Selection:
    """A registered selection: its name, title, parameter dataclass, modes and ``select(table, ids, p)``."""

    name: str
    title: str
    Params: type
    modes: tuple
    select: Callable[[Any, list, Any], Outcome]
    module: str


def register_selection(name: str, params: type, title: str, modes: tuple = ("paper",)):
    """Function decorator: register ``select(table, ids, p) -> Outcome`` as the selection ``name`` (its options:
    ``params``, a :class:`CommonParams` subclass; ``modes``: the modes it implements)."""
    if not (isinstance(params, type) and issubclass(params, CommonParams)):
        raise TypeError(f"selection {name}: params must derive from CommonParams")
    if not set(modes) <= set(MODES):
        raise ValueError(f"selection {name}: modes must be among {MODES}, got {modes}")

    def register(fn: Callable) -> Callable:
        _SELECTIONS[name] = Selection(name, title, params, tuple(modes), fn, fn.__module__)
        return fn

    return register


def selection_classes() -> dict[str, Selection]:
    """name -> every registered selection (the built-in modules of this package are imported first)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from verl_difficulty import selection as package

        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in ("common", "io"):
                importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(_SELECTIONS)


def get_selection(name: str) -> Selection:
    classes = selection_classes()
    if name not in classes:
        raise ConfigError(f"unknown selection {name!r}; choose from {sorted(classes)}")
    return classes[name]


# --------------------------------------------------------------------------------------------------------------------
# Reading difficulty fields
# --------------------------------------------------------------------------------------------------------------------
def _extra_struct(table: Any):
    import pyarrow as pa

    if schema.EXTRA_INFO not in table.column_names:
        return None
    col = table.column(schema.EXTRA_INFO)
    return col if pa.types.is_struct(col.type) else None


def values(table: Any, name: str, flat: bool = True) -> Optional[list]:
    """The values of difficulty field ``name`` per row (flat column first unless ``flat=False``, else the
    ``extra_info`` child, else row by row from a map ``extra_info``); None when the field is nowhere."""
    if flat and name in table.column_names:
        return table.column(name).to_pylist()
    struct = _extra_struct(table)
    if struct is not None:
        if struct.type.get_field_index(name) < 0:
            return None
        import pyarrow.compute as pc

        return pc.struct_field(struct, name).to_pylist()
    if schema.EXTRA_INFO not in table.column_names:
        return None
    rows = [schema.row_score({schema.EXTRA_INFO: e if isinstance(e, dict) else {}}, name)
            for e in table.column(schema.EXTRA_INFO).to_pylist()]
    return rows if any(v is not None for v in rows) else None


def require(table: Any, name: str, method: str, why: str = "") -> list:
    """:func:`values` of ``name``, or a ``ConfigError`` naming the scorer and the command that writes it."""
    out = values(table, name)
    if out is None:
        scorer = SCORER_OF.get(name, "?")
        raise ConfigError(f"{method} needs {name}{why}: the input lacks it; run `verl-difficulty score INPUT "
                          f"--model MODEL -o OUT --scorers {scorer}` and select from OUT/scored.parquet")
    return out


def is_missing(v: Any) -> bool:
    """None or NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def provenance_params(table: Any, scorer: str) -> dict:
    """The ``params`` a scorer recorded in the rows' ``difficulty_provenance`` (first row that has them; {} if none)."""
    import json

    prov = values(table, schema.SCORE_PROVENANCE) or []
    for text in prov:
        if not text:
            continue
        try:
            entry = json.loads(text).get(scorer)
        except (ValueError, AttributeError):
            continue
        if isinstance(entry, dict):
            return dict(entry.get("params") or {})
    return {}


def ranked(positions: list, key, ids: list) -> list:
    """``positions`` sorted by ``key(position)`` (a tuple); ties broken by ``extra_info.index`` (``ids``)."""
    return sorted(positions, key=lambda i: (*key(i), ids[i]))
