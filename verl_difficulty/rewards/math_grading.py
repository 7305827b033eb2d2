"""Math accuracy: answer normalisation, multiple-choice letters, equivalence (math-verify, mathruler), and the two
math graders :func:`grade_math` (``math_acc_format``, P3/P4) and :func:`grade_r1v` (``r1v_acc``, P1).

Equivalence (:func:`math_equal`): math-verify (symbolic/numeric equivalence) after a normalised string comparison,
with units (``5 cm``), percent (``50\\%`` == ``50`` == ``0.5``), ``\\text{}`` wrappers and multiple-choice letters
(gt ``B`` vs ``(B)``, ``B.``, ``B) 12``, ``\\boxed{B}``) handled, mathruler's normalisers as a second opinion.

Model text is never evaluated: this module has no ``eval``; math-verify converts LaTeX with its ANTLR-based
latex2sympy and hands sympy's ``parse_expr`` only what its number/operator regex extracted; mathruler is used for its
string normalisers only, not for its ``grade_answer``, which runs ``sympy.parse_expr`` (an ``eval``) on the answer.
math-verify's own time limits (``parsing_timeout`` / ``timeout_seconds``) are off: they use ``signal.alarm`` (main
thread only) and cannot interrupt long C calls; the time limit is the grader subprocess's
(:mod:`verl_difficulty.rewards.pool`). (Not named ``math.py``: run from this folder, that would shadow the
standard library's ``math``.)
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, Iterable, Optional

from verl_difficulty.rewards.extract import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    answer_candidate,
    extract_tag,
    ground_truths,
    identical_answer,
    scan_group,
)
from verl_difficulty.rewards.results import METHOD, GradeResult, fail, short

IDENTICAL = "identical"
"""``method`` of an answer identical to the ground truth (:func:`~verl_difficulty.rewards.extract.identical_answer`):
found before any parsing."""

# ====================================================================================================================
# Normalisation
# ====================================================================================================================
_TEXT_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mathbf", "\\mathit", "\\mbox", "\\operatorname",
                  "\\textrm", "\\mathsf", "\\texttt")
_SPACING = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad", "\\displaystyle", "\\ ", "~")


def unwrap_commands(s: str, commands: Iterable[str]) -> str:
    """Replace ``\\cmd{X}`` by ``X`` for the given commands (balanced braces, linear passes)."""
    for cmd in sorted(commands, key=len, reverse=True):
        out = []
        i = 0
        while True:
            p = s.find(cmd + "{", i)
            if p < 0:
                out.append(s[i:])
                break
            j = scan_group(s, p + len(cmd))
            if j is None:
                out.append(s[i:])
                break
            out.append(s[i:p])
            out.append(s[p + len(cmd) + 1 : j])
            i = j + 1
        s = "".join(out)
    return s


def normalize_answer_text(s: str) -> str:
    """Normalise an answer string for exact comparison: NFKC, no ``$``/``\\(\\)``/``\\[\\]`` delimiters,
    ``\\text{}``-like wrappers removed, spacing commands and ``\\left``/``\\right`` dropped,
    ``\\dfrac``/``\\tfrac`` -> ``\\frac``, degree marks and thousands separators removed, trailing period removed,
    whitespace removed, lowercase."""
    s = unicodedata.normalize("NFKC", s).strip()
    for a, b in (("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""), ("$", "")):
        s = s.replace(a, b)
    s = unwrap_commands(s, _TEXT_WRAPPERS)
    for sp in _SPACING:
        s = s.replace(sp, " ")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for deg in ("^{\\circ}", "^\\circ", "\\circ", "°", "\\degree"):
        s = s.replace(deg, "")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\s+", "", s)
    return s.lower()


_UNITS = {
    # length / area / volume
    "mm", "cm", "dm", "m", "km", "in", "inch", "inches", "ft", "foot", "feet", "yd", "yard", "yards", "mi", "mile",
    "miles", "meter", "meters", "metre", "metres", "centimeter", "centimeters", "centimetre", "centimetres",
    "millimeter", "millimeters", "kilometer", "kilometers", "kilometre", "kilometres", "m2", "cm2", "km2", "m3",
    "cm3", "mm2", "mm3", "ft2", "sq", "square", "cubic", "units", "unit", "l", "ml", "liter", "liters", "litre",
    "litres",
    # mass / time / speed / angle / money / misc
    "g", "mg", "kg", "gram", "grams", "kilogram", "kilograms", "t", "ton", "tons", "lb", "lbs", "pound", "pounds",
    "oz", "s", "sec", "secs", "second", "seconds", "min", "mins", "minute", "minutes", "h", "hr", "hrs", "hour",
    "hours", "day", "days", "week", "weeks", "month", "months", "year", "years", "mph", "kmh", "km/h", "m/s",
    "degree", "degrees", "deg", "rad", "radian", "radians", "dollar", "dollars", "cent", "cents", "yuan", "euro",
    "euros", "people", "persons", "students", "times", "percent", "pieces", "items",
}
_POWER_SUFFIX = re.compile(r"(\^\{?[23]\}?|[²³])$")


def strip_units(s: str) -> tuple[str, bool]:
    """Drop currency signs and trailing unit words after a number (``5 cm`` -> ``5``, ``\\$12`` -> ``12``,
    ``3\\text{ m}^2`` -> ``3``). Returns ``(stripped, percent)`` where ``percent`` says a ``%``/``\\%``/``percent``
    was removed. Strings without a digit are returned unchanged (``m`` stays ``m``)."""
    t = unicodedata.normalize("NFKC", s).strip()
    t = unwrap_commands(t, _TEXT_WRAPPERS)
    percent = False
    for p in ("\\%", "%"):
        if p in t:
            percent = True
            t = t.replace(p, "")
    t = t.replace("\\$", "").replace("$", "").replace("€", "").replace("¥", "").replace("£", "")
    for deg in ("^{\\circ}", "^\\circ", "\\circ", "°"):
        t = t.replace(deg, "")
    t = t.strip()
    if not any(ch.isdigit() for ch in t):
        return s.strip(), False
    t = re.sub(r"(?<=\d)(?=[A-Za-z])", " ", t)  # 5cm -> 5 cm
    tokens = t.split()
    changed = False
    while len(tokens) > 1:
        tok = tokens[-1].lower().rstrip(".")
        tok = _POWER_SUFFIX.sub("", tok).strip("{}")
        if tok == "percent":
            percent = True
        if tok in _UNITS:
            tokens.pop()
            changed = True
            continue
        break
    out = " ".join(tokens) if changed else t
    return out.strip(), percent


def looks_textual(s: str) -> bool:
    """True for word answers (``red``, ``yes``, ``north east``): math-verify would read ``red`` as r*e*d (== ``der``),
    so such answers are compared as normalised strings only."""
    t = re.sub(r"\\[A-Za-z]+", " ", s)
    for run in re.findall(r"[A-Za-z]{2,}", t):
        if run.lower() not in {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "pi", "sqrt", "mod",
                               "arcsin", "arccos", "arctan", "lim", "max", "min", "gcd", "lcm", "inf", "infty",
                               "det", "deg", "sinh", "cosh", "tanh"}:
            return True
    return False


# ====================================================================================================================
# Multiple choice
# ====================================================================================================================
_CHOICE_RE = re.compile(r"^\(?([A-J])\)?(?:[.):：\s]|$)")
_CHOICE_LOWER_RE = re.compile(r"^\(([a-j])\)")
# (no two adjacent runs that can match the same characters: linear-time matching on hostile text)
_CHOICE_PREFIX_RE = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)[\s:：]*(?:is[\s:：]+)?",
                               re.IGNORECASE)
_CHOICE_IN_TEXT_RE = re.compile(r"(?:answer|option|choice)[\s:：]*(?:is[\s:：]+)?\(?([A-J])\)?(?![A-Za-z])",
                                re.IGNORECASE)


def parse_choice(s: Any) -> Optional[str]:
    """The option letter of an answer: ``B``, ``(B)``, ``B.``, ``B) 12``, ``B: text``, ``\\text{B}``, ``(b)``,
    ``Option B``, ``The answer is B``; else None (``Because`` is not ``B``)."""
    if s is None:
        return None
    t = unwrap_commands(str(s), _TEXT_WRAPPERS).replace("$", "").replace("**", "").strip()
    t = _CHOICE_PREFIX_RE.sub("", t, count=1).strip()
    m = _CHOICE_RE.match(t)
    if m:
        return m.group(1)
    m = _CHOICE_LOWER_RE.match(t)
    if m:
        return m.group(1).upper()
    return None


def gt_choice_letter(gt: Optional[str]) -> Optional[str]:
    """A ground truth is a multiple-choice letter if it is ``B``, ``(B)``, ``B.`` or ``B)`` (uppercase A-J)."""
    if gt is None:
        return None
    t = gt.strip()
    if len(t) > 4:
        return None
    m = re.fullmatch(r"\(?([A-J])[.)]?\)?", t)
    return m.group(1) if m else None


# ====================================================================================================================
# Math equivalence
# ====================================================================================================================
def _math_verify_modules():
    import math_verify  # (imported lazily: the parent process of a grader pool never needs it)

    return math_verify


@lru_cache(maxsize=512)
def _mv_parse_boxed(s: str):
    mv = _math_verify_modules()
    return mv.parse("\\boxed{" + s + "}", parsing_timeout=None)


def _mv_parse_text(s: str):
    mv = _math_verify_modules()
    return mv.parse(s, parsing_timeout=None)


def _mv_equal(gold, pred) -> bool:
    if not gold or not pred:
        return False
    mv = _math_verify_modules()
    return bool(mv.verify(gold, pred, timeout_seconds=None))


def _mathruler_equal(pred: str, gt: str) -> bool:
    """mathruler's string normalisers (no sympy evaluation) as a second opinion."""
    try:
        from mathruler.grader import _normalize
        from mathruler.math_normalize import normalize_answer
    except Exception:  # pragma: no cover - mathruler is a dependency
        return False
    a, b = normalize_answer(pred), normalize_answer(gt)
    if a is not None and a != "" and a == b:
        return True
    a, b = _normalize(pred), _normalize(gt)
    return bool(a) and a == b


def _percent_variants(s: str, percent: bool) -> list[str]:
    """``50`` with a removed percent sign -> also ``\\frac{50}{100}``."""
    return [s, "\\frac{" + s + "}{100}"] if percent and s else [s]


def math_equal(pred: str, gt: str) -> tuple[bool, str]:
    """Is answer ``pred`` equivalent to ground truth ``gt``? Returns ``(equal, method)``.

    In order: multiple-choice letters (when ``gt`` is a letter); normalised string equality (with units/percent
    stripped); for non-word answers math-verify (``\\frac{2}{4}`` == ``0.5`` == ``1/2``,
    ``\\sqrt{8}`` == ``2\\sqrt{2}``, ``x=3`` == ``3``), retried with units stripped and with ``x%`` read as
    ``x/100``; mathruler's normalisers.
    """
    letter = gt_choice_letter(gt)
    if letter is not None:
        return parse_choice(pred) == letter, "choice"
    np_, ng = normalize_answer_text(pred), normalize_answer_text(gt)
    if np_ and np_ == ng:
        return True, "exact"
    sp, p_pct = strip_units(pred)
    sg, g_pct = strip_units(gt)
    if normalize_answer_text(sp) and normalize_answer_text(sp) == normalize_answer_text(sg):
        return True, "exact_units"
    if not (looks_textual(gt) or looks_textual(sg)):
        gold, parsed = _mv_parse_boxed(gt), _mv_parse_boxed(pred)
        if _mv_equal(gold, parsed):
            return True, "math_verify"
        golds = [gold] + [_mv_parse_boxed(v) for v in _percent_variants(sg, g_pct) if v != gt]
        preds = [parsed] + [_mv_parse_boxed(v) for v in _percent_variants(sp, p_pct) if v != pred]
        for gi, g in enumerate(golds):
            for pi, p in enumerate(preds):
                if (gi or pi) and _mv_equal(g, p):
                    return True, "math_verify_units"
    if _mathruler_equal(pred, gt) or (sp != pred and _mathruler_equal(sp, sg)):
        return True, "mathruler"
    return False, ""


def grade_math(response: str, ground_truth: Any, *, require_boxed: bool = True,
               answer_tags: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE), think_close: str = THINK_CLOSE
               ) -> GradeResult:
    """Math accuracy of a response.

    The answer is the last ``\\boxed{}`` (nested braces handled); with ``require_boxed=False`` the last answer-tag
    content, then the whole response, are the fallbacks (for the whole response, math-verify's own extraction of the
    final answer is used besides the normalised string). ``ground_truth`` may be a string, a number, a list of
    acceptable answers, or an R1-V style ``<answer>X</answer>`` string. An answer identical to a ground truth (after
    whitespace normalisation, :func:`~verl_difficulty.rewards.extract.identical_answer`) is correct before any
    parsing; else see :func:`math_equal` for the equivalence.
    """
    order = ("boxed",) if require_boxed else ("boxed", "answer", "text")
    gts = ground_truths(ground_truth)
    if not gts:
        return fail("missing ground truth")
    cand, src, why = answer_candidate(response, order, answer_tags, think_close)
    if cand is None:
        return fail(why)
    if identical_answer(cand, gts):
        return GradeResult(acc=1.0, pred=short(cand), extras={METHOD: IDENTICAL})
    for g in gts:
        ok, how = _grade_whole_text(cand, g) if src == "text" else math_equal(cand, g)
        if ok:
            return GradeResult(acc=1.0, pred=short(cand), extras={METHOD: how})
    return GradeResult(acc=0.0, pred=short(cand), extras={METHOD: ""})


def _grade_whole_text(text: str, gt: str) -> tuple[bool, str]:
    """A response without box/tag: a short one is compared as an answer; else math-verify extracts the final answer."""
    if len(text) <= 64:
        ok, how = math_equal(text, gt)
        if ok:
            return ok, how
    letter = gt_choice_letter(gt)
    if letter is not None:
        found = _CHOICE_IN_TEXT_RE.findall(text)
        return bool(found) and found[-1].upper() == letter, "choice_text"
    if looks_textual(gt):
        return False, ""
    return _mv_equal(_mv_parse_boxed(gt), _mv_parse_text(text)), "math_verify_text"


def _mv_matches(gts: list[str], text: str) -> bool:
    """math-verify finds ``text`` equal to one of the ground truths (option letters and word answers are skipped)."""
    return any(gt_choice_letter(g) is None and not looks_textual(g)
               and _mv_equal(_mv_parse_text(g), _mv_parse_text(text)) for g in gts)


def grade_r1v(response: str, ground_truth: Any, *, answer_tags: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE),
              think_close: str = THINK_CLOSE) -> GradeResult:
    """R1-V accuracy: math-verify on the completion, fallback exact match of the answer-tag content.

    R1-V runs math-verify on the whole completion, reasoning included, and math-verify's extraction finds nothing in
    ``<answer>3</answer>`` (no delimiter around the number): so ``<think>maybe 5</think><answer>3</answer>`` is graded
    CORRECT for ground truth 5 (measured), a reward hole. Here, therefore:

    * with an answer-tag pair, only its content is graded: math-verify on the content, then exact match after
      normalisation (option letters compared as letters), then the math equivalence of :func:`math_equal`
      (``12.0`` == ``12``, units, percent);
    * without one, math-verify on the completion after the last ``think_close`` (the whole completion if none).

    Before either, the identity short-circuit: the answer math-verify would pick in that text (the tag content, or
    the completion after the reasoning: its last ``\\boxed{}``, else all of it) identical to a ground truth after
    whitespace normalisation is correct without parsing (math-verify can run for ever on
    ``\\boxed{10^{10^{10^{10}}}}``, even against the identical ground truth). The ground truth's own answer tags
    (and box) are stripped.
    """
    gts = ground_truths(ground_truth)
    if not gts:
        return fail("missing ground truth")
    tag = extract_tag(response, *answer_tags)
    if tag == "":
        return fail(f"empty {answer_tags[0]}{answer_tags[1]}")
    if tag is None:
        end = response.rfind(think_close) if think_close else -1
        scope = response[end + len(think_close):] if end >= 0 else response
    else:
        scope = tag
    answer, _, _ = answer_candidate(scope, ("boxed", "text"), answer_tags, None)
    if identical_answer(answer, gts):
        return GradeResult(acc=1.0, pred=short(scope if tag is not None else answer), extras={METHOD: IDENTICAL})
    if tag is None:
        if _mv_matches(gts, scope):
            return GradeResult(acc=1.0, extras={METHOD: "math_verify"})
        return fail(f"no {answer_tags[0]}...{answer_tags[1]} answer and math-verify found no match")
    pred = short(tag)
    if _mv_matches(gts, tag):
        return GradeResult(acc=1.0, pred=pred, extras={METHOD: "math_verify"})
    for g in gts:
        letter = gt_choice_letter(g)
        if letter is not None:
            if parse_choice(tag) == letter:
                return GradeResult(acc=1.0, pred=pred, extras={METHOD: "choice"})
            continue
        if normalize_answer_text(tag) == normalize_answer_text(g):
            return GradeResult(acc=1.0, pred=pred, extras={METHOD: "exact"})
        ok, how = math_equal(tag, g)
        if ok:
            return GradeResult(acc=1.0, pred=pred, extras={METHOD: how})
    return GradeResult(acc=0.0, pred=pred, extras={METHOD: ""})


def warm_up() -> None:
    """Import math-verify and mathruler and grade once (the first LaTeX parse is slow): a grader subprocess's start."""
    import mathruler.grader  # noqa: F401

    grade_math("\\boxed{\\frac{2}{4}}", "0.5")
    grade_r1v("<answer>1</answer>", "1")


__all__ = [
    "unwrap_commands", "normalize_answer_text", "strip_units", "looks_textual", "parse_choice", "gt_choice_letter",
    "math_equal", "grade_math", "grade_r1v", "warm_up", "IDENTICAL",
]
