"""Checks run before any work (before the output directory is touched): every error is one line naming the option,
file or path, so a job never starts only to fail on its first shard, or to fail silently.

* the job's settings and every scorer's parameters (:func:`verl_difficulty.config.parse`: bounds, finite numbers,
  choices, cross-field ``check``), ``--dtype``;
* the backend and verifier specs (``module:Class`` importable, the reward known);
* the model path (exists, has a ``config.json``; a vision part and an image processor when a scorer needs images);
* the inputs (each file is parquet, named if not) and their row ids (``extra_info.index`` unique over the job);
* the output directory (not an input directory, holds no input file, writable).

:class:`PreflightError` is a :class:`~verl_difficulty.config.ConfigError` (the command line exits with 2).
"""

from __future__ import annotations

import importlib
import json
import os
from collections import defaultdict
from typing import Any, Optional, Sequence

from verl_difficulty.config import ConfigError, parse
from verl_difficulty.schema import EXTRA_INFO, PROMPT_ID

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
"""A saved image processor (one of these files in the model directory)."""


class PreflightError(ConfigError):
    """A job that cannot run as given (the message names the option, file or path and what to do)."""


def check_job(job: Any) -> None:
    """The job's settings, as the command line parses them (``ConfigError`` naming ``job.<field>``)."""
    from verl_difficulty.scoring.job import ScoreJob

    parse(ScoreJob, job, "job")


def _importable(spec_name: str, option: str) -> None:
    module, _, cls = spec_name.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise PreflightError(f"{option}: cannot import module {module!r} ({type(e).__name__}: {e})") from e
    if not hasattr(obj, cls):
        raise PreflightError(f"{option}: module {module!r} has no {cls!r}")


def check_verifier(spec: dict) -> None:
    """A verifier spec that :func:`~verl_difficulty.scoring.verifier.make_verifier` can build (not built here)."""
    from verl_difficulty.scoring.verifier import REWARDS

    name = str(spec.get("name", "reward"))
    if name == "reward":
        if spec.get("reward", REWARDS[0]) not in REWARDS:
            raise PreflightError(f"--reward: {spec.get('reward')!r} is not one of {list(REWARDS)}")
        try:
            from verl_difficulty.rewards.config import resolve_settings

            resolve_settings(spec.get("reward", REWARDS[0]), {k: v for k, v in spec.items()
                                                              if k not in ("name", "reward")})
        except Exception as e:  # noqa: BLE001
            raise PreflightError(f"--reward-kwargs: {e}") from e
    elif name == "scripted":
        return
    elif ":" in name:
        _importable(name, "--verifier")
    else:
        raise PreflightError(f"--verifier: unknown verifier {name!r}; expected 'reward', 'scripted' or "
                             "'package.module:ClassName'")


def model_has_vision(model_path: str) -> tuple[bool, str]:
    """Whether a saved model directory can take images: ``(ok, what is missing)``."""
    missing = []
    try:
        with open(os.path.join(model_path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = {}
    if not any(k in config for k in ("vision_config", "visual", "vision_tower", "mm_vision_tower")):
        missing.append("a vision part (no vision_config in config.json)")
    if not any(os.path.isfile(os.path.join(model_path, f)) for f in PROCESSOR_FILES):
        missing.append(f"an image processor (no {' or '.join(PROCESSOR_FILES)})")
    return not missing, " and ".join(missing)


def check_model(job: Any, scorers: Sequence[Any]) -> None:
    """The model directory of a built-in backend exists and can do what the scorers need."""
    from verl_difficulty.scoring.backends import BACKENDS

    if job.backend not in BACKENDS:
        _importable(job.backend, "--backend")
        return
    path = str(job.model_path)
    if not os.path.isdir(path):
        raise PreflightError(f"--model: {path} is not a directory (a local checkpoint directory is needed)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise PreflightError(f"--model: {path} has no config.json (not a saved model directory)")
    image_scorers = [s.name for s in scorers if getattr(s, "requires_image", False)]
    if image_scorers:
        ok, missing = model_has_vision(path)
        if not ok:
            raise PreflightError(f"--model: {path} lacks {missing}, which scorer(s) {image_scorers} need for the "
                                 "images; use a vision-language checkpoint (saved with its processor)")


def check_inputs(files: Sequence[str]) -> None:
    """Every input is a readable parquet file (``PreflightError`` naming the file)."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - any reader error: not usable parquet
            raise PreflightError(f"input {path} is not a readable parquet file ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]}); give verl parquet files") from e


def _ids_of(path: str, rows: int) -> list:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if EXTRA_INFO not in pf.schema_arrow.names:
        return [None] * rows
    try:
        col = pq.read_table(path, columns=[f"{EXTRA_INFO}.{PROMPT_ID}"]).column(0)
        ids = col.slice(0, rows).to_pylist()
    except Exception:  # noqa: BLE001 - no such child, or not a struct: read the whole column
        ids = []
        for v in pq.read_table(path, columns=[EXTRA_INFO]).column(0).slice(0, rows).to_pylist():
            ids.append(v.get(PROMPT_ID) if isinstance(v, dict) else None)
    return ids


def check_unique_ids(shards: Sequence[Any], examples: int = 3) -> None:
    """``extra_info.index`` values are unique over the rows of the job (seeds and resume derive from them); rows
    without one are bad rows, not duplicates."""
    rows_of: dict[str, int] = defaultdict(int)
    for s in shards:
        rows_of[s.file] = max(rows_of[s.file], s.stop)
    seen: dict = {}
    dups: dict = defaultdict(list)
    for path, n in rows_of.items():
        for i, v in enumerate(_ids_of(path, n)):
            if v is None or isinstance(v, bool) or not isinstance(v, int):
                continue
            if v in seen:
                if not dups[v]:
                    dups[v].append(seen[v])
                dups[v].append((path, i))
            else:
                seen[v] = (path, i)
    if dups:
        extra = sum(len(w) - 1 for w in dups.values())
        shown = "; ".join(f"{v} at " + ", ".join(f"{os.path.basename(p)} row {i}" for p, i in where[:3])
                          for v, where in list(dups.items())[:examples])
        raise PreflightError(f"input: {len(dups)} {EXTRA_INFO}.{PROMPT_ID} value(s) used by more than one row "
                             f"({extra} duplicate row(s); e.g. {shown}); every row needs a unique id (its seeds and "
                             "its resume derive from it): fix the input")


def check_output(output_dir: str, files: Sequence[str], inputs: Sequence[Any]) -> None:
    """The output directory is not an input directory, holds no input file, and can be written."""
    out = os.path.realpath(output_dir)
    for item in inputs:
        item = os.path.realpath(os.fspath(item))
        if os.path.isdir(item) and item == out:
            raise PreflightError(f"--output: {output_dir} is the input directory; choose another directory")
    for f in files:
        if os.path.realpath(f).startswith(out + os.sep):
            raise PreflightError(f"--output: {output_dir} holds the input {f} (it would be overwritten); choose "
                                 "another directory")
    probe_dir = out
    while not os.path.exists(probe_dir):
        probe_dir = os.path.dirname(probe_dir)
    if not os.path.isdir(probe_dir):
        raise PreflightError(f"--output: {probe_dir} is not a directory")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise PreflightError(f"--output: {probe_dir} is not writable (permission denied); choose another "
                             "directory or fix its permissions")
    shards = os.path.join(out, "shards")
    for d in (out, shards):
        if os.path.isdir(d) and not os.access(d, os.W_OK | os.X_OK):
            raise PreflightError(f"--output: {d} is not writable (permission denied); fix its permissions or "
                                 "choose another directory")


def preflight(job: Any, scorers: Sequence[Any], files: Sequence[str], shards: Sequence[Any],
              backend: Optional[Any] = None, verifier: Optional[Any] = None) -> None:
    """All checks (objects injected as ``backend`` / ``verifier`` skip their spec checks)."""
    check_job(job)
    if verifier is None:
        check_verifier(dict(job.verifier))
    if backend is None:
        check_model(job, scorers)
    check_output(job.output_dir, files, job.inputs)
    check_unique_ids(shards)
