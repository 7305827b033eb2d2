"""P1 CMAB: hook-reduced attention ratios equal the same quantities from ``output_attentions=True`` (both modes, both
query conventions, mean/max heads, a 4-layer model for the layer selection), buckets at their edges, wrong answers,
batching, and the scorer (with ACE) through the engine and the command line with resume and provenance."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from verl_difficulty import cli
from verl_difficulty.config import ConfigError, parse
from verl_difficulty.models.forward import ForwardRequest, HFForward
from verl_difficulty.schema import ACE_SCORE, BUCKETS, CMAB_BUCKET, CMAB_RATIO, EXTRA_INFO, SCORE_PROVENANCE
from verl_difficulty.scoring import ScoreJob, run_scoring
from verl_difficulty.scoring.scorers.cmab import (
    CmabParams,
    CmabScorer,
    attention_balance,
    cmab_bucket,
    first_step_length,
    paper_layers,
    paper_ratio,
    reference_layer,
    reference_ratio,
)
from verl_difficulty.scoring.store import OutputDir

HASH_VERIFIER = {"name": "scripted", "mode": "hash", "rate": 0.5}


# ----------------------------------------------------------------------------------------------------------------
# Pure parts
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,bucket", [
    (0.0, "easy"), (0.0999, "easy"), (0.1, "medium"), (0.3999, "medium"), (0.4, "hard"), (1.0, "hard"),
    (1.6, "hard"), (1.6001, "medium"), (1.9, "medium"), (1.9001, "easy"), (50.0, "easy"),
])
def test_buckets_at_the_edges(ratio, bucket):
    assert cmab_bucket(ratio, True) == bucket
    assert cmab_bucket(ratio, False) == "unsolved"  # wrong answers are unsolved whatever the ratio
    assert bucket in BUCKETS


def test_bucket_edges_are_parameters():
    assert cmab_bucket(0.15, True, (0.2, 0.5, 1.5, 2.0)) == "easy"
    assert cmab_bucket(2.0, True, (0.2, 0.5, 1.5, 2.0)) == "medium"
    p = parse(CmabParams, {"edges": [0.2, 0.5, 1.5, 2.0]}, "cmab")
    assert p.edges == (0.2, 0.5, 1.5, 2.0)
    with pytest.raises(ConfigError, match="cmab.edges: must be strictly ascending"):
        parse(CmabParams, {"edges": [0.1, 0.4, 0.4, 1.9]}, "cmab")
    with pytest.raises(ConfigError, match="cmab.step_pattern"):
        parse(CmabParams, {"step_pattern": "(unclosed"}, "cmab")
    with pytest.raises(ConfigError, match="cmab.mode"):
        parse(CmabParams, {"mode": "both"}, "cmab")


def test_layers():
    assert paper_layers(28) == list(range(1, 27))  # 1-based 2..27: first and last excluded
    assert paper_layers(4) == [1, 2]
    assert paper_layers(2) == [0, 1] and paper_layers(1) == [0]  # too shallow: all layers
    assert reference_layer(28) == 20
    assert reference_layer(36) == 26 and reference_layer(4) == 3 and reference_layer(2) == 1
    assert reference_layer(28, 5) == 5
    with pytest.raises(ValueError, match="ref_layer 4"):
        reference_layer(4, 4)


def test_ratios_by_hand():
    img = [[0.2, 0.1], [0.8, 0.1]]  # 2 layers x 2 tokens
    txt = [[0.4, 0.1], [0.2, 0.1]]
    # token 1: rho = 0.5 and 4 -> exp(mean log) = sqrt(2); token 2: rho = 1, 1 -> 1
    want = (math.exp((math.log(0.5 + 1e-8) + math.log(4 + 1e-8)) / 2) + math.exp(math.log(1 + 1e-8))) / 2
    assert paper_ratio(img, txt) == pytest.approx(want, rel=1e-12)
    assert paper_ratio([[0.0]], [[0.5]]) == pytest.approx(1e-8)  # log(0 + 1e-8), no -inf
    assert reference_ratio([0.01, 0.03], [0.02, 0.02]) == pytest.approx(1.0)
    assert math.isnan(reference_ratio([0.1], [0.0]))


def test_first_reasoning_step(tok):
    def dec(ids):
        return tok.decode(ids, skip_special_tokens=True)

    ids = tok("First, count them. Then add 2\nmore")["input_ids"]
    n = first_step_length(ids, dec)
    assert dec(ids[:n]).endswith("them.") and "them." not in dec(ids[: n - 1])
    ids = tok("\n\nthere are 3.5 apples\nso 4")["input_ids"]  # leading blank lines and a decimal point skipped
    n = first_step_length(ids, dec)
    assert dec(ids[:n]) == "\n\nthere are 3.5 apples\n"
    ids = tok("no step end at all")["input_ids"]
    assert first_step_length(ids, dec) == len(ids)
    ids = tok("a. b")["input_ids"]
    assert first_step_length(ids, dec, "") == len(ids)  # empty pattern: whole response
    assert dec(ids[: first_step_length(ids, dec, r";")]) == "a. b"


# ----------------------------------------------------------------------------------------------------------------
# Hook reductions == output_attentions=True, on the tiny model (2 layers) and a 4-layer variant
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from verl_difficulty.models.tiny import build_tiny_model_dir

    return build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))


@pytest.fixture(scope="module")
def tok(tiny):
    from verl_difficulty.scoring.backends import _load_processor

    return _load_processor(tiny)[0]


def _deeper(path, layers):
    """The tiny checkpoint's architecture with ``layers`` decoder layers (random weights, eager attention)."""
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    d = AutoConfig.from_pretrained(path).to_dict()
    d["text_config"] = {k: v for k, v in d["text_config"].items() if k != "layer_types"}
    d["text_config"].update(num_hidden_layers=layers, max_window_layers=layers)
    torch.manual_seed(1)
    return Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**d), attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=[2, 4], ids=["2layers", "4layers"])
def fwd(request, tiny):
    from verl_difficulty.models.generation import load_generation_model
    from verl_difficulty.scoring.backends import _load_processor

    tok, proc = _load_processor(tiny)
    model = load_generation_model(tiny, attn_implementation="eager") if request.param == 2 else \
        _deeper(tiny, request.param)
    return HFForward(model, tok, proc)


def _request(fwd, text, size, response):
    proc = fwd.processor
    messages = [{"role": "system", "content": [{"type": "text", "text": "You are helpful."}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    images = [Image.new("RGB", size, (200, 30, 30))]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = proc(text=[prompt], images=images, return_tensors="pt")["input_ids"][0].tolist()
    return ForwardRequest(prompt_ids=ids, response_ids=fwd.tokenizer(response)["input_ids"], images=images)


@pytest.fixture(scope="module")
def requests(fwd):
    return [_request(fwd, "how many", (56, 56), "<answer> 3 </answer>"),
            _request(fwd, "what colour is the largest shape here", (84, 56), "red"),
            _request(fwd, "count", (112, 84), "<think> there are two shapes. so </think> 2")]


def _official(fwd, req, p):
    """The same quantity the way the released code gets it: one sample, output_attentions=True (every layer kept),
    loops over layers and tokens with explicit position lists."""
    _, inputs = fwd._batch([req])
    with torch.no_grad():
        att = fwd.model.model(**inputs, output_attentions=True, use_cache=False).attentions
    n_layers, ids, n_prompt = len(att), req.prompt_ids + req.response_ids, len(req.prompt_ids)
    img = [k for k in range(n_prompt) if ids[k] == fwd.image_token_id]
    txt = [k for k in range(n_prompt) if ids[k] != fwd.image_token_id] if p.mode == "paper" else list(range(img[0]))
    shift = 0 if p.queries == "response" else 1
    queries = range(n_prompt - shift, len(ids) - shift)

    def row(layer, t):
        heads = att[layer][0, :, t, :].double()
        return heads.mean(0) if p.heads == "mean" else heads.max(0).values

    if p.mode == "paper":
        layers = list(range(1, n_layers - 1)) or list(range(n_layers))
        per_token = []
        for t in queries:
            logs = [math.log(float(row(l, t)[img].sum()) / float(row(l, t)[txt].sum()) + 1e-8) for l in layers]
            per_token.append(math.exp(sum(logs) / len(logs)))
        return sum(per_token) / len(per_token)
    layer = p.ref_layer if p.ref_layer is not None else round(20 / 28 * n_layers)
    layer = min(layer, n_layers - 1)
    num = sum(float(row(layer, t)[img].mean()) for t in queries)
    return num / sum(float(row(layer, t)[txt].mean()) for t in queries)


@pytest.mark.parametrize("params", [
    {}, {"heads": "max"}, {"queries": "generating"},
    {"mode": "reference_code"}, {"mode": "reference_code", "heads": "max", "queries": "generating"},
    {"mode": "reference_code", "ref_layer": 0},
], ids=["paper", "paper-max", "paper-generating", "ref", "ref-max-generating", "ref-layer0"])
def test_hook_reduction_equals_output_attentions(fwd, requests, params):
    p = parse(CmabParams, params, "cmab")
    got = attention_balance(fwd, requests, p)  # batched: padding and three image sizes
    want = [_official(fwd, r, p) for r in requests]
    assert got == pytest.approx(want, rel=1e-5)
    assert all(v > 0 for v in got)


def test_batched_equals_one_at_a_time(fwd, requests):
    for mode in ("paper", "reference_code"):
        p = parse(CmabParams, {"mode": mode}, "cmab")
        batched = attention_balance(fwd, requests, p)
        single = [attention_balance(fwd, [r], p)[0] for r in requests]
        assert batched == pytest.approx(single, rel=1e-5)


def test_no_special_text_tokens_differ(fwd, requests):
    special = fwd.tokenizer.all_special_ids
    a = attention_balance(fwd, requests, parse(CmabParams, {}, "cmab"), special)
    b = attention_balance(fwd, requests, parse(CmabParams, {"text_tokens": "no_special"}, "cmab"), special)
    assert all(y > x for x, y in zip(a, b))  # fewer text tokens: a smaller S_txt


# ----------------------------------------------------------------------------------------------------------------
# The scorer on the transformers backend: correctness decides unsolved only
# ----------------------------------------------------------------------------------------------------------------
def test_wrong_answers_are_unsolved(tiny):
    from verl_difficulty.data.rows import prepare_row
    from verl_difficulty.data.synthetic import generate_rows
    from verl_difficulty.scoring.backends import TransformersBackend
    from verl_difficulty.scoring.context import ScoringContext
    from verl_difficulty.scoring.scripted import ScriptedVerifier

    rows = [prepare_row(r, i) for i, r in enumerate(generate_rows(4, seed=5))]
    be = TransformersBackend(tiny, device="cpu", attn_implementation="eager", num_threads=1)
    res = {}
    for rate in (0.0, 1.0):
        ctx = ScoringContext(be, ScriptedVerifier(mode="hash", rate=rate), seed=0, batch_size=3)
        res[rate] = CmabScorer(max_tokens=6).score(rows, ctx)
        assert ctx.generations == 4 and ctx.forwards == 4
    for wrong, right in zip(res[0.0], res[1.0]):
        assert wrong[CMAB_RATIO] == right[CMAB_RATIO]  # the same seeded response and pass
        assert wrong[CMAB_BUCKET] == "unsolved"
        assert right[CMAB_BUCKET] == cmab_bucket(right[CMAB_RATIO], True) != "unsolved"


# ----------------------------------------------------------------------------------------------------------------
# Engine and command line (CMAB and ACE together), resume, provenance
# ----------------------------------------------------------------------------------------------------------------
SCORERS = {"cmab": {"max_tokens": 8}, "ace": {"max_tokens": 8}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from verl_difficulty.data.synthetic import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("data")), n_train=8, n_val=1, seed=4)["train"]


def _job(data, tiny, out, **kw):
    base = dict(inputs=[data], output_dir=str(out), model_path=tiny, scorers=SCORERS,
                backend_kwargs={"device": "cpu", "dtype": "auto"}, verifier=dict(HASH_VERIFIER), shard_size=3,
                batch_size=4, num_workers=0, progress=False)
    base.update(kw)
    return ScoreJob(**base)


@pytest.fixture(scope="module")
def reference(data, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return out, run_scoring(_job(data, tiny, out), log=lambda s: None)


def test_engine_writes_columns_and_provenance(reference):
    out, s = reference
    rows = pq.read_table(out / "scored.parquet").to_pylist()
    assert s["rows_scored"] == 8 and s["rows_bad"] == 0
    for r in rows:
        assert r[CMAB_RATIO] > 0 and r[CMAB_BUCKET] in BUCKETS and math.isfinite(r[ACE_SCORE])
        assert r[EXTRA_INFO][CMAB_RATIO] == r[CMAB_RATIO] and r[EXTRA_INFO][ACE_SCORE] == r[ACE_SCORE]
        prov = json.loads(r[SCORE_PROVENANCE])
        assert prov["cmab"]["params"]["mode"] == "paper" and prov["cmab"]["params"]["edges"] == [0.1, 0.4, 1.6, 1.9]
        assert prov["ace"]["params"]["sigma"] == 2.0 and prov["ace"]["version"] == "1"
    assert {r[CMAB_BUCKET] for r in rows} >= {"unsolved"} and len({r[CMAB_RATIO] for r in rows}) == 8
    assert set(s["scorers"]["cmab"]["buckets"]) <= set(BUCKETS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["job"]["backend"]["attn_implementation"] == "eager"


def test_resume_after_a_crash_is_exact(reference, data, tiny, tmp_path, monkeypatch, scored_bytes):
    real_commit = OutputDir.commit

    def commit(self, *a, **k):
        real_commit(self, *a, **k)
        if len(self.manifest["done"]) == 2:
            raise KeyboardInterrupt("simulated crash after two shards")

    monkeypatch.setattr(OutputDir, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        run_scoring(_job(data, tiny, tmp_path / "o"), log=lambda s: None)
    monkeypatch.undo()
    s = run_scoring(_job(data, tiny, tmp_path / "o"), log=lambda s: None)
    assert s["shards_resumed"] == 2
    assert scored_bytes(tmp_path / "o" / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")


def _cli(data, tiny, out, *extra):
    return ["score", data, "--model", tiny, "-o", str(out), "--scorers", "cmab,ace", "--cmab-max-tokens", "8",
            "--ace-max-tokens", "8", "--shard-size", "3", "--batch-size", "4", "--device", "cpu",
            "--num-workers", "0", "--no-progress", "--verifier", json.dumps(HASH_VERIFIER), *extra]


def test_cli_equals_engine_and_reference_mode(reference, data, tiny, tmp_path, capsys, scored_bytes):
    assert cli.main(_cli(data, tiny, tmp_path / "cli")) == 0
    assert scored_bytes(tmp_path / "cli" / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")
    assert cli.main(_cli(data, tiny, tmp_path / "ref", "--cmab-mode", "reference_code", "--cmab-edges",
                         "0.2,0.5,1.5,2.0", "--cmab-step-pattern", r"\n")) == 0
    paper = pq.read_table(reference[0] / "scored.parquet").to_pylist()
    ref = pq.read_table(tmp_path / "ref" / "scored.parquet").to_pylist()
    assert [r[ACE_SCORE] for r in ref] == [r[ACE_SCORE] for r in paper]  # the other scorer is unchanged
    assert [r[CMAB_RATIO] for r in ref] != [r[CMAB_RATIO] for r in paper]
    params = json.loads(ref[0][SCORE_PROVENANCE])["cmab"]["params"]
    assert params["mode"] == "reference_code" and params["step_pattern"] == "\\n"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["score", "--help"])
    helptext = capsys.readouterr().out
    assert "--cmab-mode" in helptext and "--ace-direction" in helptext
    assert cli.main(_cli(data, tiny, tmp_path / "bad", "--cmab-edges", "0.5,0.4,1.6,1.9")) == 2
    assert "--cmab-edges: must be strictly ascending" in capsys.readouterr().err
