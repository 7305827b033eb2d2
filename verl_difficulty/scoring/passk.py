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

from verl_difficulty.schema import NUM_CORRECT, PASS_K, PASS_RATE
from verl_difficulty.scoring.base import (
    GenerationRequest,
    RowFailure,
    SamplingParams,
    Scorer,
    ScoringContext,
    ScoringRow,
    derive_seed,
)


@dataclass
class PassKParams:
    k: int = 8
    """Rollouts per row (P2: UNSPECIFIED, ours)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("passk: k must be >= 1")
        if self.max_tokens < 1:
            raise ValueError("passk: max_tokens must be >= 1")


class PassKScorer(Scorer):
    """Accuracy over ``k`` sampled rollouts with the image."""

    name = "passk"
    version = "1"
    requires_image = False

    params_cls = PassKParams

    def fields(self):
        import pyarrow as pa

        return [(PASS_RATE, pa.float64()), (NUM_CORRECT, pa.int64()), (PASS_K, pa.int64())]

    def score(self, rows: Sequence[ScoringRow], ctx: ScoringContext) -> list:
        sampling = SamplingParams(temperature=self.p.temperature, top_p=self.p.top_p, max_tokens=self.p.max_tokens)
        out: list = [None] * len(rows)
        requests, owners = [], []
        for i, row in enumerate(rows):
            try:
                prompt = ctx.prompt(row, with_images=True)
            except Exception as e:  # noqa: BLE001
                out[i] = RowFailure(f"passk: prompt failed: {type(e).__name__}: {e}")
                continue
            for j in range(self.p.k):
                requests.append(GenerationRequest(prompt, row.images or None, derive_seed(ctx.seed, row.row_id,
                                                  self.name, 0, j), {"scorer": self.name, "row": row.row_id, "try": j}))
                owners.append(i)
        gens = ctx.generate(requests, sampling)
        ok = ctx.verify(gens, [rows[i] for i in owners])
        correct = [0] * len(rows)
        for i, g, v in zip(owners, gens, ok):
            if isinstance(g, Exception):
                if out[i] is None:
                    out[i] = RowFailure(f"passk: {g}")
                continue
            correct[i] += int(v)
        for i in range(len(rows)):
            if out[i] is None:
                out[i] = {PASS_RATE: correct[i] / self.p.k, NUM_CORRECT: correct[i], PASS_K: self.p.k}
        return out
