"""The vision tower alone on the tiny Qwen2.5-VL: the per-image split of a batch of images of different sizes (window
attention, merger), equality with the features the language model sees, and the pre-merger option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from verl_difficulty.models.forward import ForwardRequest, HFForward
from verl_difficulty.models.generation import load_generation_model
from verl_difficulty.models.vision import HFVision, VisionRequest, vision_tower

SIZES = [(56, 56), (112, 84), (84, 112), (112, 112), (28 * 4, 28 * 2)]


def _image(seed, size):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from verl.utils import hf_processor, hf_tokenizer

    from verl_difficulty.models.tiny import build_tiny_model_dir

    path = build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))
    model = load_generation_model(path)
    return model, hf_tokenizer(path), hf_processor(path)


@pytest.fixture(scope="module")
def vision(parts):
    model, tok, proc = parts
    return HFVision(model, tok, proc)


@pytest.fixture(scope="module")
def images():
    return [_image(i, s) for i, s in enumerate(SIZES)]


def test_window_index_keeps_each_image_in_its_own_block(parts, images):
    """The windowed blocks permute the patches of a batch image after image: each image's patches stay in one
    contiguous block at its offset (so splitting by image_grid_thw is right before and after the merger)."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    model, _, proc = parts
    visual = vision_tower(model)
    grid = proc.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    unit = visual.spatial_merge_size ** 2
    window_index, _ = qwen.get_vision_window_index(grid, spatial_merge_size=visual.spatial_merge_size,
                                                   window_size=visual.window_size, patch_size=visual.patch_size)
    sizes = (grid.prod(-1) // unit).tolist()
    assert sum(sizes) == len(window_index)
    assert not torch.equal(window_index, torch.arange(len(window_index)))  # windows really permute the tokens
    start = 0
    for n in sizes:
        block = window_index[start : start + n]
        assert sorted(block.tolist()) == list(range(start, start + n))
        start += n


@pytest.mark.parametrize("which", ["merged", "vit"])
def test_batched_split_equals_one_image_at_a_time(vision, images, which):
    reqs = [VisionRequest(images=[images[0], images[1]]), VisionRequest(images=[images[2]]),
            VisionRequest(images=[images[3], images[4], images[0]])]
    batched = vision.features(reqs, which)
    assert [len(r) for r in batched] == [2, 1, 3]
    flat = [f for r in batched for f in r]
    for img, f in zip([images[0], images[1], images[2], images[3], images[4], images[0]], flat):
        (alone,) = vision.features([VisionRequest(images=[img])], which)[0]
        w, h = img.size
        patches = (w // 14) * (h // 14)
        assert f.dtype == torch.float32
        assert f.shape[0] == (patches // 4 if which == "merged" else patches)
        # row for row (merged: spatial order; vit: the image's own window order, the same alone or batched)
        torch.testing.assert_close(f, alone, rtol=1e-5, atol=1e-5)
    cfg = vision.model.config
    dim = cfg.text_config.hidden_size if which == "merged" else cfg.vision_config.hidden_size
    assert all(f.shape[1] == dim for f in flat)
    # reduce is applied per request
    assert vision.features(reqs, which, reduce=len) == [2, 1, 3]


def test_merged_features_are_what_the_language_model_sees(parts, vision, images):
    """The merged rows, image after image, equal the input embeddings at the image placeholders (layer -1)."""
    model, tok, proc = parts
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                             {"type": "image"}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pair = [images[1], images[4]]
    ids = proc(text=[prompt], images=pair, return_tensors="pt")["input_ids"][0].tolist()
    fwd = HFForward(model, tok, proc)

    def on_layer(c):
        return [c.hidden_states[i][c.batch.image_mask[i]].clone() if c.layer == -1 else None
                for i in range(c.batch.size)]

    (per_layer,) = fwd.forward([ForwardRequest(prompt_ids=ids, response_ids=[5, 6], images=pair)], on_layer,
                               hidden_states=True)
    seen = per_layer[0]
    (feats,) = vision.features([VisionRequest(images=pair)], "merged")
    torch.testing.assert_close(torch.cat(feats), seen.float(), rtol=1e-5, atol=1e-5)


def test_requests_without_images_are_refused(vision, images):
    with pytest.raises(ValueError, match="at least one image"):
        vision.features([VisionRequest(images=[images[0]]), VisionRequest(images=[])])
    with pytest.raises(ValueError, match="merged"):
        vision.features([VisionRequest(images=[images[0]])], "pooled")
    assert vision.features([]) == []
