"""The report's sections: each one a function that returns a title, HTML (tables, notes) and PNG figures.

A section declares the columns it needs and where they live (``source``: ``scores`` = the scored tables, ``selection``
= a selection's ``decisions.parquet``); it is drawn only when some input has all of them. A new section is one
function registered with :func:`section` (or a :class:`Section` passed to ``build_report(..., extra_sections=...)``).

The method constants (defaults of the papers; the values recorded in the provenance or a selection's ``params`` win):
P2 band [0.1, 0.87]; PISM tau 0.1, buckets at lambda* 0.4 / 0.7; CMAB edges 0.1 / 0.4 / 1.6 / 1.9; CDE lambda_c 0.5;
ACE lambda_a 0.1 (compared as log(0.1) when ``ace_score`` is stored as a log).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from verl_difficulty.report import html as H
from verl_difficulty.report import plots as P
from verl_difficulty.report.context import ReportContext, pick_number
from verl_difficulty.schema import (ACE_SCORE, CDE_ACC_IMG, CDE_ACC_TXT, CDE_ROLLOUTS, CMAB_BUCKET, CMAB_RATIO,
                                    PASS_K, PASS_RATE, PISM_BUCKET, PISM_LAMBDA, PISM_PASS, SCORE_PROVENANCE,
                                    VISUAL_ENTROPY)

P2_BAND = (0.1, 0.87)
PISM_TAU, PISM_HARD_MAX, PISM_MEDIUM_MAX = 0.1, 0.4, 0.7
PISM_RATIOS = tuple(round(0.1 * i, 1) for i in range(10))
CMAB_EDGES = (0.1, 0.4, 1.6, 1.9)
CDE_LAMBDA_C = 0.5
ACE_LAMBDA_A = 0.1
DECISION_COLUMNS = ("kept", "reason")


@dataclass
class Figure:
    """One PNG of a section: ``name`` becomes ``plots/<name>.png``."""

    name: str
    png: bytes
    caption: str = ""


@dataclass
class SectionOutput:
    title: str
    html: str = ""
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class Section:
    """A report section: ``draw(ctx)`` returns its output (None: nothing to show); drawn only when an input of
    ``source`` has every column of ``needs`` (an empty ``needs``: always)."""

    name: str
    draw: Callable[[ReportContext], Optional[SectionOutput]]
    needs: tuple[str, ...] = ()
    source: str = "scores"

    def applies(self, ctx: ReportContext) -> bool:
        return not self.needs or any(i.has(self.needs) for i in ctx.sources(self.source))


SECTIONS: list[Section] = []
"""The built-in sections, in page order."""


def section(name: str, needs: Sequence[str] = (), source: str = "scores", register: bool = True):
    """Decorator: make ``fn(ctx) -> SectionOutput`` a :class:`Section`, appended to :data:`SECTIONS` if ``register``."""

    def wrap(fn):
        s = Section(name=name, draw=fn, needs=tuple(needs), source=source)
        if register:
            SECTIONS.append(s)
        return s

    return wrap


def known_columns() -> list[str]:
    """Every column some built-in section looks for (for the empty-report message)."""
    return list(dict.fromkeys(c for s in SECTIONS if s.source == "scores" for c in s.needs))


# ---------------------------------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------------------------------
def _series(ctx: ReportContext, column: str) -> list[tuple[str, np.ndarray]]:
    """``(label, finite values)`` per input holding ``column``; inputs where it is all null are left out."""
    return [(label, v) for label, df in ctx.frames([column]) for v in [P.finite(df[column])] if len(v)]


def _col_means(m: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (NaN where a column has no value), without numpy's empty-slice warning."""
    ok = ~np.isnan(m)
    n = ok.sum(axis=0)
    return np.where(n > 0, np.where(ok, m, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)


def _quantile_rows(series, extra: Callable[[np.ndarray], list] = lambda v: [], digits: int = 4) -> list[list]:
    rows = []
    for label, v in series:
        q = np.quantile(v, [0, 0.25, 0.5, 0.75, 1]) if len(v) else [math.nan] * 5
        rows.append([label, int(len(v)), float(np.mean(v)) if len(v) else math.nan, *map(float, q), *extra(v)])
    return rows


QUANTILE_HEADERS = ["input", "rows", "mean", "min", "Q1", "median", "Q3", "max"]


def _count_table(values, names: Sequence[str], total_label: str = "rows") -> str:
    values = list(values)
    total = len(values) or 1
    rows = [[n, values.count(n), f"{values.count(n) / total:.1%}"] for n in names]
    return H.table(["bucket", total_label, "share"], rows)


def _hist_figure(name: str, series, bins, xlabel: str, title: str, decorate: Callable = lambda ax: None,
                 log_x: bool = False, caption: str = "") -> Figure:
    fig, (ax,) = P.figure()
    decorate(ax)
    P.overlaid_hist(ax, series, bins)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    P.legend(ax)
    return Figure(name, P.png(fig), caption)


# ---------------------------------------------------------------------------------------------------------------------
# P2 pass@k
# ---------------------------------------------------------------------------------------------------------------------
def p2_band(ctx: ReportContext) -> tuple[tuple[float, float], str]:
    params = ctx.selection_params("p2")
    if params is None:
        return P2_BAND, "P2 default"
    band = params.get("band")
    if isinstance(band, (list, tuple)) and len(band) == 2:
        return (float(band[0]), float(band[1])), "the P2 selection's params"
    lo = pick_number(params, ("low", "tau_low", "min_pass_rate", "lo"), P2_BAND[0])
    hi = pick_number(params, ("high", "tau_high", "max_pass_rate", "hi"), P2_BAND[1])
    return (lo, hi), "the P2 selection's params"


@section("passk", needs=(PASS_RATE,))
def passk_section(ctx: ReportContext) -> Optional[SectionOutput]:
    series = _series(ctx, PASS_RATE)
    if not series:
        return None
    ks = [int(k) for _, df in ctx.frames([PASS_K]) for k in np.unique(P.finite(df[PASS_K]))]
    k = ks[0] if len(set(ks)) == 1 and 0 < ks[0] <= 64 else None
    bins = P.discrete_bins(0.0, 1.0, k) if k else np.linspace(0, 1, 21)
    (lo, hi), where = p2_band(ctx)

    def band(ax):
        ax.axvspan(lo, hi, color=P.BAND_COLOR, alpha=0.35, linewidth=0,
                   label=f"P2 band [{lo:g}, {hi:g}] ({where}): kept")

    title = "Offline pass rate of the base model" + (f" over k={k} rollouts" if k else "")
    fig = _hist_figure("passk", series, bins, "pass rate  (0 = never solved, hardest  ->  1 = always solved, easiest)",
                       title, decorate=band, caption="The U-shape: most rows are never or always solved; P2 keeps the "
                       "rows inside the shaded band.")

    def in_band(v):
        inside = int(np.sum((v >= lo - 1e-9) & (v <= hi + 1e-9)))
        return [f"{np.mean(v == 0):.1%}" if len(v) else "-", f"{np.mean(v == 1):.1%}" if len(v) else "-",
                f"{inside:,} ({inside / max(len(v), 1):.1%})"]

    rows = _quantile_rows(series, in_band)
    tab = H.table(QUANTILE_HEADERS + ["pass rate 0", "pass rate 1", f"in band [{lo:g}, {hi:g}]"], rows)
    return SectionOutput("P2: pass@k histogram (the U-shape)", tab, [fig])


# ---------------------------------------------------------------------------------------------------------------------
# P1 PISM
# ---------------------------------------------------------------------------------------------------------------------
def pism_settings(ctx: ReportContext) -> dict:
    p = ctx.scorer_params("pism")
    ratios = p.get("ratios")
    return {"ratios": [float(r) for r in ratios] if isinstance(ratios, (list, tuple)) and ratios else None,
            "tau": pick_number(p, ("tau",), PISM_TAU), "hard_max": pick_number(p, ("hard_max",), PISM_HARD_MAX),
            "medium_max": pick_number(p, ("medium_max",), PISM_MEDIUM_MAX)}


def pass_matrix(vectors, width: Optional[int] = None, tau: float = PISM_TAU) -> np.ndarray:
    """Rows x ratios P_c matrix from the pass vectors (NaN = untried). A ratio left untried after the row's first
    failing ratio (exact early exit stops at lambda*) counts as failed (0), so the column means are the share of rows
    still passing: the monotone reading lambda* is defined by."""
    vecs = [np.asarray(v if v is not None else [], dtype="float64") for v in vectors]
    width = width or max((len(v) for v in vecs), default=0)
    m = np.full((len(vecs), width), np.nan)
    for i, v in enumerate(vecs):
        m[i, :min(len(v), width)] = v[:width]
    failed = np.nan_to_num(m, nan=1.0) < tau - 1e-9
    after_fail = np.cumsum(failed, axis=1) - failed > 0
    m[np.isnan(m) & after_fail] = 0.0
    return m


def _ratios_for(settings: dict, width: int) -> list[float]:
    r = settings["ratios"]
    if r and len(r) == width:
        return r
    return list(PISM_RATIOS) if width == len(PISM_RATIOS) else [i / width for i in range(width)]


@section("pism_curves", needs=(PISM_PASS,))
def pism_curves_section(ctx: ReportContext) -> SectionOutput:
    st = pism_settings(ctx)
    frames = ctx.frames([PISM_PASS])
    width = len(st["ratios"]) if st["ratios"] else max((len(v) for _, df in frames for v in df[PISM_PASS]
                                                        if v is not None), default=0)
    ratios = _ratios_for(st, width)
    fig, (ax,) = P.figure(width=9.8, height=4.6)
    rows = []
    for i, (label, df) in enumerate(frames):
        m = pass_matrix(df[PISM_PASS], width, st["tau"])
        mean = _col_means(m)
        ax.plot(ratios, mean, color="black" if len(frames) == 1 else P.series_color(i), linewidth=2.6, marker="o",
                label=f"all rows: {label} (n={len(m):,})")
        rows.extend([label, f"{r:g}", float(v), int(np.sum(~np.isnan(m[:, j])))]
                    for j, (r, v) in enumerate(zip(ratios, mean)))
    bucket_frames = ctx.frames([PISM_PASS, PISM_BUCKET])
    if bucket_frames:
        import pandas as pd

        both = pd.concat([df for _, df in bucket_frames], ignore_index=True)
        for b in P.bucket_order(both[PISM_BUCKET]):
            sub = pass_matrix(both.loc[both[PISM_BUCKET] == b, PISM_PASS], width, st["tau"])
            ax.plot(ratios, _col_means(sub), color=P.BUCKET_COLORS.get(b, "grey"), linewidth=1.6,
                    linestyle="--", marker=".", label=f"bucket {b} (n={len(sub):,})")
    ax.axhline(st["tau"], color="grey", linestyle=":", linewidth=1.2, label=f"τ = {st['tau']:g} (a ratio fails below)")
    ax.set_xlabel("mask ratio λ  (share of the image masked; 0 = original image)")
    ax.set_ylabel("P_c: share of tries answered correctly")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("PISM: accuracy as more of the image is masked\n(an earlier drop = a harder row)",
                 fontsize=10)
    P.legend_outside(ax)
    note = H.paragraph("Mean P_c per mask ratio over the rows (ratios from the pism provenance). With exact early "
                       "exit a ratio is 1 (passed) or 0 (failed) and the ratios above lambda* are not tried: they "
                       "count as failed here, so each curve is the share of rows whose lambda* lies above the ratio.")
    tab = H.table(["input", "mask ratio", "mean P_c", "rows counted (tried, or failed below)"], rows)
    return SectionOutput("P1 PISM: pass rate vs mask ratio", note + tab,
                         [Figure("pism_curves", P.png(fig), "Solid: all rows; dashed: per PISM bucket.")])


def lambda_bucket(lam: Optional[float], hard_max: float, medium_max: float) -> str:
    if lam is None or not np.isfinite(lam):
        return "easy"
    if lam <= 1e-9:
        return "unsolved"
    if lam <= hard_max + 1e-9:
        return "hard"
    return "medium" if lam < medium_max - 1e-9 else "easy"


@section("pism_lambda", needs=(PISM_LAMBDA,))
def pism_lambda_section(ctx: ReportContext) -> SectionOutput:
    st = pism_settings(ctx)
    frames = ctx.frames([PISM_LAMBDA])
    grid = st["ratios"] or sorted(set(PISM_RATIOS) | {round(float(v), 6) for _, df in frames
                                                        for v in P.finite(df[PISM_LAMBDA])})
    labels = [f"{r:g}" for r in grid] + ["never\nfails"]
    x = np.arange(len(labels))
    fig, (ax,) = P.figure(width=9.8, height=4.4)
    names = [lambda_bucket(r, st["hard_max"], st["medium_max"]) for r in grid] + ["easy"]
    for j, name in enumerate(names):
        ax.axvspan(j - 0.5, j + 0.5, color=P.BUCKET_COLORS[name], alpha=0.13, linewidth=0,
                   label=None if name in names[:j] else f"{name} bucket")
    width = 0.8 / max(len(frames), 1)
    buckets_all = []
    for i, (label, df) in enumerate(frames):
        vals = np.asarray(df[PISM_LAMBDA], dtype="float64")
        counts = [int(np.sum(np.isclose(vals, r))) for r in grid] + [int(np.sum(~np.isfinite(vals)))]
        ax.bar(x - 0.4 + width * (i + 0.5), counts, width=width * 0.95, color=P.series_color(i),
               label=f"{label} (n={len(vals):,})")
        buckets_all += [lambda_bucket(v, st["hard_max"], st["medium_max"]) for v in vals]
    for thr, text in ((st["hard_max"], "hard: λ* ≤ {:g}"), (st["medium_max"], "easy: λ* ≥ {:g}")):
        below = [j for j, r in enumerate(grid) if r <= thr + 1e-9 and (text[0] == "h" or r < thr - 1e-9)]
        pos = (below[-1] + 0.5) if below else -0.5
        ax.axvline(pos, color="black", linestyle="--", linewidth=1.2, label=text.format(thr))
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("failure point λ*  (smallest mask ratio with P_c < τ; lower = harder, 0 = unsolved)")
    ax.set_ylabel("rows")
    ax.set_title("PISM: failure point λ* per row and the P1 buckets", fontsize=11)
    P.legend_outside(ax)
    tab = _count_table(buckets_all, P.bucket_order(["easy", "medium", "hard", "unsolved"]))
    return SectionOutput("P1 PISM: failure point λ*", tab, [Figure("pism_lambda", P.png(fig),
                         f"Buckets: unsolved if λ* = 0, hard if λ* ≤ {st['hard_max']:g}, medium below "
                         f"{st['medium_max']:g}, easy from {st['medium_max']:g} on or never failing.")])


# ---------------------------------------------------------------------------------------------------------------------
# P1 CMAB
# ---------------------------------------------------------------------------------------------------------------------
@section("cmab", needs=(CMAB_RATIO,))
def cmab_section(ctx: ReportContext) -> Optional[SectionOutput]:
    p = ctx.scorer_params("cmab")
    edges = p.get("edges") if isinstance(p.get("edges"), (list, tuple)) and len(p.get("edges")) == 4 else CMAB_EDGES
    edges = [float(e) for e in edges]
    series = _series(ctx, CMAB_RATIO)
    if not series:
        return None
    allv = np.concatenate([v for _, v in series]) if series else np.array([])
    pos = allv[allv > 0]
    log_x = len(pos) > 0 and len(pos) == len(allv) and pos.max() / pos.min() > 20
    lo = min(float(allv.min()) if len(allv) else 0.0, edges[0] * 0.8)
    hi = max(float(allv.max()) if len(allv) else 2.0, edges[-1] * 1.2)
    bins = np.geomspace(max(lo, 1e-6), hi, 60) if log_x else np.linspace(lo, hi, 60)
    names = ["easy", "medium", "hard", "medium", "easy"]

    def regions(ax):
        P.shade_regions(ax, edges, names, bins[0], bins[-1], alpha=0.16)
        P.mark_lines(ax, edges, [f"edges {', '.join(f'{e:g}' for e in edges)}"] + [None] * 3, color="grey")

    fig = _hist_figure("cmab", series, bins, "attention ratio ρ̄ = image / text attention"
                       + ("  (log scale)" if log_x else ""), "CMAB: cross-modal attention balance per row",
                       decorate=regions, log_x=log_x,
                       caption=f"Hard: balanced attention ({edges[1]:g} ≤ ρ̄ ≤ {edges[2]:g}); easy: one modality "
                       f"dominates (ρ̄ < {edges[0]:g} or > {edges[3]:g}). Wrongly answered rows are 'unsolved' "
                       "whatever their ratio.")
    html = H.table(QUANTILE_HEADERS, _quantile_rows(series))
    buckets = [b for _, df in ctx.frames([CMAB_BUCKET]) for b in df[CMAB_BUCKET] if b is not None]
    if buckets:
        html += _count_table(buckets, P.bucket_order(buckets))
    return SectionOutput("P1 CMAB: attention ratio", html, [fig])


# ---------------------------------------------------------------------------------------------------------------------
# P3 visual entropy
# ---------------------------------------------------------------------------------------------------------------------
@section("visual_entropy", needs=(VISUAL_ENTROPY,))
def visual_entropy_section(ctx: ReportContext) -> Optional[SectionOutput]:
    series = _series(ctx, VISUAL_ENTROPY)
    if not series:
        return None
    allv = np.concatenate([v for _, v in series])
    q = np.quantile(allv, [0.25, 0.5, 0.75]) if len(allv) else [math.nan] * 3

    def quartiles(ax):
        for x, name, style in zip(q, ("Q1", "median", "Q3"), ("--", "-", "--")):
            ax.axvline(x, color="black", linestyle=style, linewidth=1.3, label=f"{name} = {x:.3g}")

    fig = _hist_figure("visual_entropy", series, 50, "visual entropy H  (nats; higher = perceptually harder)",
                       "P3: spectral entropy of the visual tokens", decorate=quartiles,
                       caption="Durian groups prompts into low / middle / high perceptual difficulty at the 25th "
                       "and 75th percentiles (here over the whole dataset; the estimator uses each batch).")
    return SectionOutput("P3: visual entropy", H.table(QUANTILE_HEADERS, _quantile_rows(series)), [fig])


# ---------------------------------------------------------------------------------------------------------------------
# P4 CDE and ACE
# ---------------------------------------------------------------------------------------------------------------------
@section("cde", needs=(CDE_ACC_IMG, CDE_ACC_TXT))
def cde_section(ctx: ReportContext) -> SectionOutput:
    lam = pick_number(ctx.selection_params("p4"), ("lambda_c", "lam_c", "cde_threshold"), CDE_LAMBDA_C)
    frames = ctx.frames([CDE_ACC_IMG, CDE_ACC_TXT])
    ms = [int(m) for _, df in ctx.frames([CDE_ROLLOUTS]) for m in np.unique(P.finite(df[CDE_ROLLOUTS]))]
    m = ms[0] if len(set(ms)) == 1 and ms[0] > 0 else int(pick_number(ctx.scorer_params("cde"), ("m",), 5))
    rng = np.random.default_rng(0)
    n_all = sum(len(df) for _, df in frames)
    size, alpha = float(np.clip(3000 / max(n_all, 1), 1.5, 14)), float(np.clip(3000 / max(n_all, 1), 0.12, 0.6))
    fig, (ax,) = P.figure(width=6.8, height=7.0)
    grid = np.linspace(-0.1, 1.1, 2)
    ax.fill_between(grid, grid + lam, 1.2, color=P.BAND_COLOR, alpha=0.3, linewidth=0,
                    label="D ≥ λ_c: kept by P4 (paper mode)")
    rows = []
    for i, (label, df) in enumerate(frames):
        txt, img = np.asarray(df[CDE_ACC_TXT], float), np.asarray(df[CDE_ACC_IMG], float)
        both = np.isfinite(txt) & np.isfinite(img)
        txt, img = txt[both], img[both]
        jit = 0.32 / m
        ax.scatter(txt + rng.uniform(-jit, jit, len(txt)), img + rng.uniform(-jit, jit, len(img)), s=size,
                   alpha=alpha, color=P.series_color(i), linewidths=0, rasterized=True,
                   label=f"{label} (n={len(txt):,})")
        if len(frames) == 1 and m <= 10:
            _cell_counts(ax, txt, img, m)
        d = img - txt
        kept = int(np.sum(d >= lam - 1e-9))
        mean = (lambda a: float(a.mean()) if len(a) else math.nan)  # noqa: E731
        rows.append([label, len(txt), mean(img), mean(txt), mean(d), f"{kept:,} ({kept / max(len(txt), 1):.1%})"])
    ax.plot(grid, grid, color="grey", linestyle=":", linewidth=1.4, label="diagonal: D = 0 (image does not help)")
    ax.plot(grid, grid + lam, color="black", linestyle="--", linewidth=1.4, label=f"D = λ_c = {lam:g}")
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.1, 1.1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"accuracy WITHOUT the image (acc_txt, {m} rollouts; points jittered)")
    ax.set_ylabel(f"accuracy WITH the image (acc_img, {m} rollouts)")
    ax.set_title("P4 CDE: does the image matter?  (up-left = needs the image)", fontsize=11)
    leg = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize=8, framealpha=0.95,
                    markerscale=max(1.0, 5 / math.sqrt(size)))
    for h in leg.legend_handles:
        if hasattr(h, "set_alpha"):
            h.set_alpha(1.0)
    tab = H.table(["input", "rows", "mean acc_img", "mean acc_txt", "mean D", f"D >= {lam:g}"], rows)
    return SectionOutput("P4 CDE: accuracy with vs without the image", tab, [Figure("cde", P.png(fig),
                         "Each point is a row; D(x) = acc_img - acc_txt. P4 (paper mode) keeps the rows above the "
                         "dashed line.")])


def _cell_counts(ax, x: np.ndarray, y: np.ndarray, m: int) -> None:
    """The number of rows in each cell of the (acc_txt, acc_img) grid, under its cloud of points."""
    ix, iy = np.rint(x * m).astype(int), np.rint(y * m).astype(int)
    ok = (ix >= 0) & (ix <= m) & (iy >= 0) & (iy <= m)
    counts = np.zeros((m + 1, m + 1), dtype=int)
    np.add.at(counts, (ix[ok], iy[ok]), 1)
    for (i, j), c in np.ndenumerate(counts):
        if c:
            ax.text(i / m, j / m - 0.42 / m, f"{c:,}", ha="center", va="top", fontsize=6.5, color="#333333")


@section("ace", needs=(ACE_SCORE,))
def ace_section(ctx: ReportContext) -> Optional[SectionOutput]:
    lam = pick_number(ctx.selection_params("p4"), ("lambda_a", "lam_a", "ace_threshold"), ACE_LAMBDA_A)
    log_scale = str(ctx.scorer_params("ace").get("scale", "log")) == "log"
    thr = math.log(lam) if log_scale else lam
    series = _series(ctx, ACE_SCORE)
    if not series:
        return None

    def threshold(ax):
        ax.axvspan(thr, max([thr + 1e-6] + [float(v.max()) for _, v in series if len(v)]), color="grey", alpha=0.18,
                   linewidth=0, label="discarded by P4 (score > λ_a)")
        label = f"log(λ_a) = log({lam:g}) = {thr:.2f}" if log_scale else f"λ_a = {lam:g}"
        ax.axvline(thr, color="black", linestyle="--", linewidth=1.3, label=label)

    xlabel = ("ACE score log(max_j ψ_j)" if log_scale else "ACE score max_j ψ_j") + \
        "  (higher = attention dominated by few tokens)"
    fig = _hist_figure("ace", series, 50, xlabel, "P4 ACE: attention confidence per row", decorate=threshold,
                       caption="ACE is reconstructed from secondary sources; rows right of the dashed line are "
                       "discarded by the P4 selection.")
    above = lambda v: [f"{np.mean(v > thr):.1%}" if len(v) else "-"]  # noqa: E731
    return SectionOutput("P4 ACE: attention confidence",
                         H.table(QUANTILE_HEADERS + ["share above threshold"], _quantile_rows(series, above)), [fig])


# ---------------------------------------------------------------------------------------------------------------------
# selections
# ---------------------------------------------------------------------------------------------------------------------
def _crosstab(df, column: str) -> list[list]:
    sub = df[df[column].notna()]
    if sub.empty:
        return []
    key = sub[column].astype(str) if column == "bucket" else sub[column].astype("int64")
    names = P.bucket_order(key) if column == "bucket" else sorted(key.unique())
    label = (lambda n: str(n)) if column == "bucket" else (lambda n: f"stage {n}")
    return [[label(n), int(((key == n) & sub["kept"]).sum()), int(((key == n) & ~sub["kept"]).sum())] for n in names]


def _stacked(ax, rows: list[list], title: str) -> None:
    names = [r[0] for r in rows]
    kept, dropped = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    x = np.arange(len(names))
    ax.bar(x, kept, color="#4daf4a", label="kept")
    ax.bar(x, dropped, bottom=kept, color="#bbbbbb", label="dropped")
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0, max(1, int((kept + dropped).max(initial=0))) * 1.25)
    ax.set_ylabel("rows")
    ax.set_title(title, fontsize=10)
    P.legend(ax, loc="upper right")


@section("selection", needs=DECISION_COLUMNS, source="selection")
def selection_section(ctx: ReportContext) -> SectionOutput:
    parts, figures = [], []
    for sel in ctx.selections:
        if not sel.has(DECISION_COLUMNS):
            continue
        cols = [c for c in ("kept", "reason", "bucket", "stage") if c in sel.columns]
        df = sel.read(cols)
        df["kept"] = df["kept"].fillna(False).astype(bool)
        info = sel.selection
        reasons = df.groupby(["reason", "kept"], dropna=False).size().sort_values(ascending=False)
        r_rows = [[str(r), "kept" if k else "dropped", int(n), f"{n / max(len(df), 1):.1%}"]
                  for (r, k), n in reasons.items()]
        tables = {c: _crosstab(df, c) for c in ("bucket", "stage") if c in df.columns}
        tables = {c: t for c, t in tables.items() if t}
        fig, axes = P.figure(ncols=1 + len(tables), height=3.8)
        P.hbar_counts(axes[0], [f"{r} ({k})" for r, k, _, _ in r_rows], [r[2] for r in r_rows],
                      ["#4daf4a" if k == "kept" else "#999999" for _, k, _, _ in r_rows],
                      f"why rows were kept or dropped ({int(df['kept'].sum()):,} of {len(df):,} kept)",
                      total=len(df))
        for ax, (c, t) in zip(axes[1:], tables.items()):
            _stacked(ax, t, f"kept / dropped per {c}")
        name = "selection" if len(ctx.selections) == 1 else f"selection-{len(figures) + 1}"
        figures.append(Figure(name, P.png(fig), f"{sel.label}: {sel.path}"))
        params = json.dumps(info.get("params", {}), sort_keys=True, default=str)
        head = H.table(["selection", "method", "mode", "input rows", "kept", "params"],
                       [[sel.label, info.get("method"), info.get("mode"), len(df), int(df["kept"].sum()), params]])
        parts.append(f"<h3>{H.esc(sel.label)}</h3>" + head + H.table(["reason", "decision", "rows", "share"], r_rows)
                     + "".join(H.table([c, "kept", "dropped"], t) for c, t in tables.items()))
    return SectionOutput("Selections: kept and dropped rows", "".join(parts), figures)


# ---------------------------------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------------------------------
@section("provenance", needs=(SCORE_PROVENANCE,))
def provenance_section(ctx: ReportContext) -> Optional[SectionOutput]:
    rows = []
    for label, name, e in ctx.provenance():
        backend = e.get("backend") if isinstance(e.get("backend"), dict) else {}
        model = e.get("model_path") or e.get("model") or backend.get("model_path")
        rows.append([label, e.get("scorer", name), e.get("version"), model, backend.get("name", e.get("backend")),
                     e.get("seed"), e.get("date"), json.dumps(e.get("params", {}), sort_keys=True, default=str)])
    if not rows:
        return None
    return SectionOutput("Provenance of the scores", H.paragraph("What produced each score column, from the "
                         "difficulty_provenance column of the scored rows.") +
                         H.table(["input", "scorer", "version", "model", "backend", "seed", "date", "parameters"],
                                 rows))
