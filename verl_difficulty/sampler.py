"""The plugin's dataset sampler: draws prompts for verl's dataloader and learns per-prompt pass rates online.

verl 0.9.1 has no sampler hook (``data.sampler.*`` is silently ignored; ``verl/trainer/ppo/utils.py:140-168``); the
plugin's trainer mode (:mod:`verl_difficulty.seam`) builds verl's ``StatefulDataLoader`` around this sampler and
feeds it every step's outcomes. Its whole state (epoch, position, RNG seed, online estimates) goes into verl's
checkpoint through the dataloader's ``state_dict`` (``data.pt``), so a resumed run draws the same next batches.

Online difficulty: a Beta(alpha, beta) posterior of the pass rate per stable prompt id (``extra_info.index``),
started from the offline prior when the row has one (``difficulty_score`` or ``pass_rate``), else Beta(1, 1).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from verl_difficulty import schema

logger = logging.getLogger(__name__)


@dataclass
class SamplerConfig:
    """Settings of the difficulty sampler (``difficulty.sampler`` in a recipe).

    Args:
        enable (`bool`, defaults to `False`):
            Replace verl's Random/Sequential sampler with this one (needs ``trainer.v1.trainer_mode=difficulty``).
        shuffle (`bool`, defaults to `True`):
            Draw a fresh seeded permutation each epoch; `False` keeps dataset order.
        seed (`int`, defaults to `1`):
            Seed of the permutations (epoch e uses ``seed + e``); resumed runs reuse it.
        prior_strength (`float`, defaults to `2.0`):
            Pseudo-count weight of an offline prior pass rate p0: the posterior starts at
            Beta(1 + s*p0, 1 + s*(1-p0)). Ours (the papers do not define online tracking).
        correct_threshold (`float`, defaults to `0.5`):
            A response counts as correct when its reward ``>=`` this, unless the reward manager reports ``acc``.
    """

    enable: bool = False
    shuffle: bool = True
    seed: int = 1
    prior_strength: float = 2.0
    correct_threshold: float = 0.5

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "SamplerConfig":
        d = dict(d or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"difficulty.sampler: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**d)


def _row_prompt_ids(dataset) -> np.ndarray:
    """Stable prompt id per dataset row, from ``extra_info.index`` (errors name the row)."""
    frame = getattr(dataset, "dataframe", None)
    if frame is None:
        raise TypeError("the difficulty sampler needs verl's RLHFDataset (a dataset with a .dataframe)")
    extra = frame[schema.EXTRA_INFO] if schema.EXTRA_INFO in frame.column_names else None
    if extra is None:
        raise ValueError(f"dataset has no '{schema.EXTRA_INFO}' column; the sampler needs extra_info.index per row")
    ids = np.empty(len(extra), dtype=np.int64)
    for i, info in enumerate(extra):
        if not isinstance(info, dict) or info.get(schema.PROMPT_ID) is None:
            raise ValueError(f"dataset row {i}: missing {schema.EXTRA_INFO}.{schema.PROMPT_ID} (the stable prompt id)")
        ids[i] = int(info[schema.PROMPT_ID])
    if len(np.unique(ids)) != len(ids):
        dup = ids[np.argmax(np.bincount(ids - ids.min()))] if len(ids) else None
        raise ValueError(f"dataset: {schema.EXTRA_INFO}.{schema.PROMPT_ID} is not unique (e.g. {dup})")
    return ids


def _row_priors(dataset) -> np.ndarray:
    frame = dataset.dataframe
    out = np.full(len(frame), np.nan, dtype=np.float64)
    extra = frame[schema.EXTRA_INFO]
    for i, info in enumerate(extra):
        for key in (schema.DIFFICULTY_SCORE, schema.PASS_RATE):
            v = info.get(key) if isinstance(info, dict) else None
            if v is not None and np.isfinite(float(v)):
                out[i] = float(v)
                break
    return out


class DifficultySampler(torch.utils.data.Sampler[int]):
    """Sampler over dataset rows with online per-prompt pass-rate estimates.

    Args:
        prompt_ids: stable prompt id of each dataset row, shape (N,).
        priors: offline prior pass rate per row in [0, 1] or NaN, shape (N,).
        config: :class:`SamplerConfig`.
    """

    def __init__(self, prompt_ids: np.ndarray, priors: Optional[np.ndarray], config: SamplerConfig):
        self.config = config
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        n = len(self.prompt_ids)
        self._row_of = {int(p): i for i, p in enumerate(self.prompt_ids)}
        priors = np.full(n, np.nan) if priors is None else np.asarray(priors, dtype=np.float64)
        has = np.isfinite(priors)
        s = float(config.prior_strength)
        self.alpha = np.ones(n, dtype=np.float64)
        self.beta = np.ones(n, dtype=np.float64)
        self.alpha[has] += s * priors[has]
        self.beta[has] += s * (1.0 - priors[has])
        self.seen = np.zeros(n, dtype=np.int64)
        self.epoch = 0
        self.position = 0
        self.unknown_ids = 0

    @classmethod
    def from_dataset(cls, dataset, config: SamplerConfig) -> "DifficultySampler":
        return cls(_row_prompt_ids(dataset), _row_priors(dataset), config)

    # ------------------------------------------------------------------ drawing
    def __len__(self) -> int:
        return len(self.prompt_ids)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.config.shuffle:
            return np.arange(len(self.prompt_ids))
        return np.random.default_rng(self.config.seed + epoch).permutation(len(self.prompt_ids))

    def __iter__(self) -> Iterator[int]:
        if self.position >= len(self.prompt_ids):
            self.epoch += 1
            self.position = 0
        order = self._order(self.epoch)
        while self.position < len(order):
            idx = int(order[self.position])
            self.position += 1
            yield idx

    # ------------------------------------------------------------------ learning
    def update(self, prompt_ids: Sequence[int], correct: Sequence[float]) -> None:
        """Add one step's outcomes: ``correct[i]`` in [0, 1] for a response of prompt ``prompt_ids[i]``. O(batch)."""
        pids = np.asarray(prompt_ids, dtype=np.int64)
        c = np.clip(np.asarray(correct, dtype=np.float64), 0.0, 1.0)
        rows = np.fromiter((self._row_of.get(int(p), -1) for p in pids), dtype=np.int64, count=len(pids))
        known = rows >= 0
        self.unknown_ids += int((~known).sum())
        np.add.at(self.alpha, rows[known], c[known])
        np.add.at(self.beta, rows[known], 1.0 - c[known])
        np.add.at(self.seen, rows[known], 1)

    def pass_rate(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        a, b = (self.alpha, self.beta) if rows is None else (self.alpha[rows], self.beta[rows])
        return a / (a + b)

    def metrics(self) -> dict[str, float]:
        p = self.pass_rate()
        seen = self.seen > 0
        out = {
            "difficulty/sampler/epoch": float(self.epoch),
            "difficulty/sampler/prompts_seen": float(seen.sum()),
            "difficulty/sampler/pass_rate_mean": float(p.mean()) if len(p) else 0.0,
        }
        if seen.any():
            q = np.quantile(p[seen], [0.1, 0.5, 0.9])
            out.update(
                {
                    "difficulty/sampler/pass_rate_seen_p10": float(q[0]),
                    "difficulty/sampler/pass_rate_seen_p50": float(q[1]),
                    "difficulty/sampler/pass_rate_seen_p90": float(q[2]),
                }
            )
        if self.unknown_ids:
            out["difficulty/sampler/unknown_prompt_ids"] = float(self.unknown_ids)
        return out

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "config": asdict(self.config),
            "prompt_ids": self.prompt_ids.copy(),
            "alpha": self.alpha.copy(),
            "beta": self.beta.copy(),
            "seen": self.seen.copy(),
            "epoch": self.epoch,
            "position": self.position,
            "unknown_ids": self.unknown_ids,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not np.array_equal(np.asarray(state["prompt_ids"]), self.prompt_ids):
            raise ValueError(
                "difficulty sampler checkpoint was written for a different dataset (prompt ids differ); "
                "resume with the same train files"
            )
        self.alpha = np.asarray(state["alpha"], dtype=np.float64).copy()
        self.beta = np.asarray(state["beta"], dtype=np.float64).copy()
        self.seen = np.asarray(state["seen"], dtype=np.int64).copy()
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.unknown_ids = int(state.get("unknown_ids", 0))
