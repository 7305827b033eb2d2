"""P4 ACE, the Attention Confidence Estimator (RAP, arXiv 2506.04755, "Truth in the Few: High-Value Data Selection
for Efficient Multi-Modal Reasoning"): whether a response's attention is dominated by a few over-emphasised tokens.

RECONSTRUCTED FROM SECONDARY SOURCES: the RAP paper's released code does not include ACE, and the paper's description
leaves the aggregation and the direction of the product open; both are parameters here, the defaults are our reading.

Procedure per row: one response is sampled with the row's images by the job's generation backend (seed
``derive_seed(seed, row id, "ace", 0, 0)``; temperature 1.0 as RAP's rollouts), then ONE teacher-forced forward pass
over prompt + response with eager attention. In the hook of layer ``layer`` (default -1: the final decoder layer) the
attention weights are reduced, for the whole batch, to A = the head mean (``heads``: ``mean`` or ``max``) of that
layer, ``(T, T)`` per row, restricted to the reasoning positions R (``positions``: ``response`` = the response tokens,
default; ``all`` = prompt + response): the block A[R, R] (rows are not renormalised: the mass on other positions just
does not count). With sigma = 2.0 (``sigma``):

* ``direction = column`` (default): psi_j = prod_{i >= j} (sigma * A_ij), the product over the rows i >= j of the
  block (the diagonal included: a causal row never attends ahead);
* ``direction = row``: psi_i = prod_{j <= i} (sigma * A_ij) over the columns of row i.

The product is computed in the LOG domain in float64: log psi_j = sum_i log(sigma * A_ij), so long responses never
underflow (0.02**1200 is 0.0 in float64, its log is -4694.4); an attention weight that is exactly 0 gives log psi_j =
-inf (psi_j = 0), which is a valid, smallest score. Sample score = max_j psi_j, written as max_j log psi_j (``scale =
log``, default; -inf when every psi_j is 0) or as psi itself clipped to [0, 1.8e308] (``scale = linear``; long
responses then underflow to 0.0). Note that the last column has a single factor (psi_n = sigma * A_nn), so the max is
often set by the last few positions; that is the formula as reconstructed.

The selection that discards samples whose score exceeds lambda_a = 0.1 (attention dominated by a few tokens) is made
later from this column (compare with log(0.1) under ``scale = log``); this scorer does not use lambda_a.

Writes :data:`~verl_difficulty.schema.ACE_SCORE`. Needs the transformers backend (eager attention is loaded
automatically).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from verl_difficulty.config import setting
from verl_difficulty.data.rows import RowFailure
from verl_difficulty.models.forward import HEAD_AGGREGATIONS, aggregate_heads, reads_attention
from verl_difficulty.schema import ACE_SCORE
from verl_difficulty.scoring.registry import register_scorer
from verl_difficulty.scoring.scorer import FORWARD, GENERATE, RolloutParams, Scorer

DIRECTIONS = ("column", "row")
POSITIONS = ("response", "all")
SCALES = ("log", "linear")


def ace_log_scores(block: Any, sigma: float = 2.0, direction: str = "column") -> np.ndarray:
    """log psi of every column (``column``) or row (``row``) of a square attention block (rows = queries), float64:
    the sum of log(sigma * A_ij) over i >= j. A zero weight gives -inf; no product is ever formed."""
    a = np.asarray(block, dtype=np.float64)
    n = a.shape[0]
    if a.shape != (n, n):
        raise ValueError(f"ace: expected a square attention block, got shape {a.shape}")
    with np.errstate(divide="ignore"):
        logs = np.log(a) + math.log(sigma)
    logs = np.where(np.tril(np.ones((n, n), dtype=bool)), logs, 0.0)
    return logs.sum(axis=0 if direction == "column" else 1)


def ace_score(block: Any, sigma: float = 2.0, direction: str = "column", scale: str = "log") -> float:
    """The sample score max_j psi_j of an attention block, as log (``scale = log``) or clipped psi (``linear``)."""
    best = float(np.max(ace_log_scores(block, sigma, direction))) if len(block) else float("nan")
    if scale == "log" or math.isnan(best):
        return best
    return math.exp(min(best, math.log(sys.float_info.max)))


@dataclass
class AceParams(RolloutParams):
    """One sampled response per row; temperature 1.0 (P4 rollouts), 1024 tokens, and:"""

    sigma: float = setting(2.0, gt=0.0, source="P4 (reconstructed)", help="scale sigma of each attention factor")
    layer: int = setting(-1, help="decoder layer read (negative: from the end; -1 = the final layer, P4)")
    heads: str = setting("mean", choices=HEAD_AGGREGATIONS, source="P4 (reconstructed)",
                         help="how the attention heads of the layer are combined")
    direction: str = setting("column", choices=DIRECTIONS, source="ours (reconstructed)",
                             help="column = psi_j = prod over rows i >= j; row = psi_i = prod over columns j <= i")
    positions: str = setting("response", choices=POSITIONS, source="P4 (reconstructed)",
                             help="the reasoning positions the block is restricted to: response tokens, or all "
                             "(prompt + response)")
    scale: str = setting("log", choices=SCALES, help="log = write max_j log psi_j (no underflow); linear = max_j psi_j "
                         "clipped to the float64 range")


@register_scorer
class AceScorer(Scorer):
    """P4 ACE (reconstructed): max column score of the final-layer attention over the reasoning positions."""

    needs = frozenset({GENERATE, FORWARD})  # a sampled response, then a teacher-forced pass reading attention
    needs_attention = True
    name = "ace"
    version = "1"
    title = "P4 attention confidence (reconstructed)"
    Params = AceParams

    def fields(self):
        import pyarrow as pa

        return [(ACE_SCORE, pa.float64())]

    def measure(self, forward: Any, requests: Sequence) -> list:
        """The score of each teacher-forced request (a float, or the exception ``forward.forward`` gave for it);
        ``forward``: a scoring context or an :class:`~verl_difficulty.models.forward.HFForward`."""
        p = self.p

        @reads_attention(rows="response" if p.positions == "response" else "all", layers=[p.layer])
        def on_layer(c) -> list:
            b = c.batch
            if not -c.num_layers <= p.layer < c.num_layers:
                raise ValueError(f"ace.layer {p.layer} is not a layer of this {c.num_layers}-layer model")
            if c.layer != p.layer % c.num_layers:
                return [None] * b.size
            attn = aggregate_heads(c.attentions, p.heads)  # (B, rows from c.query_offset, T)
            keep = b.response_mask if p.positions == "response" else b.attention_mask
            rows = keep[:, c.query_offset:]
            return [ace_score(attn[r][rows[r]][:, keep[r]].double().cpu().numpy(), p.sigma, p.direction, p.scale)
                    for r in range(b.size)]

        return [v if isinstance(v, Exception) else next(x for x in v if x is not None)
                for v in forward.forward(requests, on_layer, attentions=True)]

    def score(self, rows: Sequence, ctx) -> list:
        out, got = self.sampled_responses(rows, ctx)
        keys = sorted(got)
        requests = [ctx.forward_request(rows[i], got[i][0].token_ids, tag={"scorer": self.name, "row": rows[i].row_id})
                    for i in keys]
        for i, value in zip(keys, self.measure(ctx, requests)):
            if isinstance(value, Exception):
                out[i] = value if isinstance(value, RowFailure) else RowFailure(f"{self.name}: {value}")
            elif math.isnan(value):
                out[i] = RowFailure(f"{self.name}: no reasoning positions")
            else:
                out[i] = {ACE_SCORE: value}
        return out

    def summarize(self, table) -> dict:
        score = np.asarray(table.column(ACE_SCORE).to_pylist(), dtype=float)
        finite = score[np.isfinite(score)]
        zero = np.isneginf(score) if self.p.scale == "log" else score == 0.0
        stats = {"scale": self.p.scale, "zero_scores": int(zero.sum())}
        if finite.size:
            stats.update(mean=float(finite.mean()), median=float(np.median(finite)), max=float(finite.max()))
        return stats
