"""The console side of the demo: library output goes to the stage log, errors are found in a log."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from verl_difficulty.demo.console import Console, StageFailed, last_error_line, one_line, to_log


def test_to_log_captures_fd_level_and_child_output_then_restores(tmp_path, capfd):
    log = tmp_path / "logs" / "stage.log"
    with to_log(str(log)):
        print("python print")
        os.write(1, b"fd one\n")
        os.write(2, b"fd two\n")
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"],
                       check=True)
    os.write(1, b"after\n")
    text = log.read_text()
    for line in ("python print", "fd one", "fd two", "child out", "child err"):
        assert line in text
    out, err = capfd.readouterr()
    assert "after" in out and "fd one" not in out and "fd two" not in err


def test_to_log_restores_after_an_error(tmp_path, capfd):
    try:
        with to_log(str(tmp_path / "x.log")):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    os.write(1, b"visible\n")
    assert "visible" in capfd.readouterr().out


def test_last_error_line_picks_the_cause():
    log = "\n".join([
        "INFO starting", "Traceback (most recent call last):", '  File "x.py", line 3, in <module>',
        "    raise ValueError('bad')",
        "(TaskRunner pid=123) verl_difficulty.config.ConfigError: unknown setting difficulty.sampler.band.hgih",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
    ])
    assert last_error_line(log) == "ConfigError: unknown setting difficulty.sampler.band.hgih"
    assert last_error_line("all good\nstep:1") is None
    assert last_error_line("\x1b[31mRuntimeError: out of memory\x1b[0m") == "RuntimeError: out of memory"
    assert len(one_line("x" * 1000, limit=50)) == 50


def test_console_failure_names_stage_cause_and_log():
    buf = io.StringIO()
    Console(buf).failure(StageFailed("score", "ValueError: no rows", "/d/logs/score.log"), "rerun it")
    text = buf.getvalue()
    assert "stage 'score' failed: ValueError: no rows" in text and "log: /d/logs/score.log" in text
