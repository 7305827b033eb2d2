"""``build_report``: inputs -> ``REPORT_DIR/index.html`` (self-contained) + ``REPORT_DIR/plots/*.png``."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from verl_difficulty.report import html as H
from verl_difficulty.report.context import ReportContext
from verl_difficulty.report.inputs import SCORING, SELECTION, ReportInput, load_inputs
from verl_difficulty.report.sections import DECISION_COLUMNS, SECTIONS, Section, SectionOutput, known_columns

INDEX = "index.html"
PLOTS_DIR = "plots"


class EmptyReportError(ValueError):
    """No section has data: the message lists the columns the report looked for."""


@dataclass
class ReportResult:
    index: str
    sections: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


ExtraSection = Union[Section, Callable[[ReportContext], Optional[SectionOutput]]]


def as_section(item: ExtraSection, i: int) -> Section:
    """A caller's extra section: a :class:`Section`, or a plain ``fn(ctx) -> SectionOutput | None`` (always tried;
    None means nothing to show)."""
    if isinstance(item, Section):
        return item
    if callable(item):
        return Section(name=getattr(item, "__name__", f"extra_{i}"), draw=item, needs=(), source="any")
    raise TypeError(f"extra_sections[{i}]: expected a Section or a callable(ctx), got {type(item).__name__}")


def _slug(name: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "section"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def header_html(ctx: ReportContext) -> str:
    rows = []
    for inp in ctx.inputs:
        bad = ""
        if inp.kind == SCORING:
            reasons = inp.summary.get("bad_reasons") or {}
            bad = f"{inp.bad_rows:,}" if isinstance(inp.bad_rows, int) else "?"
            if reasons:
                bad += " (" + ", ".join(f"{k}: {v}" for k, v in reasons.items()) + ")"
        rows_in = inp.summary.get("rows_in") if inp.kind == SCORING else None
        rows.append([inp.label, inp.kind, inp.path, inp.num_rows, rows_in if rows_in is not None else "",
                     bad, ", ".join(inp.input_files())])
    return H.table(["input", "kind", "path", "rows", "rows in (before bad rows)", "bad rows", "dataset files"], rows)


def build_report(inputs: Sequence[Union[str, os.PathLike, ReportInput]], out_dir: Union[str, os.PathLike],
                 extra_sections: Sequence[ExtraSection] = (), title: str = "verl-difficulty report",
                 log: Callable[[str], None] = lambda s: None) -> ReportResult:
    """Write ``out_dir/index.html`` and ``out_dir/plots/<section>.png`` for every section whose columns exist.

    ``inputs``: paths (scored parquet, scoring folder, selection folder) or loaded :class:`ReportInput`.
    ``extra_sections``: drawn after the built-in ones (see :func:`as_section`); the demo adds its own this way.
    Raises :class:`~verl_difficulty.report.inputs.ReportInputError` for an unreadable input and
    :class:`EmptyReportError` when no section has data.
    """
    ctx = ReportContext(load_inputs(inputs))
    sections = list(SECTIONS) + [as_section(s, i) for i, s in enumerate(extra_sections)]
    out_dir = os.path.abspath(os.fspath(out_dir))
    result = ReportResult(index=os.path.join(out_dir, INDEX))
    drawn: list[tuple[str, str, str]] = []
    figures: list[tuple[str, bytes]] = []
    taken: set = set()
    for s in sections:
        out = s.draw(ctx) if s.applies(ctx) else None
        if out is None:
            result.skipped.append(s.name)
            continue
        figs = ""
        for f in out.figures:
            figures.append((_slug(f.name, taken) + ".png", f.png))
            figs += H.figure(f.png, alt=f"{out.title}: {f.name}", caption=f.caption)
        drawn.append((_slug("sec-" + s.name, taken), out.title, figs + out.html))
        result.sections.append(s.name)
    if not drawn:
        raise EmptyReportError(
            "nothing to report: none of the inputs (" + ", ".join(i.path for i in ctx.inputs) + ") has a column the "
            "report knows. Looked for score columns " + ", ".join(known_columns()) + " and, in a selection folder's "
            "decisions.parquet, " + ", ".join(DECISION_COLUMNS))
    plots = os.path.join(out_dir, PLOTS_DIR)
    os.makedirs(plots, exist_ok=True)
    for old in glob.glob(os.path.join(plots, "*.png")):
        os.unlink(old)
    for fname, data in figures:
        with open(os.path.join(plots, fname), "wb") as fh:
            fh.write(data)
        result.plots.append(os.path.join(plots, fname))
    n_sel = sum(1 for i in ctx.inputs if i.kind == SELECTION)
    meta = H.paragraph(f"{len(ctx.scored)} scored input(s), {n_sel} selection(s); sections drawn: "
                       f"{', '.join(result.sections)}" + (f"; no data for: {', '.join(result.skipped)}"
                                                          if result.skipped else ""), "meta")
    with open(result.index, "w", encoding="utf-8") as fh:
        fh.write(H.page(title, meta + header_html(ctx), drawn))
    log(f"wrote {result.index} ({len(result.sections)} sections, {len(result.plots)} plots)")
    return result
