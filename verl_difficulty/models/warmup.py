"""Warm a tiny model up to partial competence with a short supervised pass on synthetic rows (CPU, seconds).

A random tiny model never produces a gradable answer, so every reward is 0, every GRPO group has zero variance and
training does nothing. The demo and the end-to-end tests therefore start from a model that has seen a few hundred
teacher-forced examples of the answer format ``<think> ... </think> <answer> X </answer>``: it then answers in
format and right some of the time, so rollout groups have reward variance and RL has something to learn.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch

from verl_difficulty import schema
from verl_difficulty.data.rows import PROMPT, build_messages

MARKER = "verl_difficulty_warmup.json"


def _images(row: dict) -> list:
    from io import BytesIO

    from PIL import Image

    return [Image.open(BytesIO(img["bytes"])).convert("RGB") for img in row.get(schema.IMAGES) or []]


ANSWER_STYLES = ("answer", "boxed")


def target_text(answer: str, style: str = "answer") -> str:
    """The warm-up target: ``answer`` = ``<think> look </think> <answer> X </answer>`` (the ``r1v_acc`` format, P1);
    ``boxed`` = ``<think> look </think> \\boxed{X}`` (the ``math_acc_format`` format, P2-P4)."""
    if style == "boxed":
        return f"<think> look </think> \\boxed{{{answer}}}"
    if style == "answer":
        return f"<think> look </think> <answer> {answer} </answer>"
    raise ValueError(f"warm-up answer style {style!r}: expected one of {ANSWER_STYLES}")


def warm_up(model_dir: str, rows: Sequence[dict], steps: int = 300, lr: float = 3e-3, seed: int = 0,
            style: str = "answer") -> dict:
    """Fine-tune the model in ``model_dir`` in place on ``rows`` (teacher forcing on the answer only).

    Idempotent: a directory already warmed with the same settings is left alone. Returns the marker dict
    (settings, final loss).
    """
    target_text("", style)  # an unknown style fails before any work
    settings = {"steps": int(steps), "lr": float(lr), "seed": int(seed), "rows": len(rows)}
    if style != "answer":  # markers written before styles existed stay valid
        settings["style"] = style
    marker_path = os.path.join(model_dir, MARKER)
    if os.path.exists(marker_path):
        with open(marker_path) as f:
            done = json.load(f)
        if done.get("settings") == settings:
            return done
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    examples = []
    for row in rows:
        prompt = processor.apply_chat_template(build_messages(row[PROMPT]), add_generation_prompt=True, tokenize=False)
        answer = str(row["reward_model"]["ground_truth"])
        full = prompt + target_text(answer, style) + "<|im_end|>"
        enc = processor(text=[full], images=_images(row) or None, return_tensors="pt")
        n_prompt = len(processor(text=[prompt], images=_images(row) or None)["input_ids"][0])
        labels = enc["input_ids"].clone()
        labels[:, :n_prompt] = -100
        enc["labels"] = labels
        examples.append(enc)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_value = float("nan")
    for _ in range(int(steps)):
        ex = examples[int(torch.randint(len(examples), (1,), generator=gen))]
        loss = model(**ex).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
    model.eval()
    model.save_pretrained(model_dir)
    done = {"settings": settings, "final_loss": loss_value}
    with open(marker_path, "w") as f:
        json.dump(done, f, indent=2, sort_keys=True)
    return done
