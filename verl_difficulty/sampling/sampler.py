"""The plugin's dataset sampler: draws prompts for verl's dataloader by difficulty and learns pass rates online.

verl 0.9.1 has no sampler hook (``data.sampler.*`` is silently ignored; ``verl/trainer/ppo/utils.py:140-168``); the
plugin's trainer mode (:mod:`verl_difficulty.seam`) builds verl's ``StatefulDataLoader`` around this sampler, tells
it the batch size, and feeds it every step's outcomes with the training step. Its whole state goes into verl's
checkpoint through the dataloader's ``state_dict`` (``data.pt``), so a resumed run draws the same next batches as an
uninterrupted one.

:class:`DifficultySampler` composes the parts, each with its own state:

* :mod:`~verl_difficulty.sampling.rows` (:class:`Rows`): prompt ids, buckets, offline scores, bad rows;
* :mod:`~verl_difficulty.sampling.tracking` (:class:`PassRateTracker`): the online pass-rate estimates;
* :mod:`~verl_difficulty.sampling.curriculum` (:class:`Curriculum`): what each step aims for (schedules);
* :mod:`~verl_difficulty.sampling.drawing` (:class:`Drawer`): the uniform / stratified / target draws and the
  band-pass, with :mod:`~verl_difficulty.sampling.nearest` for O(batch log N) target draws;
* a per-step record of what was drawn, for the step's metrics.

**When draws happen**: one batch at a time, when the dataloader asks for its first index, so a draw sees every
update made before it (with verl's sync trainer the batch of step N is drawn at the start of step N and the update
of step N comes before the draw of step N+1).

**Learning**: :meth:`DifficultySampler.update` adds a step's outcomes (one per response; NaN = an empty response,
left out) and finishes the step; :meth:`DifficultySampler.observe` only adds outcomes (for groups that verl's DAPO
``filter_groups`` evicts before the advantage step). ``difficulty/sampler/prompts_drawn`` and
``difficulty/sampler/prompts_updated`` count the prompts drawn and the prompt groups that came back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from verl_difficulty import schema
from verl_difficulty.config import parse
from verl_difficulty.sampling.config import SamplerConfig
from verl_difficulty.sampling.curriculum import Curriculum, Setting
from verl_difficulty.sampling.drawing import Draw, Drawer
from verl_difficulty.sampling.rows import Rows, read_row_fields
from verl_difficulty.sampling.tracking import PassRateTracker

logger = logging.getLogger(__name__)

STATE_VERSION = 3
# settings that do not change what is drawn (a resumed run may change them freely)
_NON_DRAW_SETTINGS = ("enable", "trace_path", "on_bad_row")

__all__ = ["DifficultySampler", "SamplerConfig", "check_dataloader_workers", "read_row_fields", "STATE_VERSION"]


def _s(*names: str) -> str:
    return schema.metric("sampler", *names)


def _c(*names: str) -> str:
    return schema.metric("curriculum", *names)


def check_dataloader_workers(num_workers: Any) -> None:
    """The sampler needs ``data.dataloader_num_workers=0``: worker prefetch would draw indices ahead of the updates."""
    n = int(num_workers or 0)
    if n > 0:
        raise ValueError(
            f"difficulty.sampler.enable=true needs data.dataloader_num_workers=0 (got {n}): with worker processes the "
            "dataloader prefetches indices ahead of time, so draws would not see the latest pass-rate updates and "
            "curriculum steps (and verl's default of 8 workers copies the sampler into each worker). Set "
            "data.dataloader_num_workers=0; data loading stays in the trainer process (cheap for parquet rows)."
        )


class _Iterator:
    """One pass of the dataloader over the sampler; all state lives in the sampler (so checkpoints are complete).

    ``state_dict``/``load_state_dict`` are stubs: torchdata's batch-sampler iterator asserts that the sampler
    iterator is stateful when a checkpoint holds an iterator state (one written with verl's stock RandomSampler).
    """

    def __init__(self, sampler: "DifficultySampler"):
        self.sampler = sampler
        self.first = True

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            logger.warning(
                "difficulty sampler: the checkpoint's dataloader state comes from another sampler (verl's stock "
                "RandomSampler?); the difficulty sampler starts afresh (epoch 0, prior estimates)"
            )

    def __next__(self) -> int:
        s = self.sampler
        if self.first:
            self.first = False
            if s.drawer.needs_batch() and s.drawer.epoch_done():
                s.drawer.new_epoch()
        return s._next_index()


class _StepRecord:
    """What was drawn for the current step and its outcomes, turned into the step's metrics when it finishes."""

    def __init__(self, buckets: Sequence[str]):
        self.buckets = tuple(buckets)
        self.acc = self._empty()
        self.last: dict[str, float] = {}

    def _empty(self) -> dict[str, Any]:
        return {
            "n": 0, "bucket_counts": np.zeros(len(self.buckets) + 1, dtype=np.int64),  # last = no bucket
            "est_sum": 0.0, "skipped": 0, "fallback": 0, "repeats": 0, "hash": "", "stage": 0, "target": None,
            "mix": None, "band": None, "outcome_sum": 0.0, "outcome_n": 0,
        }

    def draw(self, rows: np.ndarray, setting: Setting, d: Draw, codes: np.ndarray, est: np.ndarray,
             prompt_ids: np.ndarray) -> None:
        a, k = self.acc, len(self.buckets) + 1
        a["n"] += len(rows)
        a["bucket_counts"] += np.bincount(codes[rows].astype(np.int64) % k, minlength=k)
        a["est_sum"] += float(est[rows].sum())
        a["skipped"] += d.skipped
        a["fallback"] += d.fallback
        a["repeats"] += d.repeats
        a["hash"] = hashlib.blake2b(a["hash"].encode() + prompt_ids[rows].tobytes(), digest_size=8).hexdigest()
        a["stage"], a["target"], a["band"] = setting.stage, setting.target, setting.band
        a["mix"] = None if setting.mix is None else setting.mix.tolist()

    def outcomes(self, c: np.ndarray) -> None:
        self.acc["outcome_sum"] += float(c.sum())
        self.acc["outcome_n"] += len(c)

    def batch_acc(self) -> float:
        a = self.acc
        return a["outcome_sum"] / a["outcome_n"] if a["outcome_n"] else float("nan")

    def finish(self, step: int, stage: int, uses_band: bool) -> None:
        a, out = self.acc, {_c("step"): float(step), _c("stage"): float(stage)}
        if a["n"]:
            fr = a["bucket_counts"] / a["n"]
            if a["bucket_counts"][: len(self.buckets)].sum():
                for k, name in enumerate(self.buckets):
                    out[_s("batch_frac", name)] = float(fr[k])
            out[_s("batch_pass_rate_est_mean")] = a["est_sum"] / a["n"]
            out[_c("batch_id_hash")] = float(int(a["hash"][:12], 16))  # 48 bits: exact in a float64
            out[_s("batch_prompts")] = float(a["n"])
        if a["target"] is not None:
            out[_c("target_pass_rate")] = float(a["target"])
        if a["mix"] is not None:
            for k, name in enumerate(self.buckets):
                out[_c("mix", name)] = float(a["mix"][k])
        if a["band"] is not None:
            out[_c("band_low")], out[_c("band_high")] = float(a["band"][0]), float(a["band"][1])
        if uses_band:
            out[_s("bandpass_skipped")] = float(a["skipped"])
            out[_s("bandpass_fallback")] = float(a["fallback"])
        if a["repeats"]:
            out[_s("repeats")] = float(a["repeats"])
        if a["outcome_n"]:
            out[_s("update_acc_mean")] = self.batch_acc()
        self.last = out
        self.acc = self._empty()

    def state_dict(self) -> dict[str, Any]:
        return {"acc": {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.acc.items()},
                "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc = self._empty()
        self.acc.update({k: (np.asarray(v).copy() if isinstance(v, np.ndarray) else v)
                         for k, v in state["acc"].items()})
        self.last = dict(state["last"])


class DifficultySampler(torch.utils.data.Sampler[int]):
    """Sampler over dataset rows by difficulty, with online per-prompt pass-rate estimates.

    Args:
        prompt_ids: stable prompt id of each dataset row, shape (N,).
        priors: offline prior pass rate per row in [0, 1] or NaN, shape (N,), or ``None``.
        config: :class:`SamplerConfig` (or a mapping of ``difficulty.sampler`` settings).
        buckets: per row a bucket name (or ``None``), or a :class:`~verl_difficulty.sampling.rows.BucketColumn`;
            ``None`` if the data has none.
        batch_size: prompts per dataloader batch (``data.gen_batch_size or data.train_batch_size``); the sampler
            decides one batch at a time.
    """

    def __init__(self, prompt_ids: np.ndarray, priors: Optional[np.ndarray] = None, config: Any = None, *,
                 buckets: Any = None, batch_size: int = 1):
        self.config = cfg = parse(SamplerConfig, config, "difficulty.sampler")
        self.rows = Rows(prompt_ids, priors, buckets, cfg)
        self.curriculum = Curriculum(cfg)
        self.tracker = PassRateTracker(cfg, self.rows.pop_priors())
        self.drawer = Drawer(cfg, self.rows, self.tracker.est, self.curriculum, batch_size)
        self.record = _StepRecord(cfg.buckets)
        self.step = 1

    @classmethod
    def from_dataset(cls, dataset, config: Any, batch_size: int = 1) -> "DifficultySampler":
        """Build from a verl RLHFDataset (arrow-backed ``.dataframe``), a ``datasets.Dataset`` or a list of rows."""
        config = parse(SamplerConfig, config, "difficulty.sampler")
        f = read_row_fields(dataset, config)
        return cls(f.prompt_ids, f.scores, config, buckets=f.buckets, batch_size=batch_size)

    # ------------------------------------------------------------------ lookups
    @property
    def prompt_ids(self) -> np.ndarray:
        return self.rows.prompt_ids

    @property
    def epoch(self) -> int:
        return self.drawer.epoch

    def rows_of(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Dataset row of each prompt id (-1 where unknown)."""
        return self.rows.rows_of(prompt_ids)

    def pass_rate(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Current pass-rate estimate of all rows (or of ``rows``)."""
        est = self.tracker.est
        return est if rows is None else est[rows]

    def estimate_for_ids(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Estimate per prompt id (NaN for ids not in the training set)."""
        rows = self.rows_of(prompt_ids)
        out = np.full(len(rows), np.nan)
        ok = rows >= 0
        out[ok] = self.tracker.est[rows[ok]]
        return out

    def setting(self) -> Setting:
        """What the sampler aims for at its current step (stage, mix, target, band)."""
        return self.curriculum.at(self.step)

    # ------------------------------------------------------------------ drawing
    def __len__(self) -> int:
        return self.drawer.epoch_size

    def __iter__(self) -> Iterator[int]:
        return _Iterator(self)

    def set_step(self, step: int) -> None:
        """Tell the sampler which training step the next draws are for (the seam passes it with each update)."""
        self.step = int(step)

    def _next_index(self) -> int:
        d = self.drawer
        if d.needs_batch():
            if d.epoch_done():
                raise StopIteration
            setting = self.setting()
            rows, draw = d.decide(setting, self.step)
            self.record.draw(rows, setting, draw, self.rows.bucket_codes, self.tracker.est, self.prompt_ids)
            self._trace({"event": "draw", "step": self.step, "epoch": d.epoch, "batch": d.batch_in_epoch - 1,
                         "stage": setting.stage, "rows": rows.tolist(), "ids": self.prompt_ids[rows].tolist(),
                         "fallback": draw.fallback, "skipped": draw.skipped})
        return d.pop()

    def _trace(self, record: dict) -> None:
        if self.config.trace_path:
            with open(self.config.trace_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ learning
    def _observe(self, prompt_ids: Sequence[int], correct: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        pids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        c = np.clip(np.asarray(correct, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if len(c) != len(pids):
            raise ValueError(f"{len(pids)} prompt ids but {len(c)} outcomes")
        rows = self.rows_of(pids)
        changed = self.tracker.observe(rows, c)
        if self.drawer.index is not None:
            self.drawer.index.changed(changed)
        self.record.outcomes(c[(rows >= 0) & np.isfinite(c)])
        return pids, c

    def observe(self, prompt_ids: Sequence[int], correct: Sequence[float]) -> None:
        """Add outcomes to the estimates without finishing the step: ``correct[i]`` in [0, 1] (NaN: left out) for a
        response of prompt ``prompt_ids[i]``. For groups verl evicts before the advantage step (DAPO
        ``filter_groups``); their outcomes also count in the step's accuracy (``update_acc_mean``, adaptive
        target). O(responses)."""
        pids, c = self._observe(prompt_ids, correct)
        self._trace({"event": "observe", "step": self.step, "ids": pids.tolist(), "correct": c.tolist()})

    def update(self, prompt_ids: Sequence[int], correct: Sequence[float], step: Optional[int] = None) -> None:
        """:meth:`observe` the step's (remaining) outcomes and finish training step ``step``.

        ``step`` is verl's ``global_steps`` of these outcomes; the next draws are for ``step + 1``. Without it the
        sampler advances its own step counter by one.
        """
        pids, c = self._observe(prompt_ids, correct)
        done = self.step if step is None else int(step)
        self.curriculum.adapt(self.record.batch_acc())
        stage = self.record.acc["stage"] if self.record.acc["n"] else self.curriculum.at(done).stage
        self.record.finish(done, stage, self.curriculum.uses_band())
        self._trace({"event": "update", "step": done, "ids": pids.tolist(), "correct": c.tolist()})
        self.step = done + 1

    def metrics(self) -> dict[str, float]:
        """``difficulty/sampler/*`` and ``difficulty/curriculum/*`` entries for verl's step metrics (after
        ``update``)."""
        p, t, valid = self.tracker.est, self.drawer.totals, self.rows.valid
        seen = self.tracker.seen > 0
        out = dict(self.record.last)
        out.update({
            _s("epoch"): float(self.drawer.epoch),
            _s("prompts_seen"): float(seen.sum()),
            _s("prompts_drawn"): float(t["drawn"]),
            _s("prompts_updated"): float(self.tracker.groups),
            _s("pass_rate_mean"): float(p[valid].mean()) if valid.any() else 0.0,
        })
        if seen.any():
            q = np.quantile(p[seen], [0.1, 0.5, 0.9])
            out[_s("pass_rate_seen_mean")] = float(p[seen].mean())
            for name, v in zip(("p10", "p50", "p90"), q):
                out[_s(f"pass_rate_seen_{name}")] = float(v)
        band = self.setting().band
        if band is not None:
            out[_s("bandpass_out_of_band")] = float(((p < band[0]) | (p > band[1]))[valid].sum())
        if self.curriculum.uses_band():
            out[_s("bandpass_fallback_total")] = float(t["fallback"])
            out[_s("bandpass_skipped_total")] = float(t["skipped"])
        if self.curriculum.adaptive():
            out[_c("target_pass_rate_next")] = float(self.curriculum.target_state)
        counters = {"pool_recycled": t["recycled"], "unknown_prompt_ids": self.tracker.unknown,
                    "bad_rows": self.rows.bad_rows}
        out.update({_s(k): float(v) for k, v in counters.items() if v})
        return out

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything the next draws depend on: one entry per part (numpy arrays; ~N * 35 bytes)."""
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "num_rows": len(self.prompt_ids),
            "fingerprint": self.rows.fingerprint,
            "step": self.step,
            "tracker": self.tracker.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "drawer": self.drawer.state_dict(),
            "record": self.record.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 1)) != STATE_VERSION:
            raise ValueError(
                f"difficulty sampler checkpoint has state version {state.get('version', 1)}, this plugin reads "
                f"{STATE_VERSION}: resume with the plugin version that wrote it or start the sampler afresh"
            )
        if int(state["num_rows"]) != len(self.prompt_ids) or state["fingerprint"] != self.rows.fingerprint:
            raise ValueError(
                "difficulty sampler checkpoint was written for a different dataset (prompt ids differ); "
                "resume with the same train files"
            )
        old, new = state.get("config", {}), asdict(self.config)
        diff = sorted(k for k in new if k not in _NON_DRAW_SETTINGS and old.get(k) != new.get(k))
        if diff:
            logger.warning("difficulty sampler: resuming with changed settings %s: draws will differ from an "
                           "uninterrupted run", diff)
        self.tracker.load_state_dict(state["tracker"])
        self.step = int(state["step"])
        self.curriculum.load_state_dict(state["curriculum"])
        self.drawer.load_state_dict(state["drawer"], self.step)
        self.record.load_state_dict(state["record"])

    def state_nbytes(self) -> int:
        """Bytes held in the sampler's arrays (for the scale benchmark)."""
        return self.rows.nbytes() + self.tracker.nbytes() + self.drawer.nbytes()
