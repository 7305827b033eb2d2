"""P4 CDE on a scripted model, the text-only prompt variant, and row decoding the way verl builds inputs."""

from __future__ import annotations

import copy
import types

import pytest

from verl_difficulty.data.synthetic import DEFAULT_SYSTEM_PROMPT, generate_rows
from verl_difficulty.schema import CDE_ACC_IMG, CDE_ACC_TXT, CDE_D, CDE_ROLLOUTS
from verl_difficulty.data.rows import build_messages, prepare_row
from verl_difficulty.scoring.context import ScoringContext
from verl_difficulty.scoring.scorers.cde import CdeScorer
from verl_difficulty.scoring.scripted import ScriptedBackend, ScriptedVerifier


@pytest.fixture(scope="module")
def rows():
    return [prepare_row(r, i) for i, r in enumerate(generate_rows(6, seed=3))]


def test_cde_on_a_scripted_model(rows):
    # row i: with the image the first a_i of M tries are correct, without it the first b_i
    a = {r.row_id: (r.row_id * 2) % 6 for r in rows}
    b = {r.row_id: r.row_id % 3 for r in rows}
    seen_images = []

    def outcome(tag, req):
        seen_images.append((tag["arm"], bool(req.images), req.text.count("<image>")))  # images in the prompt
        limit = a[tag["row"]] if tag["arm"] == 0 else b[tag["row"]]
        return tag["try"] < limit

    ctx = ScoringContext(ScriptedBackend(outcome=outcome), ScriptedVerifier(), seed=0, batch_size=7)
    res = CdeScorer(m=5, max_tokens=4).score(rows, ctx)
    for r, out in zip(rows, res):
        assert out[CDE_ACC_IMG] == min(a[r.row_id], 5) / 5
        assert out[CDE_ACC_TXT] == min(b[r.row_id], 5) / 5
        assert out[CDE_D] == pytest.approx(out[CDE_ACC_IMG] - out[CDE_ACC_TXT])
        assert out[CDE_ROLLOUTS] == 5
    assert ctx.generations == 2 * 5 * len(rows)
    assert set(seen_images) == {(0, True, 1), (1, False, 0)}  # image arm has the image, text arm none


def test_cde_builtin_scripted_model_is_seeded(rows):
    def run(seed):
        ctx = ScoringContext(ScriptedBackend(), ScriptedVerifier(), seed=seed, batch_size=4)
        return CdeScorer(m=8, max_tokens=4).score(rows, ctx)

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_text_only_messages_drop_image_and_placeholder():
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "<image>How many? <image> and"}]
    full = build_messages(prompt)
    assert full[0] == {"role": "system", "content": [{"type": "text", "text": "sys"}]}
    assert full[1]["content"] == [{"type": "image"}, {"type": "text", "text": "How many? "}, {"type": "image"},
                                  {"type": "text", "text": " and"}]
    text = build_messages(prompt, drop_images=True)
    assert text == [{"role": "system", "content": "sys"}, {"role": "user", "content": "How many?  and"}]
    assert build_messages(prompt, system_prompt="drop")[0]["role"] == "user"


def test_messages_match_verl_rlhf_dataset(rows):
    """Our structured messages equal verl's RLHFDataset._build_messages (images aside)."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    raw = generate_rows(3, seed=3)
    fake = types.SimpleNamespace(image_key="images", video_key="videos", audio_key="audios", processor=object())
    for row in raw:
        example = copy.deepcopy(row)
        verl_msgs = RLHFDataset._build_messages(fake, example, "prompt")
        ours = build_messages(row["prompt"])
        assert len(verl_msgs) == len(ours)
        for v, o in zip(verl_msgs, ours):
            assert v["role"] == o["role"]
            if isinstance(v["content"], str):
                assert v["content"] == o["content"]
            else:
                assert [(p["type"], p.get("text")) for p in v["content"]] == \
                       [(p["type"], p.get("text")) for p in o["content"]]


def test_transformers_backend_text_only_prompt_is_valid(tmp_path_factory, rows):
    from verl_difficulty.scoring.backends import TransformersBackend
    from verl_difficulty.models.tiny import build_tiny_model_dir

    path = build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))
    be = TransformersBackend(path, device="cpu", num_threads=1)
    row = rows[0]
    with_img = be.prepare(row.messages, row.images)
    no_img = be.prepare(row.text_messages, None)
    tok = be.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    vstart = tok.convert_tokens_to_ids("<|vision_start|>")
    assert with_img.prompt_ids.count(pad) > 0 and vstart in with_img.prompt_ids
    assert pad not in no_img.prompt_ids and vstart not in no_img.prompt_ids
    # same template around it: the text-only prompt is the image prompt minus the vision block
    assert "<|vision_start|>" not in no_img.text and DEFAULT_SYSTEM_PROMPT in no_img.text
    assert no_img.text == with_img.text.replace("<|vision_start|><|image_pad|><|vision_end|>", "")
    ctx = ScoringContext(be, ScriptedVerifier(mode="hash"), seed=0, batch_size=4)
    res = CdeScorer(m=2, max_tokens=3).score(rows[:2], ctx)
    assert all(isinstance(r, dict) for r in res)
