"""The tiny Qwen2.5-VL checkpoint built in code loads through verl and transformers and runs on CPU."""

from __future__ import annotations

import os
import time

import pytest
import torch
from PIL import Image

from verl_difficulty.models.tiny import IMAGE_PAD, IM_END, MARKER_FILE, PAD_TOKEN, build_tiny_model_dir

BUILD_TIME: dict[str, float] = {}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tiny") / "qwen25vl-tiny")
    start = time.perf_counter()
    out = build_tiny_model_dir(path, seed=0)
    BUILD_TIME["fresh"] = time.perf_counter() - start
    return out


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from verl.utils import hf_processor

    return hf_processor(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


def _image(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((220, 40, 40), (4, 4, width // 2, height // 2))
    return image


def _inputs(processor, width: int = 84, height: int = 56):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red shapes are there?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[_image(width, height)], return_tensors="pt")


def test_fresh_build_is_fast_and_complete(tiny_dir):
    assert BUILD_TIME["fresh"] < 30.0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja", "generation_config.json", MARKER_FILE):
        assert os.path.isfile(os.path.join(tiny_dir, name)), name


def test_build_is_idempotent(tiny_dir):
    weights = os.path.join(tiny_dir, "model.safetensors")
    before = os.stat(weights).st_mtime_ns
    start = time.perf_counter()
    assert build_tiny_model_dir(tiny_dir, seed=0) == tiny_dir
    assert time.perf_counter() - start < 1.0
    assert os.stat(weights).st_mtime_ns == before


def test_same_seed_same_weights_other_seed_rebuilds(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    reference = load_file(os.path.join(tiny_dir, "model.safetensors"))
    other = build_tiny_model_dir(str(tmp_path / "again"), seed=0)
    again = load_file(os.path.join(other, "model.safetensors"))
    assert reference.keys() == again.keys()
    assert all(torch.equal(reference[k], again[k]) for k in reference)

    build_tiny_model_dir(other, seed=1)  # a different seed replaces the directory
    changed = load_file(os.path.join(other, "model.safetensors"))
    assert any(not torch.equal(reference[k], changed[k]) for k in reference)


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model_dir(str(tmp_path), seed=0)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_verl_loads_tokenizer_and_processor(tiny_dir, processor):
    from transformers import AutoConfig

    from verl.utils import hf_tokenizer

    tokenizer = hf_tokenizer(tiny_dir)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert hasattr(processor, "get_rope_index")  # verl binds the model's M-RoPE index to the processor
    config = AutoConfig.from_pretrained(tiny_dir)
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.eos_token == IM_END
    assert config.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE_PAD) == processor.image_token_id
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.vocab_size >= len(tokenizer)
    assert 256 < len(tokenizer) <= 1024
    assert tokenizer.encode("\n", add_special_tokens=False).__len__() == 1  # verl's Qwen continuous-token builder
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == tag


def test_chat_template_renders_strings_and_parts(processor):
    messages = [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nThink first.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color is it?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = processor.tokenizer.apply_chat_template([{"role": "user", "content": "1 2"}], tokenize=False)
    assert plain == "<|im_start|>user\n1 2<|im_end|>\n"


@pytest.mark.parametrize("width,height", [(56, 56), (84, 112), (112, 112)])
def test_image_pad_count_matches_grid(processor, width, height):
    inputs = _inputs(processor, width, height)
    n_pad = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert n_pad == int(inputs["image_grid_thw"].prod()) // 4
    assert n_pad == (width // 28) * (height // 28)


def test_model_size(model):
    n_params = sum(p.numel() for p in model.parameters())
    assert 120_000 < n_params < 260_000, n_params


def test_forward_gives_finite_logits(model, processor):
    inputs = _inputs(processor)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(out.logits).all()


def test_generate_produces_new_tokens(model, processor):
    inputs = _inputs(processor)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=2, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
