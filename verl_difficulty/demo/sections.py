"""The report's demo sections, added to :func:`verl_difficulty.report.build_report` through ``extra_sections``
(:func:`demo_sections`).

* ``demo_run``: the stages of the demo run (wall time, when, what each one did) and its settings;
* ``demo_agreement``: each difficulty score against the generator's true difficulty: Spearman rho, the number of
  rows, a seeded bootstrap 95% interval, and the agreement (rho signed so that positive = ranks rows like the
  generator); computed from the scored input (any scored input with a ``true_difficulty`` column, demo or not);
* ``demo_mix``: each selected subset's true-difficulty mix against random subsets of the same size
  (``DIR/select/mix.json``);
* ``demo_training``: the training curves read from verl's own tracker output (``DIR/train/<run>/metrics.jsonl``):
  reward, accuracy per true level, the sampler's mix, Durian vs GRPO.

The sections other than the agreement find the demo folder from the report's inputs (the folder holding
``demo.json`` above a scoring or selection input) and draw nothing when there is none, so the same list can be passed
for any report.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from verl_difficulty import schema
from verl_difficulty.demo import analysis
from verl_difficulty.demo import metrics as M
from verl_difficulty.demo.settings import RUNS, STAGES, UPSTREAM
from verl_difficulty.demo.stages import StageBook
from verl_difficulty.demo.workspace import DEMO_FILE, find_demo_dir
from verl_difficulty.report import html as H
from verl_difficulty.report import plots as P
from verl_difficulty.report.sections import Figure, Section, SectionOutput

RUN_STYLE = {"durian": ("#d62728", "-"), "grpo": ("#1f77b4", "--")}
RUN_LABEL = {"durian": "Durian + difficulty sampler", "grpo": "plain GRPO"}


def _demo_dir(ctx) -> Optional[str]:
    return find_demo_dir([i.path for i in ctx.inputs])


def _demo_settings(root: Optional[str]) -> dict:
    if not root:
        return {}
    try:
        with open(os.path.join(root, DEMO_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def level_color(level: Optional[int]) -> str:
    if level is None:
        return "grey"
    return P.BUCKET_COLORS.get(schema.BUCKETS[min(max(int(level), 0), len(schema.BUCKETS) - 1)], "grey")


def bucket_label(bucket: str) -> str:
    """``level L (bucket)`` for the buckets that stand for a true level in the demo."""
    if bucket in schema.BUCKETS:
        return f"level {schema.BUCKETS.index(bucket)} ({bucket})"
    return bucket


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grid(n: int, ncols: int = 3, cell: tuple = (4.3, 3.4)):
    """A figure of ``n`` axes in rows of ``ncols`` (the unused ones hidden); returns ``fig, [ax, ...]``."""
    import matplotlib.pyplot as plt

    n = max(n, 1)
    cols = min(n, ncols)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _fmt(v, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:+.{digits}f}"


# ---------------------------------------------------------------------------------------------------------------------
def run_section(ctx) -> Optional[SectionOutput]:
    root = _demo_dir(ctx)
    if root is None:
        return None
    book = StageBook(root)
    rows, total = [], 0.0
    for stage in STAGES:
        rec = book.load(stage)
        if rec is None:
            rows.append([stage, "not finished", "", ""])
            continue
        total += rec.wall_s
        rows.append([stage, f"{rec.wall_s:.1f} s", rec.finished, " | ".join(rec.summary)])
    settings = _demo_settings(root)
    html = H.paragraph(f"Demo folder {root}; stages read from its done-markers (.stages/). Total stage time "
                       f"{total:.0f} s. Each stage reads only the outputs of "
                       + "; ".join(f"{s} <- {', '.join(UPSTREAM[s]) or 'nothing'}" for s in STAGES) + ".")
    html += H.table(["stage", "wall time", "finished", "what it did"], rows)
    if settings:
        html += H.table(["setting", "value"], [[k, json.dumps(v)] for k, v in sorted(settings.items())])
    return SectionOutput("Demo: the run", html)


# ---------------------------------------------------------------------------------------------------------------------
def agreement_rows(ctx, draws: int, seed: int) -> list[tuple[str, list, dict]]:
    """Per scored input with a true level: (label, agreement rows, {column: (values, levels)})."""
    out = []
    for inp in ctx.scored:
        if not inp.has([schema.TRUE_LEVEL]):
            continue
        cols = [c.column for c in analysis.SCORE_COLUMNS if inp.has([c.column])]
        if not cols:
            continue
        df = inp.read([schema.TRUE_LEVEL] + cols)
        level = np.array([np.nan if v is None else float(v) for v in df[schema.TRUE_LEVEL]], dtype=np.float64)
        if not np.isfinite(level).any():
            continue
        values = {c: df[c].tolist() for c in cols}
        rows = analysis.agreement(values, level, draws=draws, seed=seed)
        out.append((inp.label, rows, {c: (analysis.as_difficulty_values(c, values[c]), level) for c in cols}))
    return out


def _agreement_figure(label: str, rows: list) -> Figure:
    fig, (ax,) = P.figure(width=9.0, height=0.45 * len(rows) + 1.6)
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        if r.agreement is None:
            v, lo, hi, color = r.rho, r.rho_low, r.rho_high, "#aaaaaa"
        else:
            v, lo, hi, color = r.agreement, r.agreement_low, r.agreement_high, "#1f77b4" if r.headline else "#6baed6"
        ax.barh(yi, v, color=color, height=0.6)
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [yi, yi], color="black", linewidth=1.4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.axvline(0.5, color="#2ca02c", linestyle="--", linewidth=1.2, label="0.5")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r.scorer}: {r.column}" for r in rows], fontsize=8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("agreement = Spearman rho signed by the score's direction (+1: ranks rows like the generator)",
                  fontsize=8)
    ax.set_title(f"Difficulty scores vs the generator's true level ({label}; bars: 95% bootstrap interval)",
                 fontsize=10)
    P.legend(ax, loc="lower right")
    return Figure("demo_agreement", P.png(fig), "Blue: the scorer's main difficulty column; light blue: another "
                  "difficulty reading; grey: a column that measures something else (rho shown as is).")


def _level_figure(rows: list, data: dict) -> Figure:
    heads = [r for r in rows if r.headline and r.column in data]
    fig, axes = _grid(len(heads))
    rng = np.random.default_rng(0)
    for ax, r in zip(axes, heads):
        values, level = data[r.column]
        ok = np.isfinite(values) & np.isfinite(level)
        lv = level[ok].astype(int)
        ax.scatter(lv + rng.uniform(-0.18, 0.18, size=len(lv)), values[ok], s=10, alpha=0.45,
                   c=[level_color(v) for v in lv])
        means = analysis.level_means(values, level)
        ax.plot(list(means), list(means.values()), color="black", marker="o", linewidth=1.8, label="mean")
        ax.set_xticks(sorted(means))
        ax.set_xlabel("true level (0 = easiest)")
        ax.set_title(f"{r.scorer}: {r.column}\nrho {r.rho:+.2f} [{r.rho_low:+.2f}, {r.rho_high:+.2f}], n={r.n}",
                     fontsize=9)
    return Figure("demo_score_by_level", P.png(fig), "Each dot is a row (jittered); the line is the mean per true "
                  "level. PISM's lambda* is 1.0 for rows that never fail; buckets are drawn as ordinals.")


def agreement_section(ctx) -> Optional[SectionOutput]:
    settings = _demo_settings(_demo_dir(ctx))
    draws, seed = int(settings.get("bootstrap", 1000)), int(settings.get("seed", 0))
    found = agreement_rows(ctx, draws, seed)
    if not found:
        return None
    html = H.paragraph(
        f"Spearman's rank correlation of each score with the true difficulty level the generator drew for the row "
        f"(ties averaged), over the rows where both are known (n), with a {draws}-resample percentile bootstrap "
        f"interval (seed {seed}). 'Agreement' signs rho by the score's direction (pass rate, lambda*, accuracy with "
        "the image: higher = easier; visual entropy and the bucket ordinals: higher = harder), so +1 means the score "
        "orders the rows exactly like the generator. CDE's discrepancy, CMAB's ratio and ACE's score are not "
        "difficulty readings (image reliance, attention balance, attention concentration): their rho is shown as "
        "is.")
    figures = []
    for label, rows, data in found:
        table = [[r.scorer, r.column, r.meaning, r.n, r.rho, f"[{_fmt(r.rho_low)}, {_fmt(r.rho_high)}]",
                  _fmt(r.agreement) if r.agreement is not None else "n/a",
                  f"[{_fmt(r.agreement_low)}, {_fmt(r.agreement_high)}]" if r.agreement is not None else ""]
                 for r in rows]
        html += H.table(["scorer", "column", "read as", "rows", "Spearman rho", "95% interval", "agreement",
                         "95% interval"], table)
        figures.append(_agreement_figure(label, rows))
        figures.append(_level_figure(rows, data))
    return SectionOutput("Demo: difficulty scores vs the true difficulty", html, figures)


# ---------------------------------------------------------------------------------------------------------------------
def _read_mix(root: str) -> Optional[dict]:
    try:
        with open(os.path.join(root, "select", "mix.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def mix_section(ctx) -> Optional[SectionOutput]:
    root = _demo_dir(ctx)
    mix = _read_mix(root) if root else None
    if not mix or not mix.get("subsets"):
        return None
    subsets = mix["subsets"]
    levels = subsets[0]["levels"]
    header = ["subset", "rows"] + [f"level {lv}: share (random mean [95%])" for lv in levels] + [
        "mean level", "random subsets' mean level [95%]", "percentile among random"]
    rows = []
    for m in subsets:
        cells = [f"{s:.0%} ({r:.0%} [{lo:.0%}, {hi:.0%}])"
                 for s, r, lo, hi in zip(m["share"], m["random_mean"], m["random_low"], m["random_high"])]
        rows.append([m["name"], m["size"], *cells, round(m["mean_level"], 3),
                     f"{m['random_mean_level']:.2f} [{m['random_mean_level_low']:.2f}, "
                     f"{m['random_mean_level_high']:.2f}]", f"{m['percentile']:.1%}"])
    html = H.paragraph(
        f"Each output of each selection against {mix['draws']} random subsets of the same size drawn without "
        f"replacement from the {mix['population']} scored rows (seed {mix['seed']}): the share of each true level, "
        "and the mean true level. A percentile near 0% means the selection picked clearly easier rows than chance, "
        "near 100% clearly harder ones.")
    if mix.get("skipped"):
        html += H.paragraph("Skipped selections: " + "; ".join(f"{k}: {v}" for k, v in mix["skipped"].items()))
    html += H.table(header, rows)
    shown = [m for m in subsets if m["name"].endswith("/train") or m["name"].startswith("p2/stage")][:6]
    fig, axes = _grid(len(shown), cell=(3.8, 3.3))
    for ax, m in zip(axes, shown):
        x = np.arange(len(levels))
        ax.bar(x, m["share"], color=[level_color(lv) for lv in levels], label="selected")
        err = [np.array(m["random_mean"]) - np.array(m["random_low"]),
               np.array(m["random_high"]) - np.array(m["random_mean"])]
        ax.errorbar(x, m["random_mean"], yerr=err, fmt="o", color="black", capsize=3, label="random, same size")
        ax.set_xticks(x)
        ax.set_xticklabels([str(lv) for lv in levels])
        ax.set_xlabel("true level")
        ax.set_ylim(0, 1)
        ax.set_title(f"{m['name']} (n={m['size']})", fontsize=9)
    axes[0].set_ylabel("share of the subset")
    P.legend(axes[0], loc="upper right")
    return SectionOutput("Demo: what the selections kept, vs random subsets", html, [
        Figure("demo_selection_mix", P.png(fig), "Bars: the selected rows' true-level shares; dots: the mean share "
               "over the random subsets of the same size, with their 95% range.")])


# ---------------------------------------------------------------------------------------------------------------------
def load_runs(root: str) -> dict[str, dict]:
    """Curves of every training run with a tracker file: ``{run: {"path": ..., "curves": ...}}``."""
    out = {}
    for name in RUNS:
        path = os.path.join(root, "train", name, "metrics.jsonl")
        records = M.read_records(path)
        if records:
            out[name] = {"path": path, "curves": M.curves(records)}
    return out


def _plot_series(ax, steps_values, color, style, label, marker=None) -> None:
    steps, values = steps_values
    if steps:
        ax.plot(steps, values, color=color, linestyle=style, marker=marker, linewidth=1.8, label=label)


def training_section(ctx) -> Optional[SectionOutput]:
    root = _demo_dir(ctx)
    runs = load_runs(root) if root else {}
    if not runs:
        return None
    figures = []
    # reward and training accuracy
    fig, (ax1, ax2) = _grid(2, ncols=2, cell=(5.6, 3.8))
    for name, r in runs.items():
        color, style = RUN_STYLE.get(name, ("grey", "-"))
        _plot_series(ax1, r["curves"]["reward"], color, style, RUN_LABEL.get(name, name), ".")
        _plot_series(ax2, r["curves"]["train_acc"], color, style, RUN_LABEL.get(name, name), ".")
    ax1.set_title(f"reward per step ({M.REWARD})", fontsize=9)
    ax2.set_title(f"training accuracy per step ({M.TRAIN_ACC})", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("training step")
        _integer_ticks(ax)
        P.legend(ax)
    figures.append(Figure("demo_reward", P.png(fig), "verl's step metrics of both runs on the same rows."))
    # validation accuracy per true level
    fig, (ax,) = P.figure(width=9.0, height=4.2)
    for name, r in runs.items():
        _, style = RUN_STYLE.get(name, ("grey", "-"))
        for src, v in r["curves"]["val_acc"].items():
            label = f"{RUN_LABEL.get(name, name)}: " + (f"true level {v['level']}" if v["level"] is not None else src)
            _plot_series(ax, (v["steps"], v["values"]), level_color(v["level"]), style, label, "o")
    ax.set_xlabel("training step (0 = before training)")
    _integer_ticks(ax)
    ax.set_ylabel("validation accuracy (acc/mean@n)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Accuracy per true difficulty level (solid: Durian + sampler, dashed: plain GRPO)", fontsize=10)
    P.legend_outside(ax)
    figures.append(Figure("demo_val_by_level", P.png(fig), "verl's validation metrics per data source "
                          "(val-core/true_level_L/acc/mean@n): every scored row, its true level as data source."))
    # the sampler's mix
    with_mix = {n: r for n, r in runs.items() if r["curves"]["mix"]}
    if with_mix:
        fig, axes = _grid(len(with_mix), ncols=2, cell=(5.6, 3.6))
        for ax, (name, r) in zip(axes, with_mix.items()):
            mix = r["curves"]["mix"]
            bottom: dict = {}
            for b, (steps, vals) in mix.items():
                base = [bottom.get(st, 0.0) for st in steps]
                ax.bar(steps, vals, bottom=base, width=0.8, color=P.BUCKET_COLORS.get(b, "grey"),
                       label=bucket_label(b))
                for st, v in zip(steps, vals):
                    bottom[st] = bottom.get(st, 0.0) + v
            ax.set_ylim(0, 1)
            ax.set_xlabel("training step")
            _integer_ticks(ax)
            ax.set_title(f"{RUN_LABEL.get(name, name)}: batch share per true level", fontsize=9)
        axes[0].set_ylabel("share of the step's prompts")
        P.legend_outside(axes[-1])
        figures.append(Figure("demo_sampler_mix", P.png(fig), f"The sampler's {M.MIX_PREFIX}<bucket> metrics "
                              "(the sampler's bucket field is the true level: 0 easy, 1 medium, 2 hard, 3 unsolved)."))
    from verl_difficulty.demo.training import run_summary

    rows = []
    for name, r in runs.items():
        s = run_summary(name, r["curves"])
        val = "; ".join(f"L{v['level'] if v['level'] is not None else src}: {_num(v['first'])} -> {_num(v['last'])}"
                        for src, v in s["val_acc"].items())
        mix = ", ".join(f"{b} {v:.0%}" for b, v in s["mix_mean"].items() if v is not None)
        rows.append([RUN_LABEL.get(name, name), s["steps"], _num(s["reward"]["first"]), _num(s["reward"]["last3"]),
                     _num(s["train_acc"]["first"]), _num(s["train_acc"]["last3"]), val, mix, r["path"]])
    html = H.paragraph("Read from verl's own tracker output (the file logger's JSON lines), not recomputed. Both runs "
                       "train on the same rows with the same sizes; only the advantage estimator and the sampler "
                       "differ. With a few steps on a tiny model these curves show that the parts run together and "
                       "what they log; they are not evidence that one method beats the other.")
    html += H.table(["run", "steps", "reward step 1", "reward last 3", "train acc step 1", "train acc last 3",
                     "validation acc per true level (before -> last)", "sampler mix (mean over steps)",
                     "tracker file"], rows)
    return SectionOutput("Demo: training curves, Durian vs GRPO", html, figures)


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def demo_sections() -> list[Section]:
    """The demo's report sections (pass them as ``build_report(..., extra_sections=demo_sections())``)."""
    return [
        Section("demo_run", run_section, needs=(), source="any"),
        Section("demo_agreement", agreement_section, needs=(schema.TRUE_LEVEL,), source="scores"),
        Section("demo_mix", mix_section, needs=(), source="any"),
        Section("demo_training", training_section, needs=(), source="any"),
    ]
