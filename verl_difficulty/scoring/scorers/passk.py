"""P2 offline accuracy over k rollouts (arXiv 2505.13261, "multi-round sampling" of each prompt with the base model).

acc_q = (number of correct rollouts) / k: the input of P2's U-shape curation (keep tau_low <= acc_q <= tau_high).
The paper leaves k and the temperature UNSPECIFIED; the defaults here are ours: k = 8, temperature 1.0, top-p 1.0,
1024 new tokens.

Writes :data:`~verl_difficulty.schema.PASS_RATE`, :data:`~verl_difficulty.schema.NUM_CORRECT`,
:data:`~verl_difficulty.schema.PASS_K`. Rollout j of row r is sampled with seed
``derive_seed(seed, r, "passk", 0, j)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from verl_difficulty.config import setting
from verl_difficulty.schema import NUM_CORRECT, PASS_K, PASS_RATE
from verl_difficulty.scoring.registry import register_scorer
from verl_difficulty.scoring.scorer import RolloutParams, Scorer


@dataclass
class PassKParams(RolloutParams):
    """temperature 1.0, top-p 1.0, 1024 tokens (P2: unspecified, ours) and:"""

    k: int = setting(8, ge=1, source="P2: unspecified, ours", help="rollouts per row")


@register_scorer
class PassKScorer(Scorer):
    """Accuracy over ``k`` sampled rollouts with the image."""

    name = "passk"
    version = "1"
    title = "P2 accuracy over k rollouts"
    Params = PassKParams
    default_selected = True

    def fields(self):
        import pyarrow as pa

        return [(PASS_RATE, pa.float64()), (NUM_CORRECT, pa.int64()), (PASS_K, pa.int64())]

    def score(self, rows: Sequence, ctx) -> list:
        out, prompts = self.prompts(rows, ctx)
        requests, keys = [], []
        for i, (prompt,) in prompts.items():
            for j in range(self.p.k):
                requests.append(self.request(ctx, rows[i], prompt, rows[i].images, 0, j, **{"try": j}))
                keys.append((i,))
        correct = [0] * len(rows)
        for (i,), ok in self.rollouts(ctx, rows, requests, keys, out):
            correct[i] += int(ok)
        for i in range(len(rows)):
            if out[i] is None:
                out[i] = {PASS_RATE: correct[i] / self.p.k, NUM_CORRECT: correct[i], PASS_K: self.p.k}
        return out

    def summarize(self, table) -> dict:
        import numpy as np

        pr = np.asarray(table.column(PASS_RATE).to_pylist(), dtype=float)
        hist = np.histogram(pr, bins=10, range=(0.0, 1.0))[0].tolist()
        return {"mean_pass_rate": float(pr.mean()), "histogram_10_bins": hist, "all_wrong": int((pr == 0).sum()),
                "all_right": int((pr == 1).sum())}
