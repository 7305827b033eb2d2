"""Text handling of the graders: response coercion and truncation, answer extraction, and the format rules.

* :func:`coerce_text` / :func:`truncate_tail`: what the safe entry point does to a response before grading it;
* :func:`extract_boxed` (last ``\\boxed{}``, nested braces), :func:`extract_tag` (last ``<answer>...</answer>``),
  :func:`answer_candidate` (the answer to grade, tried in an order of sources: without a box/tag, the text after the
  last ``</think>`` is the answer: the reasoning never counts as the answer);
* :func:`ground_truths`: a ground truth (string, number, list of acceptable answers, R1-V ``<answer>X</answer>``,
  boxed) as the strings to compare with;
* :func:`identical_answer`: the identity short-circuit every grader applies to its extracted answer before any
  expensive parsing (an answer identical to the ground truth is correct);
* the format rules :func:`format_think_boxed`, :func:`format_think_answer` and :func:`check_format` (named styles,
  :data:`FORMAT_STYLES`).

Every scan is linear in the text (safe on the full, untruncated response); nothing here raises on model text.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
FORMAT_STYLES = ("think_boxed", "think_answer", "boxed", "answer", "none")
"""Named format rules of :func:`check_format`."""


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


def ground_truth_text(gt: Any) -> Optional[str]:
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


def gt_alternatives(gt: Any) -> list:
    """A list/tuple ground truth (several acceptable answers) -> its items; else ``[gt]``."""
    if isinstance(gt, (list, tuple)):
        return [g for g in gt if g is not None]
    return [gt]


def ground_truths(gt: Any) -> list[str]:
    """The non-empty ground-truth strings of ``gt`` (one, or one per item of a list of acceptable answers)."""
    return [g for g in (ground_truth_text(x) for x in gt_alternatives(gt)) if g]


def answer_key(s: str) -> str:
    """``s`` as the identity comparison sees it: whitespace runs collapsed to one space, the ends stripped (case,
    punctuation and LaTeX are kept: ``x + 1`` == ``x  +  1``, but ``X+1`` != ``x + 1``)."""
    return " ".join(s.split())


def identical_answer(answer: Optional[str], gts: Iterable[Any]) -> bool:
    """True iff the extracted ``answer`` equals one of the ground-truth strings ``gts`` after whitespace normalisation
    (:func:`answer_key`); False for a missing or blank answer.

    Every grader checks this on the answer it extracted (its own extraction: the last box, the answer-tag content or
    the text after the reasoning; never the reasoning), with the ground-truth strings it compares with, before any
    expensive parsing: an answer identical to the ground truth is correct, and is graded in linear time even where
    parsing it would not finish (``\\boxed{10^{10^{10^{10}}}}``). Format rules are judged separately, as before.
    """
    if not answer:
        return False
    key = answer_key(answer)
    return bool(key) and any(isinstance(g, str) and key == answer_key(g) for g in gts)


# ====================================================================================================================
# Extraction
# ====================================================================================================================
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def scan_group(text: str, i: int) -> Optional[int]:
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
        j = scan_group(text, i)
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


__all__ = [
    "THINK_OPEN", "THINK_CLOSE", "ANSWER_OPEN", "ANSWER_CLOSE", "FORMAT_STYLES", "coerce_text", "truncate_tail",
    "ground_truth_text", "gt_alternatives", "ground_truths", "answer_key", "identical_answer", "scan_group",
    "extract_boxed", "extract_tag", "answer_candidate", "format_think_boxed", "format_think_answer", "check_format",
]
