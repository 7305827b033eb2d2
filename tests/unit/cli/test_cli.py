"""The command line: one module per subcommand, ``score`` flags generated from the job and the scorers' parameter
dataclasses (same flags and defaults as before), errors naming the flag, and no scorer known by name outside it."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from verl_difficulty import cli
from verl_difficulty.config import describe
from verl_difficulty.scoring import ScoreJob, get_scorer, scorer_names

PKG = Path(cli.__file__).resolve().parents[1]


@pytest.fixture
def captured(monkeypatch):
    """``cli.main(["score", ...])`` with run_scoring replaced: the jobs it would run."""
    jobs = []

    def fake(job, **kw):
        jobs.append(job)
        return {"output": "x"}

    monkeypatch.setattr("verl_difficulty.scoring.engine.run_scoring", fake)
    return jobs


def _score(*extra):
    return ["score", "in.parquet", "--model", "m", "-o", "out", *extra]


def test_defaults_are_the_job_and_params_defaults(captured):
    assert cli.main(_score()) == 0
    job = captured[0]
    assert job.scorers == {"passk": {}} and job.inputs == ["in.parquet"] and job.output_dir == "out"
    ref = ScoreJob(inputs=["in.parquet"], output_dir="out", model_path="m", scorers={"passk": {}},
                   backend_kwargs={"device": "auto", "dtype": "auto"})
    assert job == ref


def test_every_flag_of_the_hand_written_cli_still_works(captured):
    args = _score("--scorers", "passk,pism,cde", "--limit", "5", "--overwrite", "--backend", "transformers",
                  "--device", "cpu", "--dtype", "float32", "--backend-kwargs", '{"attn_implementation": "sdpa"}',
                  "--system-prompt", "drop", "--reward", "perception", "--reward-kwargs", '{"timeout_s": 5}',
                  "--seed", "3", "--shard-size", "7", "--batch-size", "2", "--num-workers", "0",
                  "--cpus-per-worker", "2", "--gpus-per-worker", "0", "--ray-address", "auto", "--max-attempts", "4",
                  "--no-progress", "--passk-k", "3", "--passk-temperature", "0.5", "--passk-top-p", "0.9",
                  "--passk-max-tokens", "8", "--pism-mode", "pixel", "--pism-ratios", "0,0.25,0.5", "--pism-k", "4",
                  "--pism-tau", "0.2", "--pism-temperature", "0", "--pism-top-p", "0.8", "--pism-max-tokens", "9",
                  "--pism-scan-all", "--pism-no-early-exit", "--pism-at-medium-max", "medium", "--pism-hard-max",
                  "0.3", "--pism-medium-max", "0.6", "--pism-tries-per-round", "2", "--cde-m", "2",
                  "--cde-temperature", "0.7", "--cde-top-p", "0.95", "--cde-max-tokens", "5")
    assert cli.main(args) == 0
    job = captured[0]
    assert job.scorers == {
        "passk": {"k": 3, "temperature": 0.5, "top_p": 0.9, "max_tokens": 8},
        "pism": {"mode": "pixel", "ratios": [0.0, 0.25, 0.5], "k": 4, "tau": 0.2, "temperature": 0.0, "top_p": 0.8,
                 "max_tokens": 9, "scan_all": True, "early_exit": False, "at_medium_max": "medium",
                 "hard_max": 0.3, "medium_max": 0.6, "tries_per_round": 2},
        "cde": {"m": 2, "temperature": 0.7, "top_p": 0.95, "max_tokens": 5},
    }
    assert (job.limit, job.overwrite, job.system_prompt, job.seed, job.shard_size, job.batch_size) == \
        (5, True, "drop", 3, 7, 2)
    assert (job.num_workers, job.cpus_per_worker, job.gpus_per_worker, job.ray_address, job.max_attempts,
            job.progress) == (0, 2.0, 0.0, "auto", 4, False)
    assert job.backend_kwargs == {"attn_implementation": "sdpa", "device": "cpu", "dtype": "float32"}
    assert job.verifier == {"name": "reward", "reward": "perception", "timeout_s": 5}
    assert get_scorer("pism")(**job.scorers["pism"]).p.ratios == (0.0, 0.25, 0.5)


def test_help_is_generated_from_the_parameter_dataclasses(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["score", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in scorer_names():
        cls = get_scorer(name)
        assert f"{name}: {cls.title}" in text
        for st in describe(cls.Params):
            flag = f"--{name}-{st.name}".replace("_", "-")
            if st.type is bool:
                flag = f"--{name}-no-{st.name}".replace("_", "-") if st.default else flag
            assert flag in text, flag
            assert " ".join(st.help.split()) in text, st.help
    assert "--pism-ratios FLOAT,..." in text and "(default 0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9; P1)" in text
    assert "(default 128)" in text  # --shard-size: the ScoreJob default


@pytest.mark.parametrize("extra,flag", [
    (["--scorers", "pism", "--pism-ratios", "0.1,0.2"], "--pism-ratios: must start at 0.0"),
    (["--scorers", "pism", "--pism-ratios", "0,nan"], "--pism-ratios[1]: expected a finite number"),
    (["--scorers", "pism", "--pism-hard-max", "0.9"], "--pism-hard-max: must be < --pism-medium-max"),
    (["--passk-top-p", "0"], "--passk-top-p: must be > 0.0"),
    (["--passk-temperature", "-1"], "--passk-temperature: must be >= 0.0"),
    (["--scorers", "cde", "--cde-temperature", "inf"], "--cde-temperature: expected a finite number"),
    (["--shard-size", "0"], "--shard-size: must be >= 1"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker: must be > 0"),
    (["--scorers", "passk,nope"], "--scorers: unknown ['nope']"),
])
def test_bad_values_are_errors_naming_the_flag(captured, capsys, extra, flag):
    assert cli.main(_score(*extra)) == 2
    assert flag in capsys.readouterr().err
    assert not captured


def test_a_module_that_does_not_import_is_a_usage_error(capsys):
    assert cli.main(_score("--scorer-module", "no_such_module_xyz")) == 2
    assert "--scorer-module" in capsys.readouterr().err


def test_subcommands_and_python_dash_m(capsys, tmp_path):
    assert cli.main(["schema"]) == 0
    assert "pism_bucket" in capsys.readouterr().out
    assert {"prepare_smoke", "smoke_command", "smoke_recipe_dir"} <= set(dir(cli))
    assert (cli.smoke_recipe_dir() / "grpo_tiny_vl.yaml").is_file()
    assert cli.smoke_command(str(tmp_path), steps=3)[-1] == "trainer.total_training_steps=3"
    out = subprocess.run([sys.executable, "-m", "verl_difficulty.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert all(c in out for c in ("doctor", "schema", "tiny-model", "synth", "smoke", "score"))


def _code_strings(path: Path) -> list[str]:
    """String constants of a module's code: docstrings and the ``EPILOG`` help text left out."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "EPILOG" for t in node.targets):
            skip.add(id(node.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in skip]


def test_no_scorer_is_known_by_name_outside_its_module():
    files = [p for p in (PKG / "scoring").rglob("*.py") if "scorers" not in p.parts] + list((PKG / "cli").glob("*.py"))
    names = re.compile(r"\b(passk|pism|cde)\b", re.IGNORECASE)
    hits = [(p.name, s) for p in files for s in _code_strings(p) if names.search(s)]
    assert not hits, hits
    # the package's face may re-export a scorer's pure function (``verl_difficulty.scoring.visual_entropy``); the
    # engine, runner, store, summary, registry and CLI modules import no scorer module
    for p in files:
        if p.name == "__init__.py" and p.parent.name == "scoring":
            continue
        imports = [n for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom)]
        assert not [n.module for n in imports if n.module and n.module.startswith("verl_difficulty.scoring.scorers")]


def test_scorer_params_are_recorded_as_json(tmp_path):
    p = get_scorer("pism")(ratios=[0, 0.5], fill=[255, 0, 0]).params()
    assert json.loads(json.dumps(p)) == p and p["ratios"] == [0.0, 0.5] and p["fill"] == [255, 0, 0]
