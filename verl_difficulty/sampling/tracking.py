"""The sampler's online pass-rate tracker: one running estimate per dataset row, learned from rollout outcomes.

Per row, a Beta posterior mean (``estimator: beta``; counts ``alpha``/``beta`` discounted by ``beta_discount`` before
each update) or an EMA of the per-call group accuracy (``estimator: ema``), both started from the row's offline
score when it has one (``difficulty_score``, else ``pass_rate``). Outcomes are floats in [0, 1]; NaN (an empty
response, ``schema.CORRECT``) is left out of every estimate. Numpy arrays only; an update costs O(outcomes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from verl_difficulty.sampling.config import SamplerConfig


class PassRateTracker:
    """Online pass-rate estimates of ``len(priors)`` rows (``priors``: offline pass rate per row, NaN if none)."""

    def __init__(self, config: SamplerConfig, priors: np.ndarray):
        self.config = config
        priors = np.asarray(priors, dtype=np.float64)
        n = len(priors)
        has = np.isfinite(priors)
        if config.estimator == "beta":
            s = float(config.prior_strength)
            self.alpha = np.full(n, config.beta_prior, dtype=np.float64)
            self.beta = np.full(n, config.beta_prior, dtype=np.float64)
            self.alpha[has] += s * priors[has]
            self.beta[has] += s * (1.0 - priors[has])
            self.est = self.alpha / (self.alpha + self.beta)
        else:
            self.alpha = self.beta = None
            self.est = np.where(has, priors, config.ema_init).astype(np.float64)
        self.seen = np.zeros(n, dtype=np.int32)  # outcomes counted per row
        self.groups = 0  # prompt groups received: distinct known rows per observe call
        self.unknown = 0  # outcomes whose prompt id is not in the training set

    def observe(self, rows: np.ndarray, correct: np.ndarray) -> np.ndarray:
        """Add outcomes ``correct[i]`` (in [0, 1], NaN ignored) of rows ``rows[i]`` (-1: unknown id).

        Returns the rows whose estimate changed (unique, ascending).
        """
        known = rows >= 0
        self.unknown += int((~known).sum())
        self.groups += len(np.unique(rows[known]))
        ok = known & np.isfinite(correct)
        r, cc = rows[ok], correct[ok]
        if not len(r):
            return np.zeros(0, dtype=np.int64)
        ur, inv = np.unique(r, return_inverse=True)
        succ = np.bincount(inv, weights=cc, minlength=len(ur))
        cnt = np.bincount(inv, minlength=len(ur)).astype(np.float64)
        if self.alpha is not None:
            g = self.config.beta_discount
            self.alpha[ur] = g * self.alpha[ur] + succ
            self.beta[ur] = g * self.beta[ur] + (cnt - succ)
            self.est[ur] = self.alpha[ur] / (self.alpha[ur] + self.beta[ur])
        else:
            a = self.config.ema_alpha
            self.est[ur] = (1.0 - a) * self.est[ur] + a * (succ / cnt)
        self.seen[ur] += cnt.astype(np.int32)
        return ur

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.config.estimator,
            "est": self.est.copy(),
            "alpha": None if self.alpha is None else self.alpha.copy(),
            "beta": None if self.beta is None else self.beta.copy(),
            "seen": self.seen.copy(),
            "groups": self.groups,
            "unknown": self.unknown,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["estimator"] != self.config.estimator or len(state["est"]) != len(self.est):
            raise ValueError(
                f"difficulty sampler checkpoint used another estimator ({state['estimator']} over "
                f"{len(state['est'])} rows; this run: {self.config.estimator} over {len(self.est)}) (beta vs ema)"
            )
        # in place: the drawer's index holds a reference to ``est``
        self.est[:] = state["est"]
        if self.alpha is not None:
            self.alpha[:] = state["alpha"]
            self.beta[:] = state["beta"]
        self.seen[:] = state["seen"]
        self.groups = int(state["groups"])
        self.unknown = int(state["unknown"])

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.est, self.alpha, self.beta, self.seen) if a is not None)
