"""P1 PISM, Progressive Image Semantic Masking (arXiv 2511.06722): the mask ratio at which the base model stops solving.

For each mask ratio lambda in ``ratios`` (default 0.0, 0.1, ..., 0.9; 0 = the original image) the model answers K
(default 10) independently masked versions of the image; P_c(lambda) = fraction correct. The failure point is
lambda* = min{lambda : P_c(lambda) < tau} (tau = 0.1) and the bucket is

* ``unsolved`` if P_c(0) < tau (lambda* = 0),
* ``hard`` if lambda* <= ``hard_max`` (0.4),
* ``medium`` if ``hard_max`` < lambda* < ``medium_max`` (0.7),
* ``easy`` if lambda* > ``medium_max`` or the sample never fails; lambda* == ``medium_max`` goes to
  ``at_medium_max``: ``easy`` as in the paper's text (default) or ``medium`` as in its appendix table.

Mask modes (``fill`` = black by default):

* ``rect`` (default; the reference code's rectangle, made exact): on every image, ONE rectangle of exactly
  w x h pixels, w = floor(W*sqrt(lambda)), h = floor(H*sqrt(lambda)), top-left corner uniform in
  [0, W-w] x [0, H-h], so it covers w*h/(W*H) ~ lambda of the image (8.2% of a 28x28 image at lambda = 0.1);
* ``rect_reference`` (the official P1 script's exact geometry): w = max(1, floor(W*sqrt(lambda))),
  h = max(1, floor(H*sqrt(lambda))), corner (x, y) uniform in [0, W-w] x [0, H-h], drawn with PIL
  ``ImageDraw.rectangle((x, y, x + w, y + h))``, which fills BOTH corners inclusive: (w+1) x (h+1) pixels, clipped
  at the far image edge (x + w = W or y + h = H loses that column / row): on a 28x28 image at lambda = 0.1 the sides
  are 8 x 8 and the mask 9 x 9 = 81 pixels (8 x 9 or 8 x 8 when clipped; 10.2% of the image on average over the
  positions) where ``rect`` masks 8 x 8 = 64 (8.2%); on the FIRST image of the row only (the others are sent
  unmasked), at the image's ORIGINAL resolution (the row's stored image, before verl's ``fetch_image`` resizing,
  which is then applied to the masked image as verl would; a row without stored sources is masked at the size
  given);
* ``pixel`` (the paper's text): round(lambda*W*H) distinct pixels chosen uniformly at random set to ``fill``.

``rect`` and ``pixel`` are drawn on the image the model sees (after verl's ``fetch_image`` resizing), so the masked
fraction is exact and the image size, hence the number of image tokens and the prompt ids, never change. The mask
of (row, ratio, try, image) comes from a numpy generator seeded with ``(seed, row id, "pism-mask", ratio, try, image
index)`` (``rect_reference``: image index 0; x is drawn before y, as in ``rect``); the sampling seed of the try is
``derive_seed(seed, row id, "pism", ratio, try)``. Decoding (reference code): temperature 0.7, 1024 new tokens.

Exact early exit (what makes PISM affordable): with ``need = ceil(tau*K)`` correct tries required to pass a ratio,
a ratio is decided as soon as ``need`` tries were correct (pass) or too few tries remain to reach ``need`` (fail);
with tau*K <= 1 that is "stop at the first correct try; fail only after K wrong tries". Ratios above lambda* are not
tried unless ``scan_all`` (needed for the non-monotone analysis: a sample that fails at 0.3 may pass at 0.5; lambda*
is still the smallest failing ratio and the full pass vector is recorded). Because the outcome of try t at ratio
lambda depends only on its seeds, early exit gives exactly the lambda* of the full 10 x 10 scan.

Writes :data:`~verl_difficulty.schema.PISM_LAMBDA`, :data:`~verl_difficulty.schema.PISM_PASS` (1.0 = passed,
0.0 = failed, NaN = not tried; with ``early_exit=False`` the exact P_c), :data:`~verl_difficulty.schema.PISM_TRIES`
(tries up to each ratio's decision) and :data:`~verl_difficulty.schema.PISM_BUCKET`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from verl_difficulty.config import ConfigError, setting
from verl_difficulty.data.rows import ExecutionFault, RowFailure
from verl_difficulty.schema import PISM_BUCKET, PISM_LAMBDA, PISM_PASS, PISM_TRIES
from verl_difficulty.scoring.registry import register_scorer
from verl_difficulty.scoring.scorer import RolloutParams, Scorer, ratio_key, seed_sequence

MASK_MODES = ("rect", "pixel", "rect_reference")
DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(10))
_EPS = 1e-9


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------
def rect_size(width: int, height: int, ratio: float) -> tuple[int, int]:
    """(w, h) of the ``rect`` rectangle, exactly w x h pixels: floor(W*sqrt(ratio)), floor(H*sqrt(ratio)) (1e-9
    guards 0.3*0.3)."""
    s = math.sqrt(max(0.0, float(ratio)))
    return min(width, math.floor(width * s + _EPS)), min(height, math.floor(height * s + _EPS))


def rect_reference_size(width: int, height: int, ratio: float) -> tuple[int, int]:
    """(w, h) of the ``rect_reference`` sides: max(1, floor(W*sqrt(ratio))), max(1, floor(H*sqrt(ratio))) (the
    drawn rectangle then covers up to (w+1) x (h+1) pixels: PIL includes both corners)."""
    w, h = rect_size(width, height, ratio)
    return max(1, w), max(1, h)


def mask_array(arr: np.ndarray, ratio: float, mode: str, rng: np.random.Generator,
               fill: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Masked copy of an (H, W, 3) uint8 array (``ratio <= 0``: an unchanged copy)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    out = np.array(arr, copy=True)
    if ratio <= 0:
        return out
    h_img, w_img = out.shape[:2]
    fill_arr = np.asarray(fill, dtype=out.dtype)
    if mode in ("rect", "rect_reference"):
        w, h = (rect_size if mode == "rect" else rect_reference_size)(w_img, h_img, ratio)
        x0 = int(rng.integers(0, w_img - w + 1))
        y0 = int(rng.integers(0, h_img - h + 1))
        if mode == "rect":
            out[y0 : y0 + h, x0 : x0 + w] = fill_arr
        else:  # PIL is the reference: both corners inclusive, clipped at the image edge
            from PIL import Image, ImageDraw

            pil = Image.fromarray(out)
            ImageDraw.Draw(pil).rectangle((x0, y0, x0 + w, y0 + h), fill=tuple(int(c) for c in fill))
            out = np.array(pil)
    else:
        n_pix = h_img * w_img
        n = min(n_pix, int(round(float(ratio) * n_pix)))
        idx = rng.choice(n_pix, size=n, replace=False)
        flat = out.reshape(n_pix, -1)
        flat[idx] = fill_arr
    return out


def mask_image(image: Any, ratio: float, mode: str, seed: int, row_id: int, try_index: int, image_index: int = 0,
               fill: Sequence[int] = (0, 0, 0)) -> Any:
    """The masked PIL image of (seed, row, ratio, try, image): deterministic, same size as ``image`` (one image;
    :func:`mask_row_images` applies a mode to a row)."""
    from PIL import Image

    if ratio <= 0:
        return image
    rng = np.random.default_rng(seed_sequence(seed, row_id, "pism-mask", ratio_key(ratio), try_index, image_index))
    arr = np.asarray(image.convert("RGB"))
    return Image.fromarray(mask_array(arr, ratio, mode, rng, fill))


def mask_row_images(row: Any, ratio: float, mode: str, seed: int, try_index: int,
                    fill: Sequence[int] = (0, 0, 0)) -> list:
    """The images of one try of a row (a :class:`~verl_difficulty.data.rows.ScoringRow`) at ``ratio``: ``rect`` /
    ``pixel`` mask every image as the model sees it; ``rect_reference`` masks only the first image, at its original
    resolution (``row.image_sources[0]``; the row's image itself when the row has no sources), then resizes it as
    verl does (``fetch_image``; without sources the masked image is sent at its size); ratio 0: the row's images
    unchanged."""
    images = list(row.images)
    if ratio <= 0 or not images:
        return images
    if mode != "rect_reference":
        return [mask_image(im, ratio, mode, seed, row.row_id, try_index, j, fill) for j, im in enumerate(images)]
    from verl_difficulty.data.rows import decode_image, open_image

    sources = getattr(row, "image_sources", None) or []
    original = open_image(sources[0]).convert("RGB") if sources else images[0]
    masked = mask_image(original, ratio, mode, seed, row.row_id, try_index, 0, fill)
    return [decode_image(masked) if sources else masked] + images[1:]


# ----------------------------------------------------------------------------------------------------------------
# lambda*, buckets and the per-row procedure
# ----------------------------------------------------------------------------------------------------------------
def required_correct(tau: float, k: int) -> int:
    """Correct tries needed to pass a ratio: P_c >= tau  <=>  correct >= ceil(tau*K)."""
    return max(0, math.ceil(float(tau) * int(k) - _EPS))


def lambda_star(pass_vector: Sequence[float], ratios: Sequence[float], tau: float = 0.1,
                indicator: bool = False) -> Optional[float]:
    """min{ratio : P_c(ratio) < tau} over the tried ratios (NaN = untried, skipped); None if it never fails.

    ``indicator=True``: the vector holds 1.0 (passed) / 0.0 (failed) decisions instead of P_c values.
    """
    for r, v in zip(ratios, pass_vector):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        failed = v < 0.5 if indicator else v < tau - _EPS
        if failed:
            return float(r)
    return None


def pism_bucket(lam: Optional[float], hard_max: float = 0.4, medium_max: float = 0.7,
                at_medium_max: str = "easy") -> str:
    """P1 bucket of a failure point (``lam`` None = never fails). Requires ratio 0 to be the first ratio tried."""
    if lam is None:
        return "easy"
    if lam <= _EPS:
        return "unsolved"
    if lam <= hard_max + _EPS:
        return "hard"
    if abs(lam - medium_max) <= _EPS:
        return at_medium_max
    if lam < medium_max:
        return "medium"
    return "easy"


@dataclass
class PismParams(RolloutParams):
    """Decoding as the reference code (temperature 0.7, 1024 tokens) and:"""

    temperature: float = setting(0.7, ge=0.0, source="P1 reference code", help="sampling temperature (0 = greedy)")
    mode: str = setting("rect", choices=MASK_MODES, source="P1 reference code",
                        help="rect = one black rectangle of exactly floor(W*sqrt(ratio)) x floor(H*sqrt(ratio)) "
                        "pixels per image; rect_reference = the official script's PIL rectangle ((w+1) x (h+1) "
                        "pixels, clipped; first image only, original resolution); pixel = that fraction of random "
                        "pixels (paper text)")
    ratios: tuple[float, ...] = setting(DEFAULT_RATIOS, ge=0.0, lt=1.0, source="P1",
                                        help="mask ratios, strictly ascending in [0, 1), starting at 0.0")
    k: int = setting(10, ge=1, source="P1", help="masked versions (tries) per ratio")
    tau: float = setting(0.1, gt=0.0, le=1.0, source="P1", help="a ratio fails if P_c(ratio) < tau")
    early_exit: bool = setting(True, help="decide a ratio as soon as its outcome is certain (exact); off: all K tries "
                               "at every tried ratio, exact P_c in the pass vector (costs more)")
    scan_all: bool = setting(False, help="also try the ratios above lambda* (non-monotone analysis; costs more)")
    hard_max: float = setting(0.4, ge=0.0, le=1.0, source="P1", help="hard if lambda* <= this")
    medium_max: float = setting(0.7, ge=0.0, le=1.0, source="P1", help="medium if lambda* < this")
    at_medium_max: str = setting("easy", choices=("easy", "medium"), source="P1",
                                 help="bucket of lambda* == medium_max: easy (paper text) or medium (appendix table)")
    fill: tuple[int, int, int] = setting((0, 0, 0), ge=0, le=255, help="RGB colour of the masked pixels")
    tries_per_round: int = setting(1, ge=1, help="tries per row per generation round; > 1 speculates past the first "
                                   "success (fewer, larger batches, more generations; the values do not change)")

    def check(self, where: str) -> None:
        if not self.ratios or abs(self.ratios[0]) > _EPS:
            raise ConfigError(f"{where}.ratios: must start at 0.0 (the unmasked image decides 'unsolved'), got "
                              f"{list(self.ratios)}")
        if any(b <= a for a, b in zip(self.ratios, self.ratios[1:])):
            raise ConfigError(f"{where}.ratios: must be strictly ascending, got {list(self.ratios)}")
        if not self.hard_max < self.medium_max:
            raise ConfigError(f"{where}.hard_max: must be < {where}.medium_max, got {self.hard_max} >= "
                              f"{self.medium_max}")


@dataclass
class PismState:
    """The exact early-exit procedure of one row, driven by outcomes of (ratio index, try) pairs.

    ``pending()`` lists the tries to generate now (all of them needed before the current ratio can be decided, at
    least ``tries_per_round``); ``record()`` takes their outcomes in any order; outcomes are consumed in try order.
    """

    p: PismParams
    ratio_index: int = 0
    tries: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    decided: list = field(default_factory=list)  # None / True (passed) / False (failed)
    generated: int = 0
    _outcomes: dict = field(default_factory=dict)
    _issued: int = 0

    def __post_init__(self):
        n = len(self.p.ratios)
        self.tries, self.correct, self.decided = [0] * n, [0] * n, [None] * n
        self.need = required_correct(self.p.tau, self.p.k)
        self._settle()

    @property
    def done(self) -> bool:
        return self.ratio_index >= len(self.p.ratios)

    def _needed_now(self) -> int:
        r = self.ratio_index
        left = self.p.k - self.tries[r]
        if not self.p.early_exit:
            return left
        missing = self.need - self.correct[r]
        return max(1, min(missing, left - missing + 1))

    def pending(self) -> list[tuple[int, int]]:
        if self.done:
            return []
        r = self.ratio_index
        n = max(self._needed_now(), self.p.tries_per_round)
        hi = min(self.p.k, self.tries[r] + n)
        out = [(r, t) for t in range(max(self._issued, self.tries[r]), hi)]
        self._issued = max(self._issued, hi)
        self.generated += len(out)
        return out

    def record(self, ratio_index: int, try_index: int, ok: bool) -> None:
        if ratio_index != self.ratio_index:
            return  # a speculative try of a ratio decided meanwhile
        self._outcomes[try_index] = bool(ok)
        r = self.ratio_index
        while not self.done and self.decided[r] is None and self.tries[r] in self._outcomes:
            self.correct[r] += int(self._outcomes.pop(self.tries[r]))
            self.tries[r] += 1
            self._settle()
            r = self.ratio_index

    def _settle(self) -> None:
        """Decide the current ratio if its outcome is certain, then move on (or stop)."""
        while not self.done:
            r = self.ratio_index
            c, t, k = self.correct[r], self.tries[r], self.p.k
            if self.p.early_exit:
                if c >= self.need:
                    self.decided[r] = True
                elif c + (k - t) < self.need:
                    self.decided[r] = False
            elif t >= k:
                self.decided[r] = c >= self.need
            if self.decided[r] is None:
                return
            self._outcomes.clear()
            self._issued = 0
            if self.decided[r] is False and not self.p.scan_all:
                self.ratio_index = len(self.p.ratios)
            else:
                self.ratio_index += 1

    def pass_vector(self) -> list[float]:
        out = []
        for r, d in enumerate(self.decided):
            if d is None:
                out.append(float("nan"))
            elif self.p.early_exit:
                out.append(1.0 if d else 0.0)
            else:
                out.append(self.correct[r] / self.p.k)
        return out

    def lambda_star(self) -> Optional[float]:
        for r, d in enumerate(self.decided):
            if d is False:
                return float(self.p.ratios[r])
        return None

    def result(self) -> dict:
        lam = self.lambda_star()
        return {
            PISM_LAMBDA: lam,
            PISM_PASS: self.pass_vector(),
            PISM_TRIES: list(self.tries),
            PISM_BUCKET: pism_bucket(lam, self.p.hard_max, self.p.medium_max, self.p.at_medium_max),
        }


def run_procedure(outcome: Callable[[int, int], bool], params: Optional[PismParams] = None) -> PismState:
    """Run the early-exit procedure of one row against ``outcome(ratio_index, try_index) -> correct`` (a simulator or
    a scripted model); the returned state holds lambda*, the pass vector and ``generated`` (generations used)."""
    st = PismState(params or PismParams())
    while not st.done:
        for r, t in st.pending():
            st.record(r, t, outcome(r, t))
    return st


# ----------------------------------------------------------------------------------------------------------------
# The scorer
# ----------------------------------------------------------------------------------------------------------------
@register_scorer
class PismScorer(Scorer):
    """P1 PISM: lambda*, pass vector, tries, bucket (needs at least one image per row)."""

    name = "pism"
    version = "1"
    title = "P1 progressive image semantic masking"
    Params = PismParams
    requires_image = True

    def fields(self):
        import pyarrow as pa

        return [(PISM_LAMBDA, pa.float64()), (PISM_PASS, pa.list_(pa.float64())), (PISM_TRIES, pa.list_(pa.int64())),
                (PISM_BUCKET, pa.string())]

    def score(self, rows: Sequence, ctx) -> list:
        out, prompts = self.prompts(rows, ctx)
        states = {i: PismState(self.p) for i in prompts}
        while True:
            requests, keys = [], []
            for i, st in states.items():
                if out[i] is not None:
                    continue
                row = rows[i]
                for r, t in st.pending():
                    ratio = self.p.ratios[r]
                    try:
                        images = mask_row_images(row, ratio, self.p.mode, ctx.seed, t, self.p.fill)
                    except ExecutionFault:
                        raise
                    except Exception as e:  # noqa: BLE001
                        out[i] = RowFailure(f"pism: masking failed: {type(e).__name__}: {e}")
                        break
                    requests.append(self.request(ctx, row, prompts[i][0], images, ratio_key(ratio), t, ratio=ratio,
                                                 ratio_index=r, **{"try": t}))
                    keys.append((i, r, t))
            if not requests:
                break
            for (i, r, t), ok in self.rollouts(ctx, rows, requests, keys, out):
                states[i].record(r, t, ok)
        for i, st in states.items():
            if out[i] is None:
                out[i] = st.result()
        return out

    def summarize(self, table) -> dict:
        buckets = Counter(table.column(PISM_BUCKET).to_pylist())
        lam = Counter("never" if v is None else f"{v:.1f}" for v in table.column(PISM_LAMBDA).to_pylist())
        return {"buckets": dict(sorted(buckets.items())), "lambda_star": dict(sorted(lam.items()))}
