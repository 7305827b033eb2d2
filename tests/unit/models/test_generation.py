"""Batched transformers generation (the CPU rollout's and the scorers' engine) on the tiny Qwen2.5-VL with images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from verl_difficulty.models.generation import GenRequest, HFGenerator, SamplingConfig, load_generation_model


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    from verl.utils import hf_processor, hf_tokenizer

    from verl_difficulty.models.tiny import build_tiny_model_dir

    path = build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))
    tok, proc = hf_tokenizer(path), hf_processor(path)
    return HFGenerator(load_generation_model(path), tok, proc), proc


def _request(proc, text, size):
    image = Image.new("RGB", size, (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = proc(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    return GenRequest(prompt_ids=ids, images=[image])


def test_batched_greedy_equals_one_at_a_time(gen):
    g, proc = gen
    reqs = [_request(proc, "how many", (56, 56)), _request(proc, "what colour is it here", (84, 56)),
            GenRequest(prompt_ids=proc.tokenizer("plain text prompt")["input_ids"])]
    cfg = SamplingConfig(temperature=0, max_new_tokens=6, ignore_eos=True)
    batched = g.generate(reqs, cfg)
    single = [g.generate([r], cfg)[0] for r in reqs]
    for b, s in zip(batched, single):
        assert b.token_ids == s.token_ids
        assert b.log_probs == pytest.approx(s.log_probs, abs=1e-4)
        assert len(b.token_ids) == 6 and b.finish_reason == "length"


def test_log_probs_equal_teacher_forced_forward(gen):
    """The returned log-probs are log_softmax(raw logits / T) of a plain forward over prompt + response."""
    g, proc = gen
    req = _request(proc, "how many", (56, 84))
    res = g.generate([req], SamplingConfig(temperature=0.7, max_new_tokens=5, ignore_eos=True, seed=0))[0]
    ids = torch.tensor([req.prompt_ids + res.token_ids])
    vis = g._vision_inputs([req])
    mm = (ids == g.image_token_id).long()
    with torch.no_grad():
        logits = g.model(input_ids=ids, mm_token_type_ids=mm, **vis).logits[0].float()
    n = len(req.prompt_ids)
    lp = torch.log_softmax(logits[n - 1 : -1] / 0.7, -1).gather(-1, torch.tensor(res.token_ids)[:, None])[:, 0]
    assert res.log_probs == pytest.approx(lp.tolist(), abs=1e-4)


def test_vision_placeholders_are_never_sampled(gen):
    g, proc = gen
    req = _request(proc, "say something", (56, 56))
    res = g.generate([req] * 4, SamplingConfig(temperature=5.0, max_new_tokens=12, ignore_eos=True, seed=1))
    banned = set(g.suppress_ids)
    assert banned and not any(t in banned for r in res for t in r.token_ids)


def test_placeholder_count_mismatch_is_a_clear_error(gen):
    g, proc = gen
    req = _request(proc, "x", (56, 56))
    bad = GenRequest(prompt_ids=req.prompt_ids, images=[Image.new("RGB", (112, 112))])
    with pytest.raises(ValueError, match="image placeholder tokens"):
        g.generate([bad], SamplingConfig(temperature=0, max_new_tokens=2))
