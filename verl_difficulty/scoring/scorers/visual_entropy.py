"""P3 Durian visual entropy (arXiv 2602.21743): the perceptual difficulty of a sample, from its image features alone.

Durian measures how spread out the vision encoder's patch features F in R^{P x d} of an image are: with the rows
centred, the eigenvalues lambda_1..lambda_n of their covariance give the distribution p_k = lambda_k / sum_j lambda_j,
and the visual entropy is its Shannon entropy

    H = - sum_k p_k ln p_k        (nats; 0 <= H <= ln(min(P - 1, d)); higher = more diverse content = harder).

The paper pre-computes H offline into a dataset column; its estimator splits each batch's prompts into three groups
at the 25th / 75th percentiles of H and shares one reward standard deviation per group (``durian`` reads the column
``visual_entropy`` from the row or its ``extra_info``, where the engine mirrors it).

Exactly as implemented (:func:`visual_entropy`):

* features (``--visual-entropy-features``): ``merged`` (default, P3: the post-merger visual tokens the language model
  sees, one row per image placeholder token, ``d`` = the text hidden size) or ``vit`` (the pre-merger ViT states,
  the last vision block's output, one row per 14x14 patch, ``d`` = the vision hidden size), computed by the vision
  tower ALONE (no language model, no generation; :mod:`verl_difficulty.models.vision`), batched: one vision-tower
  call on the concatenated patches of ``--batch-size`` rows, split per image by its ``image_grid_thw``;
* the features are cast to float32 and centred (the column mean is subtracted), F_c = F - 1 mean(F);
* the spectrum is that of the smaller of the Gram matrix F_c F_c^T / (P - 1) (P x P, when P <= d) and the covariance
  F_c^T F_c / (P - 1) (d x d, when P > d): both have the same non-zero eigenvalues, the squared singular values of
  F_c / sqrt(P - 1); ``torch.linalg.eigvalsh`` in float32 (the spectrum is computed where the features are, e.g. on
  the GPU);
* eigenvalues lambda_k <= ``REL_TOL`` * lambda_max (``REL_TOL`` = 4 float32 epsilons, about 4.8e-7) are rounding noise
  of a float32 eigen-solver and count as 0 (0 ln 0 = 0), so a rank-r spectrum gives exactly its own entropy (rank 1:
  H = 0; r orthogonal directions of equal variance: H = ln r);
* P = 1 (one row, no spread) and an all-zero spectrum (all rows equal): H = 0;
* rows with several images (``--visual-entropy-multi-image``): ``pool`` (default, ours: the paper uses one image per
  sample) = H of the rows of all the row's images stacked into one matrix (centred together); ``mean`` = the mean
  over the row's images of each image's own H. One image: both are that image's H.

Rows without an image are bad rows. Deterministic: H depends only on the row's images and the model (not on the
job seed); batching changes nothing but float rounding (each image is split off its own rows; the vision tower
attends within each image only). Writes :data:`~verl_difficulty.schema.VISUAL_ENTROPY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from verl_difficulty.config import setting
from verl_difficulty.data.rows import RowFailure
from verl_difficulty.models.vision import FEATURES, VisionRequest
from verl_difficulty.schema import VISUAL_ENTROPY
from verl_difficulty.scoring.registry import register_scorer
from verl_difficulty.scoring.scorer import FORWARD, Scorer

MULTI_IMAGE = ("pool", "mean")
REL_TOL = 4 * torch.finfo(torch.float32).eps
"""Eigenvalues at or below ``REL_TOL * lambda_max`` count as 0 (float32 eigen-solver noise)."""


def visual_entropy(features: Any, rel_tol: float = REL_TOL) -> float:
    """Spectral entropy H = -sum_k p_k ln p_k (nats) of the covariance of a ``(P, d)`` feature matrix (a torch tensor
    or anything ``torch.as_tensor`` takes), p_k = lambda_k / sum(lambda): float32, centred rows, eigenvalues of the
    smaller of F_c F_c^T and F_c^T F_c over (P - 1), eigenvalues <= ``rel_tol * lambda_max`` taken as 0; H = 0 when
    P = 1 or all rows are equal (see the module docstring)."""
    f = torch.as_tensor(features)
    if f.dim() != 2 or f.shape[0] < 1 or f.shape[1] < 1:
        raise ValueError(f"visual_entropy: features must be a non-empty (P, d) matrix, got shape {tuple(f.shape)}")
    p_rows, dim = f.shape
    if p_rows == 1:
        return 0.0
    f = f.to(torch.float32)
    f = f - f.mean(dim=0, keepdim=True)
    gram = f @ f.T if p_rows <= dim else f.T @ f
    lam = torch.linalg.eigvalsh(gram / (p_rows - 1))
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("visual_entropy: the features are not finite")
    top = lam.max()
    if float(top) <= 0.0:
        return 0.0
    lam = lam[lam > rel_tol * top]
    prob = lam / lam.sum()
    return max(0.0, float(-(prob * prob.log()).sum()))  # >= 0 (one eigenvalue: exactly 0, never -0.0)


@dataclass
class VisualEntropyParams:
    """Which vision features, and how rows with several images are scored:"""

    features: str = setting("merged", choices=FEATURES, source="P3 (default); vit: option",
                            help="merged = post-merger visual tokens the language model sees (P3); vit = pre-merger "
                            "ViT states (the last vision block's output)")
    multi_image: str = setting("pool", choices=MULTI_IMAGE, source="ours (P3 has one image per sample)",
                               help="rows with several images: pool = entropy of all their images' features stacked; "
                               "mean = mean of the per-image entropies")


@register_scorer
class VisualEntropyScorer(Scorer):
    """P3 visual entropy of the vision tower's features of the row's image(s) (no generation, no language model)."""

    name = "visual_entropy"
    version = "1"
    title = "P3 Durian visual entropy (vision tower only)"
    Params = VisualEntropyParams
    needs = frozenset({FORWARD})
    requires_image = True

    def fields(self):
        import pyarrow as pa

        return [(VISUAL_ENTROPY, pa.float64())]

    def row_entropy(self, per_image: list) -> float:
        """H of one row from its images' feature matrices (the ``multi_image`` rule)."""
        if self.p.multi_image == "mean" or len(per_image) == 1:
            return float(sum(visual_entropy(f) for f in per_image) / len(per_image))
        return visual_entropy(torch.cat(list(per_image), dim=0))

    def score(self, rows: Sequence, ctx) -> list:
        out: list = [None] * len(rows)
        requests, keys = [], []
        for i, row in enumerate(rows):
            if not row.images:
                out[i] = RowFailure(f"{self.name}: the row has no image")
                continue
            requests.append(VisionRequest(images=list(row.images), tag={"scorer": self.name, "row": row.row_id}))
            keys.append(i)
        for i, h in zip(keys, ctx.vision_features(requests, self.p.features, reduce=self.row_entropy)):
            out[i] = RowFailure(f"{self.name}: {h}") if isinstance(h, Exception) else {VISUAL_ENTROPY: h}
        return out

    def summarize(self, table) -> dict:
        import numpy as np

        h = np.asarray(table.column(VISUAL_ENTROPY).to_pylist(), dtype=float)
        h = h[np.isfinite(h)]
        if not h.size:
            return {"count": 0}
        q25, q50, q75 = (round(float(v), 6) for v in np.quantile(h, [0.25, 0.5, 0.75]))
        return {"count": int(h.size), "mean": round(float(h.mean()), 6), "min": round(float(h.min()), 6),
                "q25": q25, "median": q50, "q75": q75, "max": round(float(h.max()), 6)}


__all__ = ["MULTI_IMAGE", "REL_TOL", "VisualEntropyParams", "VisualEntropyScorer", "visual_entropy"]
