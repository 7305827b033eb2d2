"""``verl-difficulty report INPUT... -o REPORT_DIR``: plots and tables of scores and selections in one HTML page
(:mod:`verl_difficulty.report`), plus the demo's sections (:func:`verl_difficulty.demo.sections.demo_sections`: they
draw only for a demo folder's inputs, except the agreement with a ``true_difficulty`` column, which any scored input with
that column gets). Exit 2 naming the input when one cannot be read or none has a known column."""

from __future__ import annotations

import sys


def _run(args) -> int:
    from verl_difficulty.demo.sections import demo_sections
    from verl_difficulty.report import EmptyReportError, ReportInputError, build_report

    try:
        result = build_report(args.inputs, args.output, title=args.title, extra_sections=demo_sections())
    except (ReportInputError, EmptyReportError) as e:
        print(f"verl-difficulty report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.index}: {len(result.sections)} sections ({', '.join(result.sections)}), "
          f"{len(result.plots)} plots")
    if result.skipped:
        print(f"  no data for: {', '.join(result.skipped)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="HTML report (plots + tables) of scored parquets, scoring and selection folders")
    p.add_argument("inputs", nargs="+", metavar="SCORED_OR_SELECTION",
                   help="scored parquet files, scoring output folders (verl-difficulty score -o) or selection folders "
                        "(verl-difficulty select -o)")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR",
                   help="where index.html and plots/*.png are written")
    p.add_argument("--title", default="verl-difficulty report", help="the page title")
    p.set_defaults(fn=_run)
