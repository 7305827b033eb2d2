"""verl ``RLHFDataset`` rows: their columns, their validation and the chat messages verl builds from them, in one place.

verl (``RLHFDataset._build_messages``, ``verl/utils/dataset/rl_dataset.py:299-380``) splits each string message
content on ``<image>`` and puts a ``{"type": "image"}`` part where each placeholder was, in order, one per entry of
the ``images`` column; the agent loop then resizes each image with ``qwen_vl_utils.fetch_image``
(``verl.utils.dataset.vision_utils.process_image``) and the processor applies the chat template and expands the image
tokens. :func:`build_messages` and :func:`prepare_row` do the same, plus a text-only variant (every image part and its
placeholder dropped, the text parts joined) for P4's CDE.

Bad rows: :func:`validate_row` says why a row cannot be used (prompt id, ground truth, placeholder/image count,
decodable images); :func:`row_problem` is the same but never raises; :func:`prepare_row` raises :class:`RowFailure`
for anything else. Difficulty field names come from :mod:`verl_difficulty.schema`; the other verl column names are
here.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from verl_difficulty.schema import DATA_SOURCE, EXTRA_INFO, IMAGES, PROMPT_ID, TASK_TYPE

IMAGE_PLACEHOLDER = "<image>"
PROMPT = "prompt"
ABILITY = "ability"
REWARD_MODEL = "reward_model"
GROUND_TRUTH = "ground_truth"
SYSTEM_PROMPT_MODES = ("keep", "drop")
_SPLIT = re.compile("(<image>|<video>)")


class RowFailure(Exception):
    """A row could not be scored (bad image, generation error ...); the scoring engine records it as a bad row."""


class ExecutionFault(RuntimeError):
    """A fault of the execution, not of the input rows (backend exception, out of memory, NaN probabilities, a model
    that cannot process the rows' modality, a scorer crash): the shard is retried and, if the fault persists, left
    unfinished (the job fails; a rerun retries it). Never recorded as bad rows."""


REASON_KINDS = (
    ("missing extra_info.index", "row id: missing"),
    ("extra_info.index is not an int", "row id: not an int"),
    ("ground_truth", "ground_truth: missing"),
    ("placeholder count mismatch", "image: placeholder mismatch"),
    ("undecodable image", "image: undecodable"),
    ("the row has no image", "image: none (the scorer needs one)"),
    ("masking failed", "image: masking failed"),
    ("video inputs", "prompt: video unsupported"),
    ("prompt failed", "prompt: failed"),
    ("could not decode row", "row: undecodable"),
    ("row validation failed", "row: validation crashed"),
    ("generation failed", "generation: failed"),
    ("forward pass failed", "forward pass: failed"),
    ("no result", "scorer: no result"),
)
"""(substring of a bad-row reason, its kind): the short keys the summary groups bad rows by (first match wins)."""


def reason_kind(reason: str) -> str:
    """The kind of a bad-row reason (``image: undecodable``, ``ground_truth: missing`` ...; ``other`` if unknown)."""
    text = str(reason or "")
    for needle, kind in REASON_KINDS:
        if needle in text:
            return kind
    return "other"


@dataclass
class ScoringRow:
    """A validated input row, decoded for scoring."""

    row_id: int
    """``extra_info.index``: the id every seed derives from."""
    position: int
    """Position of the row inside its shard."""
    messages: list[dict]
    """Chat messages with structured content (``<image>`` -> ``{"type": "image"}`` parts), as verl builds them."""
    text_messages: list[dict]
    """The same messages with every image and its placeholder removed (valid text-only input, P4 CDE)."""
    images: list[Any]
    """Decoded RGB PIL images, preprocessed as verl does (``qwen_vl_utils.fetch_image`` sizing)."""
    ground_truth: Any
    data_source: str = ""
    task_type: str = ""
    extra_info: dict = field(default_factory=dict)
    reward_model: dict = field(default_factory=dict)
    image_sources: list[Any] = field(default_factory=list)
    """The row's ``images`` entries as stored (undecoded; :func:`open_image` gives an image at its original
    resolution, before verl's resizing; P1 PISM ``rect_reference`` masks there). Empty: ``images`` are the originals."""


def as_list(value: Any) -> list[Any]:
    """A list from a list, tuple or numpy array (pandas gives arrays for list columns); [] for None."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------
def _count_placeholders(prompt: Any) -> int:
    count = 0
    for message in as_list(prompt):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += content.count(IMAGE_PLACEHOLDER)
        else:  # already structured content parts
            count += sum(1 for part in as_list(content) if isinstance(part, dict) and part.get("type") == "image")
    return count


def open_image(image: Any) -> Any:
    """Open one ``images`` entry (PIL image, ``{"bytes","path"}`` dict, path or file object) and load its pixels."""
    from PIL import Image

    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if data:
            image = io.BytesIO(data)
        elif path:
            image = path
        else:
            raise ValueError("no bytes and no path")
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
        pil = Image.open(image)
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    pil.load()
    return pil


def validate_row(row: dict[str, Any]) -> str | None:
    """Why a row cannot be used (a short reason string), or None if it is fine.

    Checks: ``extra_info.index`` present and an int; a non-empty ``reward_model.ground_truth``; as many ``<image>``
    placeholders in the prompt as images; every image decodable.
    """
    extra = row.get(EXTRA_INFO)
    if not isinstance(extra, dict) or extra.get(PROMPT_ID) is None:
        return f"missing {EXTRA_INFO}.{PROMPT_ID}"
    if not isinstance(extra[PROMPT_ID], (int, np.integer)) or isinstance(extra[PROMPT_ID], bool):
        return f"{EXTRA_INFO}.{PROMPT_ID} is not an int: {extra[PROMPT_ID]!r}"
    reward = row.get(REWARD_MODEL)
    truth = reward.get(GROUND_TRUTH) if isinstance(reward, dict) else None
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        return f"missing {REWARD_MODEL}.{GROUND_TRUTH}"
    images = as_list(row.get(IMAGES))
    placeholders = _count_placeholders(row.get(PROMPT))
    if placeholders != len(images):
        return f"image/placeholder count mismatch: {len(images)} images, {placeholders} {IMAGE_PLACEHOLDER} placeholders"
    for k, image in enumerate(images):
        try:
            open_image(image)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad row
            return f"undecodable image {k}: {type(e).__name__}: {e}"
    return None


def row_problem(row: dict) -> Optional[str]:
    """Why a row cannot be scored (:func:`validate_row`), or None; a validator crash is a reason too."""
    try:
        return validate_row(row)
    except Exception as e:  # noqa: BLE001 - a validator crash is a bad row too
        return f"row validation failed: {type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------------------------------------
# Chat messages and decoded rows
# --------------------------------------------------------------------------------------------------------------------
def build_messages(prompt: Any, drop_images: bool = False, system_prompt: str = "keep") -> list[dict]:
    """Chat messages with structured content, as verl builds them; ``drop_images`` gives the text-only variant.

    Args:
        prompt: the row's ``prompt`` (list of ``{"role", "content"}``; content a string with ``<image>`` placeholders
            or already a list of parts).
        drop_images: remove every image part (and so its placeholder); the remaining text parts are joined into a
            plain string content, stripped of the whitespace the placeholder left at the ends.
        system_prompt: ``keep`` the row's system message or ``drop`` it.
    """
    if system_prompt not in SYSTEM_PROMPT_MODES:
        raise ValueError(f"system_prompt must be one of {SYSTEM_PROMPT_MODES}, got {system_prompt!r}")
    out = []
    messages = as_list(prompt)
    # verl turns every string content into parts when the row has images, and keeps strings otherwise
    structured = not drop_images and any(
        (isinstance(m.get("content"), str) and IMAGE_PLACEHOLDER in m["content"])
        or (not isinstance(m.get("content"), str) and any(p.get("type") == "image" for p in as_list(m["content"])))
        for m in messages
    )
    for message in messages:
        role = message.get("role")
        if system_prompt == "drop" and role == "system":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts: list[dict] = []
            for seg in _SPLIT.split(content):
                if seg == "":
                    continue
                if seg == IMAGE_PLACEHOLDER:
                    parts.append({"type": "image"})
                elif seg == "<video>":
                    raise RowFailure("video inputs are not supported by the offline scorers")
                else:
                    parts.append({"type": "text", "text": seg})
        else:
            parts = [dict(p) for p in as_list(content)]
            for p in parts:
                if p.get("type") == "image":
                    p.pop("image", None)
        has_image = any(p.get("type") == "image" for p in parts)
        if drop_images:
            text = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
            out.append({"role": role, "content": text.strip() if has_image else text})
        elif structured:
            out.append({"role": role, "content": parts})
        else:  # a text-only row: string contents, as verl keeps them
            out.append({"role": role, "content": "".join(p.get("text", "") for p in parts)})
    return out


def decode_image(image: Any) -> Any:
    """Decode one ``images`` entry (``{"bytes","path"}`` dict, path or PIL image) to the RGB PIL image verl feeds the
    model (``qwen_vl_utils.fetch_image`` resizing, as ``verl.utils.dataset.vision_utils.process_image``)."""
    pil = open_image(image).convert("RGB")
    try:
        from qwen_vl_utils import fetch_image

        return fetch_image({"type": "image", "image": pil})
    except ImportError:  # pragma: no cover - qwen_vl_utils is a dependency
        return pil


def prepare_row(row: dict, position: int, system_prompt: str = "keep") -> ScoringRow:
    """Decode a validated row (raises :class:`RowFailure` with a reason)."""
    try:
        extra = dict(row.get(EXTRA_INFO) or {})
        reward = dict(row.get(REWARD_MODEL) or {})
        images = [decode_image(im) for im in as_list(row.get(IMAGES))]
        messages = build_messages(row.get(PROMPT), drop_images=False, system_prompt=system_prompt)
        text_messages = build_messages(row.get(PROMPT), drop_images=True, system_prompt=system_prompt)
    except RowFailure:
        raise
    except Exception as e:  # noqa: BLE001
        raise RowFailure(f"could not decode row: {type(e).__name__}: {e}") from e
    task = extra.get(TASK_TYPE) or reward.get(TASK_TYPE) or row.get(TASK_TYPE) or ""
    return ScoringRow(
        row_id=int(extra[PROMPT_ID]),
        position=int(position),
        messages=messages,
        text_messages=text_messages,
        images=images,
        ground_truth=reward.get(GROUND_TRUTH),
        data_source=str(row.get(DATA_SOURCE) or ""),
        task_type=str(task),
        extra_info=extra,
        reward_model=reward,
        image_sources=as_list(row.get(IMAGES)),
    )


def row_index(row: Any) -> Optional[int]:
    """``extra_info.index`` of a raw row as an int, or None (never raises)."""
    try:
        v = (row.get(EXTRA_INFO) or {}).get(PROMPT_ID)
        return int(v) if v is not None else None
    except Exception:  # noqa: BLE001
        return None
