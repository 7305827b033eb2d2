"""Teacher-forced forward passes with per-layer hooks on the tiny Qwen2.5-VL (eager attention), batched with padding."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from verl_difficulty.models.forward import ForwardRequest, HFForward, decoder_layers
from verl_difficulty.models.generation import load_generation_model


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from verl.utils import hf_processor, hf_tokenizer

    from verl_difficulty.models.tiny import build_tiny_model_dir

    path = build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))
    return path, hf_tokenizer(path), hf_processor(path)


@pytest.fixture(scope="module")
def fwd(parts):
    path, tok, proc = parts
    return HFForward(load_generation_model(path, attn_implementation="eager"), tok, proc)


def _request(proc, tok, text, size, response):
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    images = None
    if size is not None:
        images = [Image.new("RGB", size, (200, 30, 30))]
        messages[0]["content"].insert(0, {"type": "image"})
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = proc(text=[prompt], images=images, return_tensors="pt")["input_ids"][0].tolist()
    return ForwardRequest(prompt_ids=ids, response_ids=tok(response)["input_ids"], images=images)


@pytest.fixture(scope="module")
def requests(parts):
    _, tok, proc = parts
    return [_request(proc, tok, "how many", (56, 56), "<answer> 3 </answer>"),
            _request(proc, tok, "what colour is the largest shape here", (84, 56), "red"),
            _request(proc, tok, "a text-only prompt", None, "<think> no image </think>")]


def _image_attention(c):
    """Per row: attention mass of the response tokens on the image tokens, summed over heads and queries."""
    a, b = c.attentions, c.batch
    return [float(a[i][:, b.response_mask[i]][:, :, b.image_mask[i]].sum()) for i in range(b.size)]


def test_hook_reduced_attention_equals_output_attentions(fwd, requests):
    per_request = fwd.forward(requests, _image_attention, attentions=True)
    n_layers = len(decoder_layers(fwd.model))
    assert [len(v) for v in per_request] == [n_layers] * len(requests)
    # reference: all layers' attention kept by output_attentions=True on the same padded batch
    batch, inputs = fwd._batch(requests)
    with torch.no_grad():
        out = fwd.model.model(**inputs, output_attentions=True, use_cache=False)
    assert len(out.attentions) == n_layers
    for layer, attn in enumerate(out.attentions):
        ref = [float(attn[i][:, batch.response_mask[i]][:, :, batch.image_mask[i]].sum()) for i in range(3)]
        assert [v[layer] for v in per_request] == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert per_request[0][0] > 0 and per_request[2] == [0.0] * n_layers  # the text-only row has no image tokens


def test_batched_equals_one_at_a_time_and_masks(fwd, requests):
    batched = fwd.forward(requests, _image_attention, attentions=True)
    single = [fwd.forward([r], _image_attention, attentions=True)[0] for r in requests]
    for b, s in zip(batched, single):
        assert b == pytest.approx(s, rel=1e-4, abs=1e-6)
    batch, _ = fwd._batch(requests)
    for i, r in enumerate(requests):
        assert int(batch.prompt_mask[i].sum()) == len(r.prompt_ids)
        assert int(batch.response_mask[i].sum()) == len(r.response_ids)
        assert batch.input_ids[i][batch.response_mask[i]].tolist() == r.response_ids
        assert int(batch.image_mask[i].sum()) == r.prompt_ids.count(fwd.image_token_id)
    assert not (batch.prompt_mask & batch.response_mask).any()
    assert ((batch.prompt_mask | batch.response_mask) == batch.attention_mask).all()


def test_hidden_states_per_layer_and_embeddings(fwd, requests):
    def norms(c):
        return [c.hidden_states[i][c.batch.attention_mask[i]].double().norm().item() for i in range(c.batch.size)]

    layers = []
    values = fwd.forward(requests, lambda c: (layers.append(c.layer), norms(c))[1], hidden_states=True)
    n = len(decoder_layers(fwd.model))
    assert layers == list(range(-1, n))  # the input embeddings first, then every decoder layer
    batch, inputs = fwd._batch(requests)
    with torch.no_grad():
        out = fwd.model.model(**inputs, output_hidden_states=True, use_cache=False)
    ref_embed = [out.hidden_states[0][i][batch.attention_mask[i]].double().norm().item() for i in range(3)]
    assert [v[0] for v in values] == pytest.approx(ref_embed, rel=1e-5)
    for layer in range(n - 1):  # HF's last entry is after the final norm
        ref = [out.hidden_states[layer + 1][i][batch.attention_mask[i]].double().norm().item() for i in range(3)]
        assert [v[layer + 1] for v in values] == pytest.approx(ref, rel=1e-5)
    # image-token embeddings are the vision tower's merged features
    feats = fwd.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    feats = torch.cat(list(getattr(feats, "pooler_output", feats)))
    got = fwd.forward(requests, lambda c: [c.hidden_states[c.batch.image_mask].clone()] * c.batch.size,
                      hidden_states=True)[0][0]
    assert torch.allclose(got, feats.to(got.dtype), atol=1e-5)


def test_attention_needs_eager(parts, requests):
    path, tok, proc = parts
    sdpa = HFForward(load_generation_model(path, attn_implementation="sdpa"), tok, proc)
    with pytest.raises(ValueError, match="eager"):
        sdpa.forward(requests[:1], _image_attention, attentions=True)
    assert len(sdpa.forward(requests[:1], lambda c: [0.0], hidden_states=True)[0]) == 3
    with pytest.raises(ValueError, match="values for a batch"):
        sdpa.forward(requests[:2], lambda c: [0.0], hidden_states=True)


def test_key_mass_and_head_aggregation_equal_output_attentions(fwd, requests):
    """``key_mass`` in the hook (whole batch, mean and max over heads) equals the per-row reduction of the kept
    ``output_attentions=True`` tensors; every capture says the model's depth."""
    from verl_difficulty.models.forward import aggregate_heads, key_mass

    depths = set()
    batch, inputs = fwd._batch(requests)
    keys = torch.stack([batch.image_mask, batch.prompt_mask & ~batch.image_mask], dim=-1)
    got = {how: fwd.forward(requests, lambda c, how=how: (depths.add(c.num_layers),
                                                          key_mass(c.attentions, keys, how))[1], attentions=True)
           for how in ("mean", "max")}
    n_layers = len(decoder_layers(fwd.model))
    assert depths == {n_layers}
    with torch.no_grad():
        out = fwd.model.model(**inputs, output_attentions=True, use_cache=False)
    for layer, attn in enumerate(out.attentions):
        for i in range(len(requests)):
            heads = attn[i].double()
            for how, agg in (("mean", heads.mean(0)), ("max", heads.max(0).values)):
                want = torch.stack([agg[:, batch.image_mask[i]].sum(-1),
                                    agg[:, batch.prompt_mask[i] & ~batch.image_mask[i]].sum(-1)], dim=-1)
                assert torch.allclose(got[how][i][layer].double(), want, rtol=1e-5, atol=1e-7)
    assert torch.equal(aggregate_heads(out.attentions[0], "max"), out.attentions[0].amax(1))
    with pytest.raises(ValueError, match="head aggregation"):
        aggregate_heads(out.attentions[0], "median")


def test_row_attention_outputs_equal_sdpa_and_reads_only_declared_layers(parts, requests, fwd, monkeypatch):
    """The ``sdpa_rows`` implementation: layer outputs as SDPA's (hidden states unchanged, marked or not), the declared
    rows' probabilities as eager's, and no attention probabilities at all in the layers no callback declared."""
    from verl_difficulty.models.forward import ROW_ATTENTION, reads_attention

    path, tok, proc = parts
    rows = HFForward(load_generation_model(path, attn_implementation=ROW_ATTENTION), tok, proc)
    sdpa = HFForward(load_generation_model(path, attn_implementation="sdpa"), tok, proc)
    batch, inputs = rows._batch(requests)
    keep = batch.attention_mask
    with torch.no_grad():
        want = sdpa.model.model(**inputs, output_hidden_states=True, use_cache=False)
        got = rows.model.model(**inputs, output_hidden_states=True, use_cache=False)
        eager = fwd.model.model(**inputs, output_attentions=True, use_cache=False).attentions
        logits = (sdpa.model(**inputs, use_cache=False).logits, rows.model(**inputs, use_cache=False).logits)
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert torch.allclose(a[keep], b[keep], rtol=1e-5, atol=1e-5)
    assert torch.allclose(logits[0][keep], logits[1][keep], rtol=1e-5, atol=1e-5)
    n = len(decoder_layers(rows.model))

    softmaxes = []
    real_softmax = torch.nn.functional.softmax
    monkeypatch.setattr(torch.nn.functional, "softmax", lambda *a, **k: (softmaxes.append(a[0].shape),
                                                                         real_softmax(*a, **k))[1])
    for which in ("response", "generating"):
        seen, hidden = {}, {}

        @reads_attention(rows=which, layers=[-1])
        def on_layer(c):
            if c.layer >= 0:
                seen[c.layer] = (c.attentions, c.query_offset)
                hidden[c.layer] = c.hidden_states
            return [None] * c.batch.size

        softmaxes.clear()
        rows.forward(requests, on_layer, attentions=True, hidden_states=True)
        assert seen[0][0] is None  # layer 0 is not read: no probabilities computed
        attn, q0 = seen[n - 1]
        first = int(batch.response_mask.float().argmax(1)[batch.response_mask.any(1)].min())
        assert q0 == first - (which == "generating")
        assert attn.shape == (len(requests), eager[-1].shape[1], keep.shape[1] - q0, keep.shape[1])
        assert softmaxes == [attn.shape]  # the one read layer, its declared rows only
        assert torch.allclose(attn, eager[-1][:, :, q0:], rtol=1e-5, atol=1e-6)
        for layer in range(n - 1):  # the marked pass leaves the layer outputs as SDPA's
            assert torch.allclose(hidden[layer][keep], want.hidden_states[layer + 1][keep], rtol=1e-5, atol=1e-5)
    # an eager model is switched to the row implementation for a declared pass, and back afterwards
    softmaxes.clear()
    fwd.forward(requests, on_layer, attentions=True)
    assert fwd.model.config.text_config._attn_implementation == "eager"
    assert fwd.model.config.vision_config._attn_implementation == "eager"
    text = [s for s in softmaxes if len(s) == 4 and s[0] == len(requests)]  # (a vision-tower chunk has batch 1)
    assert text == [seen[n - 1][0].shape]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_key_mass_inside_the_attention_function_equals_eager_and_keeps_layer_outputs(parts, requests, dtype):
    """Declared key weights: the attention function returns ``probabilities @ W`` per head (float32: one fused SDPA
    pass with W as extra value channels; bfloat16: a second SDPA in float32 over the declared rows) equal to eager's
    probabilities times W, and every layer's output stays SDPA's (the response rows included)."""
    from verl_difficulty.models.forward import ROW_ATTENTION, reads_attention

    path, tok, proc = parts
    rows = HFForward(load_generation_model(path, dtype=dtype, attn_implementation=ROW_ATTENTION), tok, proc)
    sdpa = HFForward(load_generation_model(path, dtype=dtype, attn_implementation="sdpa"), tok, proc)
    eager = HFForward(load_generation_model(path, dtype=dtype, attn_implementation="eager"), tok, proc)
    batch, inputs = rows._batch(requests)
    keep = batch.attention_mask
    weights = torch.stack([batch.image_mask, batch.prompt_mask & ~batch.image_mask], dim=-1).float()
    weights[..., 1] /= weights[..., 1].sum(1, keepdim=True).clamp(min=1)  # a non-0/1 weight column as well
    with torch.no_grad():
        want = sdpa.model.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states
        probs = eager.model.model(**inputs, output_attentions=True, use_cache=False).attentions
    got, hidden = {}, {}

    @reads_attention(rows="response", keys=lambda b: weights)
    def on_layer(c):
        if c.layer >= 0:
            got[c.layer], hidden[c.layer] = (c.key_mass, c.query_offset), c.hidden_states
        return [None] * c.batch.size

    rows.forward(requests, on_layer, attentions=True, hidden_states=True)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0, atol=2e-2)
    for layer, (mass, q0) in got.items():
        assert mass.dtype == torch.float32 and mass.shape[-1] == 2
        expect = torch.matmul(probs[layer][:, :, q0:].float(), weights[:, None])
        valid = keep[:, q0:]
        torch.testing.assert_close(mass[valid.unsqueeze(1).expand_as(mass[..., 0])], 
                                   expect[valid.unsqueeze(1).expand_as(expect[..., 0])], **tol)
        if layer + 1 < len(want) - 1:  # the last entry of hidden_states is after the final norm
            torch.testing.assert_close(hidden[layer][keep].float(), want[layer + 1][keep].float(),
                                       **(dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else tol))


def test_an_attention_only_pass_stops_after_the_last_declared_layer(fwd, requests):
    """Layers after the last declared one are not run; the callback still gets one (None) value per layer, and the
    values of the declared layer equal those of a pass that runs the whole decoder (hidden states asked for)."""
    from verl_difficulty.models.forward import reads_attention

    layers = decoder_layers(fwd.model)
    ran = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, layer in enumerate(layers)]

    @reads_attention(rows="response", layers=[0])
    def on_layer(c):
        if c.attentions is None:
            return [None] * c.batch.size
        return [float(c.attentions[i].sum()) for i in range(c.batch.size)]

    try:
        short = fwd.forward(requests, on_layer, attentions=True)
        assert ran == [0]
        ran.clear()
        full = fwd.forward(requests, on_layer, attentions=True, hidden_states=True)
        assert ran == list(range(len(layers)))
    finally:
        for h in handles:
            h.remove()
    assert len(layers) > 1 and all(len(v) == len(layers) for v in short)
    assert [v[0] for v in short] == pytest.approx([v[1] for v in full])  # full: the embeddings' value comes first
    assert all(x is None for v in short for x in v[1:])
    fwd.forward(requests, on_layer, attentions=True)  # hooks removed, the model still runs afterwards
