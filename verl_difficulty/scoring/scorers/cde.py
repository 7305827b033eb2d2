"""P4 CDE, the Causal Discrepancy Estimator (arXiv 2506.04755): how much the answer depends on the image.

M rollouts with the image and M with the image removed, temperature 1.0 (paper: M = 5); D(x) = acc_img - acc_txt.
"Image removed" (UNSPECIFIED in the paper; ours): every image part and its ``<image>`` placeholder are dropped from
the chat messages and the remaining text parts joined, so the prompt is valid text-only input for the same chat
template and processor (no image tokens at all, not a blank image). Selection (paper mode keep D >= 0.5; the
reference code's LIMR-style alignment) is done later by the selectors from these columns.

Counts per arm, for the reference-code selection: the official RAP script grades with 0.9*accuracy + 0.1*format
and counts a rollout as accurate for its alignment score and D only when its reward equals 1 (correct AND well
formatted), while its ``easy`` (5/5) and ``right1`` (1/5) flags count reward >= 0.9 (correct, format ignored). So the
scorer records both counts per arm, graded by the verifier's (correct, formatted) verdict of each rollout
(``ctx.grade``; the reward's own format check, whatever its weight in the reward): ``*_correct`` = correct rollouts,
``*_correct_formatted`` = correct and well-formatted rollouts (never more than ``*_correct``). The accuracies and D
above use the correct count (format ignored).

Writes :data:`~verl_difficulty.schema.CDE_ACC_IMG`, :data:`~verl_difficulty.schema.CDE_ACC_TXT`,
:data:`~verl_difficulty.schema.CDE_D`, :data:`~verl_difficulty.schema.CDE_ROLLOUTS`,
:data:`~verl_difficulty.schema.CDE_IMG_CORRECT`, :data:`~verl_difficulty.schema.CDE_IMG_CORRECT_FORMATTED`,
:data:`~verl_difficulty.schema.CDE_TXT_CORRECT`, :data:`~verl_difficulty.schema.CDE_TXT_CORRECT_FORMATTED`. Rollout j
of arm a (0 = image, 1 = text) of row r uses seed ``derive_seed(seed, r, "cde", a, j)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from verl_difficulty.config import setting
from verl_difficulty.schema import (
    CDE_ACC_IMG,
    CDE_ACC_TXT,
    CDE_D,
    CDE_IMG_CORRECT,
    CDE_IMG_CORRECT_FORMATTED,
    CDE_ROLLOUTS,
    CDE_TXT_CORRECT,
    CDE_TXT_CORRECT_FORMATTED,
)
from verl_difficulty.scoring.registry import register_scorer
from verl_difficulty.scoring.scorer import RolloutParams, Scorer

ARM_IMAGE, ARM_TEXT = 0, 1
COUNTS = {ARM_IMAGE: (CDE_IMG_CORRECT, CDE_IMG_CORRECT_FORMATTED),
          ARM_TEXT: (CDE_TXT_CORRECT, CDE_TXT_CORRECT_FORMATTED)}
"""Per arm: the columns of its correct and its correct-and-formatted rollout counts."""


@dataclass
class CdeParams(RolloutParams):
    """temperature 1.0 (P4), top-p 1.0, 1024 tokens and:"""

    m: int = setting(5, ge=1, source="P4", help="rollouts per arm")


@register_scorer
class CdeScorer(Scorer):
    """acc with the image, acc without it, their difference D, and per arm the correct and the correct-and-formatted
    rollout counts (needs at least one image per row, and a verifier that reports the format)."""

    name = "cde"
    version = "2"
    title = "P4 causal discrepancy (with vs without the image)"
    Params = CdeParams
    requires_image = True

    def fields(self):
        import pyarrow as pa

        return [(CDE_ACC_IMG, pa.float64()), (CDE_ACC_TXT, pa.float64()), (CDE_D, pa.float64()),
                (CDE_ROLLOUTS, pa.int64())] + [(c, pa.int64()) for arm in (ARM_IMAGE, ARM_TEXT) for c in COUNTS[arm]]

    def score(self, rows: Sequence, ctx) -> list:
        out, prompts = self.prompts(rows, ctx, variants=(True, False))
        requests, keys = [], []
        for i, arm_prompts in prompts.items():
            row = rows[i]
            for arm in (ARM_IMAGE, ARM_TEXT):
                images = row.images if arm == ARM_IMAGE else None
                for j in range(self.p.m):
                    requests.append(self.request(ctx, row, arm_prompts[arm], images, arm, j, arm=arm, **{"try": j}))
                    keys.append((i, arm))
        correct = {(i, a): 0 for i in range(len(rows)) for a in (ARM_IMAGE, ARM_TEXT)}
        formatted = dict(correct)
        for key, verdict in self.rollouts(ctx, rows, requests, keys, out, formatted=True):
            correct[key] += int(verdict.correct)
            formatted[key] += int(verdict.correct and verdict.formatted)
        for i in range(len(rows)):
            if out[i] is None:
                acc_img = correct[(i, ARM_IMAGE)] / self.p.m
                acc_txt = correct[(i, ARM_TEXT)] / self.p.m
                out[i] = {CDE_ACC_IMG: acc_img, CDE_ACC_TXT: acc_txt, CDE_D: acc_img - acc_txt,
                          CDE_ROLLOUTS: self.p.m}
                for arm, (c_col, f_col) in COUNTS.items():
                    out[i][c_col] = correct[(i, arm)]
                    out[i][f_col] = formatted[(i, arm)]
        return out

    def summarize(self, table) -> dict:
        import numpy as np

        d = np.asarray(table.column(CDE_D).to_pylist(), dtype=float)
        return {"mean_acc_img": float(np.mean(table.column(CDE_ACC_IMG).to_pylist())),
                "mean_acc_txt": float(np.mean(table.column(CDE_ACC_TXT).to_pylist())),
                "mean_D": float(d.mean()), "D_ge_0.5": int((d >= 0.5).sum())}
