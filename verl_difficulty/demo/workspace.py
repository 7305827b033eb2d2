"""The demo folder and what every stage gets: the settings, the console, the stage markers, the paths.

Layout of ``DIR`` (``--output``)::

    demo.json                the settings of the last run
    data/train.parquet       the rows (synthetic, or a copy of --data)
    model/                   the tiny Qwen2.5-VL after its warm-up (absent with --model)
    score/                   the scoring job (scored.parquet, summary.json, manifest.json, shards/)
    select/<p1|p2|p4>/       the selections (train.parquet, decisions.parquet, selection.json, ...)
    select/mix.json          each selected subset's true-level mix vs random subsets of the same size
    train/data/              the training rows and the validation rows (data source = true level)
    train/<run>/             one verl run each (metrics.jsonl = verl's tracker output, checkpoints/)
    report/index.html        the report (plots/ beside it) and report/demo_summary.json (the key numbers)
    logs/<stage>.log         verl's, Ray's and the libraries' own output, one file per stage (train: one per run)
    .stages/<stage>.json     the done-markers (see :mod:`verl_difficulty.demo.stages`)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from verl_difficulty.data.io import atomic_write_bytes
from verl_difficulty.demo.console import Console
from verl_difficulty.demo.settings import DemoSettings
from verl_difficulty.demo.stages import StageBook

DEMO_FILE = "demo.json"
"""Written at the top of a demo folder; the report's demo sections find the folder by it."""


@dataclass
class StageResult:
    """What a stage hands back: the files that make it finished, the summary lines shown (and kept for a rerun) and
    its key numbers (JSON-able, kept in its marker)."""

    outputs: list
    summary: list = field(default_factory=list)
    data: dict = field(default_factory=dict)


class DemoRun:
    """One invocation of the demo over a folder."""

    def __init__(self, settings: DemoSettings, console: Optional[Console] = None, force: tuple = ()):
        self.settings = settings.resolved()
        self.root = self.settings.output
        self.console = console or Console()
        self.book = StageBook(self.root)
        self.force = tuple(force)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def log_path(self, name: str) -> str:
        return self.path("logs", f"{name}.log")

    @property
    def data_file(self) -> str:
        return self.path("data", "train.parquet")

    @property
    def model_dir(self) -> str:
        return self.settings.model or self.path("model")

    @property
    def scored_file(self) -> str:
        return self.path("score", "scored.parquet")

    def write_settings(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        atomic_write_bytes(self.path(DEMO_FILE), json.dumps(asdict(self.settings), indent=1, sort_keys=True).encode())


def find_demo_dir(paths) -> Optional[str]:
    """The demo folder one of ``paths`` lies in (the nearest ancestor holding :data:`DEMO_FILE`), or None."""
    for p in paths:
        d = os.path.abspath(str(p))
        for _ in range(4):
            if os.path.isfile(os.path.join(d, DEMO_FILE)):
                return d
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    return None
