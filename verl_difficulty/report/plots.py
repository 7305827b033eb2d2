"""Plotting helpers of the report (matplotlib, Agg backend: no display, no GUI toolkit).

Every figure is made with :func:`figure` and turned into PNG bytes with :func:`png`; the colours of the difficulty
buckets are the same in every plot (:data:`BUCKET_COLORS`).
"""

from __future__ import annotations

import io
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from verl_difficulty.schema import BUCKETS  # noqa: E402

BUCKET_COLORS = {"easy": "#4daf4a", "medium": "#377eb8", "hard": "#ff7f00", "unsolved": "#e41a1c"}
"""One colour per bucket of ``BUCKETS``, easiest first."""
SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
"""Colours of the inputs when several are overlaid."""
BAND_COLOR = "#ffd92f"
DPI = 110


def figure(ncols: int = 1, width: float = 7.5, height: float = 4.2):
    """A figure with ``ncols`` axes side by side, ``width`` inches wide for one (returns ``fig, [ax, ...]``)."""
    total = width if ncols == 1 else 5.4 * ncols
    fig, axes = plt.subplots(1, ncols, figsize=(total, height), squeeze=False)
    return fig, list(axes[0])


def png(fig) -> bytes:
    """The figure as PNG bytes (tight layout); the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def series_color(i: int) -> str:
    return SERIES_COLORS[i % len(SERIES_COLORS)]


def finite(values) -> np.ndarray:
    """The finite values of ``values`` as float64 (None and NaN dropped)."""
    a = np.asarray(values, dtype="float64")
    return a[np.isfinite(a)]


def overlaid_hist(ax, series: Sequence[tuple[str, np.ndarray]], bins, density: bool = False) -> None:
    """One histogram (filled) for one input, step outlines for several (legend names the inputs)."""
    for i, (label, values) in enumerate(series):
        n = len(values)
        if len(series) == 1:
            ax.hist(values, bins=bins, color=series_color(i), alpha=0.85, edgecolor="white", linewidth=0.5,
                    density=density, label=f"{label} (n={n:,})")
        else:
            ax.hist(values, bins=bins, histtype="step", linewidth=1.8, color=series_color(i), density=density,
                    label=f"{label} (n={n:,})")
    ax.set_ylabel("share of rows (density)" if density else "rows")


def discrete_bins(lo: float, hi: float, steps: int) -> np.ndarray:
    """Bin edges centred on the ``steps + 1`` grid values ``lo, lo + (hi-lo)/steps, ..., hi``."""
    half = (hi - lo) / steps / 2
    return np.linspace(lo - half, hi + half, steps + 2)


def mark_lines(ax, xs: Sequence[float], labels: Sequence[str], color: str = "black", style: str = "--") -> None:
    """Vertical lines at ``xs``, each named in the legend (so no text overlaps the bars)."""
    for x, label in zip(xs, labels):
        ax.axvline(x, color=color, linestyle=style, linewidth=1.3, label=label)


def shade_regions(ax, edges: Sequence[float], names: Sequence[str], lo: float, hi: float, alpha: float = 0.12) -> None:
    """Shade ``[lo, e0), [e0, e1), ..., [e_last, hi]`` in the colours of the bucket ``names`` (one legend entry per
    bucket name)."""
    bounds = [lo, *edges, hi]
    seen = set()
    for (a, b), name in zip(zip(bounds, bounds[1:]), names):
        ax.axvspan(a, b, color=BUCKET_COLORS.get(name, "#cccccc"), alpha=alpha, linewidth=0,
                   label=None if name in seen else f"{name} region")
        seen.add(name)


def legend(ax, loc: str = "best", **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=8, framealpha=0.9, **kw)


def legend_outside(ax) -> None:
    """The legend to the right of the axes (for plots whose data fill the whole frame)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9, borderaxespad=0)


def bucket_order(names) -> list[str]:
    """``names`` in the order of ``BUCKETS`` first, then any other name sorted."""
    names = [n for n in dict.fromkeys(names) if n is not None]
    return [b for b in BUCKETS if b in names] + sorted(str(n) for n in names if n not in BUCKETS)


def hbar_counts(ax, labels: Sequence[str], counts: Sequence[float], colors, title: str,
                xlabel: str = "rows", total: Optional[int] = None) -> None:
    """Horizontal bars, largest first from the top, with the count (and share of ``total``) at each bar's end."""
    y = np.arange(len(labels))[::-1]
    ax.barh(y, counts, color=colors, edgecolor="white")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    top = max(counts) if len(counts) else 1
    for yi, c in zip(y, counts):
        text = f"{int(c):,}" + (f" ({c / total:.0%})" if total else "")
        ax.text(c + top * 0.01, yi, text, va="center", fontsize=8)
    ax.set_xlim(0, top * 1.3 if top else 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
