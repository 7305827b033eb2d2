"""P4 ACE (reconstructed): log-domain column/row scores on hand-built attention blocks (hand-computed psi and max,
zero attention, a block whose direct product underflows to 0), the hook reduction against ``output_attentions=True``
on the tiny model (2 and 4 layers), batching, and the linear/log scales through the engine and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from verl_difficulty import cli
from verl_difficulty.config import ConfigError, parse
from verl_difficulty.models.forward import ForwardRequest, HFForward
from verl_difficulty.schema import ACE_SCORE, SCORE_PROVENANCE
from verl_difficulty.scoring import ScoreJob, run_scoring
from verl_difficulty.scoring.scorers.ace import AceParams, AceScorer, ace_log_scores, ace_score

A3 = [[1.0, 0.0, 0.0],
      [0.5, 0.5, 0.0],
      [0.2, 0.3, 0.5]]


# ----------------------------------------------------------------------------------------------------------------
# Hand-built blocks
# ----------------------------------------------------------------------------------------------------------------
def test_column_and_row_scores_by_hand():
    # columns (sigma = 2): psi_0 = 2*1 * 2*0.5 * 2*0.2 = 0.8; psi_1 = 2*0.5 * 2*0.3 = 0.6; psi_2 = 2*0.5 = 1.0
    assert np.exp(ace_log_scores(A3)) == pytest.approx([0.8, 0.6, 1.0], rel=1e-12)
    assert ace_score(A3) == pytest.approx(0.0, abs=1e-12)  # log max psi = log 1.0
    assert ace_score(A3, scale="linear") == pytest.approx(1.0, rel=1e-12)
    # rows: psi_0 = 2; psi_1 = 2*0.5 * 2*0.5 = 1; psi_2 = 0.4 * 0.6 * 1.0 = 0.24
    assert np.exp(ace_log_scores(A3, direction="row")) == pytest.approx([2.0, 1.0, 0.24], rel=1e-12)
    assert ace_score(A3, direction="row", scale="linear") == pytest.approx(2.0, rel=1e-12)
    # sigma = 1: columns 0.1, 0.15, 0.5
    assert ace_score(A3, sigma=1.0) == pytest.approx(math.log(0.5), rel=1e-12)
    # the entries above the diagonal are never factors
    upper = np.array(A3) + np.triu(np.full((3, 3), 7.0), 1)
    assert ace_log_scores(upper) == pytest.approx(ace_log_scores(A3))


def test_zero_attention_gives_minus_infinity():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])  # column 0 has a zero factor (row 1)
    logs = ace_log_scores(a)
    assert logs[0] == -math.inf and logs[1] == pytest.approx(math.log(2.0))
    assert ace_score(a, scale="linear") == pytest.approx(2.0)
    zero = np.zeros((3, 3))
    assert ace_score(zero) == -math.inf and ace_score(zero, scale="linear") == 0.0
    assert math.isnan(ace_score(np.zeros((0, 0))))


def test_log_domain_survives_underflow():
    n = 400
    a = np.tril(np.full((n, n), 1e-3))
    a[n - 1, 100:] = 0.0  # every column from 100 on has a zero factor: -inf
    # column j < 100 has n - j factors of 2e-3: a direct product is 0.0 for every column
    assert all(np.prod(2.0 * a[j:, j]) == 0.0 for j in range(n))
    logs = ace_log_scores(a)
    assert np.isneginf(logs[100:]).all()
    assert logs[99] == pytest.approx(301 * math.log(2e-3), rel=1e-12)  # about -1870.6
    assert ace_score(a) == pytest.approx(301 * math.log(2e-3), rel=1e-12)
    assert ace_score(a, scale="linear") == 0.0  # the clipped linear score underflows, as documented
    huge = np.tril(np.ones((1200, 1200)))  # psi_0 = 2**1200 overflows float64: clipped
    assert ace_score(huge, scale="linear") == pytest.approx(1.7976931348623157e308)
    assert ace_score(huge) == pytest.approx(1200 * math.log(2.0))


def test_params():
    p = parse(AceParams, {}, "ace")
    assert (p.sigma, p.layer, p.heads, p.direction, p.positions, p.scale) == (2.0, -1, "mean", "column", "response",
                                                                             "log")
    assert p.temperature == 1.0
    with pytest.raises(ConfigError, match="ace.sigma"):
        parse(AceParams, {"sigma": 0.0}, "ace")
    with pytest.raises(ConfigError, match="ace.direction"):
        parse(AceParams, {"direction": "diagonal"}, "ace")


# ----------------------------------------------------------------------------------------------------------------
# Hook reduction == output_attentions=True on the tiny model
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from verl_difficulty.models.tiny import build_tiny_model_dir

    return build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))


@pytest.fixture(scope="module", params=[2, 4], ids=["2layers", "4layers"])
def fwd(request, tiny):
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from verl_difficulty.models.generation import load_generation_model
    from verl_difficulty.scoring.backends import _load_processor

    tok, proc = _load_processor(tiny)
    if request.param == 2:
        return HFForward(load_generation_model(tiny, attn_implementation="eager"), tok, proc)
    cfg = AutoConfig.from_pretrained(tiny).to_dict()
    cfg["text_config"] = {k: v for k, v in cfg["text_config"].items() if k != "layer_types"}
    cfg["text_config"].update(num_hidden_layers=request.param, max_window_layers=request.param)
    torch.manual_seed(2)
    model = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**cfg), attn_implementation="eager")
    return HFForward(model.eval(), tok, proc)


@pytest.fixture(scope="module")
def requests(fwd):
    out = []
    for text, size, response in [("how many", (56, 56), "<answer> 3 </answer>"), ("colour?", (84, 56), "red"),
                                 ("a text-only prompt", None, "<think> no image here, so 2 </think>")]:
        content = [{"type": "text", "text": text}] if size is None else [{"type": "image"},
                                                                         {"type": "text", "text": text}]
        images = None if size is None else [Image.new("RGB", size, (20, 90, 200))]
        prompt = fwd.processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False)
        ids = fwd.processor(text=[prompt], images=images, return_tensors="pt")["input_ids"][0].tolist()
        out.append(ForwardRequest(prompt_ids=ids, response_ids=fwd.tokenizer(response)["input_ids"], images=images))
    return out


def _official(fwd, req, p):
    """From output_attentions=True on one unpadded sample, with explicit loops and math.log."""
    _, inputs = fwd._batch([req])
    with torch.no_grad():
        att = fwd.model.model(**inputs, output_attentions=True, use_cache=False).attentions
    heads = att[p.layer][0].double()
    a = heads.mean(0) if p.heads == "mean" else heads.max(0).values
    start = len(req.prompt_ids) if p.positions == "response" else 0
    pos = list(range(start, a.shape[0]))
    best = -math.inf
    for j, col in enumerate(pos):
        if p.direction == "column":
            factors = [float(a[row, col]) for row in pos[j:]]
        else:  # pos[j] is the row; its columns pos[0..j]
            factors = [float(a[col, c]) for c in pos[: j + 1]]
        best = max(best, sum(math.log(p.sigma * f) if f > 0 else -math.inf for f in factors))
    return best if p.scale == "log" else math.exp(best)


@pytest.mark.parametrize("params", [
    {}, {"heads": "max"}, {"direction": "row"}, {"positions": "all"}, {"layer": 0, "sigma": 3.0},
    {"scale": "linear"},
], ids=["default", "max-heads", "row", "all-positions", "layer0-sigma3", "linear"])
def test_hook_reduction_equals_output_attentions(fwd, requests, params):
    scorer = AceScorer(**params)
    got = scorer.measure(fwd, requests)
    want = [_official(fwd, r, scorer.p) for r in requests]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert all(math.isfinite(v) for v in got)


def test_batched_equals_one_at_a_time(fwd, requests):
    scorer = AceScorer()
    assert scorer.measure(fwd, requests) == pytest.approx([scorer.measure(fwd, [r])[0] for r in requests], rel=1e-5)


def test_layer_out_of_range(fwd, requests):
    with pytest.raises(ValueError, match="ace.layer 9"):
        AceScorer(layer=9).measure(fwd, requests[:1])


# ----------------------------------------------------------------------------------------------------------------
# Engine (log scale) and command line (linear scale) agree; provenance
# ----------------------------------------------------------------------------------------------------------------
def test_engine_and_cli_scales_agree(tiny, tmp_path):
    from verl_difficulty.data.synthetic import write_dataset

    data = write_dataset(str(tmp_path / "data"), n_train=5, n_val=1, seed=6)["train"]
    verifier = {"name": "scripted", "mode": "hash", "rate": 0.5}
    s = run_scoring(ScoreJob(inputs=[data], output_dir=str(tmp_path / "log"), model_path=tiny,
                             scorers={"ace": {"max_tokens": 6}}, backend_kwargs={"device": "cpu"}, verifier=verifier,
                             shard_size=2, batch_size=3, num_workers=0, progress=False), log=lambda s: None)
    assert s["rows_scored"] == 5 and s["scorers"]["ace"]["scale"] == "log"
    args = ["score", data, "--model", tiny, "-o", str(tmp_path / "lin"), "--scorers", "ace", "--ace-max-tokens", "6",
            "--ace-scale", "linear", "--shard-size", "2", "--batch-size", "3", "--device", "cpu", "--num-workers",
            "0", "--no-progress", "--verifier", json.dumps(verifier)]
    assert cli.main(args) == 0
    log = pq.read_table(tmp_path / "log" / "scored.parquet").to_pylist()
    lin = pq.read_table(tmp_path / "lin" / "scored.parquet").to_pylist()
    assert [math.exp(r[ACE_SCORE]) for r in log] == pytest.approx([r[ACE_SCORE] for r in lin], rel=1e-9)
    assert len({r[ACE_SCORE] for r in log}) == 5
    prov = json.loads(lin[0][SCORE_PROVENANCE])["ace"]
    assert prov["params"]["scale"] == "linear" and prov["params"]["direction"] == "column"
    assert "lambda_a" not in prov["params"]  # the selection threshold is not this scorer's
