"""Stage bookkeeping: when a stage of the demo is finished, and when it must be redone.

A stage is *finished* when its done-marker ``DIR/.stages/<stage>.json`` exists, records the same settings as the run
asks for, records the same upstream stages (each finished stage gets a fresh random ``token``; a stage records the
tokens of the stages it read from, so redoing an upstream stage redoes everything that read it), and every output it
lists still exists. The marker is written atomically after the outputs, so a killed stage is never taken for a
finished one. :meth:`StageBook.status` says why a stage must run (never run, settings changed and which, an upstream
stage was redone, an output is missing).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional

from verl_difficulty.data.io import atomic_write_bytes, canonical_json

MARKER_DIR = ".stages"


def _plain(value):
    """Settings as JSON would give them back (tuples as lists), so a loaded marker compares equal."""
    return json.loads(canonical_json(value))


@dataclass
class StageRecord:
    """The done-marker of a finished stage."""

    stage: str
    settings: dict
    upstream: dict
    outputs: list
    token: str
    finished: str
    wall_s: float
    summary: list = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str).encode()


@dataclass
class Status:
    done: bool
    why: str
    record: Optional[StageRecord] = None


class StageBook:
    """The done-markers of one demo folder."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, MARKER_DIR)

    def path(self, stage: str) -> str:
        return os.path.join(self.dir, f"{stage}.json")

    def load(self, stage: str) -> Optional[StageRecord]:
        """The stage's marker, or None (missing or unreadable: an unreadable marker counts as not finished)."""
        try:
            with open(self.path(stage), encoding="utf-8") as f:
                raw = json.load(f)
            return StageRecord(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def token(self, stage: str) -> Optional[str]:
        rec = self.load(stage)
        return rec.token if rec else None

    def _abs(self, output: str) -> str:
        return output if os.path.isabs(output) else os.path.join(self.root, output)

    def status(self, stage: str, settings: dict, upstream: dict) -> Status:
        """Whether ``stage`` is finished with these settings and upstream tokens, and if not, why."""
        rec = self.load(stage)
        if rec is None:
            return Status(False, "not run yet" if not os.path.exists(self.path(stage)) else "its marker is unreadable")
        want = _plain(settings)
        if rec.settings != want:
            keys = sorted(k for k in set(rec.settings) | set(want) if rec.settings.get(k) != want.get(k))
            return Status(False, "settings changed: " + ", ".join(keys), rec)
        want_up = _plain(upstream)
        if rec.upstream != want_up:
            redone = sorted(k for k in set(rec.upstream) | set(want_up) if rec.upstream.get(k) != want_up.get(k))
            return Status(False, "redone upstream: " + ", ".join(redone), rec)
        for out in rec.outputs:
            if not os.path.exists(self._abs(out)):
                return Status(False, f"output missing: {out}", rec)
        return Status(True, "finished " + rec.finished, rec)

    def mark_done(self, stage: str, settings: dict, upstream: dict, outputs: list, wall_s: float,
                  summary: Optional[list] = None, data: Optional[dict] = None) -> StageRecord:
        """Record ``stage`` as finished (a fresh token); every output must exist."""
        rel = []
        for out in outputs:
            path = self._abs(str(out))
            if not os.path.exists(path):
                raise FileNotFoundError(f"stage {stage}: output {path} was not written")
            ap = os.path.abspath(path)
            rel.append(os.path.relpath(ap, self.root) if ap.startswith(self.root + os.sep) else ap)
        rec = StageRecord(stage=stage, settings=_plain(settings), upstream=_plain(upstream), outputs=rel,
                          token=uuid.uuid4().hex,
                          finished=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                          wall_s=round(float(wall_s), 3), summary=list(summary or []), data=_plain(data or {}))
        os.makedirs(self.dir, exist_ok=True)
        atomic_write_bytes(self.path(stage), rec.to_json())
        return rec

    def forget(self, stage: str) -> None:
        """Drop the stage's marker (it will be redone)."""
        try:
            os.unlink(self.path(stage))
        except FileNotFoundError:
            pass


class Timer:
    """Wall time of a block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.t0 = time.time()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.time() - self.t0
        return False
