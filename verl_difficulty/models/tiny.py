"""A tiny, randomly initialised Qwen2.5-VL checkpoint built entirely in code (no model hub access).

The checkpoint is a real ``Qwen2_5_VLForConditionalGeneration`` (~180k parameters) with a byte-level BPE tokenizer
trained in code, a ``Qwen2_5_VLProcessor`` with small image sizes and a Qwen-style chat template, so verl's
``hf_tokenizer`` / ``hf_processor`` / ``RLHFDataset`` and transformers' auto classes load it exactly like a hub
checkpoint. It is used by the demo, the docs and the CPU tests; its outputs are meaningless (random weights).

Public API:

* :func:`build_tiny_tokenizer` -> ``PreTrainedTokenizerFast``
* :func:`build_tiny_processor` -> ``Qwen2_5_VLProcessor``
* :func:`build_tiny_config` -> ``Qwen2_5_VLConfig``
* :func:`build_tiny_model_dir` -> path of a directory loadable with ``from_pretrained`` (idempotent)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_VERSION",
    "build_tiny_config",
    "build_tiny_model_dir",
    "build_tiny_processor",
    "build_tiny_tokenizer",
]

TINY_VERSION = 1
"""Bump when anything below changes what is written: a directory built by another version is rebuilt."""

MARKER_FILE = "verl_difficulty_tiny.json"

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD)
"""The Qwen special tokens, added (in this order) after the trained BPE vocabulary."""

REASONING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
"""Added as ordinary (non-special) tokens, so decoding with ``skip_special_tokens=True`` keeps them."""

BPE_VOCAB_SIZE = 480
"""Target size of the trained byte-level BPE vocabulary (256 byte symbols + merges)."""

MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 16

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
"""Qwen-style template; content is a string or a list of ``text`` / ``image`` / ``video`` parts."""

_CORPUS_LINES = (
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 42 50 64 81 99 100 121 144 256 1000",
    "<think> </think> <answer> </answer> \\boxed{} \\boxed{7} <answer>12</answer> <think>count them</think>",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.",
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.",
    "How many red shapes are in the image? How many blue circles are there? How many green squares?",
    "What colour is the largest shape in the image? What color is the shape? The largest shape is purple.",
    "What is the sum of the two numbers in the image? What is the product of the two numbers?",
    "Which side of the image has more dots, left or right? The left side has more dots. The right side.",
    "red green blue yellow purple orange black white gray cyan pink brown",
    "circle circles square squares triangle triangles shape shapes dot dots number numbers side sides",
    "count color colour arith compare sum product plus times equals answer question image left right",
    "Let me count: there are 3 red shapes, 2 blue, so the answer is 5. First, then, so, because, and, or, not.",
    "Please put your final answer within \\boxed{}. Answer with a single word or number.",
    "system user assistant you are a helpful assistant . , : ; ! ? ( ) [ ] { } + - * / = < > ' \" \\n",
)


def build_tiny_tokenizer() -> Any:
    """Train a byte-level BPE tokenizer on a small built-in corpus and wrap it as ``PreTrainedTokenizerFast``.

    The Qwen special tokens (:data:`SPECIAL_TOKENS`) come right after the BPE vocabulary; ``<|endoftext|>`` is the
    pad token and ``<|im_end|>`` the eos token, as in Qwen2.5-VL instruct checkpoints. The reasoning tags are added
    as non-special tokens. The chat template is :data:`CHAT_TEMPLATE`. Deterministic: the same corpus always gives
    the same vocabulary.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(list(_CORPUS_LINES) * 4, trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, IM_END)],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(tokenizer: Any | None = None) -> Any:
    """A ``Qwen2_5_VLProcessor`` with a small-image ``Qwen2VLImageProcessor`` (``MIN_PIXELS``..``MAX_PIXELS``).

    patch_size 14, merge_size 2, temporal_patch_size 2 (so one image token covers a 28x28 pixel block).
    ``size`` is passed explicitly: passing only ``min_pixels``/``max_pixels`` to the transformers 5.10 image
    processors mutates their class-level default ``size`` dict.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    common = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **common
    )
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **common
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def build_tiny_config(tokenizer: Any, dtype: str = "float32", vllm_friendly: bool = False) -> Any:
    """The tiny ``Qwen2_5_VLConfig``: text 64 hidden / 2 layers / 4 heads (2 kv), vision 32 hidden / depth 2.

    Token ids (image/video/vision start/end, bos/eos/pad) are read from ``tokenizer``; the vocabulary is the
    tokenizer size rounded up to a multiple of 64. Head dim 16 -> rotary half-dim 8 = mrope_section [2, 3, 3].
    ``vllm_friendly``: head size 64 (text 128 hidden / 2 heads (1 kv), mrope [8, 12, 12]; vision 128 hidden /
    2 heads), which vLLM's attention kernels accept (~0.7M parameters; the GPU tests use it).
    """
    from transformers import Qwen2_5_VLConfig

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    vocab_size = _round_up(len(tokenizer), 64)
    wide = 2 if vllm_friendly else 1
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=64 * wide,
        intermediate_size=128 * wide,
        num_hidden_layers=2,
        num_attention_heads=4 // wide,
        num_key_value_heads=2 // wide,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        max_window_layers=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": [8, 12, 12] if vllm_friendly else [2, 3, 3]},
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=True,
        dtype=dtype,
    )
    vision_config = dict(
        depth=2,
        hidden_size=128 if vllm_friendly else 32,
        intermediate_size=256 if vllm_friendly else 64,
        num_heads=2,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        out_hidden_size=64 * wide,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=True,
        dtype=dtype,
    )


def _marker(seed: int, dtype: str, vllm_friendly: bool = False) -> dict[str, Any]:
    marker = {"builder": "verl_difficulty.models.tiny", "version": TINY_VERSION, "seed": int(seed),
              "dtype": str(dtype)}
    if vllm_friendly:
        marker["vllm_friendly"] = True
    return marker


def _write(path: str, seed: int, dtype: str, vllm_friendly: bool = False) -> None:
    """Build tokenizer, processor and model and save them (plus a generation config and the marker) to ``path``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    torch_dtype = getattr(torch, dtype)
    tokenizer = build_tiny_tokenizer()
    processor = build_tiny_processor(tokenizer)
    config = build_tiny_config(tokenizer, dtype=dtype, vllm_friendly=vllm_friendly)

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    model = model.to(torch_dtype).eval()

    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id,
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    with open(os.path.join(path, MARKER_FILE), "w") as f:
        json.dump(_marker(seed, dtype, vllm_friendly), f, indent=2, sort_keys=True)


def _is_built(path: str, seed: int, dtype: str, vllm_friendly: bool = False) -> bool:
    try:
        with open(os.path.join(path, MARKER_FILE)) as f:
            return json.load(f) == _marker(seed, dtype, vllm_friendly)
    except (OSError, ValueError):
        return False


def build_tiny_model_dir(path: str, seed: int = 0, dtype: str = "float32", vllm_friendly: bool = False) -> str:
    """Write the tiny Qwen2.5-VL checkpoint (model, tokenizer, processor, generation config) to ``path``.

    Idempotent: a directory holding a marker for the same builder version, ``seed`` and ``dtype`` is reused as is;
    one built with other parameters is replaced; a non-empty directory without the marker raises FileExistsError.
    A fresh build goes to a sibling temporary directory that is then renamed into place, so concurrent builders
    never see a half-written checkpoint. Returns the absolute ``path``.

    Args:
        path: target directory (created if missing).
        seed: torch seed of the random weights.
        dtype: torch dtype name of the saved weights (``"float32"`` or ``"bfloat16"``).
        vllm_friendly: head size 64, which vLLM's kernels accept (see :func:`build_tiny_config`).
    """
    path = os.path.abspath(os.fspath(path))
    if _is_built(path, seed, dtype, vllm_friendly):
        return path
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-build-", dir=parent)
    try:
        _write(tmp, seed, dtype, vllm_friendly)
        if os.path.isdir(path):
            if _is_built(path, seed, dtype, vllm_friendly):  # another builder won the race
                return path
            if os.listdir(path) and not os.path.isfile(os.path.join(path, MARKER_FILE)):
                raise FileExistsError(f"{path} exists and is not a tiny checkpoint directory; refusing to replace it")
            shutil.rmtree(path)  # empty, or a tiny checkpoint built with other parameters
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return path
