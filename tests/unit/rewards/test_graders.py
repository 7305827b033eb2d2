"""Graders with the real grader libraries (math-verify, mathruler) and the grader subprocess pool on hostile output."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from verl_difficulty.rewards import perception as P
from verl_difficulty.rewards.extract import (
    check_format,
    coerce_text,
    extract_boxed,
    extract_tag,
    format_think_answer,
    format_think_boxed,
    truncate_tail,
)
from verl_difficulty.rewards.math_grading import grade_math, grade_r1v, parse_choice
from verl_difficulty.rewards.perception import (
    box_iou,
    grade_bbox,
    grade_count,
    grade_ocr,
    match_boxes,
    ocr_similarity,
    parse_boxes,
    parse_count,
)
from verl_difficulty.rewards.pool import SafeGrader
from verl_difficulty.rewards.results import GradeResult
from verl_difficulty.schema import ACC, FORMAT

# ====================================================================================================================
# Extraction
# ====================================================================================================================


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{2}}{\\left(3+\\{x\\}\\right)}}", "\\frac{\\sqrt{2}}{\\left(3+\\{x\\}\\right)}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed {  7 }", "7"),
        ("\\boxed 7 end", "7"),
        ("\\fbox{3}", "3"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ],
)
def test_extract_boxed_nested(text, expected):
    assert extract_boxed(text) == (expected, "")


@pytest.mark.parametrize(
    "text, reason_part",
    [
        ("the answer is \\boxed{1", "malformed"),
        ("\\boxed{}", "empty"),
        ("\\boxed{   }", "empty"),
        ("no box here", "no \\boxed{}"),
        ("\\boxed{1} and then broken \\boxed{2", "malformed"),  # only the last box counts
        ("\\boxedfoo{1}", "no \\boxed{}"),
    ],
)
def test_extract_boxed_malformed(text, reason_part):
    content, reason = extract_boxed(text)
    assert content is None and reason_part in reason


def test_extract_tag_last_complete_pair():
    assert extract_tag("<answer> 1 </answer> text <answer>2</answer>") == "2"
    assert extract_tag("<answer>1") is None
    assert extract_tag("1</answer>") is None
    assert extract_tag("<ans>x</ans>", "<ans>", "</ans>") == "x"


# ====================================================================================================================
# Math accuracy
# ====================================================================================================================


@pytest.mark.parametrize(
    "response, gt",
    [
        # equivalent fractions / \frac vs decimal
        ("\\boxed{0.5}", "1/2"),
        ("\\boxed{\\frac{2}{4}}", "0.5"),
        ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}"),
        ("\\boxed{1/2}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{1}{2}}", "0.5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        # units stripped
        ("\\boxed{5 cm}", "5"),
        ("\\boxed{5\\text{ cm}}", "5"),
        ("\\boxed{5\\,\\mathrm{cm}}", "5"),
        ("\\boxed{12 \\text{ meters}^2}", "12"),
        ("\\boxed{\\$12}", "12"),
        ("\\boxed{30^\\circ}", "30"),
        # percent
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{50\\%}", "0.5"),
        ("\\boxed{0.5}", "50\\%"),
        ("\\boxed{50}", "50\\%"),
        # symbolic
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{1,000}", "1000"),
        # words, ground-truth variants
        ("\\boxed{Yes}", "yes"),
        ("\\boxed{\\text{red}}", "Red"),
        ("\\boxed{4}", 4),
        ("\\boxed{4}", 4.0),
        ("\\boxed{4}", ["3", "4"]),
        ("\\boxed{2}", "<answer> 2 </answer>"),
    ],
)
def test_math_correct(response, gt):
    r = grade_math(response, gt)
    assert r.acc == 1.0, (response, gt, r)
    assert r.reason == ""


@pytest.mark.parametrize(
    "response, gt",
    [
        ("\\boxed{0.51}", "1/2"),
        ("\\boxed{3.14}", "\\pi"),
        ("\\boxed{der}", "red"),  # math-verify alone would read both as r*e*d
        ("\\boxed{6 cm}", "5"),
        ("\\boxed{2}", "\\frac{1}{2}"),
    ],
)
def test_math_wrong(response, gt):
    r = grade_math(response, gt)
    assert r.acc == 0.0 and r.reason == ""


@pytest.mark.parametrize(
    "response",
    ["\\boxed{B}", "\\boxed{(B)}", "\\boxed{B.}", "\\boxed{B) 12}", "\\boxed{\\text{B}}", "\\boxed{(b)}",
     "\\boxed{Option B}", "\\boxed{B: twelve}"],
)
def test_multiple_choice_correct(response):
    assert grade_math(response, "B").acc == 1.0
    assert grade_math(response, "(B)").acc == 1.0


@pytest.mark.parametrize("response", ["\\boxed{C}", "\\boxed{Because}", "\\boxed{12}", "\\boxed{(C) 12}"])
def test_multiple_choice_wrong(response):
    assert grade_math(response, "B").acc == 0.0


def test_choice_parsing():
    assert parse_choice("B) 12") == "B"
    assert parse_choice("The answer is (D).") == "D"
    assert parse_choice("Because") is None
    assert parse_choice("b") is None  # lowercase only in parentheses


@pytest.mark.parametrize(
    "response, reason_part",
    [("\\boxed{1", "malformed"), ("\\boxed{}", "empty"), ("the answer is 1", "no \\boxed{}")],
)
def test_math_malformed_or_missing_box_scores_zero_with_reason(response, reason_part):
    r = grade_math(response, "1")
    assert r.acc == 0.0 and reason_part in r.reason


def test_math_fallbacks_without_box():
    assert grade_math("The answer is 5", "5", require_boxed=False).acc == 1.0
    assert grade_math("<answer>red</answer>", "red", require_boxed=False).acc == 1.0
    assert grade_math("so the answer is (B).", "B", require_boxed=False).acc == 1.0
    assert grade_math("<answer>blue</answer>", "red", require_boxed=False).acc == 0.0


def test_math_missing_ground_truth():
    r = grade_math("\\boxed{1}", None)
    assert r.acc == 0.0 and "ground truth" in r.reason


# ====================================================================================================================
# R1-V accuracy
# ====================================================================================================================


def test_r1v_math_verify_on_whole_completion():
    assert grade_r1v("<think>x</think> the answer is $\\frac{1}{2}$", "0.5").acc == 1.0


def test_r1v_exact_match_fallback():
    assert grade_r1v("<think>x</think><answer>Cat</answer>", "cat").acc == 1.0
    assert grade_r1v("<think>x</think><answer>(B)</answer>", "B").acc == 1.0
    assert grade_r1v("<think>x</think><answer>5</answer>", "<answer> 5 </answer>").acc == 1.0
    assert grade_r1v("<think>x</think><answer>dog</answer>", "cat").acc == 0.0


def test_r1v_missing_tags():
    r = grade_r1v("<think>x</think> no answer here", "cat")
    assert r.acc == 0.0 and "<answer>" in r.reason


# ====================================================================================================================
# Format rules
# ====================================================================================================================


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>work</think> so \\boxed{1}", True),
        ("  <think>work\n</think>\n\nThe answer is \\boxed{\\frac{1}{2}}.", True),
        ("<think></think>\\boxed{1}", False),  # empty reasoning
        ("work</think>\\boxed{1}", False),  # missing <think>
        ("<think>work \\boxed{1}", False),  # missing </think>
        ("<think>work</think> 1", False),  # missing box
        ("<think>work</think> \\boxed{}", False),  # empty box
        ("<think>work</think> \\boxed{1", False),  # malformed box
        ("<think>\\boxed{1}</think> done", False),  # box inside the reasoning only
        ("\\boxed{1} <think>work</think>", False),
        ("<think>a</think><think>b</think>\\boxed{1}", False),  # two think blocks
    ],
)
def test_format_think_boxed(text, ok):
    fmt, why = format_think_boxed(text)
    assert fmt == (1.0 if ok else 0.0), (text, why)
    assert (why == "") == ok


def test_format_think_boxed_options():
    assert format_think_boxed("work</think>\\boxed{1}", require_think_open=False)[0] == 1.0
    assert format_think_boxed("<think></think>\\boxed{1}", require_reasoning=False)[0] == 1.0
    assert format_think_boxed("<reason>w</reason>\\boxed{1}", "<reason>", "</reason>")[0] == 1.0


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>w</think> <answer>1</answer>", True),
        ("<think>w</think>\n<answer>1</answer>\n", True),
        ("<think>w</think> <answer>1</answer> trailing", False),
        ("<think>w</think> text <answer>1</answer>", False),
        ("<think>w</think> <answer> </answer>", False),
        ("<answer>1</answer>", False),
    ],
)
def test_format_think_answer(text, ok):
    assert format_think_answer(text)[0] == (1.0 if ok else 0.0)


def test_check_format_styles():
    assert check_format("boxed", "x \\boxed{1}")[0] == 1.0
    assert check_format("answer", "<answer>1</answer>")[0] == 1.0
    assert check_format("none", "<think>w</think>\\boxed{1}")[0] == 0.0
    with pytest.raises(ValueError):
        check_format("bogus", "x")


# ====================================================================================================================
# Perception
# ====================================================================================================================


def test_iou_edge_cases():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edge
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0  # touching corner
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # degenerate
    assert box_iou((0, 0, 10, 10), (0, 0, 5, 5)) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "answer, gt, acc, score",
    [
        ("[0, 0, 10, 10]", [0, 0, 10, 10], 1.0, 1.0),
        ("[10, 0, 20, 10]", [0, 0, 10, 10], 0.0, 0.0),  # touching
        ("[0, 0, 4, 5]", [0, 0, 10, 10], 1.0, 1.0),  # IoU exactly 0.2
        ("[0, 0, 4, 4.9]", [0, 0, 10, 10], 0.0, 0.0),  # IoU 0.196
        ("[10, 10, 0, 0]", [0, 0, 10, 10], 1.0, 1.0),  # corners swapped
        ('{"bbox_2d": [0, 0, 10, 10], "label": "cat"}', "[0, 0, 10, 10]", 1.0, 1.0),
        # several boxes: optimal one-to-one matching, score = matched / max(n_gt, n_pred)
        ("[21, 21, 30, 30], [0, 0, 9, 9]", [[0, 0, 10, 10], [20, 20, 30, 30]], 1.0, 1.0),
        ("[0, 0, 10, 10]", [[0, 0, 10, 10], [20, 20, 30, 30]], 0.0, 0.5),
        ("[0,0,10,10] [20,20,30,30] [50,50,60,60]", [[0, 0, 10, 10], [20, 20, 30, 30]], 0.0, 2 / 3),
        ("[0, 0, 10, 10], [0, 0, 10, 10]", [[0, 0, 10, 10], [20, 20, 30, 30]], 0.0, 0.5),  # one box, not two
    ],
)
def test_bbox(answer, gt, acc, score):
    r = grade_bbox(f"<think>w</think><answer>{answer}</answer>", gt)
    assert r.acc == acc and r.score == pytest.approx(score), r


def test_bbox_matching_is_optimal_not_greedy():
    # greedy by best IoU would pair pred 0 with gt 0 (IoU 0.64) and leave pred 1 unmatched (IoU(p1, g1) < 0.2)
    gt = [(0, 0, 10, 10), (6, 0, 16, 10)]
    pred = [(1, 0, 11, 10), (-2, 0, 6, 10)]
    pairs = match_boxes(pred, gt, 0.2)
    assert len(pairs) == 2


@pytest.mark.parametrize("answer", ["[1, 2, 3]", "[a, b, c, d]", "[0, 0, 1e999, 10]", "no box", ""])
def test_bbox_malformed(answer):
    r = grade_bbox(f"<answer>{answer}</answer>" if answer else "<answer></answer>", [0, 0, 10, 10])
    assert r.acc == 0.0 and r.reason and r.extras["iou"] == 0.0


def test_bbox_malformed_ground_truth_and_box_parsing():
    assert "ground truth" in grade_bbox("<answer>[0,0,1,1]</answer>", "nothing").reason
    assert parse_boxes("[1,2,3,4]")[0] == [(1.0, 2.0, 3.0, 4.0)]
    assert parse_boxes("1 2 3 4")[0] == [(1.0, 2.0, 3.0, 4.0)]
    boxes, n = parse_boxes("[0,0,1,1]" * 500)
    assert len(boxes) == P.MAX_BOXES and n == 500


def test_bbox_spraying_boxes_is_not_rewarded():
    spray = " ".join(f"[{i}, 0, {i + 10}, 10]" for i in range(0, 300, 3))
    r = grade_bbox(f"<answer>{spray}</answer>", [0, 0, 10, 10])
    assert r.acc == 0.0 and r.score <= 0.01


@pytest.mark.parametrize(
    "answer, gt, ok",
    [
        ("Hello World", "hello   world", True),
        ("Hallo Wrld", "hello world", True),
        ("STOP", "stop", True),
        ("xyz", "hello world", False),
        ("hello world!", "hello world", True),  # 1 - 1/12
        ("hello", "hello world", False),  # 1 - 6/11 = 0.45: half the text is missing
        ("he", "hello world", False),  # 1 - 9/11 = 0.18
    ],
)
def test_ocr_threshold(answer, gt, ok):
    r = grade_ocr(f"<answer>{answer}</answer>", gt)
    assert r.acc == (1.0 if ok else 0.0), r
    assert 0.0 <= r.extras["similarity"] <= 1.0


def test_ocr_similarity_boundary():
    # "abcd" vs "abxy": 1 - 2/4 = 0.5 -> accepted (>=), "abcd" vs "axyz": 1 - 3/4 = 0.25 -> rejected
    assert ocr_similarity("abcd", "abxy") == pytest.approx(0.5)
    assert grade_ocr("<answer>abcd</answer>", "abxy").acc == 1.0
    assert grade_ocr("<answer>abcd</answer>", "axyz").acc == 0.0
    assert grade_ocr("<answer></answer>", "abc").reason


@pytest.mark.parametrize(
    "answer, gt, ok",
    [
        ("3", 3, True),
        ("three", 3, True),
        ("Three.", "3", True),
        ("There are 3 cats.", "three", True),
        ("twenty-one", 21, True),
        ("twenty one", "21", True),
        ("3.0", 3, True),
        ("1,000", 1000, True),
        ("3.5", 3, False),
        ("4", 3, False),
        ("none", 0, True),
        ("I see 3 cats and 2 dogs", 2, False),  # the first number counts
    ],
)
def test_count(answer, gt, ok):
    r = grade_count(f"<answer>{answer}</answer>", gt)
    assert r.acc == (1.0 if ok else 0.0), r


def test_count_no_number():
    r = grade_count("<answer>many</answer>", 3)
    assert r.acc == 0.0 and "no number" in r.reason
    assert parse_count("seven") == 7.0 and parse_count("x") is None


# ====================================================================================================================
# Input coercion, truncation
# ====================================================================================================================


def test_coerce_text():
    assert coerce_text(b"\xff\xfe\xfd")[0] is None and "UTF-8" in coerce_text(b"\xff\xfe\xfd")[1]
    assert coerce_text("ab\udcff")[0] is None
    assert coerce_text("")[1] == "empty response"
    assert coerce_text("  \n")[1] == "empty response"
    assert coerce_text(None)[1] == "empty response"
    assert coerce_text("é".encode()) == ("é", "")
    assert coerce_text(3)[0] is None


def test_truncate_keeps_tail():
    assert truncate_tail("abcdef", 3) == "def"
    assert truncate_tail("abc", 0) == "abc"


def test_result_dict_uses_schema_keys():
    d = GradeResult(acc=1.0, format=1.0, extras={"iou": 0.5}).to_dict()
    assert d[ACC] == 1.0 and d[FORMAT] == 1.0 and d["reason"] == "" and d["iou"] == 0.5


# ====================================================================================================================
# Hostile output through the grader subprocess pool
# ====================================================================================================================
LIMIT = 2.0
# 20 characters: sympy computes 10**(10**10) in C, which neither a SIGALRM timeout nor math-verify's own
# timeout can interrupt (measured: still running after 60 s with signal.alarm(8) set).
ADVERSARIAL = "<think>w</think> \\boxed{10^{10^{10}}}"


@pytest.fixture(scope="module")
def grader():
    g = SafeGrader(timeout_s=LIMIT, num_procs=1)
    g.pool.ping()
    yield g
    g.close()


def _warm(g: SafeGrader) -> int:
    g.pool.ping()
    return g.pool.pids()[0]


def test_pool_grades_normally(grader):
    r = grader.grade("math", "<think>w</think> \\boxed{\\frac{2}{4}}", "0.5", format_style="think_boxed")
    assert r.acc == 1.0 and r.format == 1.0 and r.reason == ""


def test_real_adversarial_latex_times_out_and_worker_is_replaced(grader):
    pid = _warm(grader)
    t = time.monotonic()
    r = grader.grade("math", ADVERSARIAL, "5", format_style="think_boxed")
    elapsed = time.monotonic() - t
    assert r.acc == 0.0 and "timeout" in r.reason
    assert r.format == 1.0  # the format is judged in the parent, on the full response
    assert LIMIT <= elapsed < LIMIT + 1.0, elapsed
    assert grader.grade("math", "\\boxed{3}", "3").acc == 1.0  # a fresh worker answers
    assert grader.pool.pids()[0] != pid


def test_math_verify_own_timeout_does_not_work_off_the_main_thread():
    import math_verify

    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(math_verify.parse, "\\boxed{1}", parsing_timeout=1)
        with pytest.raises(ValueError, match="thread"):
            fut.result()


def test_timeout_from_worker_threads_and_asyncio(grader):
    """Reward workers grade in executor threads under asyncio: the limit must hold there too."""
    _warm(grader)

    async def main():
        loop = asyncio.get_running_loop()
        t = time.monotonic()
        r = await loop.run_in_executor(None, grader.grade, "math", ADVERSARIAL, "5")
        return r, time.monotonic() - t

    r, elapsed = asyncio.run(main())
    assert "timeout" in r.reason and elapsed < LIMIT + 1.0
    assert threading.current_thread() is threading.main_thread()


def test_simulated_hang_hook(grader):
    _warm(grader)
    t = time.monotonic()
    r = grader.grade("_debug_sleep", "x", None, {"seconds": 60})
    assert "timeout" in r.reason and time.monotonic() - t < LIMIT + 1.0
    assert grader.grade("count", "<answer>3</answer>", 3).acc == 1.0


def test_exception_inside_grader(grader):
    pid = _warm(grader)
    r = grader.grade("_debug_raise", "x", None)
    assert r.acc == 0.0 and "RuntimeError" in r.reason
    assert grader.pool.pids()[0] == pid  # the worker survives an exception
    assert grader.grade("math", "\\boxed{3}", "3").acc == 1.0


def test_grader_process_killed_mid_call(grader):
    pid = _warm(grader)
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    r = grader.grade("_debug_sleep", "x", None, {"seconds": 30})
    assert r.acc == 0.0 and "died" in r.reason
    assert grader.grade("math", "\\boxed{3}", "3").acc == 1.0


def test_one_megabyte_output(grader):
    _warm(grader)
    big = "<think>" + "blah " * 200_000 + "</think> \\boxed{42}"
    assert len(big) > 1_000_000
    t = time.monotonic()
    r = grader.grade("math", big, "42", format_style="think_boxed")
    assert r.acc == 1.0 and r.format == 1.0 and time.monotonic() - t < LIMIT
    r = grader.grade("math", "x" * 1_000_000, "42", format_style="think_boxed")
    assert r.acc == 0.0 and "no \\boxed{}" in r.reason
    r = grader.grade("r1v", "7 " * 500_000, "42")
    assert r.acc == 0.0


def test_non_utf8_bytes(grader):
    r = grader.grade("math", b"\\boxed{1} \xff\xfe", "1")
    assert r.acc == 0.0 and "UTF-8" in r.reason
    assert grader.grade("math", "\\boxed{1} \ufffd", "1").acc == 1.0  # decoded replacement chars are fine


@pytest.mark.parametrize("resp", ["", "   ", None])
def test_empty_response(grader, resp):
    r = grader.grade("math", resp, "1", format_style="think_boxed")
    assert r.acc == 0.0 and r.format == 0.0 and r.reason == "empty response"


def test_unknown_task_and_bad_ground_truth(grader):
    assert "unknown grading task" in grader.grade("nope", "x", "1").reason
    import numpy as np

    assert grader.grade("bbox", "<answer>[0,0,10,10]</answer>", np.array([0, 0, 10, 10])).acc == 1.0
    assert grader.grade("math", "\\boxed{1}", object()).acc == 0.0


def test_other_pathological_inputs_finish_or_time_out(grader):
    cases = [
        "\\boxed{" + "(" * 2000 + "1" + ")" * 2000 + "}",
        "\\boxed{" + "\\frac{" * 300 + "1}{2}" * 300 + "}",
        "\\boxed{" + "{" * 50_000 + "}",
        "<answer>" + "[" * 100_000 + "</answer>",
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{2^{2^{40}}}",
    ]
    for c in cases:
        _warm(grader)
        t = time.monotonic()
        r = grader.grade("math", c, "1")
        assert time.monotonic() - t < LIMIT + 1.0
        assert r.acc == 0.0
    assert grader.grade("math", "\\boxed{1}", "1").acc == 1.0


def test_inline_mode_grades_without_subprocess():
    g = SafeGrader(mode="inline")
    assert g.pool is None
    assert g.grade("math", "\\boxed{1/2}", "0.5").acc == 1.0
    assert "RuntimeError" in g.grade("_debug_raise", "x", None).reason


def test_r1v_tag_content_math_equivalence():
    # math-verify finds nothing inside "<answer>12.0</answer>"; the tag content is compared by math equivalence
    assert grade_r1v("<think>x</think><answer>12.0</answer>", "<answer> 12 </answer>").acc == 1.0
    assert grade_r1v("<think>x</think><answer>\\frac{2}{4}</answer>", "0.5").acc == 1.0
    r = grade_r1v("<think>x</think><answer> </answer>", "0.5")
    assert r.acc == 0.0 and "empty" in r.reason


def test_r1v_reasoning_does_not_count_as_the_answer():
    # R1-V's literal rule (math-verify on the whole completion) grades this correct for gt 5: not here
    resp = "<think>I first thought it is 5 but no.</think><answer>3</answer>"
    assert grade_r1v(resp, "5").acc == 0.0
    assert grade_r1v(resp, "3").acc == 1.0
    assert grade_r1v("<think>maybe 5</think> so the answer is 3", "5").acc == 0.0
    assert grade_r1v("<think>maybe 5</think> so the answer is 3", "3").acc == 1.0


def test_whole_text_fallback_skips_the_reasoning():
    assert grade_count("<think>I see 2 dogs</think> 3", 3).acc == 1.0
    assert grade_math("<think>maybe 7</think> It is 4.", "4", require_boxed=False).acc == 1.0
    assert grade_math("<think>maybe 7</think> It is 4.", "7", require_boxed=False).acc == 0.0
    r = grade_ocr("<think>reading</think>", "abc")
    assert r.acc == 0.0 and "nothing after" in r.reason


def _brute_force_lsa(w, maximize=True):
    """Stand-in for scipy.optimize.linear_sum_assignment (scipy is optional): exhaustive, small matrices only."""
    import itertools

    import numpy as np

    w = np.asarray(w)
    n, m = w.shape
    best, best_pairs = None, None
    if n <= m:
        for cols in itertools.permutations(range(m), n):
            v = sum(w[i, c] for i, c in enumerate(cols))
            if best is None or v > best:
                best, best_pairs = v, list(enumerate(cols))
    else:
        for rows in itertools.permutations(range(n), m):
            v = sum(w[r, j] for j, r in enumerate(rows))
            if best is None or v > best:
                best, best_pairs = v, sorted((r, j) for j, r in enumerate(rows))
    return np.array([p[0] for p in best_pairs]), np.array([p[1] for p in best_pairs])


@pytest.mark.parametrize("use_lsa", [False, True])
def test_matching_backends_agree(monkeypatch, use_lsa):
    monkeypatch.setattr(P, "_LSA", [_brute_force_lsa if use_lsa else None])
    gt = [(0, 0, 10, 10), (6, 0, 16, 10), (40, 40, 50, 50)]
    pred = [(1, 0, 11, 10), (-2, 0, 6, 10), (41, 41, 50, 50), (100, 100, 110, 110)]
    pairs = match_boxes(pred, gt, 0.2)
    assert len(pairs) == 3 and sorted(j for _, j, _ in pairs) == [0, 1, 2]
    r = grade_bbox("<answer>" + " ".join(str(list(p)) for p in pred) + "</answer>", [list(g) for g in gt])
    assert r.score == pytest.approx(3 / 4) and r.acc == 0.0


# ====================================================================================================================
# OCR similarity: definition, known values, long answers
# ====================================================================================================================


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        # 1 - levenshtein / max length, by hand
        ("abcd", "abxy", 0.5),  # 2 substitutions
        ("hello", "hello world", 5 / 11),  # 6 insertions
        ("he", "hello world", 2 / 11),
        ("Hallo Wrld", "hello world", 9 / 11),  # a->e, insert o
        ("xyz", "hello world", 0.0),  # 3 substitutions + 8 insertions
        ("kitten", "sitting", 4 / 7),  # the textbook 3 edits
        ("  HELLO \n World ", "hello world", 1.0),  # normalised: NFKC, lowercase, whitespace, quotes
        ('"ﬁne"', "fine", 1.0),
        ("", "", 1.0),
        ("abc", "", 0.0),
        ("bacbc", "ab", 2 / 5),  # 3 deletions
        ("acbcac", "cbbac", 4 / 6),  # delete a, substitute c->b
    ],
)
def test_ocr_similarity_known_values(pred, gt, expected):
    assert ocr_similarity(pred, gt) == pytest.approx(expected, abs=1e-12)


def _levenshtein_by_hand(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_ocr_similarity_equals_the_textbook_definition():
    """1 - levenshtein / max length, against a plain dynamic-programming Levenshtein on random short strings."""
    import random

    rng = random.Random(0)
    for _ in range(2000):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(1, 12)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(1, 12)))
        na, nb = P.normalize_ocr(a), P.normalize_ocr(b)
        if not na or not nb:
            continue
        expected = 1 - _levenshtein_by_hand(na, nb) / max(len(na), len(nb))
        assert ocr_similarity(a, b) == pytest.approx(expected, abs=1e-12), (a, b)


def test_ocr_prediction_cut_to_twice_the_ground_truth():
    # cut to max(OCR_MAX_CHARS, 2 * len(gt)) characters: gt + 4000 more characters is judged on its first 2000
    assert ocr_similarity("abc" + "z" * 4000, "abc") == pytest.approx(3 / 2000)
    assert ocr_similarity("a" * 1000 + "z" * 5000, "a" * 1000) == pytest.approx(1000 / 2000)


def _long_text(n: int, seed: int) -> str:
    """``n`` characters of random lowercase words separated by single spaces (normalisation keeps them as they are)."""
    import random

    rng = random.Random(seed)
    words: list[str] = []
    total = 0
    while total < n + 1:
        words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9))))
        total += len(words[-1]) + 1
    return " ".join(words)[: n - 1] + "w"


LONG = _long_text(10_000, 1)


@pytest.mark.parametrize(
    "answer, expected",
    [
        (LONG, 1.0),  # identical
        (LONG[:5000] + "Q" + LONG[5001:], 1 - 1 / 10_000),  # one substitution
        (LONG[:5000] + LONG[5001:], 1 - 1 / 10_000),  # one deletion
        ("0123456789" * 1000, 0.0),  # no character in common
        (_long_text(10_000, 2), None),  # unrelated text over the same alphabet (the slowest case for difflib)
    ],
    ids=["identical", "one_substitution", "one_deletion", "disjoint", "unrelated"],
)
def test_ocr_on_10k_character_answers(answer, expected):
    """Exact values on long answers (speed: benchmarks/reward.py; no timeout: the pool tests below)."""
    assert len(LONG) == 10_000 and len(answer) >= 9_999
    response = f"<think>reading the page</think><answer>{answer}</answer>"
    result = grade_ocr(response, LONG)
    sim = result.extras["similarity"]
    if expected is not None:
        assert sim == pytest.approx(expected, abs=1e-12)
        assert ocr_similarity(answer, LONG) == pytest.approx(expected, abs=1e-12)
        assert result.acc == (1.0 if expected >= 0.5 else 0.0) and result.reason == ""
    else:
        assert 0.0 < sim < 0.5 and result.acc == 0.0


# ====================================================================================================================
# Identity: an answer identical to the ground truth is correct before any expensive parsing
# ====================================================================================================================
# math-verify parses this for ever (sympy builds 10**(10**(10**10))), also against the identical ground truth
HUGE = "10^{10^{10^{10}}}"


@pytest.mark.parametrize(
    "response, gt",
    [
        ("\\boxed{x  +\n 1}", "x + 1"),  # whitespace normalised
        ("<think>w</think> so \\boxed{\\frac{a}{b}}", "<answer>\\frac{a}{b}</answer>"),  # gt tags/box stripped
        ("<think>w</think> \\boxed{" + HUGE + "}", "\\boxed{" + HUGE + "}"),
    ],
)
def test_math_identical_answer_short_circuit(response, gt):
    r = grade_math(response, gt)
    assert r.acc == 1.0 and r.reason == "" and r.extras["method"] == "identical"


def test_identity_keeps_each_graders_extraction_and_rules():
    # math_acc_format needs a box: an identical unboxed answer is no answer
    r = grade_math("5", "5")
    assert r.acc == 0.0 and "no \\boxed{}" in r.reason
    assert grade_math("<think>w</think> 5", "5", require_boxed=False).extras["method"] == "identical"
    # the reasoning is never the answer
    assert grade_math("<think>7</think>", "7", require_boxed=False).acc == 0.0
    assert grade_r1v("<think>\\boxed{7}</think> so 3", "7").acc == 0.0
    assert grade_r1v("<think>7</think><answer>3</answer>", "7").acc == 0.0
    assert grade_count("<think>3</think> I see 4", 3).acc == 0.0
    assert grade_ocr("<think>abc</think> xyz", "abc").acc == 0.0
    # identity is exact up to whitespace: case and LaTeX are not normalised by it
    assert grade_math("\\boxed{X}", "x").extras["method"] != "identical"
    # a malformed last box is still malformed
    assert grade_math("\\boxed{5} \\boxed{5", "5").acc == 0.0


@pytest.mark.parametrize(
    "response, gt, pred",
    [
        ("<think>w</think><answer> a   b </answer>", "a b", "a   b"),  # the tag content
        ("<think>w</think><answer>\\boxed{a b}</answer>", "\\boxed{a b}", "\\boxed{a b}"),  # its box
        ("<think>w</think> the answer: \\boxed{a  b}", "<answer>a b</answer>", "a  b"),  # no tags: the last box
        ("<think>w</think> a b ", "a b", "a b"),  # no tags, no box: the completion after the reasoning
    ],
)
def test_r1v_identical_answer_short_circuit(response, gt, pred):
    r = grade_r1v(response, gt)
    assert r.acc == 1.0 and r.extras["method"] == "identical" and r.pred == pred


def test_perception_identical_answers():
    text = "Grand Café  du Nord"
    r = grade_ocr(f"<answer>{text}</answer>", ["other", "Grand Café du Nord"])
    assert r.acc == 1.0 and r.extras["similarity"] == 1.0
    assert grade_count("<answer> 12 </answer>", "12").acc == 1.0
    assert grade_count("<answer>3.5</answer>", "3.5").acc == 0.0  # counts are integers, identical or not
    # the same boxes as the ground truth: correct, zero-area boxes included (their IoU is 0)
    r = grade_bbox("<answer>[5, 5, 5, 5]</answer>", [5, 5, 5, 5])
    assert r.acc == 1.0 and r.score == 1.0 and r.extras["iou"] == 1.0
    r = grade_bbox("<answer>[5, 5, 5, 5], [5, 5, 5, 5]</answer>", [[5, 5, 5, 5], [5, 5, 5, 5]])
    assert r.acc == 1.0
    assert grade_bbox("<answer>[5, 5, 5, 5]</answer>", [5, 5, 5, 6]).acc == 0.0


@pytest.mark.parametrize(
    "task, response, gt",
    [
        ("math", "<think>w</think> \\boxed{" + HUGE + "}", "\\boxed{" + HUGE + "}"),
        ("math", "<think>w</think> \\boxed{" + HUGE + "}", HUGE),
        ("r1v", "\\boxed{" + HUGE + "}", "\\boxed{" + HUGE + "}"),
        ("r1v", "<think>w</think> \\boxed{" + HUGE + "}", HUGE),
        ("r1v", "<think>w</think><answer>" + HUGE + "</answer>", "<answer>" + HUGE + "</answer>"),
    ],
)
def test_identical_hostile_latex_through_the_pool_does_not_time_out(grader, task, response, gt):
    _warm(grader)
    r = grader.grade(task, response, gt)  # a timeout would score 0 with reason "timeout"
    assert r.acc == 1.0 and r.reason == "" and r.extras["method"] == "identical", r


def test_long_ocr_through_the_pool_does_not_time_out(grader):
    _warm(grader)
    gt = LONG[:7000]
    for answer, expected in [(gt, 1.0), (gt[:3000] + "Q" + gt[3001:], 1 - 1 / 7_000)]:
        r = grader.grade("ocr", f"<think>w</think><answer>{answer}</answer>", gt)  # difflib: timed out here
        assert r.acc == 1.0 and r.extras["similarity"] == pytest.approx(expected, abs=1e-12), r
