"""Stage ``report``: the same report as ``verl-difficulty report`` (scores and selections) plus the demo's sections
(:mod:`verl_difficulty.demo.sections`), and ``DIR/report/demo_summary.json`` with the run's key numbers (stage wall
times, agreement per scorer, selection mixes, the training runs' end points), read from the stages' markers.
"""

from __future__ import annotations

import json
import os

from verl_difficulty.data.io import atomic_write_bytes
from verl_difficulty.demo.settings import METHODS, STAGES
from verl_difficulty.demo.workspace import DemoRun, StageResult

SUMMARY_FILE = "demo_summary.json"


def key_numbers(run: DemoRun) -> dict:
    """The run's key numbers from the done-markers of its stages (and of the training runs)."""
    out: dict = {"demo_dir": run.root, "stages": {}}
    for stage in STAGES:
        rec = run.book.load(stage)
        if rec is not None:
            out["stages"][stage] = {"wall_s": rec.wall_s, "finished": rec.finished}
    score = run.book.load("score")
    if score is not None and score.data.get("agreement"):
        out["agreement"] = [{k: r[k] for k in ("scorer", "column", "n", "rho", "rho_low", "rho_high", "agreement",
                                                "agreement_low", "agreement_high", "headline")}
                            for r in score.data["agreement"]]
    select = run.book.load("select")
    if select is not None:
        out["selections"] = select.data.get("methods", {})
        out["mix"] = select.data.get("mix", [])
    train = run.book.load("train")
    if train is not None:
        out["training"] = {name: r.get("summary") for name, r in train.data.get("runs", {}).items()}
        out["training_wall_s"] = {name: r.get("wall_s") for name, r in train.data.get("runs", {}).items()}
    return out


def headline_lines(numbers: dict) -> list[str]:
    """The key numbers as a few console lines."""
    lines = []
    heads = [a for a in numbers.get("agreement", []) if a.get("headline") and a.get("agreement") is not None]
    if heads:
        lines.append("agreement with the true difficulty (Spearman, 95% CI): " + "; ".join(
            f"{a['scorer']} {a['agreement']:+.2f} [{a['agreement_low']:+.2f}, {a['agreement_high']:+.2f}]"
            for a in heads) + f" (n={heads[0]['n']})")
    for m in numbers.get("mix", []):
        if m["name"].endswith("/train"):
            lines.append(f"{m['name']}: {m['size']} rows, mean true level {m['mean_level']:.2f} vs "
                         f"{m['random_mean_level']:.2f} [{m['random_mean_level_low']:.2f}, "
                         f"{m['random_mean_level_high']:.2f}] for random subsets")
    for name, s in (numbers.get("training") or {}).items():
        if not s:
            continue
        r = s.get("reward", {})
        vals = [v for v in (s.get("val_acc") or {}).values()]
        val = ", ".join(f"L{v['level']} {v['first']:.2f}->{v['last']:.2f}" for v in vals
                        if v.get("level") is not None and v.get("first") is not None and v.get("last") is not None)
        if r.get("first") is not None and r.get("last3") is not None:
            lines.append(f"{name}: reward {r['first']:.2f} -> {r['last3']:.2f} over {s.get('steps')} steps"
                         + (f"; validation accuracy {val}" if val else ""))
    return lines


def run_report(run: DemoRun) -> StageResult:
    from verl_difficulty.demo.sections import demo_sections
    from verl_difficulty.report import build_report

    inputs = [run.path("score")] + [run.path("select", m) for m in METHODS
                                    if os.path.isfile(run.path("select", m, "selection.json"))]
    result = build_report(inputs, run.path("report"), extra_sections=demo_sections(), title="verl-difficulty demo",
                          log=lambda s: print(s, flush=True))
    numbers = key_numbers(run)
    numbers["report"] = {"index": result.index, "sections": result.sections, "plots": len(result.plots)}
    path = run.path("report", SUMMARY_FILE)
    atomic_write_bytes(path, json.dumps(numbers, indent=1, sort_keys=True, default=str).encode())
    lines = [f"{result.index} ({len(result.sections)} sections, {len(result.plots)} plots); key numbers in {path}"]
    return StageResult([result.index, path], lines, {"index": result.index, "summary": path,
                                                     "sections": result.sections, "headline": headline_lines(numbers)})
