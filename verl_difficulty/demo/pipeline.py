"""The demo's driver: runs the stages in order, reuses finished ones, redoes forced or changed ones, sends each
stage's library output to its log and turns any failure into one message (stage, cause, log path).

:func:`run_demo` is the whole ``verl-difficulty demo`` command from Python; it returns the exit status (0 done,
1 a stage failed, 2 a usage error such as ``--only`` on a stage whose upstream never finished, 130 interrupted).
"""

from __future__ import annotations

import time
import traceback
from typing import Callable, Optional, Sequence

from verl_difficulty.demo import prepare, reporting, scoring, selecting, training
from verl_difficulty.demo.console import Console, StageFailed, fmt_seconds, one_line, to_log
from verl_difficulty.demo.settings import STAGE_TITLES, STAGES, UPSTREAM, DemoSettings, stage_settings
from verl_difficulty.demo.stages import Timer
from verl_difficulty.demo.workspace import DemoRun, StageResult

STAGE_FUNCS: dict[str, Callable[[DemoRun], StageResult]] = {
    "data": prepare.run_data,
    "model": prepare.run_model,
    "score": scoring.run_score,
    "select": selecting.run_select,
    "train": training.run_train,
    "report": reporting.run_report,
}


class UsageError(ValueError):
    """The command cannot run as asked (nothing was done)."""


def resolve_force(force: Sequence[str]) -> tuple[str, ...]:
    """``--force`` values: stage names or ``all``."""
    out = []
    for f in force:
        for name in str(f).split(","):
            name = name.strip()
            if not name:
                continue
            if name == "all":
                out.extend(STAGES)
            elif name in STAGES:
                out.append(name)
            else:
                raise UsageError(f"--force: unknown stage {name!r}; stages: {', '.join(STAGES)} (or all)")
    return tuple(dict.fromkeys(out))


def _run_stage(run: DemoRun, stage: str) -> StageResult:
    log = run.log_path(stage)
    with to_log(log):
        try:
            return STAGE_FUNCS[stage](run)
        except (StageFailed, KeyboardInterrupt):
            traceback.print_exc()
            raise
        except Exception as e:  # noqa: BLE001 - any error ends as: stage, cause, log
            traceback.print_exc()
            raise StageFailed(stage, one_line(f"{type(e).__name__}: {e}"), log) from e


def run_demo(settings: DemoSettings, only: Optional[str] = None, force: Sequence[str] = (),
             console: Optional[Console] = None) -> int:
    console = console or Console()
    try:
        forced = resolve_force(force)
        if only is not None and only not in STAGES:
            raise UsageError(f"--only: unknown stage {only!r}; stages: {', '.join(STAGES)}")
    except UsageError as e:
        console.print(f"verl-difficulty demo: {e}")
        return 2
    run = DemoRun(settings, console, forced)
    run.write_settings()
    rerun = "Fix the cause and rerun the same command: finished stages are kept."
    console.print(f"verl-difficulty demo -> {run.root}")
    console.print(f"  verl's, Ray's and the libraries' own output goes to {run.path('logs')}/<stage>.log")
    for stage in forced:
        run.book.forget(stage)
        if stage == "train":
            for name in training.RUNS:
                run.book.forget(f"train.{name}")
    t_all = time.time()
    current = None
    try:
        for i, stage in enumerate(STAGES, 1):
            if only is not None and stage != only:
                continue
            current = stage
            upstream = {u: run.book.token(u) for u in UPSTREAM[stage]}
            missing = [u for u, tok in upstream.items() if tok is None]
            console.stage(i, len(STAGES), stage, STAGE_TITLES[stage])
            if missing:  # only with --only: the stages before always ran in this loop
                console.print(f"\nverl-difficulty demo: stage '{stage}' needs the finished {', '.join(missing)} "
                              f"stage(s) in {run.root}; run the demo without --only first")
                return 2
            status = run.book.status(stage, stage_settings(run.settings, stage), upstream)
            if status.done and stage not in forced:
                console.line(f"reused ({status.why}, took {fmt_seconds(status.record.wall_s)})")
                for line in status.record.summary:
                    console.line(line)
                continue
            if stage in forced:
                console.line("redo (--force)")
            elif status.record is not None:
                console.line(f"redo ({status.why})")
            with Timer() as t:
                result = _run_stage(run, stage)
            run.book.mark_done(stage, stage_settings(run.settings, stage), upstream, result.outputs, t.seconds,
                               result.summary, result.data)
            for line in result.summary:
                console.line(line)
            console.line(f"done in {fmt_seconds(t.seconds)}")
    except StageFailed as e:
        console.failure(e, rerun)
        return 1
    except KeyboardInterrupt:
        console.print(f"\nverl-difficulty demo: interrupted in stage '{current}'; finished stages are kept: rerun the "
                      "same command to resume")
        return 130
    report = run.book.load("report")
    if only is None or only == "report":
        console.print(f"\nDemo finished in {fmt_seconds(time.time() - t_all)} (this run).")
        if report is not None:
            console.print(f"Report: {report.data.get('index')}")
            for line in report.data.get("headline", []):
                console.print("  " + line)
    return 0
