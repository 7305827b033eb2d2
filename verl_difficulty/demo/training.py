"""Stage ``train``: a few GRPO steps through stock ``python -m verl.trainer.main_ppo`` on CPU, twice on the same rows:

* ``durian``: ``algorithm.adv_estimator=durian`` with all three branches on (alpha 0.4 / 0.3 / 0.3; the perceptual
  one reads the ``visual_entropy`` scorer's column) and the plugin's difficulty sampler in ``target`` mode (prompts
  whose estimated pass rate is nearest 0.5, started from the offline ``pass_rate`` and learned online);
* ``grpo``: plain ``algorithm.adv_estimator=grpo``; the sampler in ``uniform`` mode (random order, as verl's own
  sampler) only so that its batch mix is logged the same way.

Both use the CPU smoke recipe (:func:`verl_difficulty.cli.smoke.smoke_command`, ``recipes/cpu_smoke``: the plugin's
trainer mode, ``r1v_acc`` reward with a format term, FSDP2 on CPU, transformers rollout) with the demo's sizes. The
training rows are the chosen selection's ``train.parquet`` (``--train-on``) with a ``true_bucket`` field (the true
level's bucket name, :func:`verl_difficulty.data.true_buckets.add_true_buckets`) that the sampler's bucket key points
at, so its ``batch_frac`` metrics are the true-level mix of each batch. Validation runs on every scored row, each
with its true level as data source, so verl logs the accuracy per true level (``val-core/true_level_L/acc/mean@n``).

Each run writes verl's tracker output to ``DIR/train/<run>/metrics.jsonl`` and its console to
``DIR/logs/train_<run>.log``; a finished run is kept by a rerun (its own done-marker ``train.<run>``), a killed one is
started again from its first step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np

from verl_difficulty import schema
from verl_difficulty.demo import metrics as M
from verl_difficulty.demo.console import StageFailed, last_error_line, tail
from verl_difficulty.demo.prepare import true_levels
from verl_difficulty.demo.settings import RUNS, DemoSettings, stage_settings
from verl_difficulty.demo.workspace import DemoRun, StageResult

TRUE_BUCKET = "true_bucket"
"""The training rows' field holding the true level's bucket name (the sampler's ``bucket_key`` in the demo)."""
MODEL_LINK = "tiny_qwen25vl"
"""Where :func:`smoke_command` expects the model inside a run folder (a symlink to the demo's model)."""


def training_rows(run: DemoRun) -> str:
    """The parquet both runs train on: the chosen selection's ``train.parquet`` (or every scored row)."""
    s = run.settings
    if s.train_on == "all":
        return run.scored_file
    path = run.path("select", s.train_on, "train.parquet")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the {s.train_on} selection did not run (see the select stage)")
    return path


def write_training_data(run: DemoRun) -> tuple[str, str, int, bool]:
    """``DIR/train/data/{train,val}.parquet``; returns their paths, the number of training rows and whether the true
    level is known."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from verl_difficulty.data.io import write_parquet
    from verl_difficulty.data.true_buckets import add_true_buckets

    s = run.settings
    out = run.path("train", "data")
    os.makedirs(out, exist_ok=True)
    train, val = os.path.join(out, "train.parquet"), os.path.join(out, "val.parquet")
    source = training_rows(run)
    n = pq.ParquetFile(source).metadata.num_rows
    if n < s.batch_size:
        raise ValueError(f"the {s.train_on} selection kept {n} rows, fewer than --batch-size {s.batch_size}: train on "
                         "another selection (--train-on all) or score more rows (--n-train)")
    shutil.copyfile(source, train)
    scored = pq.read_table(run.scored_file)
    levels = true_levels(scored)
    known = bool(np.isfinite(levels).all())
    if known:
        add_true_buckets(train, field=TRUE_BUCKET)
        names = [M.level_source(int(v)) for v in levels]
        scored = scored.set_column(scored.schema.get_field_index(schema.DATA_SOURCE), schema.DATA_SOURCE,
                                   pa.array(names, type=pa.string()))
    write_parquet(val, scored)
    return train, val, n, known


def overrides(s: DemoSettings, run_name: str, val_rows: int, known_levels: bool) -> list[str]:
    """The hydra overrides of one run on top of the CPU smoke recipe."""
    common = [
        "trainer.logger=[console,file]",
        "trainer.project_name=verl_difficulty_demo",
        f"trainer.experiment_name=demo_{run_name}",
        "trainer.total_epochs=1000",  # the steps decide; a small selection is seen several times
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.test_freq={s.test_freq}",
        "trainer.val_before_train=true",
        f"data.train_batch_size={s.batch_size}",
        f"data.val_batch_size={min(val_rows, 128)}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={s.batch_size}",
        f"actor_rollout_ref.rollout.n={s.rollout_n}",
        f"actor_rollout_ref.rollout.val_kwargs.n={s.val_n}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
        "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
        "difficulty.sampler.enable=true",
        f"difficulty.sampler.seed={s.seed + 1}",
    ]
    if known_levels:
        common.append(f"difficulty.sampler.bucket_key={TRUE_BUCKET}")
    if run_name == "durian":
        return common + [
            "algorithm.adv_estimator=durian",
            "algorithm.difficulty.durian.alpha_ori=0.4",
            "algorithm.difficulty.durian.alpha_percep=0.3",
            "algorithm.difficulty.durian.alpha_reason=0.3",
            f"algorithm.difficulty.durian.reason_groups={min(2, s.batch_size)}",
            "difficulty.sampler.mode=target",
            "difficulty.sampler.target=0.5",
        ]
    if run_name == "grpo":
        return common + ["algorithm.adv_estimator=grpo", "difficulty.sampler.mode=uniform"]
    raise ValueError(f"unknown run {run_name!r}; runs: {list(RUNS)}")


def _link(target: str, link: str) -> None:
    if os.path.islink(link) or os.path.isfile(link):
        os.unlink(link)
    elif os.path.isdir(link):
        shutil.rmtree(link)
    os.symlink(target, link)


def _postfix(records: list) -> str:
    r = M.series(records, M.REWARD)[1]
    a = M.series(records, M.TRAIN_ACC)[1]
    parts = []
    if r:
        parts.append(f"reward {r[-1]:.2f}")
    if a:
        parts.append(f"acc {a[-1]:.2f}")
    return ", ".join(parts)


def run_one(run: DemoRun, run_name: str, val_rows: int, known: bool) -> dict:
    """One ``main_ppo`` run with a progress bar over its steps; returns its curves. Raises :class:`StageFailed`."""
    from verl_difficulty.cli.smoke import smoke_command

    s = run.settings
    work = run.path("train", run_name)
    if os.path.isdir(work):
        shutil.rmtree(work)  # a run is redone from its first step
    os.makedirs(work)
    _link(run.model_dir, os.path.join(work, MODEL_LINK))
    _link(run.path("train", "data"), os.path.join(work, "data"))
    metrics_path = os.path.join(work, "metrics.jsonl")
    log_path = run.log_path(f"train_{run_name}")
    cmd = smoke_command(work, steps=s.train_steps, extra=overrides(s, run_name, val_rows, known))
    env = dict(os.environ, VERL_PLATFORM="cpu", VERL_FILE_LOGGER_PATH=metrics_path, RAY_DEDUP_LOGS="0",
               PYTHONUNBUFFERED="1")
    bar = run.console.bar(s.train_steps, f"{run_name:<7}", unit="step")
    t0 = time.time()
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n+ VERL_PLATFORM=cpu "
                      f"VERL_FILE_LOGGER_PATH={metrics_path} {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=work, start_new_session=True)
            try:
                while proc.poll() is None:
                    time.sleep(1.0)
                    records = M.read_records(metrics_path)
                    done = min(M.steps_done(records), s.train_steps)
                    if done > bar.n:
                        bar.update(done - bar.n)
                    bar.set_postfix_str(_postfix(records), refresh=False)
            except BaseException:
                _stop(proc)
                raise
    finally:
        bar.close()
    wall = time.time() - t0
    records = M.read_records(metrics_path)
    if proc.returncode != 0:
        cause = last_error_line(tail(log_path)) or f"main_ppo exited with code {proc.returncode}"
        raise StageFailed("train", f"run {run_name}: {cause}", log_path)
    if M.steps_done(records) < s.train_steps:
        raise StageFailed("train", f"run {run_name}: verl logged {M.steps_done(records)} of {s.train_steps} steps "
                          f"to {metrics_path}", log_path)
    return {"metrics": metrics_path, "log": log_path, "wall_s": round(wall, 1), "curves": M.curves(records)}


def _stop(proc: subprocess.Popen) -> None:
    """Stop a run we started (its own process group: main_ppo and the Ray processes it spawned)."""
    import signal

    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def run_summary(name: str, curves: dict) -> dict:
    """The key numbers of one run: reward and training accuracy (first, mean of the last 3 steps), validation
    accuracy per true level (first and last validation)."""
    out = {"run": name, "steps": curves["steps"]}
    for key in ("reward", "train_acc"):
        first, _ = M.first_last(curves[key])
        out[key] = {"first": first, "last3": M.window_mean(curves[key])}
    out["val_acc"] = {src: {"level": v["level"], "first": v["values"][0] if v["values"] else None,
                            "last": v["values"][-1] if v["values"] else None, "n": v["n"]}
                      for src, v in curves["val_acc"].items()}
    mix = {b: (sum(vals) / len(vals) if vals else None) for b, (_, vals) in curves["mix"].items()}
    out["mix_mean"] = mix
    return out


def format_run(summary: dict) -> str:
    r, a = summary["reward"], summary["train_acc"]

    def f(v):
        return "-" if v is None else f"{v:.2f}"

    val = ", ".join(f"L{v['level'] if v['level'] is not None else src} {f(v['first'])}->{f(v['last'])}"
                    for src, v in summary["val_acc"].items())
    return (f"{summary['run']:<7} reward {f(r['first'])} -> {f(r['last3'])} (last 3 steps), train acc "
            f"{f(a['first'])} -> {f(a['last3'])}; validation acc by true level: {val or '-'}")


def run_train(run: DemoRun) -> StageResult:
    s = run.settings
    _, val, n_train, known = write_training_data(run)
    import pyarrow.parquet as pq

    val_rows = pq.ParquetFile(val).metadata.num_rows
    what = "every scored row" if s.train_on == "all" else f"the {s.train_on} selection"
    run.console.line(f"training rows: {n_train} ({what}); validation rows: {val_rows} (accuracy per true level)")
    settings = stage_settings(s, "train")
    upstream = {u: run.book.token(u) for u in ("model", "score", "select")}
    lines, data, outputs = [], {"runs": {}}, []
    for name in RUNS:
        sub = f"train.{name}"
        sub_settings = dict(settings, run=name)
        st = run.book.status(sub, sub_settings, upstream)
        if st.done and "train" not in run.force:
            rec = st.record
            run.console.line(f"{name}: reused ({st.why})")
            data["runs"][name] = rec.data
        else:
            result = run_one(run, name, val_rows, known)
            summary = run_summary(name, result["curves"])
            data["runs"][name] = {"metrics": result["metrics"], "log": result["log"], "wall_s": result["wall_s"],
                                  "summary": summary}
            run.book.mark_done(sub, sub_settings, upstream, [result["metrics"]], result["wall_s"],
                               [format_run(summary)], data["runs"][name])
        outputs.append(data["runs"][name]["metrics"])
        lines.append(format_run(data["runs"][name]["summary"]) + f" ({data['runs'][name]['wall_s']:.0f}s)")
        lines.append(f"        verl's tracker output: {data['runs'][name]['metrics']}")
    return StageResult(outputs, lines, data)

