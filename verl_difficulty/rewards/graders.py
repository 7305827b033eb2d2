"""Grading functions of the plugin's rewards: pure, and safe on hostile model output.

Two layers:

1. **Pure graders** (no I/O, no global state): :func:`grade_math`, :func:`grade_r1v`, :func:`grade_bbox`,
   :func:`grade_ocr`, :func:`grade_count`, the format rules :func:`format_think_boxed` / :func:`format_think_answer`
   and the extraction helpers (:func:`extract_boxed`, :func:`extract_tag`, :func:`parse_choice`, :func:`parse_boxes`,
   :func:`parse_count`). Each grader returns a :class:`GradeResult` (``acc`` 0/1, ``format`` 0/1, ``reason``, ``score``,
   ``pred`` and task extras such as ``iou`` / ``similarity``) and never raises on model text.

2. **The safe entry point** :class:`SafeGrader` (what the reward managers and functions call). It

   * scores ``bytes`` that are not UTF-8, strings with lone surrogates, ``None`` and empty/blank responses 0 with a
     reason, without grading them;
   * computes the format rule on the full response (linear-time string scans, cannot hang), then truncates the
     response to its last ``max_chars`` characters (default 8000, the answer is at the end) before grading accuracy;
   * runs the accuracy grader in a small pool of **persistent grader subprocesses** (:class:`GraderPool`) with a hard
     per-call time limit: on timeout the subprocess is killed (SIGKILL) and replaced, the call scores 0 with a reason.
     This works from any thread and from asyncio code, unlike math-verify's own ``parsing_timeout`` /
     ``timeout_seconds``, which use ``signal.alarm`` (main thread only) and cannot interrupt long C calls anyway:
     ``\\boxed{10^{10^{10}}}`` (20 characters) makes sympy compute a 10-billion-digit integer and ignores SIGALRM;
     ``\\boxed{2^{2^{40}}}`` allocates gigabytes (the subprocess also has an address-space limit, ``max_memory_mb``);
   * turns any exception (in the grader, the pool, the transport) into ``acc=0`` with a reason.

Why subprocesses started with ``subprocess.Popen`` (fork+exec of a fresh interpreter) instead of ``multiprocessing``:
``fork`` is unsafe in reward workers (threads, torch); ``spawn`` / ``forkserver`` re-import the parent's ``__main__``
(a Ray worker's or pytest's) and, to unpickle the worker function, the package ``verl_difficulty.rewards``, whose
``__init__`` imports verl and torch (~9 s, hundreds of MB per child). The child here runs a tiny bootstrap that loads
only this module (``math_verify``, ``mathruler``, ``sympy``; ~1 s) and talks to the parent over a socketpair with
:class:`multiprocessing.connection.Connection` (pickle of plain strings/numbers/dicts from the trusted parent).
Model text is never evaluated: this module has no ``eval``; math-verify converts LaTeX with its ANTLR-based
latex2sympy and hands sympy's ``parse_expr`` only what its number/operator regex extracted; mathruler is used for its
string normalisers only, not for its ``grade_answer``, which runs ``sympy.parse_expr`` (an ``eval``) on the answer.

Accuracy rules (documented per function): math by math-verify (symbolic/numeric equivalence) after a normalised
string comparison, with units (``5 cm``), percent (``50\\%`` == ``50`` == ``0.5``), ``\\text{}`` wrappers and
multiple-choice letters (gt ``B`` vs ``(B)``, ``B.``, ``B) 12``, ``\\boxed{B}``) handled, mathruler's normalisers as a
second opinion; R1-V accuracy (math-verify, fallback exact match of the ``<answer>`` content, see :func:`grade_r1v`
for why only the tag content is graded when there is one); boxes by IoU >= 0.2 with optimal one-to-one matching; OCR
by normalised similarity >= 0.5; counting by exact integer (digits or number words). Without a box/tag, the text after
the last ``</think>`` is the answer: the reasoning never counts as the answer.
"""

from __future__ import annotations

import atexit
import difflib
import logging
import math
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from verl_difficulty.schema import ACC, FORMAT

logger = logging.getLogger(__name__)

REASON = "reason"
"""Key of the reason string in a grading result and in ``reward_extra_info`` (empty when grading went fine)."""
SCORE = "score"
"""Key of the task score (the reward before format weighting; fractional for multi-box ``bbox``)."""
PRED = "pred"
"""Key of the extracted answer (<= 200 characters; verl's validation uses ``pred`` for maj@N)."""
IOU = "iou"
SIMILARITY = "similarity"

DEFAULT_MAX_CHARS = 8000
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_MEMORY_MB = 4096
PRED_MAX_CHARS = 200
MAX_BOXES = 100
OCR_MAX_CHARS = 2000

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


# ====================================================================================================================
# Result type
# ====================================================================================================================
@dataclass
class GradeResult:
    """Outcome of one grading call.

    ``acc``: 1.0 if the answer is correct, else 0.0. ``format``: 1.0 if the response follows the format rule asked for
    (0.0 if none was asked). ``reason``: empty when grading went normally (a wrong answer has an empty reason); else
    why the response scored 0 (no answer found, malformed box, timeout, invalid UTF-8, grader error...).
    ``score``: the task score in [0, 1] (== ``acc`` except for multi-box ``bbox``). ``pred``: the extracted answer.
    ``extras``: task-specific values (``iou``, ``similarity``, ``method``).
    """

    acc: float = 0.0
    format: float = 0.0
    reason: str = ""
    score: Optional[float] = None
    pred: str = ""
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.score is None:
            self.score = float(self.acc)

    def to_dict(self) -> dict:
        out = {ACC: float(self.acc), FORMAT: float(self.format), REASON: self.reason, SCORE: float(self.score),
               PRED: self.pred}
        out.update(self.extras)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "GradeResult":
        d = dict(d)
        extras = dict(d.pop("extras", {}) or {})
        return cls(acc=float(d.get("acc", 0.0)), format=float(d.get("format", 0.0)), reason=str(d.get("reason", "")),
                   score=d.get("score"), pred=str(d.get("pred", "")), extras=extras)


def _fail(reason: str, **extras) -> GradeResult:
    return GradeResult(acc=0.0, reason=reason, extras=extras)


def _short(s: Optional[str]) -> str:
    if not s:
        return ""
    return s if len(s) <= PRED_MAX_CHARS else s[:PRED_MAX_CHARS]


# ====================================================================================================================
# Text coercion and truncation
# ====================================================================================================================
def coerce_text(x: Any) -> tuple[Optional[str], str]:
    """Turn a response into ``str``; return ``(text, "")`` or ``(None, reason)``.

    ``bytes`` must be valid UTF-8; a ``str`` with lone surrogates (``errors="surrogateescape"`` decoding of bad bytes)
    is rejected the same way; ``None`` and blank strings are empty responses. (A tokenizer's ``decode`` turns invalid
    byte sequences into U+FFFD; such text is graded as is.)
    """
    if x is None:
        return None, "empty response"
    if isinstance(x, (bytes, bytearray, memoryview)):
        try:
            x = bytes(x).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"response is not valid UTF-8 ({e.reason} at byte {e.start})"
    if not isinstance(x, str):
        return None, f"response is not text ({type(x).__name__})"
    try:
        x.encode("utf-8")
    except UnicodeEncodeError:
        return None, "response is not valid UTF-8 (lone surrogates)"
    if not x.strip():
        return None, "empty response"
    return str(x), ""


def truncate_tail(text: str, max_chars: Optional[int]) -> str:
    """Keep the last ``max_chars`` characters (the final answer is at the end). ``None``/<=0: no truncation."""
    if max_chars is None or max_chars <= 0 or len(text) <= max_chars:
        return text
    return text[-max_chars:]


def _ground_truth_text(gt: Any) -> Optional[str]:
    """Ground truth as a string (numbers formatted plainly); ``None`` if missing."""
    if gt is None:
        return None
    if isinstance(gt, bytes):
        gt = gt.decode("utf-8", errors="replace")
    if isinstance(gt, bool):
        return str(gt)
    if isinstance(gt, int):
        return str(gt)
    if isinstance(gt, float):
        return str(int(gt)) if gt.is_integer() else repr(gt)
    s = str(gt).strip()
    # R1-V style ground truths carry the answer tags; boxed ground truths the box
    inner = extract_tag(s, ANSWER_OPEN, ANSWER_CLOSE)
    if inner is not None:
        s = inner
    if "\\boxed" in s:
        b, _ = extract_boxed(s)
        if b:
            s = b
    return s


def _gt_alternatives(gt: Any) -> list:
    """A list/tuple ground truth (several acceptable answers) -> its items; else ``[gt]``."""
    if isinstance(gt, (list, tuple)):
        return [g for g in gt if g is not None]
    return [gt]


# ====================================================================================================================
# Extraction
# ====================================================================================================================
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _scan_group(text: str, i: int) -> Optional[int]:
    """``text[i] == "{"``: index of the matching ``}`` (escaped ``\\{``/``\\}`` do not count), or None if unbalanced."""
    depth = 0
    n = len(text)
    j = i
    while j < n:
        c = text[j]
        if c == "\\" and j + 1 < n and text[j + 1] in "{}":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return None


def extract_boxed(text: str) -> tuple[Optional[str], str]:
    """Content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) with nested braces.

    Returns ``(content, "")``; ``(None, "no \\boxed{} answer")`` when there is none; ``(None, reason)`` when the last
    box is malformed (``\\boxed{1`` unbalanced) or empty (``\\boxed{}``). Only the last box counts: an earlier
    complete box does not rescue a broken final one. Linear time.
    """
    best = -1
    cmd_len = 0
    for cmd in _BOX_COMMANDS:
        start = len(text)
        while True:
            p = text.rfind(cmd, 0, start)
            if p < 0:
                break
            q = p + len(cmd)
            if q < len(text) and text[q].isalpha():  # \boxedfoo is another command
                start = p
                continue
            if p > best:
                best, cmd_len = p, len(cmd)
            break
    if best < 0:
        return None, "no \\boxed{} answer"
    i = best + cmd_len
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    if i < n and text[i] == "{":
        j = _scan_group(text, i)
        if j is None:
            return None, "malformed \\boxed{ (unbalanced braces)"
        content = text[i + 1 : j].strip()
        if not content:
            return None, "empty \\boxed{}"
        return content, ""
    if i > best + cmd_len and i < n:  # "\boxed 5": up to whitespace or $
        j = i
        while j < n and text[j] not in " \t\r\n$":
            j += 1
        content = text[i:j].strip()
        if content:
            return content, ""
    return None, "malformed \\boxed (no {...} argument)"


def extract_tag(text: str, open_tag: str = ANSWER_OPEN, close_tag: str = ANSWER_CLOSE) -> Optional[str]:
    """Stripped content of the last complete ``open_tag ... close_tag`` pair, or None. Linear time."""
    end = text.rfind(close_tag)
    if end < 0:
        return None
    start = text.rfind(open_tag, 0, end)
    if start < 0:
        return None
    return text[start + len(open_tag) : end].strip()


def answer_candidate(text: str, order: Iterable[str] = ("boxed", "answer", "text"),
                     answer_tags: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE),
                     think_close: Optional[str] = THINK_CLOSE) -> tuple[Optional[str], str, str]:
    """The answer to grade, tried in ``order`` (``boxed``: last ``\\boxed{}``; ``answer``: last answer-tag content;
    ``text``: the response after the last ``think_close``, or all of it if there is none: the reasoning is not the
    answer). A box or tag pair that is present but malformed/empty ends the search (no
    fallback to the next source). Returns ``(candidate, source, reason_if_none)``."""
    reasons = []
    for src in order:
        if src == "boxed":
            c, why = extract_boxed(text)
            if c:
                return c, "boxed", ""
            if not why.startswith("no "):  # a box is there but malformed/empty: no fallback
                return None, "", why
            reasons.append(why)
        elif src == "answer":
            c = extract_tag(text, *answer_tags)
            if c:
                return c, "answer", ""
            if c is not None:  # the tags are there but empty: no fallback
                return None, "", f"empty {answer_tags[0]}{answer_tags[1]}"
            reasons.append(f"no {answer_tags[0]}...{answer_tags[1]} answer")
        elif src == "text":
            end = text.rfind(think_close) if think_close else -1
            c = (text[end + len(think_close):] if end >= 0 else text).strip()
            if c:
                return c, "text", ""
            reasons.append(f"nothing after {think_close}" if end >= 0 else "empty response")
    return None, "", "; ".join(reasons) or "no answer"


# ====================================================================================================================
# Format rules (linear scans; safe on the full, untruncated response)
# ====================================================================================================================
def _after_think(text: str, think_open: str, think_close: str, require_think_open: bool,
                 require_reasoning: bool) -> tuple[Optional[str], str]:
    """Check the think block; return ``(text after think_close, "")`` or ``(None, why_not)``."""
    s = text.lstrip()
    n_open, n_close = s.count(think_open), s.count(think_close)
    if s.startswith(think_open):
        if n_open != 1:
            return None, f"more than one {think_open}"
        body_start = len(think_open)
    elif require_think_open:
        return None, f"does not start with {think_open}"
    else:
        if n_open != 0:
            return None, f"{think_open} not at the start"
        body_start = 0
    if n_close != 1:
        return None, f"expected exactly one {think_close}, found {n_close}"
    close = s.find(think_close)
    if close < body_start:
        return None, f"{think_close} before {think_open}"
    if require_reasoning and not s[body_start:close].strip():
        return None, "empty reasoning"
    return s[close + len(think_close):], ""


def format_think_boxed(text: str, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE,
                       require_think_open: bool = True, require_reasoning: bool = True) -> tuple[float, str]:
    """1.0 iff the response is ``<think>REASONING</think> ... \\boxed{ANSWER} ...``.

    Rules: (leading whitespace ignored) the response starts with ``think_open`` (unless ``require_think_open`` is
    False, for chat templates that put ``<think>`` in the prompt: then there must be no ``think_open`` at all);
    exactly one ``think_open`` and exactly one ``think_close``; non-blank reasoning between them if
    ``require_reasoning``; after ``think_close`` a complete, non-empty ``\\boxed{...}`` (the last box of the response).
    Returns ``(format, why_not)``.
    """
    after, why = _after_think(text, think_open, think_close, require_think_open, require_reasoning)
    if after is None:
        return 0.0, why
    boxed, why = extract_boxed(after)
    if not boxed:
        return 0.0, f"{why} after {think_close}"
    return 1.0, ""


def format_think_answer(text: str, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE,
                        answer_open: str = ANSWER_OPEN, answer_close: str = ANSWER_CLOSE,
                        require_think_open: bool = True, require_reasoning: bool = True) -> tuple[float, str]:
    """1.0 iff the response is ``<think>REASONING</think> <answer>ANSWER</answer>`` (R1-V's format rule).

    Same think rules as :func:`format_think_boxed`; after ``think_close`` only whitespace, then exactly one
    ``answer_open ... answer_close`` pair with non-blank content, then only whitespace.
    """
    after, why = _after_think(text, think_open, think_close, require_think_open, require_reasoning)
    if after is None:
        return 0.0, why
    after = after.strip()
    if not after.startswith(answer_open) or not after.endswith(answer_close):
        return 0.0, f"no {answer_open}...{answer_close} right after {think_close}"
    if after.count(answer_open) != 1 or after.count(answer_close) != 1:
        return 0.0, f"more than one {answer_open}"
    if not after[len(answer_open): len(after) - len(answer_close)].strip():
        return 0.0, f"empty {answer_open}{answer_close}"
    return 1.0, ""


FORMAT_RULES: dict[str, Callable[..., tuple[float, str]]] = {
    "think_boxed": format_think_boxed,
    "think_answer": format_think_answer,
}


def check_format(style: Optional[str], text: str, *, think_open=THINK_OPEN, think_close=THINK_CLOSE,
                 answer_open=ANSWER_OPEN, answer_close=ANSWER_CLOSE, require_think_open=True,
                 require_reasoning=True) -> tuple[float, str]:
    """Apply a named format rule: ``think_boxed``, ``think_answer``, ``boxed`` (a complete last box anywhere),
    ``answer`` (an answer-tag pair anywhere) or ``none`` (always 0)."""
    if style in (None, "", "none"):
        return 0.0, ""
    if style == "think_boxed":
        return format_think_boxed(text, think_open, think_close, require_think_open, require_reasoning)
    if style == "think_answer":
        return format_think_answer(text, think_open, think_close, answer_open, answer_close, require_think_open,
                                   require_reasoning)
    if style == "boxed":
        b, why = extract_boxed(text)
        return (1.0, "") if b else (0.0, why)
    if style == "answer":
        a = extract_tag(text, answer_open, answer_close)
        return (1.0, "") if a else (0.0, f"no {answer_open}...{answer_close}")
    raise ValueError(f"unknown format style {style!r}")


# ====================================================================================================================
# Normalisation
# ====================================================================================================================
_TEXT_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mathbf", "\\mathit", "\\mbox", "\\operatorname",
                  "\\textrm", "\\mathsf", "\\texttt")
_SPACING = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\quad", "\\qquad", "\\displaystyle", "\\ ", "~")


def _unwrap_commands(s: str, commands: Iterable[str]) -> str:
    """Replace ``\\cmd{X}`` by ``X`` for the given commands (balanced braces, linear passes)."""
    for cmd in sorted(commands, key=len, reverse=True):
        out = []
        i = 0
        while True:
            p = s.find(cmd + "{", i)
            if p < 0:
                out.append(s[i:])
                break
            j = _scan_group(s, p + len(cmd))
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
    s = _unwrap_commands(s, _TEXT_WRAPPERS)
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
    t = _unwrap_commands(t, _TEXT_WRAPPERS)
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


def _looks_textual(s: str) -> bool:
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
    t = _unwrap_commands(str(s), _TEXT_WRAPPERS).replace("$", "").replace("**", "").strip()
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
    import math_verify  # noqa: F401  (imported lazily: the parent process of a pool never needs it)

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
    if not (_looks_textual(gt) or _looks_textual(sg)):
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
    acceptable answers, or an R1-V style ``<answer>X</answer>`` string. See :func:`math_equal` for the equivalence.
    """
    order = ("boxed",) if require_boxed else ("boxed", "answer", "text")
    gts = [g for g in (_ground_truth_text(x) for x in _gt_alternatives(ground_truth)) if g]
    if not gts:
        return _fail("missing ground truth")
    cand, src, why = answer_candidate(response, order, answer_tags, think_close)
    if cand is None:
        return _fail(why)
    for g in gts:
        ok, how = _grade_whole_text(cand, g) if src == "text" else math_equal(cand, g)
        if ok:
            return GradeResult(acc=1.0, pred=_short(cand), extras={"method": how})
    return GradeResult(acc=0.0, pred=_short(cand), extras={"method": ""})


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
    if _looks_textual(gt):
        return False, ""
    return _mv_equal(_mv_parse_boxed(gt), _mv_parse_text(text)), "math_verify_text"


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

    The ground truth's own answer tags are stripped.
    """
    gts = [g for g in (_ground_truth_text(x) for x in _gt_alternatives(ground_truth)) if g]
    if not gts:
        return _fail("missing ground truth")
    tag = extract_tag(response, *answer_tags)
    if tag is None:
        end = response.rfind(think_close) if think_close else -1
        body = response[end + len(think_close):] if end >= 0 else response
        for g in gts:
            if gt_choice_letter(g) is None and not _looks_textual(g):
                if _mv_equal(_mv_parse_text(g), _mv_parse_text(body)):
                    return GradeResult(acc=1.0, extras={"method": "math_verify"})
        return _fail(f"no {answer_tags[0]}...{answer_tags[1]} answer and math-verify found no match")
    if not tag:
        return _fail(f"empty {answer_tags[0]}{answer_tags[1]}")
    pred = _short(tag)
    for g in gts:
        if gt_choice_letter(g) is None and not _looks_textual(g):
            if _mv_equal(_mv_parse_text(g), _mv_parse_text(tag)):
                return GradeResult(acc=1.0, pred=pred, extras={"method": "math_verify"})
    for g in gts:
        letter = gt_choice_letter(g)
        if letter is not None:
            if parse_choice(tag) == letter:
                return GradeResult(acc=1.0, pred=pred, extras={"method": "choice"})
            continue
        if normalize_answer_text(tag) == normalize_answer_text(g):
            return GradeResult(acc=1.0, pred=pred, extras={"method": "exact"})
        ok, how = math_equal(tag, g)
        if ok:
            return GradeResult(acc=1.0, pred=pred, extras={"method": how})
    return GradeResult(acc=0.0, pred=pred, extras={"method": ""})


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
    Extra ``iou``: the IoU of the pair for one gt and one predicted box, else the mean IoU of the matched pairs."""
    cand, _, why = _perception_candidate(response, answer_tags, think_close)
    gt_boxes, n_gt = parse_boxes(ground_truth)
    if not gt_boxes:
        return _fail("ground truth has no valid box", **{IOU: 0.0})
    if cand is None:
        return _fail(why, **{IOU: 0.0})
    pred_boxes, n_pred = parse_boxes(cand)
    if not pred_boxes:
        return _fail("no valid box [x1, y1, x2, y2] in the answer", **{IOU: 0.0})
    pairs = match_boxes(pred_boxes, gt_boxes, iou_threshold)
    if len(pred_boxes) == 1 and len(gt_boxes) == 1:
        iou = box_iou(pred_boxes[0], gt_boxes[0])
    else:
        iou = sum(p[2] for p in pairs) / len(pairs) if pairs else 0.0
    denom = max(len(gt_boxes), n_pred)
    score = len(pairs) / denom
    acc = 1.0 if len(pairs) == len(gt_boxes) and n_pred == len(gt_boxes) else 0.0
    return GradeResult(acc=acc, score=score, pred=_short(cand), extras={IOU: float(iou)})


# ====================================================================================================================
# Perception: OCR
# ====================================================================================================================
def normalize_ocr(s: str) -> str:
    """NFKC, lowercase, whitespace collapsed, surrounding quotes stripped."""
    s = unicodedata.normalize("NFKC", s).lower()
    s = " ".join(s.split())
    return s.strip("\"'`“”‘’ ")


def ocr_similarity(pred: str, gt: str) -> float:
    """difflib ``SequenceMatcher`` ratio (2·matches / total length) of the normalised strings, in [0, 1]. The
    prediction is cut to ``max(OCR_MAX_CHARS, 2·len(gt))`` characters (the ratio is quadratic in the worst case)."""
    a, b = normalize_ocr(pred), normalize_ocr(gt)
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    a = a[: max(OCR_MAX_CHARS, 2 * len(b))]
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def grade_ocr(response: str, ground_truth: Any, *, threshold: float = 0.5,
              answer_tags: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE), think_close: str = THINK_CLOSE
              ) -> GradeResult:
    """OCR: ``acc`` = 1 iff :func:`ocr_similarity` >= ``threshold`` (best over a list of acceptable gts).
    Answer: answer-tag content, else last ``\\boxed{}``, else the whole response. Extra ``similarity``."""
    cand, _, why = _perception_candidate(response, answer_tags, think_close)
    gts = [str(g) for g in _gt_alternatives(ground_truth) if g is not None and normalize_ocr(str(g))]
    if not gts:
        return _fail("missing ground truth", **{SIMILARITY: 0.0})
    if cand is None or not normalize_ocr(cand):
        return _fail(why or "empty answer", **{SIMILARITY: 0.0})
    sim = max(ocr_similarity(cand, g) for g in gts)
    return GradeResult(acc=1.0 if sim >= threshold else 0.0, pred=_short(cand), extras={SIMILARITY: float(sim)})


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
    whole response) equals the integer ground truth exactly."""
    cand, _, why = _perception_candidate(response, answer_tags, think_close)
    gts = [parse_count(_ground_truth_text(g)) for g in _gt_alternatives(ground_truth)]
    gts = [g for g in gts if g is not None]
    if not gts:
        return _fail("ground truth is not a number")
    if cand is None:
        return _fail(why)
    v = parse_count(cand)
    if v is None:
        return _fail("no number in the answer", )
    ok = v.is_integer() and any(v == g for g in gts)
    return GradeResult(acc=1.0 if ok else 0.0, pred=_short(cand))


# ====================================================================================================================
# Dispatch (what a grader subprocess runs)
# ====================================================================================================================
def _debug_sleep(response: str, ground_truth: Any, *, seconds: float = 3600.0, **_) -> GradeResult:
    """Test hook: a grader that hangs (sleeps) for ``seconds``."""
    time.sleep(float(seconds))
    return GradeResult(acc=1.0)


def _debug_raise(response: str, ground_truth: Any, **_) -> GradeResult:
    """Test hook: a grader that raises."""
    raise RuntimeError("grader hook raised on purpose")


GRADERS: dict[str, Callable[..., GradeResult]] = {
    "math": grade_math,
    "r1v": grade_r1v,
    "bbox": grade_bbox,
    "ocr": grade_ocr,
    "count": grade_count,
    "_debug_sleep": _debug_sleep,
    "_debug_raise": _debug_raise,
}
"""Task name -> grader. Only these names can be run in a grader subprocess."""


def grade_task(task: str, response: str, ground_truth: Any, **opts) -> GradeResult:
    """Run grader ``task`` in this process (no time limit); any exception becomes ``acc=0`` with a reason."""
    try:
        fn = GRADERS[task]
    except KeyError:
        return _fail(f"unknown grading task {task!r}")
    try:
        return fn(response, ground_truth, **opts)
    except MemoryError:
        return _fail("grader error: MemoryError")
    except RecursionError:
        return _fail("grader error: RecursionError")
    except Exception as e:  # noqa: BLE001 - grading must never propagate
        return _fail(f"grader error: {type(e).__name__}: {_short(str(e))}")


def _plain(x: Any) -> Any:
    """numpy scalars/arrays and mappings -> plain Python (picklable without numpy in the child, stable types)."""
    if x is None or isinstance(x, (str, bytes, bool, int, float)):
        return x
    if hasattr(x, "tolist"):
        return _plain(x.tolist())
    if hasattr(x, "item") and callable(x.item):
        try:
            return x.item()
        except Exception:
            pass
    if isinstance(x, dict) or hasattr(x, "items"):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return str(x)


# ====================================================================================================================
# Grader subprocess pool
# ====================================================================================================================
class GradeTimeout(Exception):
    """A grading call ran past its time limit (its grader process was killed)."""


class GraderProcessError(Exception):
    """A grader process died, failed to start, or broke the protocol."""


_BOOTSTRAP = r"""
import os, sys, types
root, fd, mem = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for name, rel in (("verl_difficulty", "verl_difficulty"), ("verl_difficulty.rewards", "verl_difficulty/rewards")):
    m = types.ModuleType(name)
    m.__path__ = [os.path.join(root, rel)]
    sys.modules[name] = m
from verl_difficulty.rewards import graders
graders._child_main(fd, mem)
"""


def _child_main(fd: int, max_memory_mb: int) -> None:
    """Entry point of a grader subprocess: serve ``(task, response, ground_truth, opts)`` requests until EOF."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a grader dies
    logging.basicConfig(level=logging.ERROR)
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    conn = Connection(fd)
    try:
        _math_verify_modules()
        import mathruler.grader  # noqa: F401

        grade_math("\\boxed{\\frac{2}{4}}", "0.5")  # warm up the LaTeX parser (first parse is slow)
        grade_bbox("[0, 0, 1, 1] [2, 2, 3, 3]", [[0, 0, 1, 1], [2, 2, 3, 3]])
        grade_r1v("<answer>1</answer>", "1")
        if max_memory_mb and max_memory_mb > 0:
            import resource

            lim = int(max_memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        conn.send(("ready", os.getpid()))
    except Exception as e:  # noqa: BLE001
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        try:
            task, response, ground_truth, opts = req
            if task == "_ping":
                out = {"ok": True, "result": None}
            else:
                out = {"ok": True, "result": asdict(grade_task(task, response, ground_truth, **(opts or {})))}
        except BaseException as e:  # noqa: BLE001
            out = {"ok": False, "error": f"{type(e).__name__}: {_short(str(e))}"}
        try:
            conn.send(out)
        except (EOFError, OSError):
            return


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _Worker:
    def __init__(self, max_memory_mb: int, start_timeout_s: float):
        self.max_memory_mb = max_memory_mb
        self.start_timeout_s = start_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.conn = None
        self.ready = False

    def start(self) -> None:
        from multiprocessing.connection import Connection

        parent_sock, child_sock = socket.socketpair()
        try:
            env = dict(os.environ)
            env.setdefault("OMP_NUM_THREADS", "1")
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _PACKAGE_ROOT, str(child_sock.fileno()), str(self.max_memory_mb)],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                close_fds=True,
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.ready = False

    def ensure_ready(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self.start()
        if self.ready:
            return
        if not self.conn.poll(self.start_timeout_s):
            self.kill()
            raise GraderProcessError(f"grader process did not start within {self.start_timeout_s}s")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError) as e:
            self.kill()
            raise GraderProcessError(f"grader process exited while starting ({e!r})") from e
        if not (isinstance(msg, tuple) and msg and msg[0] == "ready"):
            self.kill()
            raise GraderProcessError(f"grader process failed to start: {msg!r}")
        self.ready = True

    def request(self, payload: tuple, timeout_s: float) -> dict:
        self.ensure_ready()
        try:
            self.conn.send(payload)
            if not self.conn.poll(timeout_s):
                self.kill()
                raise GradeTimeout(f"timeout: grading took more than {timeout_s:g}s (grader process killed)")
            return self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as e:
            code = self.proc.poll() if self.proc is not None else None
            self.kill()
            raise GraderProcessError(f"grader process died (exit code {code})") from e

    def kill(self) -> None:
        proc, conn = self.proc, self.conn
        self.proc, self.conn, self.ready = None, None, False
        if proc is not None and proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None


class GraderPool:
    """A fixed number of persistent grader subprocesses with a hard per-call time limit. Thread-safe.

    ``call`` takes an idle process (waiting for one does not count toward the limit), sends the request, and waits at
    most ``timeout_s`` for the answer; on timeout the process is SIGKILLed and a replacement is started at once
    (it imports in the background; the next call that gets it waits for its readiness handshake, which does not count
    toward that call's limit either). A process that dies (crash, memory limit) is replaced the same way.
    Grader processes exit when the parent closes the pool or dies (EOF on their socket).
    """

    def __init__(self, num_procs: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_memory_mb: int = DEFAULT_MAX_MEMORY_MB, start_timeout_s: float = 120.0):
        self.num_procs = max(1, int(num_procs))
        self.timeout_s = float(timeout_s)
        self.max_memory_mb = int(max_memory_mb)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker(self.max_memory_mb, start_timeout_s) for _ in range(self.num_procs)]
        for w in self._workers:
            w.start()
            self._idle.put(w)
        self._lock = threading.Lock()
        self.stats = {"calls": 0, "timeouts": 0, "restarts": 0, "errors": 0}
        self._closed = False
        _LIVE_POOLS.add(self)

    def call(self, task: str, response: str, ground_truth: Any, opts: Optional[dict] = None,
             timeout_s: Optional[float] = None) -> GradeResult:
        """Run grader ``task`` in a subprocess. Raises :class:`GradeTimeout` or :class:`GraderProcessError`."""
        if self._closed:
            raise GraderProcessError("grader pool is closed")
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        w = self._idle.get()
        try:
            with self._lock:
                self.stats["calls"] += 1
            try:
                out = w.request((task, response, ground_truth, opts or {}), limit)
            except GradeTimeout:
                with self._lock:
                    self.stats["timeouts"] += 1
                self._restart(w)
                raise
            except GraderProcessError:
                with self._lock:
                    self.stats["errors"] += 1
                self._restart(w)
                raise
            if not out.get("ok"):
                return _fail(f"grader error: {out.get('error', 'unknown')}")
            if out.get("result") is None:
                return GradeResult()
            return GradeResult.from_dict(out["result"])
        finally:
            self._idle.put(w)

    def ping(self, timeout_s: float = 60.0) -> None:
        """Make sure every process started (raises :class:`GraderProcessError` otherwise)."""
        for _ in range(self.num_procs):
            w = self._idle.get()
            try:
                w.request(("_ping", "", None, {}), timeout_s)
            finally:
                self._idle.put(w)

    def _restart(self, w: _Worker) -> None:
        with self._lock:
            self.stats["restarts"] += 1
        try:
            w.kill()
            if not self._closed:
                w.start()
        except Exception as e:  # noqa: BLE001 - ensure_ready retries at the next call
            logger.warning("could not restart a grader process: %r", e)

    def pids(self) -> list[Optional[int]]:
        return [w.pid for w in self._workers]

    def close(self) -> None:
        self._closed = True
        for w in self._workers:
            w.kill()
        _LIVE_POOLS.discard(self)

    def __del__(self):  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


_LIVE_POOLS: "set[GraderPool]" = set()


@atexit.register
def _close_all_pools() -> None:  # pragma: no cover
    for p in list(_LIVE_POOLS):
        try:
            p.close()
        except Exception:
            pass


# ====================================================================================================================
# The safe entry point
# ====================================================================================================================
class SafeGrader:
    """Validate, format-check, truncate, then grade in a subprocess with a time limit. Never raises.

    ``mode="subprocess"`` (default): a :class:`GraderPool` of ``num_procs`` processes, hard ``timeout_s`` per call.
    ``mode="inline"``: grade in the calling thread with NO time limit (for debugging, or where subprocesses are not
    allowed); hostile LaTeX can then hang the caller.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, max_chars: int = DEFAULT_MAX_CHARS, num_procs: int = 2,
                 max_memory_mb: int = DEFAULT_MAX_MEMORY_MB, mode: str = "subprocess"):
        if mode not in ("subprocess", "inline"):
            raise ValueError(f"mode must be 'subprocess' or 'inline', got {mode!r}")
        self.timeout_s = float(timeout_s)
        self.max_chars = int(max_chars)
        self.mode = mode
        self.pool = GraderPool(num_procs, timeout_s, max_memory_mb) if mode == "subprocess" else None

    def grade(self, task: str, response: Any, ground_truth: Any, opts: Optional[dict] = None,
              format_style: Optional[str] = None, format_opts: Optional[dict] = None) -> GradeResult:
        """Grade ``response`` with grader ``task`` (a key of :data:`GRADERS`); ``format_style`` as in
        :func:`check_format` (computed on the full response)."""
        try:
            text, why = coerce_text(response)
            if text is None:
                return _fail(why, **_default_extras(task))
            fmt = 0.0
            if format_style:
                try:
                    fmt, _ = check_format(format_style, text, **(format_opts or {}))
                except Exception as e:  # noqa: BLE001
                    logger.warning("format check failed: %r", e)
                    fmt = 0.0
            text = truncate_tail(text, self.max_chars)
            gt = _plain(ground_truth)
            if self.pool is None:
                res = grade_task(task, text, gt, **(opts or {}))
            else:
                try:
                    res = self.pool.call(task, text, gt, opts or {})
                except GradeTimeout as e:
                    res = _fail(str(e))
                except GraderProcessError as e:
                    res = _fail(str(e))
            res.format = float(fmt)
            for k, v in _default_extras(task).items():
                res.extras.setdefault(k, v)
            return res
        except Exception as e:  # noqa: BLE001 - never propagate
            return _fail(f"grading failed: {type(e).__name__}: {_short(str(e))}", **_default_extras(task))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _default_extras(task: str) -> dict:
    if task == "bbox":
        return {IOU: 0.0}
    if task == "ocr":
        return {SIMILARITY: 0.0}
    return {}


_SHARED: dict[tuple, SafeGrader] = {}
_SHARED_LOCK = threading.Lock()


def shared_grader(timeout_s: float = DEFAULT_TIMEOUT_S, max_chars: int = DEFAULT_MAX_CHARS, num_procs: int = 2,
                  max_memory_mb: int = DEFAULT_MAX_MEMORY_MB, mode: str = "subprocess") -> SafeGrader:
    """One :class:`SafeGrader` per distinct setting in this process (reward managers and functions share it). Keyed by
    the process id too: a forked child never talks to its parent's grader processes."""
    key = (os.getpid(), float(timeout_s), int(max_chars), int(num_procs), int(max_memory_mb), mode)
    with _SHARED_LOCK:
        g = _SHARED.get(key)
        if g is None:
            g = SafeGrader(timeout_s, max_chars, num_procs, max_memory_mb, mode)
            _SHARED[key] = g
        return g
