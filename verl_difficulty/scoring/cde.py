"""P4 CDE, the Causal Discrepancy Estimator (arXiv 2506.04755): how much the answer depends on the image.

M rollouts with the image and M with the image removed, temperature 1.0 (paper: M = 5); D(x) = acc_img - acc_txt.
"Image removed" (UNSPECIFIED in the paper; ours): every image part and its ``<image>`` placeholder are dropped from
the chat messages and the remaining text parts joined, so the prompt is valid text-only input for the same chat
template and processor (no image tokens at all, not a blank image). Selection (paper mode keep D >= 0.5; the
reference code's LIMR-style alignment) is done later by the selectors from these columns.

Writes :data:`~verl_difficulty.schema.CDE_ACC_IMG`, :data:`~verl_difficulty.schema.CDE_ACC_TXT`,
:data:`~verl_difficulty.schema.CDE_D`, :data:`~verl_difficulty.schema.CDE_ROLLOUTS`. Rollout j of arm a (0 = image,
1 = text) of row r uses seed ``derive_seed(seed, r, "cde", a, j)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from verl_difficulty.schema import CDE_ACC_IMG, CDE_ACC_TXT, CDE_D, CDE_ROLLOUTS
from verl_difficulty.scoring.base import (
    GenerationRequest,
    RowFailure,
    SamplingParams,
    Scorer,
    ScoringContext,
    ScoringRow,
    derive_seed,
)

ARM_IMAGE, ARM_TEXT = 0, 1


@dataclass
class CdeParams:
    m: int = 5
    """Rollouts per arm."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024

    def __post_init__(self):
        if self.m < 1 or self.max_tokens < 1:
            raise ValueError("cde: m and max_tokens must be >= 1")


class CdeScorer(Scorer):
    """acc with the image, acc without it, their difference D (needs at least one image per row)."""

    name = "cde"
    version = "1"
    requires_image = True

    params_cls = CdeParams

    def fields(self):
        import pyarrow as pa

        return [(CDE_ACC_IMG, pa.float64()), (CDE_ACC_TXT, pa.float64()), (CDE_D, pa.float64()),
                (CDE_ROLLOUTS, pa.int64())]

    def score(self, rows: Sequence[ScoringRow], ctx: ScoringContext) -> list:
        sampling = SamplingParams(temperature=self.p.temperature, top_p=self.p.top_p, max_tokens=self.p.max_tokens)
        out: list = [None] * len(rows)
        requests, keys = [], []
        for i, row in enumerate(rows):
            if not row.images:
                out[i] = RowFailure("cde: the row has no image")
                continue
            try:
                prompts = {ARM_IMAGE: ctx.prompt(row, with_images=True), ARM_TEXT: ctx.prompt(row, with_images=False)}
            except Exception as e:  # noqa: BLE001
                out[i] = RowFailure(f"cde: prompt failed: {type(e).__name__}: {e}")
                continue
            for arm in (ARM_IMAGE, ARM_TEXT):
                images = row.images if arm == ARM_IMAGE else None
                for j in range(self.p.m):
                    seed = derive_seed(ctx.seed, row.row_id, self.name, arm, j)
                    requests.append(GenerationRequest(prompts[arm], images, seed,
                                                      {"scorer": self.name, "row": row.row_id, "arm": arm, "try": j}))
                    keys.append((i, arm))
        gens = ctx.generate(requests, sampling)
        ok = ctx.verify(gens, [rows[i] for i, _ in keys])
        correct = {(i, a): 0 for i in range(len(rows)) for a in (ARM_IMAGE, ARM_TEXT)}
        for (i, arm), g, v in zip(keys, gens, ok):
            if isinstance(g, Exception):
                if out[i] is None:
                    out[i] = RowFailure(f"cde: {g}")
                continue
            correct[(i, arm)] += int(v)
        for i in range(len(rows)):
            if out[i] is None:
                acc_img = correct[(i, ARM_IMAGE)] / self.p.m
                acc_txt = correct[(i, ARM_TEXT)] / self.p.m
                out[i] = {CDE_ACC_IMG: acc_img, CDE_ACC_TXT: acc_txt, CDE_D: acc_img - acc_txt,
                          CDE_ROLLOUTS: self.p.m}
        return out
