"""``verl-difficulty report``: one self-contained HTML page of plots and tables over scores and selections.

* ``inputs.py``   loading: a scored parquet, a scoring output folder, a selection folder (several at once)
* ``context.py``  what a section sees (rows of the inputs holding its columns, provenance params, selection params)
* ``sections.py`` the sections, one function each, registered in ``SECTIONS`` with the columns they need
* ``plots.py``    matplotlib helpers (Agg backend, bucket colours)
* ``html.py``     page assembly (inline CSS, PNGs as data URIs, no JavaScript)
* ``build.py``    :func:`build_report` (``extra_sections=`` adds a caller's sections without editing this package)
"""

from verl_difficulty.report.build import EmptyReportError, ReportResult, build_report
from verl_difficulty.report.context import ReportContext
from verl_difficulty.report.inputs import ReportInput, ReportInputError, load_input, load_inputs
from verl_difficulty.report.sections import SECTIONS, Figure, Section, SectionOutput, section

__all__ = ["EmptyReportError", "Figure", "ReportContext", "ReportInput", "ReportInputError", "ReportResult",
           "SECTIONS", "Section", "SectionOutput", "build_report", "load_input", "load_inputs", "section"]
