"""The synthetic known-difficulty dataset: determinism, schema, correct answers, balance and verl loading."""

from __future__ import annotations

import io
from collections import Counter, deque

import numpy as np
import pytest
from PIL import Image

from verl_difficulty.data.synthetic import (
    COLORS,
    DATA_SOURCE_NAME,
    DEFAULT_SYSTEM_PROMPT,
    DOT_COLOR,
    TASKS,
    generate_rows,
    make_spec,
    parquet_schema,
    render,
    validate_row,
    write_dataset,
)
from verl_difficulty.schema import DATA_SOURCE, EXTRA_INFO, IMAGES, PROMPT_ID, TASK_TYPE, TRUE_LEVEL

SEED = 7


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate_rows(96, seed=SEED)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, str]:
    return write_dataset(str(tmp_path_factory.mktemp("synthetic")), n_train=24, n_val=8, seed=SEED)


def _decode(row: dict) -> Image.Image:
    return Image.open(io.BytesIO(row[IMAGES][0]["bytes"])).convert("RGB")


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        count += 1
        seen[y0, x0] = True
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return count


def _mask(image: Image.Image, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.asarray(image) == np.array(rgb, dtype=np.uint8), axis=-1)


# --------------------------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_parquet(tmp_path, dataset):
    again = write_dataset(str(tmp_path / "again"), n_train=24, n_val=8, seed=SEED)
    for split in ("train", "val"):
        with open(dataset[split], "rb") as a, open(again[split], "rb") as b:
            assert a.read() == b.read(), split
    other = write_dataset(str(tmp_path / "other"), n_train=24, n_val=8, seed=SEED + 1)
    with open(dataset["train"], "rb") as a, open(other["train"], "rb") as b:
        assert a.read() != b.read()


def test_rows_depend_only_on_seed_and_index(rows):
    tail = generate_rows(6, seed=SEED, start_index=10)
    assert tail == rows[10:16]


# --------------------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------------------


def test_parquet_schema_and_row_types(dataset):
    import pyarrow.parquet as pq

    train = pq.read_table(dataset["train"])
    val = pq.read_table(dataset["val"])
    assert train.schema.remove_metadata() == parquet_schema()
    assert train.num_rows == 24 and val.num_rows == 8
    for table, split in ((train, "train"), (val, "val")):
        for row in table.to_pylist():
            assert row[DATA_SOURCE] == DATA_SOURCE_NAME
            assert row["ability"] == row[TASK_TYPE] in TASKS
            assert row["reward_model"]["style"] == "rule"
            truth = row["reward_model"]["ground_truth"]
            assert isinstance(truth, str) and truth
            extra = row[EXTRA_INFO]
            assert set(extra) == {PROMPT_ID, "split", TRUE_LEVEL, TASK_TYPE, "answer", "question"}
            assert extra["split"] == split
            assert extra[TRUE_LEVEL] == row[TRUE_LEVEL] and extra[TASK_TYPE] == row[TASK_TYPE]
            assert extra["answer"] == truth
            assert extra["question"] in row["prompt"][-1]["content"]
            assert row["prompt"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
            assert row["prompt"][-1]["role"] == "user"
            assert all(img["path"] is None and img["bytes"][:4] == b"\x89PNG" for img in row[IMAGES])
    ids = train.column(EXTRA_INFO).combine_chunks().field(PROMPT_ID).to_pylist()
    ids += val.column(EXTRA_INFO).combine_chunks().field(PROMPT_ID).to_pylist()
    assert sorted(ids) == list(range(32))  # unique across train and val


def test_one_placeholder_per_image_and_valid_sizes(rows):
    sizes = set()
    for row in rows:
        text = "".join(m["content"] for m in row["prompt"])
        assert text.count("<image>") == len(row[IMAGES]) == 1
        image = _decode(row)
        assert image.width % 28 == 0 and image.height % 28 == 0
        assert 56 <= image.width <= 112 and 56 <= image.height <= 112
        sizes.add(image.size)
    assert len(sizes) >= 4  # sizes vary, so prompt lengths vary


def test_system_prompt_is_a_parameter():
    row = generate_rows(1, seed=SEED, system_prompt=None)[0]
    assert [m["role"] for m in row["prompt"]] == ["user"]
    row = generate_rows(1, seed=SEED, system_prompt="Put the answer in \\boxed{}.")[0]
    assert row["prompt"][0] == {"role": "system", "content": "Put the answer in \\boxed{}."}


# --------------------------------------------------------------------------------------------------------------------
# Answers and difficulty
# --------------------------------------------------------------------------------------------------------------------


def test_answers_are_correct(rows):
    for row in rows[:48]:
        task, level, index = row[TASK_TYPE], row[TRUE_LEVEL], row[EXTRA_INFO][PROMPT_ID]
        answer = row["reward_model"]["ground_truth"]
        spec = make_spec(task, level, SEED, index)
        image = _decode(row)
        assert np.array_equal(np.asarray(render(spec)), np.asarray(image))  # regenerated from the parameters
        if task == "count":
            color = spec["target_color"]
            assert color in row[EXTRA_INFO]["question"]
            assert _components(_mask(image, COLORS[color])) == int(answer)
        elif task == "color":
            pixels = {name: int(_mask(image, rgb).sum()) for name, rgb in COLORS.items()}
            assert max(pixels, key=pixels.get) == answer
        elif task == "compare":
            dots = _mask(image, DOT_COLOR)
            mid = spec["divider"]
            left, right = _components(dots[:, :mid]), _components(dots[:, mid + 1:])
            assert left != right
            assert answer == ("left" if left > right else "right")
        else:
            a, b = spec["a"], spec["b"]
            assert [t["text"] for t in spec["texts"]] == [str(a), str(b)]
            assert answer == str(a + b if spec["op"] == "sum" else a * b)
            assert spec["op"] in row[EXTRA_INFO]["question"]


def test_levels_are_balanced():
    rows = generate_rows(160, seed=SEED)
    combos = Counter((r[TASK_TYPE], r[TRUE_LEVEL]) for r in rows)
    assert len(combos) == 16 and set(combos.values()) == {10}
    subset = generate_rows(61, seed=SEED, levels=3, tasks=("count", "compare"))
    levels = Counter(r[TRUE_LEVEL] for r in subset)
    assert set(levels) == {0, 1, 2} and max(levels.values()) - min(levels.values()) <= 2
    assert {r[TASK_TYPE] for r in subset} == {"count", "compare"}


def _mean(values) -> float:
    return float(np.mean(list(values)))


def test_level_controls_difficulty_knobs():
    n = 24
    by_level = {lvl: [make_spec(t, lvl, SEED, i) for i in range(n) for t in TASKS] for lvl in range(4)}

    def knob(task, fn):
        return [_mean(fn(s) for s in by_level[lvl] if s["task"] == task) for lvl in range(4)]

    shapes = knob("count", lambda s: len(s["items"]))
    targets = knob("count", lambda s: int(s["answer"]))
    dots = knob("compare", lambda s: s["left"] + s["right"])
    gap = knob("compare", lambda s: abs(s["left"] - s["right"]))
    n_color = knob("color", lambda s: len(s["items"]))
    noise = knob("arith", lambda s: len(s["lines"]))
    for increasing in (shapes, targets, dots, n_color, noise):
        assert all(a < b for a, b in zip(increasing, increasing[1:])), increasing
    assert all(a > b for a, b in zip(gap, gap[1:])), gap
    assert gap[-1] == 1.0
    font = knob("arith", lambda s: s["texts"][0]["font_size"])
    assert all(a > b for a, b in zip(font, font[1:])), font
    # arith tiers: one-digit sum, two-digit sum, one-digit product, two-digit product
    ops = [{s["op"] for s in by_level[lvl] if s["task"] == "arith"} for lvl in range(4)]
    assert ops == [{"sum"}, {"sum"}, {"product"}, {"product"}]
    digits = knob("arith", lambda s: max(len(str(s["a"])), len(str(s["b"]))))
    assert digits == [1.0, 2.0, 1.0, 2.0]


# --------------------------------------------------------------------------------------------------------------------
# validate_row
# --------------------------------------------------------------------------------------------------------------------


def test_validate_row_accepts_generated_and_pandas_rows(rows, dataset):
    import pandas as pd

    assert all(validate_row(r) is None for r in rows)
    frame = pd.read_parquet(dataset["val"])
    assert all(validate_row(r) is None for r in frame.to_dict("records"))


def test_validate_row_reasons(rows):
    import copy

    bad = copy.deepcopy(rows[0])
    bad[IMAGES][0]["bytes"] = b"not a png"
    assert "undecodable image 0" in validate_row(bad)

    bad = copy.deepcopy(rows[0])
    bad["reward_model"]["ground_truth"] = ""
    assert "ground_truth" in validate_row(bad)
    del bad["reward_model"]
    assert "ground_truth" in validate_row(bad)

    bad = copy.deepcopy(rows[0])
    bad["prompt"][-1]["content"] = "<image><image>" + bad["prompt"][-1]["content"].replace("<image>", "")
    assert "mismatch" in validate_row(bad)
    bad = copy.deepcopy(rows[0])
    bad[IMAGES] = []
    assert "mismatch" in validate_row(bad)

    bad = copy.deepcopy(rows[0])
    del bad[EXTRA_INFO][PROMPT_ID]
    assert f"{EXTRA_INFO}.{PROMPT_ID}" in validate_row(bad)
    bad[EXTRA_INFO] = None
    assert f"{EXTRA_INFO}.{PROMPT_ID}" in validate_row(bad)


# --------------------------------------------------------------------------------------------------------------------
# verl loading
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from verl.utils import hf_processor, hf_tokenizer

    from verl_difficulty.models.tiny import build_tiny_model_dir

    path = build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "model"))
    return hf_tokenizer(path), hf_processor(path)


@pytest.mark.parametrize("filter_overlong", [False, True])
def test_rlhf_dataset_loads_and_tokenizes_like_the_rollout(dataset, tiny, tmp_path, filter_overlong):
    """verl 0.9.1's RLHFDataset returns ``raw_prompt`` only; the agent loop tokenizes it. Run both halves."""
    import torch
    from omegaconf import OmegaConf

    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    tokenizer, processor = tiny
    config = OmegaConf.create({
        "image_key": IMAGES, "prompt_key": "prompt", "max_prompt_length": 512, "return_raw_chat": True,
        # None = filter in-process: datasets 5.x opens a process pool even for num_proc=1, and a fork after torch
        # has run in this process can deadlock.
        "filter_overlong_prompts": filter_overlong, "filter_overlong_prompts_workers": None,
        "cache_dir": str(tmp_path / "verl_cache"),
    })
    ds = RLHFDataset(dataset["val"], tokenizer, config, processor=processor)
    assert len(ds) == 8  # nothing is over 512 tokens
    builder = create_continuous_token_builder(tokenizer, hf_model_type="qwen2_5_vl", processor=processor)
    assert type(builder).__name__ == "QwenVLContinuousTokenBuilder"

    items = [ds[i] for i in range(len(ds))]
    batch = collate_fn(items)
    assert list(batch["index"]) == list(range(24, 32))
    for item in items:
        assert item[EXTRA_INFO][PROMPT_ID] == item["index"]
        assert item[TRUE_LEVEL] == item[EXTRA_INFO][TRUE_LEVEL]
        user = item["raw_prompt"][-1]["content"]
        assert [p["type"] for p in user] == ["image", "text"]
        images, videos, _ = RLHFDataset._process_multi_modal_info(item["raw_prompt"], ds.image_patch_size, config)
        assert len(images) == 1 and videos is None
        mm_inputs: dict = {}
        ids = builder.build_initial_tokens(item["raw_prompt"], images=images, mm_inputs_out=mm_inputs)
        grid = mm_inputs["image_grid_thw"]
        assert ids.count(processor.image_token_id) == int(grid.prod()) // 4 > 0
        assert mm_inputs["pixel_values"].shape[0] == int(grid.prod())
        assert len(ids) <= 512
        input_ids = torch.tensor([ids])
        mm_types = (input_ids == processor.image_token_id).long()
        position_ids, _ = processor.get_rope_index(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), image_grid_thw=grid,
            mm_token_type_ids=mm_types,
        )
        assert position_ids.shape == (3, 1, len(ids))
