"""Perception graders (P1's perception pool): boxes by IoU >= 0.2 with optimal one-to-one matching
(:func:`grade_bbox`), OCR by normalised similarity >= 0.5 (:func:`grade_ocr`), counting by exact integer, digits or
number words (:func:`grade_count`).

The answer of each is the answer-tag content, else the last ``\\boxed{}``, else the text after the last ``</think>``
(the reasoning never counts as the answer). An answer identical to the ground truth is correct before any further
work (:func:`~verl_difficulty.rewards.extract.identical_answer` on the text; for boxes, the same parsed boxes).
Pure functions; nothing here raises on model text.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Optional

from rapidfuzz.distance import Levenshtein

from verl_difficulty.rewards.extract import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    answer_candidate,
    ground_truth_text,
    gt_alternatives,
    identical_answer,
)
from verl_difficulty.rewards.results import IOU, SIMILARITY, GradeResult, fail, short

MAX_BOXES = 100
"""Boxes kept from one answer or ground truth (more are counted, so spraying boxes is still penalised)."""
OCR_MAX_CHARS = 2000
"""An OCR answer is cut to ``max(OCR_MAX_CHARS, 2 * len(gt))`` characters before :func:`ocr_similarity` (part of
its definition: a rambling answer is judged on its first ``2 * len(gt)`` characters; it also bounds the work)."""


# ====================================================================================================================
# Perception: boxes
# ====================================================================================================================
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(r"[\[\(]\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*,\s*(" + _NUM
                     + r")\s*[\]\)]")
_NUM_RE = re.compile(_NUM)

Box = tuple[float, float, float, float]


def _make_box(vals) -> Optional[Box]:
    try:
        v = [float(x) for x in vals]
    except (TypeError, ValueError):
        return None
    if len(v) != 4 or not all(math.isfinite(x) for x in v):
        return None
    x1, y1, x2, y2 = v
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def parse_boxes(obj: Any, max_boxes: int = MAX_BOXES) -> tuple[list[Box], int]:
    """Boxes ``(x1, y1, x2, y2)`` from a string (every ``[a, b, c, d]`` / ``(a, b, c, d)``, e.g. JSON
    ``{"bbox_2d": [..]}``; else exactly four numbers), a flat list of 4 numbers, a list of such lists, or a dict with
    ``bbox``/``bbox_2d``/``box``. Corners are reordered; non-finite boxes dropped. Returns ``(boxes[:max_boxes], n)``
    with ``n`` the number found (so spraying boxes can be penalised)."""
    if obj is None:
        return [], 0
    if hasattr(obj, "tolist") and not isinstance(obj, str):
        obj = obj.tolist()
    if isinstance(obj, dict):
        for k in ("bbox_2d", "bbox", "box", "boxes"):
            if k in obj:
                return parse_boxes(obj[k], max_boxes)
        return [], 0
    if isinstance(obj, (list, tuple)):
        if len(obj) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj):
            b = _make_box(obj)
            return ([b], 1) if b else ([], 0)
        boxes: list[Box] = []
        n = 0
        for item in obj:
            bs, k = parse_boxes(item, max_boxes)
            n += k
            boxes.extend(bs)
        return boxes[:max_boxes], n
    if isinstance(obj, (int, float)):
        return [], 0
    s = str(obj)
    boxes = []
    n = 0
    for m in _BOX_RE.finditer(s):
        n += 1
        if len(boxes) < max_boxes:
            b = _make_box(m.groups())
            if b:
                boxes.append(b)
    if n == 0:
        nums = _NUM_RE.findall(s)
        if len(nums) == 4:
            b = _make_box(nums)
            if b:
                return [b], 1
    return boxes, n


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 for disjoint or touching boxes and for degenerate (zero-area) unions."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if not union > 0:
        return 0.0
    return max(0.0, min(1.0, inter / union))


_LSA: list = []


def _scipy_lsa():
    """scipy's ``linear_sum_assignment`` if scipy is installed (looked up once), else None."""
    if not _LSA:
        try:
            from scipy.optimize import linear_sum_assignment  # type: ignore

            _LSA.append(linear_sum_assignment)
        except Exception:  # noqa: BLE001
            _LSA.append(None)
    return _LSA[0]


def match_boxes(pred: list[Box], gt: list[Box], iou_threshold: float = 0.2) -> list[tuple[int, int, float]]:
    """Optimal one-to-one matching of predicted to ground-truth boxes: the maximum number of pairs with
    IoU >= ``iou_threshold``, and among those the largest total IoU. Uses scipy's ``linear_sum_assignment`` if scipy is
    installed; otherwise an exact maximum-cardinality bipartite matching (augmenting paths, edges tried by descending
    IoU), whose count is the same (only the total IoU of the chosen pairs may differ).
    Returns ``[(i_pred, j_gt, iou)]``.
    """
    if not pred or not gt:
        return []
    ious = [[box_iou(p, g) for g in gt] for p in pred]
    linear_sum_assignment = _scipy_lsa()
    if linear_sum_assignment is not None and (len(pred) > 1 or len(gt) > 1):
        import numpy as np

        big = min(len(pred), len(gt)) + 1.0
        w = np.array([[(big + v) if v >= iou_threshold - 1e-12 else 0.0 for v in row] for row in ious])
        rows, cols = linear_sum_assignment(w, maximize=True)
        return [(int(i), int(j), ious[i][j]) for i, j in zip(rows, cols) if ious[i][j] >= iou_threshold - 1e-12]
    adj = [sorted((j for j in range(len(gt)) if ious[i][j] >= iou_threshold - 1e-12), key=lambda j: -ious[i][j])
           for i in range(len(pred))]
    owner = [-1] * len(gt)  # gt j -> pred i

    def augment(i: int, seen: list[bool]) -> bool:
        for j in adj[i]:
            if seen[j]:
                continue
            seen[j] = True
            if owner[j] < 0 or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in sorted(range(len(pred)), key=lambda i: -max((ious[i][j] for j in adj[i]), default=0.0)):
        augment(i, [False] * len(gt))
    return [(owner[j], j, ious[owner[j]][j]) for j in range(len(gt)) if owner[j] >= 0]


def _perception_candidate(response: str, answer_tags: tuple[str, str], think_close: str
                          ) -> tuple[Optional[str], str, str]:
    return answer_candidate(response, ("answer", "boxed", "text"), answer_tags, think_close)


def grade_bbox(response: str, ground_truth: Any, *, iou_threshold: float = 0.2,
               answer_tags: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE), think_close: str = THINK_CLOSE
               ) -> GradeResult:
    """Box grounding. Answer: answer-tag content, else last ``\\boxed{}``, else the whole response.

    ``score`` = matched / max(n_gt, n_pred): the fraction of ground-truth boxes matched one-to-one with IoU >=
    ``iou_threshold`` (:func:`match_boxes`), where surplus predicted boxes count as misses (spraying boxes is not
    rewarded). ``acc`` = 1 iff every gt box is matched and no box is surplus (one box: IoU >= threshold).
    Extra ``iou``: the IoU of the pair for one gt and one predicted box, else the mean IoU of the matched pairs.
    The same boxes as the ground truth's (same parsed boxes in the same order, same count) are correct with ``iou``
    1.0, zero-area boxes included (whose IoU is otherwise 0)."""
    cand, _, why = _perception_candidate(response, answer_tags, think_close)
    gt_boxes, n_gt = parse_boxes(ground_truth)
    if not gt_boxes:
        return fail("ground truth has no valid box", **{IOU: 0.0})
    if cand is None:
        return fail(why, **{IOU: 0.0})
    pred_boxes, n_pred = parse_boxes(cand)
    if not pred_boxes:
        return fail("no valid box [x1, y1, x2, y2] in the answer", **{IOU: 0.0})
    if pred_boxes == gt_boxes and n_pred == n_gt:  # identical to the ground truth
        return GradeResult(acc=1.0, pred=short(cand), extras={IOU: 1.0})
    pairs = match_boxes(pred_boxes, gt_boxes, iou_threshold)
    if len(pred_boxes) == 1 and len(gt_boxes) == 1:
        iou = box_iou(pred_boxes[0], gt_boxes[0])
    else:
        iou = sum(p[2] for p in pairs) / len(pairs) if pairs else 0.0
    denom = max(len(gt_boxes), n_pred)
    score = len(pairs) / denom
    acc = 1.0 if len(pairs) == len(gt_boxes) and n_pred == len(gt_boxes) else 0.0
    return GradeResult(acc=acc, score=score, pred=short(cand), extras={IOU: float(iou)})


# ====================================================================================================================
# Perception: OCR
# ====================================================================================================================
def normalize_ocr(s: str) -> str:
    """NFKC, lowercase, whitespace collapsed, surrounding quotes stripped."""
    s = unicodedata.normalize("NFKC", s).lower()
    s = " ".join(s.split())
    return s.strip("\"'`“”‘’ ")


def ocr_similarity(pred: str, gt: str) -> float:
    """Normalised Levenshtein similarity of the normalised strings (:func:`normalize_ocr`), in [0, 1]:

        similarity(a, b) = 1 - levenshtein(a, b) / max(len(a), len(b))

    the per-answer score of ANLS, the standard OCR-VQA metric, whose acceptance threshold 0.5 is also P1's "OCR by
    normalised similarity >= 0.5". ``levenshtein`` is the fewest single-character insertions, deletions and
    substitutions (``rapidfuzz.distance.Levenshtein.normalized_similarity``: bit-parallel, a few milliseconds for 10k
    characters). 1.0 for two empty strings, 0.0 if only one is empty. The prediction is cut to
    ``max(OCR_MAX_CHARS, 2 * len(gt))`` characters first.

    Examples: ``"abcd"`` vs ``"abxy"``: 0.5 (accepted); ``"hello"`` vs ``"hello world"``: 5/11 (rejected: half the
    text is missing); ``"Hallo Wrld"`` vs ``"hello world"``: 9/11; unrelated texts of similar length score about
    0.1-0.35. Before rapidfuzz this was difflib's ``SequenceMatcher.ratio`` (2 * matches / total length, ours), which
    took seconds on 8-10k-character answers (quadratic) and timed out; its greedy matching also let long unrelated
    answers drift towards 0.5.
    """
    a, b = normalize_ocr(pred), normalize_ocr(gt)
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    a = a[: max(OCR_MAX_CHARS, 2 * len(b))]
    return float(Levenshtein.normalized_similarity(a, b))


def grade_ocr(response: str, ground_truth: Any, *, threshold: float = 0.5,
              answer_tags: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE), think_close: str = THINK_CLOSE
              ) -> GradeResult:
    """OCR: ``acc`` = 1 iff :func:`ocr_similarity` >= ``threshold`` (best over a list of acceptable gts).
    Answer: answer-tag content, else last ``\\boxed{}``, else the whole response. Extra ``similarity`` (1.0 for an
    answer identical to a ground truth after whitespace normalisation, without computing it)."""
    cand, _, why = _perception_candidate(response, answer_tags, think_close)
    gts = [str(g) for g in gt_alternatives(ground_truth) if g is not None and normalize_ocr(str(g))]
    if not gts:
        return fail("missing ground truth", **{SIMILARITY: 0.0})
    if cand is None or not normalize_ocr(cand):
        return fail(why or "empty answer", **{SIMILARITY: 0.0})
    sim = 1.0 if identical_answer(cand, gts) else max(ocr_similarity(cand, g) for g in gts)
    return GradeResult(acc=1.0 if sim >= threshold else 0.0, pred=short(cand), extras={SIMILARITY: float(sim)})


# ====================================================================================================================
# Perception: counting
# ====================================================================================================================
_UNITS_WORDS = {"zero": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
                "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "dozen": 12}
_TENS_WORDS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
               "ninety": 90}
_WORD_RE = re.compile(r"[a-z]+")
_INT_RE = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?")


def _first_number_word(s: str) -> Optional[tuple[int, float]]:
    """(position, value) of the first number written in words (``three``, ``twenty-one``, ``a hundred``)."""
    words = [(m.start(), m.group()) for m in _WORD_RE.finditer(s.lower())]
    for k, (pos, w) in enumerate(words):
        if w in _TENS_WORDS:
            val = _TENS_WORDS[w]
            if k + 1 < len(words) and words[k + 1][1] in _UNITS_WORDS and 0 < _UNITS_WORDS[words[k + 1][1]] < 10:
                val += _UNITS_WORDS[words[k + 1][1]]
            return pos, float(val)
        if w in _UNITS_WORDS:
            val = _UNITS_WORDS[w]
            if k + 1 < len(words) and words[k + 1][1] == "hundred":
                val *= 100
            return pos, float(val)
        if w == "hundred":
            return pos, 100.0
    return None


def parse_count(s: Any) -> Optional[float]:
    """The first number in ``s``: digits (``1,000``, ``3.0``) or number words (``three``, ``twenty one``), whichever
    comes first. Non-integers are returned as they are (and then never equal an integer count)."""
    if s is None:
        return None
    if isinstance(s, bool):
        return None
    if isinstance(s, (int, float)):
        return float(s) if math.isfinite(s) else None
    t = str(s)
    m = _INT_RE.search(t)
    digit = (m.start(), float(m.group().replace(",", ""))) if m else None
    word = _first_number_word(t)
    cands = [c for c in (digit, word) if c is not None]
    if not cands:
        return None
    v = min(cands, key=lambda c: c[0])[1]
    return v if math.isfinite(v) else None


def grade_count(response: str, ground_truth: Any, *, answer_tags: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE),
                think_close: str = THINK_CLOSE) -> GradeResult:
    """Counting: ``acc`` = 1 iff the first number of the answer (answer-tag content, else last ``\\boxed{}``, else the
    whole response) equals the integer ground truth exactly (an answer identical to an integer ground truth's text,
    after whitespace normalisation, is correct at once)."""
    cand, _, why = _perception_candidate(response, answer_tags, think_close)
    texts = [ground_truth_text(g) for g in gt_alternatives(ground_truth)]
    parsed = [(t, parse_count(t)) for t in texts]
    gts = [g for _, g in parsed if g is not None]
    if not gts:
        return fail("ground truth is not a number")
    if cand is None:
        return fail(why)
    if identical_answer(cand, [t for t, g in parsed if g is not None and g.is_integer()]):
        return GradeResult(acc=1.0, pred=short(cand))
    v = parse_count(cand)
    if v is None:
        return fail("no number in the answer")
    ok = v.is_integer() and any(v == g for g in gts)
    return GradeResult(acc=1.0 if ok else 0.0, pred=short(cand))


def warm_up() -> None:
    """Grade once (loads scipy's matching if installed, and rapidfuzz): a grader subprocess's start."""
    grade_bbox("[0, 0, 1, 1] [2, 2, 3, 3]", [[0, 0, 1, 1], [2, 2, 3, 3]])
    grade_ocr("<answer>hallo</answer>", "hello")


__all__ = [
    "Box", "MAX_BOXES", "OCR_MAX_CHARS", "parse_boxes", "box_iou", "match_boxes", "grade_bbox", "normalize_ocr",
    "ocr_similarity", "grade_ocr", "parse_count", "grade_count", "warm_up",
]
