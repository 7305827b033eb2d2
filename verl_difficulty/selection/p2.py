"""P2 selection (arXiv 2505.13261, "Unlocking the Potential of Difficulty Prior in RL-based Multimodal Reasoning"):
the U-shape accuracy band and the two training stages.

Input: ``pass_rate`` (acc_q, the base model's accuracy over k rollouts; ``verl-difficulty score --scorers passk``).
Its histogram over a dataset is U-shaped: most prompts are always or never solved and carry no GRPO signal.

* Band: keep ``low <= acc_q <= high`` (both edges inclusive); defaults 0.1 and 0.87, the thresholds the paper
  reports (dataset-specific: set them from your histogram). Dropped rows: ``below_band`` / ``above_band``; a row
  without a pass rate: ``no_score``.
* Two stages inside the band: stage 1 "moderate" (higher accuracy), stage 2 "moderate-to-hard" (lower accuracy); the
  paper uses about 2K and 0.6K samples and does not publish the boundary. Choose one of:

  - ``--stage-boundary X``: stage 2 = acc_q <= X, stage 1 = acc_q > X;
  - ``--stage2-size N`` / ``--stage1-size M``: the band rows ranked by accuracy ascending (ties by
    ``extra_info.index``): stage 2 = the first N, stage 1 = the next M (an omitted size = all the rest; rows past
    both sizes are dropped as ``beyond_stage_sizes``);
  - neither: stage 2 = the ``--stage2-fraction`` hardest band rows (default 0.6/2.6, the paper's 0.6K : 2K
    proportion; OURS as a default), stage 1 = the rest.

Written rows carry ``difficulty_stage`` (1 or 2), ``difficulty_bucket`` (``medium`` for stage 1, ``hard`` for stage
2: what the sampler's ``two_stage`` schedule mixes, e.g. ``stage1: {mix: {medium: 1}}``, ``stage2: {mix: {hard:
1}}``) and ``hard_hint`` (True on stage 2, False on stage 1: the field the hint rule ``select: [flag]`` reads), all
mirrored in ``extra_info``. Files: ``stage1.parquet``, ``stage2.parquet`` and ``train.parquet`` (both, input order).
P2 has no released selection code: ``paper`` mode only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from verl_difficulty import schema
from verl_difficulty.config import ConfigError, setting
from verl_difficulty.selection.common import (CommonParams, Decision, Outcome, Output, is_missing, ranked,
                                              register_selection, require)

STAGE_BUCKETS = {1: "medium", 2: "hard"}


@dataclasses.dataclass
class P2Params(CommonParams):
    """P2 options."""

    low: float = setting(0.1, ge=0.0, le=1.0, source="P2 (dataset-specific)", help="keep acc >= low (inclusive)")
    high: float = setting(0.87, ge=0.0, le=1.0, source="P2 (dataset-specific)", help="keep acc <= high (inclusive)")
    stage_boundary: Optional[float] = setting(None, ge=0.0, le=1.0,
                                              help="stage 2 = acc <= this, stage 1 = acc > this (UNSPECIFIED in P2)")
    stage1_size: Optional[int] = setting(None, ge=0, source="P2 used ~2000",
                                         help="stage-1 rows: the next-hardest after stage 2 (default: the rest)")
    stage2_size: Optional[int] = setting(None, ge=0, source="P2 used ~600",
                                         help="stage-2 rows: the hardest band rows (default: all but stage 1)")
    stage2_fraction: float = setting(round(0.6 / 2.6, 4), ge=0.0, le=1.0, source="P2 sizes 0.6K : 2K",
                                     help="without boundary or sizes: the fraction of band rows in stage 2")

    def check(self, where: str) -> None:
        if self.low > self.high:
            raise ConfigError(f"{where}.low: must be <= {where}.high, got low={self.low} > high={self.high}")
        sizes = self.stage1_size is not None or self.stage2_size is not None
        if self.stage_boundary is not None and sizes:
            raise ConfigError(f"{where}.stage_boundary: give either the boundary or the stage sizes, not both")


def split_stages(acc: list, band: list, ids: list, p: P2Params) -> dict:
    """position -> stage (1 or 2) of the band rows ``band``; rows left out are absent."""
    if p.stage_boundary is not None:
        return {i: 2 if acc[i] <= p.stage_boundary else 1 for i in band}
    order = ranked(band, lambda i: (acc[i],), ids)
    if p.stage1_size is None and p.stage2_size is None:
        n2 = int(round(p.stage2_fraction * len(order)))
        n1 = len(order) - n2
    else:
        n2 = p.stage2_size if p.stage2_size is not None else max(0, len(order) - p.stage1_size)
        n1 = p.stage1_size if p.stage1_size is not None else len(order)
    return {**{i: 2 for i in order[:n2]}, **{i: 1 for i in order[n2:n2 + n1]}}


@register_selection("p2", P2Params, "P2 U-shape band on pass@k accuracy and two stages (arXiv 2505.13261)")
def select_p2(table: Any, ids: list, p: P2Params) -> Outcome:
    acc = require(table, schema.PASS_RATE, "p2", " (pass@k accuracy)")
    reason = {}
    for i, a in enumerate(acc):
        if is_missing(a):
            reason[i] = "no_score"
        elif a < p.low:
            reason[i] = "below_band"
        elif a > p.high:
            reason[i] = "above_band"
    band = [i for i in range(len(acc)) if i not in reason]
    stage = split_stages(acc, band, ids, p)
    decisions = []
    for i in range(len(acc)):
        s = stage.get(i)
        r = reason.get(i) or ("kept" if s else "beyond_stage_sizes")
        decisions.append(Decision(kept=s is not None, reason=r, bucket=STAGE_BUCKETS.get(s), stage=s))
    columns = {
        schema.SELECTION_STAGE: [stage.get(i) for i in range(len(acc))],
        schema.DIFFICULTY_BUCKET: [STAGE_BUCKETS.get(stage.get(i)) for i in range(len(acc))],
        schema.HARD_HINT: [stage.get(i) == 2 if i in stage else None for i in range(len(acc))],
    }
    extra = {f"stage{s}": Output(f"stage{s}.parquet", [i for i in range(len(acc)) if stage.get(i) == s])
             for s in (1, 2)}
    notes = [f"band [{p.low}, {p.high}] keeps {len(band)} rows; stage 1 = {sum(v == 1 for v in stage.values())}, "
             f"stage 2 = {sum(v == 2 for v in stage.values())}"]
    loosen = {"below_band": ("low",), "above_band": ("high",), "beyond_stage_sizes": ("stage1_size", "stage2_size")}
    return Outcome(decisions, columns=columns, extra=extra, notes=notes, loosen=loosen)
