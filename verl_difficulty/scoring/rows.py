"""Turn verl RLHFDataset rows into :class:`~verl_difficulty.scoring.base.ScoringRow` (the way verl builds inputs).

verl (``RLHFDataset._build_messages``, ``verl/utils/dataset/rl_dataset.py:299-380``) splits each string message
content on ``<image>`` and puts a ``{"type": "image"}`` part where each placeholder was, in order, one per entry of
the ``images`` column; the agent loop then resizes each image with ``qwen_vl_utils.fetch_image``
(``verl.utils.dataset.vision_utils.process_image``) and the processor applies the chat template and expands the image
tokens. :func:`prepare_row` does the same, plus a text-only variant (every image part and its placeholder dropped,
the text parts joined) for P4's CDE.

Bad rows: :func:`row_problem` runs :func:`verl_difficulty.data.synthetic.validate_row` (prompt id, ground truth,
placeholder/image count, decodable images); :func:`prepare_row` raises :class:`RowFailure` for anything else.
"""

from __future__ import annotations

import io
import re
from typing import Any, Optional

import numpy as np

from verl_difficulty.data.synthetic import GROUND_TRUTH, IMAGE_PLACEHOLDER, PROMPT, REWARD_MODEL, validate_row
from verl_difficulty.schema import DATA_SOURCE, EXTRA_INFO, IMAGES, PROMPT_ID, TASK_TYPE
from verl_difficulty.scoring.base import RowFailure, ScoringRow

_SPLIT = re.compile("(<image>|<video>)")
SYSTEM_PROMPT_MODES = ("keep", "drop")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


def row_problem(row: dict) -> Optional[str]:
    """Why a row cannot be scored (``validate_row``), or None."""
    try:
        return validate_row(row)
    except Exception as e:  # noqa: BLE001 - a validator crash is a bad row too
        return f"row validation failed: {type(e).__name__}: {e}"


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
    messages = _as_list(prompt)
    # verl turns every string content into parts when the row has images, and keeps strings otherwise
    structured = not drop_images and any(
        (isinstance(m.get("content"), str) and IMAGE_PLACEHOLDER in m["content"])
        or (not isinstance(m.get("content"), str) and any(p.get("type") == "image" for p in _as_list(m["content"])))
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
            parts = [dict(p) for p in _as_list(content)]
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
    from PIL import Image

    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if data:
            pil = Image.open(io.BytesIO(data))
        elif path:
            pil = Image.open(path)
        else:
            raise ValueError("image entry has neither bytes nor path")
    elif isinstance(image, Image.Image):
        pil = image
    else:
        pil = Image.open(image)
    pil.load()
    pil = pil.convert("RGB")
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
        images = [decode_image(im) for im in _as_list(row.get(IMAGES))]
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
    )
