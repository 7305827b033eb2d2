"""P1 PISM: masks (rect / pixel), lambda*, buckets, exact early exit, and the scorer on a scripted model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from verl_difficulty.schema import PISM_BUCKET, PISM_LAMBDA, PISM_PASS, PISM_TRIES
from verl_difficulty.config import ConfigError, parse
from verl_difficulty.data.rows import ScoringRow
from verl_difficulty.scoring.context import ScoringContext
from verl_difficulty.scoring.scorers.pism import (
    PismParams,
    PismScorer,
    lambda_star,
    mask_image,
    mask_row_images,
    pism_bucket,
    rect_reference_size,
    rect_size,
    required_correct,
    run_procedure,
)
from verl_difficulty.scoring.scripted import ScriptedBackend, ScriptedVerifier, masked_fraction

RATIOS = PismParams().ratios


def _white(w, h):
    return Image.new("RGB", (w, h), (255, 255, 255))


def _black_mask(img) -> np.ndarray:
    return np.all(np.asarray(img) == 0, axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w,h", [(56, 84), (112, 56), (100, 37), (1, 1)])
@pytest.mark.parametrize("ratio", RATIOS)
def test_rect_mask_area_and_bounds(w, h, ratio):
    ew, eh = math.floor(w * math.sqrt(ratio) + 1e-9), math.floor(h * math.sqrt(ratio) + 1e-9)
    assert rect_size(w, h, ratio) == (ew, eh)
    for t in range(10):
        img = mask_image(_white(w, h), ratio, "rect", seed=3, row_id=11, try_index=t)
        assert img.size == (w, h)
        m = _black_mask(img)
        assert m.sum() == ew * eh  # exactly one ew x eh rectangle
        if ew * eh:
            ys, xs = np.nonzero(m)
            assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (ew, eh)
            assert 0 <= xs.min() and xs.max() < w and 0 <= ys.min() and ys.max() < h


def test_rect_positions_cover_the_image_uniformly():
    w, h, ratio = 112, 84, 0.25  # 56 x 42 rectangle: x0 in [0, 56], y0 in [0, 42]
    xs, ys = [], []
    for t in range(400):
        m = _black_mask(mask_image(_white(w, h), ratio, "rect", seed=0, row_id=t, try_index=0))
        yy, xx = np.nonzero(m)
        xs.append(xx.min())
        ys.append(yy.min())
    assert min(xs) <= 3 and max(xs) >= 53 and min(ys) <= 3 and max(ys) >= 39
    assert 0 <= min(xs) and max(xs) <= 56 and max(ys) <= 42
    assert abs(np.mean(xs) - 28) < 4 and abs(np.mean(ys) - 21) < 3


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("w,h", [(56, 84), (37, 29)])
def test_pixel_mask_fraction(ratio, w, h):
    img = mask_image(_white(w, h), ratio, "pixel", seed=1, row_id=5, try_index=2)
    assert img.size == (w, h)
    assert _black_mask(img).sum() == round(ratio * w * h)


def test_masks_are_deterministic_and_vary_by_key():
    img = Image.fromarray(np.random.default_rng(0).integers(1, 255, (56, 84, 3), dtype=np.uint8))
    for mode in ("rect", "pixel"):
        a = np.asarray(mask_image(img, 0.5, mode, seed=1, row_id=2, try_index=3))
        b = np.asarray(mask_image(img, 0.5, mode, seed=1, row_id=2, try_index=3))
        assert np.array_equal(a, b)
        for other in (dict(seed=2, row_id=2, try_index=3), dict(seed=1, row_id=3, try_index=3),
                      dict(seed=1, row_id=2, try_index=4)):
            assert not np.array_equal(a, np.asarray(mask_image(img, 0.5, mode, **other)))
        # ratio 0.1 and 0.5 masks differ; 0.30000000000000004 == 0.3 (per-mille seed key)
        assert np.array_equal(np.asarray(mask_image(img, 0.1 * 3, mode, 1, 2, 3)),
                              np.asarray(mask_image(img, 0.3, mode, 1, 2, 3)))
    assert mask_image(img, 0.0, "rect", 1, 2, 3) is img  # ratio 0 = the original image
    masked = mask_image(img, 0.4, "rect", 1, 2, 3)
    assert np.array_equal(np.asarray(img)[~_black_mask(masked)], np.asarray(masked)[~_black_mask(masked)])


# ----------------------------------------------------------------------------------------------------------------
# rect_reference: the official script's PIL rectangle
# ----------------------------------------------------------------------------------------------------------------
def _reference_mask(w_img, h_img, ratio, x, y):
    """The mask PIL's ImageDraw.rectangle((x, y, x + w, y + h)) fills, by hand: both corners inclusive, clipped."""
    w, h = rect_reference_size(w_img, h_img, ratio)
    m = np.zeros((h_img, w_img), dtype=bool)
    m[y : min(y + h, h_img - 1) + 1, x : min(x + w, w_img - 1) + 1] = True
    return m


@pytest.mark.parametrize("w_img,h_img,ratio,sides", [
    (28, 28, 0.1, (8, 8)),     # floor(8.85): 9 x 9 = 81 pixels unless clipped (rect: 8 x 8 = 64)
    (14, 14, 0.1, (4, 4)),     # floor(4.43): 5 x 5 = 25 pixels unless clipped
    (56, 84, 0.3, (30, 46)),   # floor(30.67), floor(46.01)
    (3, 2, 0.1, (1, 1)),       # floor(0.95), floor(0.63): max(1, .) = 1, so 2 x 2 pixels
    (100, 37, 0.9, (94, 35)),
])
def test_rect_reference_sides_and_pixel_counts(w_img, h_img, ratio, sides):
    w, h = sides
    assert rect_reference_size(w_img, h_img, ratio) == sides
    seen = set()
    for t in range(60):
        img = mask_image(_white(w_img, h_img), ratio, "rect_reference", seed=0, row_id=3, try_index=t)
        m = _black_mask(img)
        ys, xs = np.nonzero(m)
        x, y = int(xs.min()), int(ys.min())
        assert 0 <= x <= w_img - w and 0 <= y <= h_img - h  # corner uniform in [0, W-w] x [0, H-h]
        assert np.array_equal(m, _reference_mask(w_img, h_img, ratio, x, y))
        cols = w + 1 - (x + w == w_img)  # the far column / row is clipped at the edge
        rows = h + 1 - (y + h == h_img)
        assert m.sum() == cols * rows
        seen.add((x + w == w_img, y + h == h_img))
    assert (False, False) in seen and len(seen) > 1  # both placements occur (clipped and not)


def test_rect_reference_hand_computed_placements():
    # 28 x 28 at 0.1: sides 8; a corner at (3, 5) masks 9 x 9 = 81 pixels, at the far corner (20, 20) 8 x 8 = 64
    assert _reference_mask(28, 28, 0.1, 3, 5).sum() == 81
    assert _reference_mask(28, 28, 0.1, 20, 20).sum() == 64 and _reference_mask(28, 28, 0.1, 20, 0).sum() == 72
    # the mean fraction over all positions: 10.2% (rect: 64 / 784 = 8.2%)
    mean = np.mean([_reference_mask(28, 28, 0.1, x, y).sum() for x in range(21) for y in range(21)]) / 784
    assert round(mean, 3) == 0.102 and round(64 / 784, 3) == 0.082
    img = mask_image(_white(14, 14), 0.1, "rect_reference", seed=1, row_id=1, try_index=0)
    assert _black_mask(img).sum() in (25, 20, 16)  # 5 x 5 unless clipped at one or both far edges


def test_rect_reference_masks_only_the_first_image_at_its_original_resolution():
    from verl_difficulty.data.rows import decode_image

    white = [_white(56, 84), _white(84, 56), _white(28, 28)]
    row = ScoringRow(row_id=4, position=0, messages=[], text_messages=[], images=white, ground_truth="x")
    assert mask_row_images(row, 0.0, "rect_reference", 0, 1) == white  # ratio 0: the originals
    out = mask_row_images(row, 0.4, "rect_reference", 0, 1)
    assert [im.size for im in out] == [im.size for im in white]
    assert out[1] is white[1] and out[2] is white[2]  # other images unmasked
    ref = mask_image(white[0], 0.4, "rect_reference", 0, 4, 1, 0)
    assert np.array_equal(np.asarray(out[0]), np.asarray(ref))
    w, h = rect_reference_size(56, 84, 0.4)
    assert _black_mask(out[0]).sum() in {(w + 1 - a) * (h + 1 - b) for a in (0, 1) for b in (0, 1)}
    # rect masks every image (unchanged behaviour)
    assert all(_black_mask(im).sum() == np.prod(rect_size(*im.size, 0.4)) for im in
               mask_row_images(row, 0.4, "rect", 0, 1))
    # with the stored source: masked at the source's resolution, then resized as verl does
    original = _white(150, 100)  # not a multiple of 28: fetch_image resizes it
    row.image_sources, row.images = [original], [decode_image(original)] + white[1:]
    out = mask_row_images(row, 0.2, "rect_reference", 0, 2)
    assert out[0].size == row.images[0].size != original.size
    expected = decode_image(mask_image(original, 0.2, "rect_reference", 0, 4, 2, 0))
    assert np.array_equal(np.asarray(out[0]), np.asarray(expected))
    assert out[1:] == row.images[1:]


def test_scorer_rect_reference_sends_the_first_image_masked():
    seen = []

    def outcome(tag, req):
        seen.append((tag["ratio"], [masked_fraction(im) for im in req.images]))
        return True

    row = _row(0)
    row.images = row.images + [_white(28, 56)]
    ctx = ScoringContext(ScriptedBackend(outcome=outcome), ScriptedVerifier(), seed=0, batch_size=4)
    res = PismScorer(max_tokens=2, mode="rect_reference").score([row], ctx)
    assert res[0][PISM_BUCKET] == "easy" and len(seen) == 10
    for ratio, (first, second) in seen:
        assert second == 0.0
        assert (first > 0) == (ratio > 0)


# ----------------------------------------------------------------------------------------------------------------
# lambda*, buckets
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam,bucket,bucket_appendix", [
    (None, "easy", "easy"), (0.0, "unsolved", "unsolved"), (0.1, "hard", "hard"), (0.4, "hard", "hard"),
    (0.5, "medium", "medium"), (0.6, "medium", "medium"), (0.7, "easy", "medium"), (0.8, "easy", "easy"),
    (0.9, "easy", "easy"), (0.1 * 7, "easy", "medium"), (0.1 * 4, "hard", "hard"),
])
def test_buckets(lam, bucket, bucket_appendix):
    assert pism_bucket(lam) == bucket
    assert pism_bucket(lam, at_medium_max="medium") == bucket_appendix


def test_lambda_star_of_pass_vectors():
    nan = float("nan")
    assert lambda_star([1.0, 0.5, 0.05, 0.3], [0, 0.1, 0.2, 0.3]) == 0.2
    assert lambda_star([0.1, 0.1], [0, 0.1]) is None  # P_c == tau is not a failure
    assert lambda_star([1.0, 0.0, 1.0, 0.0], [0, 0.1, 0.2, 0.3], indicator=True) == 0.1
    assert lambda_star([1.0, nan, 0.0], [0, 0.1, 0.2], indicator=True) == 0.2
    assert lambda_star([0.0], [0.0]) == 0.0
    assert required_correct(0.1, 10) == 1 and required_correct(0.3, 10) == 3 and required_correct(0.25, 10) == 3


# ----------------------------------------------------------------------------------------------------------------
# The procedure: exact early exit
# ----------------------------------------------------------------------------------------------------------------
def _table(pass_counts, k=10, first=True):
    """outcome(r, t): ratio r has pass_counts[r] correct tries (the first ones if ``first``, else the last ones)."""
    def outcome(r, t):
        c = pass_counts[r]
        return t < c if first else t >= k - c
    return outcome


@pytest.mark.parametrize("counts,lam,bucket", [
    ([10] * 10, None, "easy"),
    ([0] + [10] * 9, 0.0, "unsolved"),
    ([3, 2, 1, 0, 5, 5, 5, 5, 5, 5], 0.3, "hard"),            # non-monotone: fails at 0.3, passes at 0.5
    ([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], 0.5, "medium"),
    ([9, 9, 9, 9, 9, 9, 9, 0, 9, 9], 0.7, "easy"),             # the 0.7 boundary (text: easy)
    ([9, 9, 9, 9, 9, 9, 9, 9, 0, 0], 0.8, "easy"),
    ([9, 9, 9, 9, 0, 9, 9, 9, 9, 9], 0.4, "hard"),
])
@pytest.mark.parametrize("first", [True, False])
def test_known_pass_vectors(counts, lam, bucket, first):
    for scan_all in (False, True):
        st = run_procedure(_table(counts, first=first), PismParams(scan_all=scan_all))
        assert st.lambda_star() == lam
        assert st.result()[PISM_BUCKET] == bucket
        full = run_procedure(_table(counts, first=first), PismParams(early_exit=False, scan_all=True))
        assert full.pass_vector() == [c / 10 for c in counts]
        assert full.lambda_star() == lam and full.generated == 100
        if scan_all:  # all ratios decided: pass indicator == (P_c >= tau)
            assert st.pass_vector() == [1.0 if c >= 1 else 0.0 for c in counts]
    st = run_procedure(_table([9, 9, 9, 9, 9, 9, 9, 0, 9, 9]), PismParams(at_medium_max="medium"))
    assert st.result()[PISM_BUCKET] == "medium"


def test_early_exit_stops_at_first_success_and_after_lambda_star():
    # ratio r passes first at try r (0-based), ratio 4 never
    st = run_procedure(lambda r, t: r != 4 and t >= r)
    res = st.result()
    assert res[PISM_TRIES] == [1, 2, 3, 4, 10, 0, 0, 0, 0, 0]
    assert st.generated == 20
    assert res[PISM_LAMBDA] == 0.4
    pv = res[PISM_PASS]
    assert pv[:5] == [1.0, 1.0, 1.0, 1.0, 0.0] and all(math.isnan(v) for v in pv[5:])
    st = run_procedure(lambda r, t: r != 4 and t >= r, PismParams(scan_all=True))
    assert st.result()[PISM_TRIES] == [1, 2, 3, 4, 10, 6, 7, 8, 9, 10] and st.lambda_star() == 0.4


@pytest.mark.parametrize("tau,k,tries_per_round", [(0.1, 10, 1), (0.1, 10, 4), (0.3, 10, 1), (0.25, 4, 2),
                                                   (1.0, 3, 1)])
def test_early_exit_equals_full_scan_on_random_patterns(tau, k, tries_per_round):
    rng = np.random.default_rng(0)
    ratios = PismParams().ratios
    for _ in range(400):
        # U-shaped base accuracy, decaying (sometimes non-monotone) success probability
        a = rng.beta(0.3, 0.3)
        decay = rng.uniform(0.5, 4)
        p = a * (1 - np.asarray(ratios)) ** decay
        if rng.random() < 0.3:
            p = rng.permutation(p)  # non-monotone patterns
        table = rng.random((len(ratios), k)) < p[:, None]
        outcome = lambda r, t: bool(table[r, t])  # noqa: E731
        full = run_procedure(outcome, PismParams(k=k, tau=tau, early_exit=False, scan_all=True))
        truth = lambda_star([table[r].mean() for r in range(len(ratios))], ratios, tau)
        assert full.lambda_star() == truth
        for scan_all in (False, True):
            fast = run_procedure(outcome, PismParams(k=k, tau=tau, scan_all=scan_all,
                                                     tries_per_round=tries_per_round))
            assert fast.lambda_star() == truth
            assert fast.result()[PISM_BUCKET] == full.result()[PISM_BUCKET]
            decided = [i for i, v in enumerate(fast.pass_vector()) if not math.isnan(v)]
            for i in decided:  # every decided ratio agrees with the exact P_c
                assert fast.pass_vector()[i] == float(table[i].mean() >= tau - 1e-9)
            if tries_per_round == 1:
                assert fast.generated == sum(fast.tries) <= full.generated


# ----------------------------------------------------------------------------------------------------------------
# The scorer on a scripted model (real images, real masks)
# ----------------------------------------------------------------------------------------------------------------
def _row(row_id, size=(56, 84), position=None):
    img = Image.fromarray(np.random.default_rng(row_id).integers(1, 255, (size[1], size[0], 3), dtype=np.uint8))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]
    return ScoringRow(row_id=row_id, position=row_id if position is None else position, messages=msgs,
                      text_messages=[{"role": "user", "content": "q"}], images=[img], ground_truth="x")


def test_scorer_matches_the_procedure_and_sends_masked_images():
    counts = {0: [10] * 10, 1: [0] * 10, 2: [3, 2, 1, 0, 5, 5, 5, 5, 5, 5], 3: [1, 1, 1, 1, 1, 1, 1, 0, 1, 1],
              4: [2, 2, 2, 2, 2, 2, 0, 2, 2, 2]}
    seen = []

    def outcome(tag, req):
        frac = masked_fraction(req.images[0])
        w, h = req.images[0].size
        rw, rh = rect_size(w, h, tag["ratio"])
        seen.append((tag["ratio"], frac, rw * rh / (w * h)))
        return tag["try"] >= 10 - counts[tag["row"]][tag["ratio_index"]]  # correct tries are the last ones

    backend = ScriptedBackend(outcome=outcome)
    ctx = ScoringContext(backend, ScriptedVerifier(), seed=0, batch_size=3)
    rows = [_row(i) for i in counts]
    res = PismScorer(max_tokens=2).score(rows, ctx)
    for i, r in enumerate(res):
        ref = run_procedure(_table(counts[i], first=False)).result()
        assert r[PISM_LAMBDA] == ref[PISM_LAMBDA]
        assert r[PISM_TRIES] == ref[PISM_TRIES]
        assert r[PISM_BUCKET] == ref[PISM_BUCKET]
    assert [r[PISM_BUCKET] for r in res] == ["easy", "unsolved", "hard", "easy", "medium"]
    for ratio, frac, expected in seen:  # the model saw exactly the rect mask of that ratio
        assert frac == pytest.approx(expected, abs=1e-12)
    assert ctx.generations == sum(sum(r[PISM_TRIES]) for r in res)
    assert max(backend.batch_sizes) <= 3


def test_scorer_is_deterministic_and_independent_of_batching():
    rows = [_row(i) for i in range(6)]
    out = []
    for batch_size in (1, 4, 64):
        ctx = ScoringContext(ScriptedBackend(), ScriptedVerifier(), seed=5, batch_size=batch_size)
        out.append(PismScorer(max_tokens=2, mode="pixel").score(rows, ctx))
    assert str(out[0]) == str(out[1]) == str(out[2])
    # shuffled row order (another shard layout): same values per row
    ctx = ScoringContext(ScriptedBackend(), ScriptedVerifier(), seed=5, batch_size=4)
    rev = PismScorer(max_tokens=2, mode="pixel").score([_row(i, position=5 - i) for i in reversed(range(6))], ctx)
    assert str(rev[::-1]) == str(out[0])
    ctx = ScoringContext(ScriptedBackend(), ScriptedVerifier(), seed=6, batch_size=4)
    assert str(PismScorer(max_tokens=2, mode="pixel").score(rows, ctx)) != str(out[0])


def test_scorer_fails_rows_without_image_and_generation_errors_only():
    rows = [_row(0), _row(1), _row(2)]
    rows[1].images = []
    ctx = ScoringContext(ScriptedBackend(fail_rows=[2]), ScriptedVerifier(), seed=0, batch_size=8)
    res = PismScorer(max_tokens=2).score(rows, ctx)
    assert isinstance(res[0], dict)
    assert isinstance(res[1], Exception) and "no image" in str(res[1])
    assert isinstance(res[2], Exception) and "generation failed" in str(res[2])


def test_params_validation():
    with pytest.raises(ValueError, match="pism.ratios"):
        parse(PismParams, {"ratios": (0.1, 0.2)}, "pism")
    with pytest.raises(ValueError, match="pism.ratios"):
        parse(PismParams, {"ratios": (0.0, 0.3, 0.2)}, "pism")
    with pytest.raises(ValueError, match="pism.mode"):
        parse(PismParams, {"mode": "blur"}, "pism")
    assert parse(PismParams, {"mode": "rect_reference"}, "pism").mode == "rect_reference"
    with pytest.raises(ValueError, match="pism.at_medium_max"):
        parse(PismParams, {"at_medium_max": "hard"}, "pism")
    for bad in ({"ratios": (0.0, float("nan"))}, {"ratios": (0.0, 1.0)}, {"temperature": -0.1}, {"top_p": 0.0},
                {"top_p": 1.5}, {"temperature": float("inf")}, {"k": 0}, {"hard_max": 0.8}):
        with pytest.raises(ConfigError, match="pism[.]"):
            PismScorer(**bad)
