"""Synthetic multimodal RL data with a KNOWN difficulty per row, in verl's ``RLHFDataset`` parquet schema.

Four task families, each drawn with PIL on a small image (width and height in {56, 84, 112}, multiples of 28 so the
Qwen2.5-VL processors keep the size and sequence lengths vary per row):

* ``count``: "How many <colour> shapes are in the image?" Harder: more targets, more distractors of other colours,
  smaller shapes.
* ``color``: "What color is the largest shape in the image?" Harder: more shapes, smaller area gap to the runner-up.
* ``arith``: two numbers drawn as text; asks their sum or product. Harder: one-digit sum -> two-digit sum ->
  one-digit product -> two-digit product, smaller font, more noise lines.
* ``compare``: "Which side of the image has more dots, left or right?" Harder: more dots, a difference of one,
  smaller dots, and from the middle level on the side with fewer dots has the bigger dots.

A row's task and level come from :func:`assign` (exactly balanced over ``tasks x levels`` within each block of
``len(tasks) * levels`` consecutive indices, shuffled by the seed); its content comes from :func:`make_spec`, a pure
function of ``(task, level, levels, seed, index)``, and :func:`render`. So every row can be regenerated and its
answer re-checked from its ``extra_info`` alone. Field names come from :mod:`verl_difficulty.schema` and
:mod:`verl_difficulty.data.rows` (which also validates rows: ``validate_row`` is re-exported here).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from verl_difficulty.data.io import write_parquet
from verl_difficulty.data.rows import ABILITY, GROUND_TRUTH, IMAGE_PLACEHOLDER, PROMPT, REWARD_MODEL, validate_row
from verl_difficulty.schema import DATA_SOURCE, EXTRA_INFO, IMAGES, PROMPT_ID, TASK_TYPE, TRUE_LEVEL

__all__ = [
    "BACKGROUND",
    "COLORS",
    "DATA_SOURCE_NAME",
    "DEFAULT_SYSTEM_PROMPT",
    "IMAGE_PLACEHOLDER",
    "SIZES",
    "TASKS",
    "assign",
    "generate_rows",
    "make_row",
    "make_spec",
    "parquet_schema",
    "render",
    "validate_row",
    "write_dataset",
]

DATA_SOURCE_NAME = "verl_difficulty/synthetic"
"""Value of the ``data_source`` column of every synthetic row."""
TASKS: tuple[str, ...] = ("count", "color", "arith", "compare")

DEFAULT_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)
"""R1-V style system prompt (reasoning in ``<think>``, final answer in ``<answer>``)."""

SIZES: tuple[int, ...] = (56, 84, 112)
"""Allowed image widths/heights (multiples of 28)."""
BACKGROUND = (255, 255, 255)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 190, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
"""Shape colours (exact RGB values: shapes are drawn without anti-aliasing)."""
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DOT_COLOR = (30, 30, 30)
DIVIDER_COLOR = (150, 150, 150)
GAP = 3
"""Minimum free pixels between the bounding boxes of two shapes, so every shape is its own connected component."""

QUESTIONS = {
    "count": "How many {color} shapes are in the image? Answer with a single number.",
    "color": "What color is the largest shape in the image? Answer with a single color word.",
    "arith": "What is the {op} of the two numbers in the image? Answer with a single number.",
    "compare": "Which side of the image has more dots, left or right? Answer left or right.",
}

# --------------------------------------------------------------------------------------------------------------------
# Task/level assignment and per-row specs
# --------------------------------------------------------------------------------------------------------------------


def assign(seed: int, index: int, levels: int = 4, tasks: Sequence[str] = TASKS) -> tuple[str, int]:
    """Task and level of the row with id ``index``: balanced over ``tasks x levels`` in every block of indices."""
    block = len(tasks) * levels
    perm = np.random.default_rng([int(seed), 0x5EED, index // block]).permutation(block)
    combo = int(perm[index % block])
    return tasks[combo // levels], combo % levels


def _t(level: int, levels: int) -> float:
    """Level normalised to [0, 1] (0 = easiest); every difficulty knob interpolates on it."""
    if not 0 <= level < levels:
        raise ValueError(f"level {level} outside [0, {levels})")
    return level / (levels - 1) if levels > 1 else 0.0


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform int in [lo, hi] (inclusive)."""
    return int(rng.integers(lo, max(lo, hi) + 1))


def _area(shape: str, size: int) -> float:
    """Nominal area of a shape whose bounding box is ``size`` x ``size``."""
    return {"circle": math.pi * size * size / 4, "square": float(size * size), "triangle": size * size / 2}[shape]


def _canvas(rng: np.random.Generator, need_area: float, min_w: int = 56) -> tuple[int, int]:
    """A random (width, height) from ``SIZES`` with at least ``need_area`` pixels (else the largest)."""
    options = [(w, h) for w in SIZES for h in SIZES if w * h >= need_area and w >= min_w]
    if not options:
        return SIZES[-1], SIZES[-1]
    return options[int(rng.integers(len(options)))]


def _place(
    rng: np.random.Generator, sizes: Sequence[int], box: tuple[int, int, int, int], tries: int = 400
) -> list[tuple[int, int]] | None:
    """Top-left corners for squares of ``sizes`` inside ``box`` (x0, y0, x1, y1), pairwise ``GAP`` apart."""
    x0, y0, x1, y1 = box
    placed: list[tuple[int, int, int]] = []
    for s in sizes:
        if x1 - x0 < s or y1 - y0 < s:
            return None
        for _ in range(tries):
            x = _randint(rng, x0, x1 - s)
            y = _randint(rng, y0, y1 - s)
            if all(x + s + GAP <= px or px + ps + GAP <= x or y + s + GAP <= py or py + ps + GAP <= y
                   for px, py, ps in placed):
                placed.append((x, y, s))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def _shapes_spec(
    rng: np.random.Generator, kinds: Sequence[str], colors: Sequence[str], sizes: Sequence[int], min_w: int = 56
) -> dict[str, Any]:
    """Place shapes on a random canvas big enough for them; retries on a larger canvas if placement fails."""
    need = sum((s + GAP) ** 2 for s in sizes) * 2.5
    for attempt in range(6):
        w, h = _canvas(rng, need * (1.5**attempt), min_w)
        corners = _place(rng, sizes, (1, 1, w - 1, h - 1))
        if corners is not None:
            items = [
                {"shape": k, "color": c, "x": x, "y": y, "size": s}
                for k, c, s, (x, y) in zip(kinds, colors, sizes, corners)
            ]
            return {"width": w, "height": h, "items": items}
    raise RuntimeError(f"could not place {len(sizes)} shapes")  # not reached for the built-in knob ranges


def _spec_count(rng: np.random.Generator, t: float) -> dict[str, Any]:
    palette = list(COLORS)
    target = palette[int(rng.integers(len(palette)))]
    others = [c for c in palette if c != target]
    n_target = _randint(rng, 1 + round(5 * t), 2 + round(7 * t))
    n_distract = _randint(rng, round(6 * t), round(9 * t))
    n = n_target + n_distract
    s_lo, s_hi = round(14 - 7 * t), round(18 - 8 * t)
    sizes = [_randint(rng, s_lo, s_hi) for _ in range(n)]
    kinds = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
    colors = [target] * n_target + [others[int(rng.integers(len(others)))] for _ in range(n_distract)]
    order = rng.permutation(n)  # interleave targets and distractors in drawing order
    spec = _shapes_spec(rng, [kinds[i] for i in order], [colors[i] for i in order], [sizes[i] for i in order])
    spec.update(target_color=target, answer=str(n_target), question=QUESTIONS["count"].format(color=target))
    return spec


def _color_pixels(image: Image.Image) -> dict[str, int]:
    """Number of pixels of each shape colour in an image."""
    arr = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return {name: int(np.all(arr == rgb, axis=1).sum()) for name, rgb in COLORS.items()}


def _spec_color(rng: np.random.Generator, t: float) -> dict[str, Any]:
    n = _randint(rng, 1 + round(4 * t), 1 + round(5 * t))
    ratio = 2.2 - 0.95 * t  # nominal area of the largest / area of the runner-up
    for _ in range(50):
        palette = [str(c) for c in rng.permutation(list(COLORS))[:n]]
        kinds = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
        big = _randint(rng, 24, 30) if n <= 3 else _randint(rng, 20, 26)
        sizes = [big]
        big_area = _area(kinds[0], big)
        for i in range(1, n):
            # the runner-up right at the ratio, the others smaller still
            shrink = 1.0 if i == 1 else float(rng.uniform(1.05, 1.6))
            side = math.sqrt(big_area / ratio / shrink / _area(kinds[i], 1))
            sizes.append(max(8, math.floor(side)))
        spec = _shapes_spec(rng, kinds, palette, sizes)
        order = rng.permutation(n)  # the largest shape is not always drawn first
        spec["items"] = [spec["items"][i] for i in order]
        # keep only specs whose drawn pixels agree with the nominal answer by a visible margin
        counts = _color_pixels(render(spec))
        pixels = sorted(counts.values(), reverse=True)
        if counts[palette[0]] == pixels[0] and (n == 1 or pixels[0] >= 1.1 * pixels[1]):
            spec.update(answer=palette[0], question=QUESTIONS["color"])
            return spec
    raise RuntimeError("could not build a color spec")  # not reached for the built-in knob ranges


def _spec_arith(rng: np.random.Generator, t: float) -> dict[str, Any]:
    tier = round(3 * t)
    if tier == 0:
        op, a, b = "sum", _randint(rng, 1, 9), _randint(rng, 1, 9)
    elif tier == 1:
        op, a, b = "sum", _randint(rng, 10, 99), _randint(rng, 10, 99)
    elif tier == 2:
        op, a, b = "product", _randint(rng, 2, 9), _randint(rng, 2, 9)
    else:
        op, a, b = "product", _randint(rng, 11, 39), _randint(rng, 11, 39)
    font_size = round(24 - 10 * t)
    width = SIZES[_randint(rng, 1, 2)]
    height = SIZES[_randint(rng, 0, 2)]
    shade = _randint(rng, 0, round(90 * t))
    texts = []
    for k, value in enumerate((a, b)):
        half_x0 = k * width // 2
        text_w = math.ceil(_font(font_size).getlength(str(value)))
        x = _randint(rng, half_x0 + 2, half_x0 + width // 2 - text_w - 2)
        y = _randint(rng, 2, max(2, height - font_size - 6))
        texts.append({"text": str(value), "x": x, "y": y, "font_size": font_size, "gray": shade})
    lines = []
    for _ in range(round(6 * t)):
        lines.append([_randint(rng, 0, width - 1), _randint(rng, 0, height - 1),
                      _randint(rng, 0, width - 1), _randint(rng, 0, height - 1), _randint(rng, 120, 200)])
    answer = a + b if op == "sum" else a * b
    return {"width": width, "height": height, "items": [], "texts": texts, "lines": lines, "op": op, "a": a, "b": b,
            "answer": str(answer), "question": QUESTIONS["arith"].format(op=op)}


def _spec_compare(rng: np.random.Generator, t: float) -> dict[str, Any]:
    fewer = _randint(rng, 1 + round(5 * t), 2 + round(6 * t))
    diff = 1 if t >= 1 else max(1, round(4 - 3 * t)) + _randint(rng, 0, 1)
    more = fewer + diff
    s_lo, s_hi = round(11 - 4 * t), round(13 - 4 * t)
    invert = t >= 0.5  # the side with fewer dots gets the bigger dots
    more_sizes = [_randint(rng, s_lo, s_hi) - (2 if invert else 0) for _ in range(more)]
    fewer_sizes = [_randint(rng, s_lo, s_hi) + (2 if invert else 0) for _ in range(fewer)]
    more_side = "left" if rng.integers(2) == 0 else "right"
    need = 2 * max(sum((s + GAP) ** 2 for s in more_sizes), sum((s + GAP) ** 2 for s in fewer_sizes)) * 2.5
    for attempt in range(6):
        width, height = _canvas(rng, need * (1.5**attempt), min_w=84)
        mid = width // 2
        left_sizes, right_sizes = (more_sizes, fewer_sizes) if more_side == "left" else (fewer_sizes, more_sizes)
        left = _place(rng, left_sizes, (1, 1, mid - 2, height - 1))
        right = _place(rng, right_sizes, (mid + 3, 1, width - 1, height - 1))
        if left is not None and right is not None:
            break
    else:
        raise RuntimeError("could not place dots")  # not reached for the built-in knob ranges
    items = [{"shape": "circle", "color": "dot", "x": x, "y": y, "size": s}
             for (x, y), s in zip(left + right, left_sizes + right_sizes)]
    return {"width": width, "height": height, "items": items, "divider": mid, "left": len(left),
            "right": len(right), "answer": more_side, "question": QUESTIONS["compare"]}


_SPECS = {"count": _spec_count, "color": _spec_color, "arith": _spec_arith, "compare": _spec_compare}


def make_spec(task: str, level: int, seed: int, index: int, levels: int = 4) -> dict[str, Any]:
    """The full drawing spec of one row: canvas, shapes, texts, question and answer (pure function of its args).

    ``level`` in ``[0, levels)`` sets the difficulty knobs (interpolated on ``level / (levels - 1)``).
    """
    if task not in _SPECS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(_SPECS)}")
    rng = np.random.default_rng([int(seed), int(index), TASKS.index(task), int(level)])
    spec = _SPECS[task](rng, _t(level, levels))
    spec.update(task=task, level=int(level))
    return spec


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def render(spec: dict[str, Any]) -> Image.Image:
    """Draw a spec as an RGB image (shapes without anti-aliasing, so their colours are exact)."""
    image = Image.new("RGB", (spec["width"], spec["height"]), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1, gray in spec.get("lines", []):
        draw.line([(x0, y0), (x1, y1)], fill=(gray, gray, gray), width=1)
    if "divider" in spec:
        draw.line([(spec["divider"], 0), (spec["divider"], spec["height"] - 1)], fill=DIVIDER_COLOR, width=1)
    for it in spec["items"]:
        x, y, s = it["x"], it["y"], it["size"]
        fill = DOT_COLOR if it["color"] == "dot" else COLORS[it["color"]]
        if it["shape"] == "circle":
            draw.ellipse([x, y, x + s - 1, y + s - 1], fill=fill)
        elif it["shape"] == "square":
            draw.rectangle([x, y, x + s - 1, y + s - 1], fill=fill)
        else:
            draw.polygon([(x + (s - 1) // 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=fill)
    for tx in spec.get("texts", []):
        g = tx["gray"]
        draw.text((tx["x"], tx["y"]), tx["text"], fill=(g, g, g), font=_font(tx["font_size"]))
    return image


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------------


def make_row(
    index: int,
    seed: int,
    levels: int = 4,
    tasks: Sequence[str] = TASKS,
    split: str = "train",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> dict[str, Any]:
    """One RLHFDataset row for prompt id ``index`` (see the module docstring for the columns)."""
    task, level = assign(seed, index, levels, tasks)
    spec = make_spec(task, level, seed, index, levels)
    question = spec["question"]
    prompt: list[dict[str, str]] = []
    if system_prompt:
        prompt.append({"role": "system", "content": system_prompt})
    prompt.append({"role": "user", "content": IMAGE_PLACEHOLDER + question})
    return {
        DATA_SOURCE: DATA_SOURCE_NAME,
        PROMPT: prompt,
        IMAGES: [{"bytes": _png(render(spec)), "path": None}],
        ABILITY: task,
        REWARD_MODEL: {"style": "rule", GROUND_TRUTH: spec["answer"]},
        EXTRA_INFO: {
            PROMPT_ID: int(index),
            "split": split,
            TRUE_LEVEL: int(level),
            TASK_TYPE: task,
            "answer": spec["answer"],
            "question": question,
        },
        TRUE_LEVEL: int(level),
        TASK_TYPE: task,
    }


def generate_rows(
    n: int,
    seed: int,
    levels: int = 4,
    tasks: Sequence[str] = TASKS,
    start_index: int = 0,
    split: str = "train",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> list[dict[str, Any]]:
    """``n`` rows with prompt ids ``start_index .. start_index + n - 1`` (deterministic given the arguments)."""
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in _SPECS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {sorted(_SPECS)}")
    if levels < 1:
        raise ValueError("levels must be >= 1")
    indices: Iterable[int] = range(start_index, start_index + n)
    if n > 1000:
        from tqdm.auto import tqdm

        indices = tqdm(indices, total=n, desc=f"synthetic {split}", unit="row")
    return [make_row(i, seed, levels, tasks, split, system_prompt) for i in indices]


def parquet_schema() -> Any:
    """The explicit pyarrow schema of a synthetic parquet (fixed, so files are identical run to run)."""
    import pyarrow as pa

    return pa.schema([
        (DATA_SOURCE, pa.string()),
        (PROMPT, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        (IMAGES, pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        (ABILITY, pa.string()),
        (REWARD_MODEL, pa.struct([("style", pa.string()), (GROUND_TRUTH, pa.string())])),
        (EXTRA_INFO, pa.struct([
            (PROMPT_ID, pa.int64()),
            ("split", pa.string()),
            (TRUE_LEVEL, pa.int64()),
            (TASK_TYPE, pa.string()),
            ("answer", pa.string()),
            ("question", pa.string()),
        ])),
        (TRUE_LEVEL, pa.int64()),
        (TASK_TYPE, pa.string()),
    ])


def write_dataset(
    out_dir: str,
    n_train: int,
    n_val: int,
    seed: int,
    levels: int = 4,
    tasks: Sequence[str] = TASKS,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> dict[str, str]:
    """Write ``train.parquet`` (ids ``0..n_train-1``) and ``val.parquet`` (ids ``n_train..``) under ``out_dir``.

    Deterministic: the same arguments give byte-identical files. Returns ``{"train": path, "val": path}``.
    """
    import pyarrow as pa

    os.makedirs(out_dir, exist_ok=True)
    paths = {"train": os.path.join(out_dir, "train.parquet"), "val": os.path.join(out_dir, "val.parquet")}
    splits = {"train": (n_train, 0), "val": (n_val, n_train)}
    for split, (n, start) in splits.items():
        rows = generate_rows(n, seed, levels, tasks, start_index=start, split=split, system_prompt=system_prompt)
        write_parquet(paths[split], pa.Table.from_pylist(rows, schema=parquet_schema()))
    return paths
