"""The driver's bookkeeping with stand-in stage functions (the real stages run in tests/integration/test_demo.py):
reuse of finished stages, --force and changed settings redo a stage and everything that read it, a failure names the
stage, the cause and the log and the next run resumes at that stage, --only needs finished upstream stages."""

from __future__ import annotations

import io
import os

import pytest

from verl_difficulty.demo import pipeline
from verl_difficulty.demo.console import Console
from verl_difficulty.demo.settings import STAGES, make_settings
from verl_difficulty.demo.workspace import StageResult


@pytest.fixture
def calls(monkeypatch):
    ran: list[str] = []
    fail: dict[str, Exception] = {}

    def make(stage):
        def fn(run):
            ran.append(stage)
            print(f"library noise of {stage}")  # goes to the stage log, not the console
            if stage in fail:
                raise fail.pop(stage)
            path = run.path(stage, "out.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(stage)
            return StageResult([path], [f"{stage} summary"], {"stage": stage})
        return fn

    monkeypatch.setattr(pipeline, "STAGE_FUNCS", {s: make(s) for s in STAGES})
    return ran, fail


def _demo(tmp_path, **kw):
    buf = io.StringIO()
    settings = make_settings({"output": str(tmp_path / "demo"), **kw.pop("settings", {})})
    code = pipeline.run_demo(settings, console=Console(buf), **kw)
    return code, buf.getvalue()


def test_second_run_reuses_everything(tmp_path, calls):
    ran, _ = calls
    code, out = _demo(tmp_path)
    assert code == 0 and ran == list(STAGES)
    assert "library noise" not in out and "score summary" in out
    assert "library noise of score" in (tmp_path / "demo" / "logs" / "score.log").read_text()
    ran.clear()
    code, out = _demo(tmp_path)
    assert code == 0 and ran == []
    assert out.count("reused (finished") == len(STAGES) and "score summary" in out


def test_force_and_changed_settings_redo_the_stage_and_its_readers(tmp_path, calls):
    ran, _ = calls
    _demo(tmp_path)
    ran.clear()
    _demo(tmp_path, force=["select"])
    assert ran == ["select", "train", "report"]  # the stages that read select (directly or not)
    ran.clear()
    code, out = _demo(tmp_path, settings={"train_steps": 3})
    assert ran == ["train", "report"] and "redo (settings changed: steps)" in out
    ran.clear()
    _demo(tmp_path, settings={"train_steps": 3, "warmup_steps": 10})
    assert ran == ["model", "score", "select", "train", "report"]
    ran.clear()
    _demo(tmp_path, settings={"train_steps": 3, "warmup_steps": 10}, force=["all"])
    assert ran == list(STAGES)


def test_failure_names_stage_cause_log_and_the_rerun_resumes(tmp_path, calls):
    ran, fail = calls
    fail["score"] = RuntimeError("the scoring worker failed to start")
    code, out = _demo(tmp_path)
    assert code == 1 and ran == ["data", "model", "score"]
    log = str(tmp_path / "demo" / "logs" / "score.log")
    assert "stage 'score' failed: RuntimeError: the scoring worker failed to start" in out
    assert f"log: {log}" in out and "rerun the same command" in out
    assert "Traceback" in open(log).read()  # the details are in the log
    ran.clear()
    code, _ = _demo(tmp_path)
    assert code == 0 and ran == ["score", "select", "train", "report"]


def test_only_runs_one_stage_and_needs_its_upstream(tmp_path, calls):
    ran, _ = calls
    code, out = _demo(tmp_path, only="score")
    assert code == 2 and ran == [] and "needs the finished data, model stage(s)" in out
    _demo(tmp_path)
    ran.clear()
    code, _ = _demo(tmp_path, only="report", force=["report"])
    assert code == 0 and ran == ["report"]
    code, out = _demo(tmp_path, force=["nope"])
    assert code == 2 and "--force: unknown stage 'nope'" in out
