"""Scorers defined only in this file plug into the engine, the command line and Ray workers with no edit elsewhere.

* ``plug_len``: generation only (mean response length over k seeded rollouts);
* ``plug_attn``: generation + a teacher-forced forward pass reading attention in per-layer hooks (the mean attention
  the response tokens pay to the image tokens, per layer), on the tiny Qwen2.5-VL with eager attention.

Both run through ``run_scoring`` and ``cli.main(["score", "--scorer-module", <this module>, ...])``, resume exactly
after a crash, and run on a Ray worker that gets the classes pickled by value.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_difficulty import cli
from verl_difficulty.config import setting
from verl_difficulty.data.synthetic import generate_rows, parquet_schema
from verl_difficulty.schema import EXTRA_INFO, SCORE_PROVENANCE
from verl_difficulty.scoring import (
    FORWARD,
    GENERATE,
    RowFailure,
    ScoreJob,
    Scorer,
    get_scorer,
    register_scorer,
    run_scoring,
    scorer_names,
)
from verl_difficulty.scoring.scorer import RolloutParams
from verl_difficulty.scoring.store import OutputDir

LEN, ATTN, ATTN_LAYERS = "plug_mean_len", "plug_image_attention", "plug_image_attention_layers"
HASH_VERIFIER = {"name": "scripted", "mode": "hash", "rate": 0.5}


@dataclass
class LenParams(RolloutParams):
    k: int = setting(2, ge=1, help="rollouts per row")
    max_tokens: int = setting(6, ge=1, help="max new tokens")


@register_scorer
class LenScorer(Scorer):
    name = "plug_len"
    version = "1"
    title = "test: mean response length"
    Params = LenParams

    def fields(self):
        return [(LEN, pa.float64())]

    def score(self, rows, ctx):
        out, prompts = self.prompts(rows, ctx)
        reqs, keys = [], []
        for i, (prompt,) in prompts.items():
            for j in range(self.p.k):
                reqs.append(self.request(ctx, rows[i], prompt, rows[i].images, j))
                keys.append(i)
        total = [0] * len(rows)
        for i, g in zip(keys, ctx.generate(reqs, self.sampling())):
            if isinstance(g, Exception):
                out[i] = RowFailure(f"plug_len: {g}")
            else:
                total[i] += g.num_tokens
        return [o if o is not None else {LEN: total[i] / self.p.k} for i, o in enumerate(out)]

    def summarize(self, table):
        return {"mean_len": float(sum(table.column(LEN).to_pylist()) / table.num_rows)}


@dataclass
class AttnParams(RolloutParams):
    max_tokens: int = setting(5, ge=1, help="max new tokens of the response")
    layers: list[int] = setting(default_factory=list, help="decoder layers to average (empty: all)")


@register_scorer
class AttnScorer(Scorer):
    name = "plug_attn"
    version = "1"
    title = "test: response-to-image attention"
    Params = AttnParams
    needs = frozenset({GENERATE, FORWARD})
    needs_attention = True
    requires_image = True

    def fields(self):
        return [(ATTN, pa.float64()), (ATTN_LAYERS, pa.list_(pa.float64()))]

    def score(self, rows, ctx):
        out, prompts = self.prompts(rows, ctx)
        order = sorted(prompts)
        gens = ctx.generate([self.request(ctx, rows[i], prompts[i][0], rows[i].images, 0) for i in order],
                            self.sampling())
        reqs, keys = [], []
        for i, g in zip(order, gens):
            if isinstance(g, Exception) or not g.token_ids:
                out[i] = RowFailure(f"plug_attn: no response ({g})")
                continue
            reqs.append(ctx.forward_request(rows[i], g.token_ids))
            keys.append(i)

        def on_layer(c):  # mean over heads and response queries of the attention mass on image keys
            a, b = c.attentions, c.batch
            return [float(a[r][:, b.response_mask[r]][:, :, b.image_mask[r]].sum(-1).mean()) for r in range(b.size)]

        for i, per_layer in zip(keys, ctx.forward(reqs, on_layer, attentions=True)):
            if isinstance(per_layer, Exception):
                out[i] = per_layer
                continue
            chosen = [per_layer[k] for k in self.p.layers] if self.p.layers else per_layer
            out[i] = {ATTN: sum(chosen) / len(chosen), ATTN_LAYERS: per_layer}
        return out

    def summary_lines(self, stats):
        return [f"plug_attn: {len(stats)} stats", f"  mean image attention {stats['mean']:.4f}"]

    def summarize(self, table):
        return {"mean": float(sum(table.column(ATTN).to_pylist()) / table.num_rows)}


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from verl_difficulty.models.tiny import build_tiny_model_dir

    return build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = generate_rows(10, seed=2)
    rows[4]["images"] = []  # a text-only row: fine for plug_len, a bad row for plug_attn
    rows[4]["prompt"][-1]["content"] = rows[4]["prompt"][-1]["content"].replace("<image>", "")
    path = tmp_path_factory.mktemp("data") / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()), path)
    return str(path)


SCORERS = {"plug_len": {"k": 2}, "plug_attn": {"max_tokens": 4}}


def _job(data, tiny, out, **kw):
    base = dict(inputs=[data], output_dir=str(out), model_path=tiny, scorers=SCORERS,
                backend_kwargs={"device": "cpu", "dtype": "auto"}, verifier=dict(HASH_VERIFIER), shard_size=3,
                batch_size=4, num_workers=0, progress=False)
    base.update(kw)
    return ScoreJob(**base)


@pytest.fixture(scope="module")
def reference(data, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    summary = run_scoring(_job(data, tiny, out), log=lambda s: None)
    return out, summary


def test_registered_and_described():
    assert {"plug_len", "plug_attn"} <= set(scorer_names())
    assert get_scorer("plug_attn") is AttnScorer
    with pytest.raises(ValueError, match="taken"):
        register_scorer(type("Other", (LenScorer,), {"__module__": "elsewhere"}))


def test_engine_runs_test_scorers(reference, data):
    out, s = reference
    t = pq.read_table(out / "scored.parquet")
    rows = t.to_pylist()
    assert s["rows_in"] == 10 and s["rows_scored"] == 9 and s["rows_bad"] == 1
    assert "plug_attn: the row has no image" in (out / "bad_rows.jsonl").read_text()
    for r in rows:
        assert 0 < r[LEN] <= 6 and 0.0 < r[ATTN] < 1.0 and len(r[ATTN_LAYERS]) == 2
        assert r[EXTRA_INFO][ATTN] == r[ATTN]
        assert set(json.loads(r[SCORE_PROVENANCE])) == {"plug_len", "plug_attn"}
    assert len(set(t.column(ATTN).to_pylist())) > 1
    assert s["scorers"]["plug_len"]["mean_len"] > 0 and s["scorers"]["plug_attn"]["generations"] == 9
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["job"]["backend"]["attn_implementation"] == "eager"  # a scorer reads attention


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


def test_cli_with_scorer_module_equals_engine(reference, data, tiny, tmp_path, capsys, scored_bytes):
    args = ["score", data, "--model", tiny, "-o", str(tmp_path / "cli"), "--scorer-module", __name__,
            "--scorers", "plug_len,plug_attn", "--plug-len-k", "2", "--plug-attn-max-tokens", "4",
            "--shard-size", "3", "--batch-size", "4", "--device", "cpu", "--num-workers", "0", "--no-progress",
            "--verifier", json.dumps(HASH_VERIFIER)]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "plug_attn: 3 stats\n    mean image attention" in err  # the scorer's own summary lines
    assert scored_bytes(tmp_path / "cli" / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")
    # generated flags: help, list parsing, errors naming the flag
    with pytest.raises(SystemExit):
        cli.main(["score", "--scorer-module", __name__, "--help"])
    assert "--plug-attn-layers" in capsys.readouterr().out
    bad = args[:-2] + ["--overwrite", "--plug-attn-top-p", "1.5"]
    assert cli.main(bad) == 2
    assert "--plug-attn-top-p: must be <= 1.0" in capsys.readouterr().err


def test_a_plugged_forward_scorer_on_vllm_becomes_a_two_backend_job(data, tmp_path):
    """A scorer from a test file that reads attention, on the vllm backend: the engine plans an eager transformers
    forward model of the same checkpoint (no scorer named anywhere in the engine), and refuses an unloadable one."""
    job = _job(data, "/nonexistent", tmp_path / "v", backend="vllm")
    assert job.forward_spec()["attn_implementation"] == "eager"
    with pytest.raises(ValueError, match="'plug_attn' needs a teacher-forced forward pass, which the vllm backend "
                                         "cannot run, and its transformers forward model cannot be loaded"):
        run_scoring(job, log=lambda s: None)


def test_ray_worker_runs_test_scorers(reference, data, tiny, tmp_path, scored_bytes):
    import ray
    from ray import cloudpickle  # Ray's own copy

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test file
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=128 * 2**20)
    try:
        s = run_scoring(_job(data, tiny, tmp_path / "ray", num_workers=1), log=lambda s: None)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert s["workers"] == 1
    assert scored_bytes(tmp_path / "ray" / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")
