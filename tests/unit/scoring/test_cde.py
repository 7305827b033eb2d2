"""P4 CDE on a scripted model, the text-only prompt variant, and row decoding the way verl builds inputs."""

from __future__ import annotations

import copy
import types

import pytest

from verl_difficulty.data.synthetic import DEFAULT_SYSTEM_PROMPT, generate_rows
from verl_difficulty.schema import (
    CDE_ACC_IMG,
    CDE_ACC_TXT,
    CDE_D,
    CDE_IMG_CORRECT,
    CDE_IMG_CORRECT_FORMATTED,
    CDE_ROLLOUTS,
    CDE_TXT_CORRECT,
    CDE_TXT_CORRECT_FORMATTED,
)
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


@pytest.mark.parametrize("m", [5, 3])
def test_cde_counts_correct_and_correct_formatted_rollouts(rows, m):
    """Hand-built verdicts per (row, arm, try): correct & formatted, correct only, formatted but wrong, neither."""
    texts = {"cf": "<answer>yes</answer>", "c": "yes", "f": "<answer>no</answer>", "-": "no"}
    script = {  # row -> (image-arm verdicts, text-arm verdicts), one letter per try
        0: ("cf cf cf cf cf", "- - - - -"),
        1: ("c c c c c", "cf c f - -"),
        2: ("cf c f - cf", "f f f f f"),
        3: ("- - - - -", "cf cf c c -"),
        4: ("c cf - f c", "c - - - cf"),
        5: ("f f cf f f", "c c c c c"),
    }

    def outcome(tag, req):
        return texts[script[tag["row"]][tag["arm"]].split()[tag["try"]]]

    ctx = ScoringContext(ScriptedBackend(outcome=outcome), ScriptedVerifier(), seed=0, batch_size=4)
    res = CdeScorer(m=m, max_tokens=4).score(rows, ctx)
    for r, out in zip(rows, res):
        img, txt = (v.split()[:m] for v in script[r.row_id])
        want = {CDE_IMG_CORRECT: sum(v in ("cf", "c") for v in img), CDE_IMG_CORRECT_FORMATTED: img.count("cf"),
                CDE_TXT_CORRECT: sum(v in ("cf", "c") for v in txt), CDE_TXT_CORRECT_FORMATTED: txt.count("cf")}
        assert {k: out[k] for k in want} == want, r.row_id
        assert all(type(out[k]) is int for k in want)
        assert out[CDE_ACC_IMG] == want[CDE_IMG_CORRECT] / m and out[CDE_ACC_TXT] == want[CDE_TXT_CORRECT] / m
        assert out[CDE_ROLLOUTS] == m
    by_row = {r.row_id: out for r, out in zip(rows, res)}
    # correct but unformatted rollouts count in *_correct only
    assert by_row[1][CDE_IMG_CORRECT] == m and by_row[1][CDE_IMG_CORRECT_FORMATTED] == 0
    assert by_row[5][CDE_TXT_CORRECT] == m and by_row[5][CDE_TXT_CORRECT_FORMATTED] == 0
    # formatted but wrong rollouts count in neither
    assert by_row[5][CDE_IMG_CORRECT] == by_row[5][CDE_IMG_CORRECT_FORMATTED] == 1
    assert CdeScorer.version == "2"
    assert [name for name, _ in CdeScorer().fields()][-4:] == [CDE_IMG_CORRECT, CDE_IMG_CORRECT_FORMATTED,
                                                                CDE_TXT_CORRECT, CDE_TXT_CORRECT_FORMATTED]


def test_verdicts_of_the_verifiers(rows):
    from verl_difficulty.scoring.context import Verdict
    from verl_difficulty.scoring.verifier import RewardVerifier

    v = ScriptedVerifier()
    got = v.grade(["<answer>yes</answer>", "yes", "<answer>no</answer>", ""], [None] * 4)
    assert got == [Verdict(True, True), Verdict(True, False), Verdict(False, True), Verdict(False, False)]
    assert v.verify(["yes"], [None]) == [True]
    assert ScriptedVerifier(format_token="").grade(["yes"], [None]) == [Verdict(True, True)]
    # the plugin's rewards: correct = acc, formatted = the reward's own format check
    rv = RewardVerifier("math_acc_format", timeout_s=10, num_procs=1)
    row = copy.copy(rows[0])
    row.ground_truth = "7"
    out = rv.grade(["<think>add</think> \\boxed{7}", "\\boxed{7}", "<think>add</think> \\boxed{8}"], [row] * 3)
    assert out == [Verdict(True, True), Verdict(True, False), Verdict(False, True)]
    assert rv.verify(["\\boxed{7}"], [row]) == [True]


def test_cde_refuses_a_verifier_without_format(rows):
    class AccOnly:
        def verify(self, responses, rows):
            return [True] * len(responses)

    ctx = ScoringContext(ScriptedBackend(), AccOnly(), seed=0, batch_size=4)
    ctx.scorer = "cde"
    with pytest.raises(RuntimeError, match="'cde' counts well-formatted responses.*AccOnly.*grade"):
        CdeScorer(m=1, max_tokens=4).score(rows[:1], ctx)


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
