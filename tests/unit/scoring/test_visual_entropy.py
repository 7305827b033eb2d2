"""P3 Durian visual entropy: the pure function against a direct eigen-decomposition and constructed spectra, the
scorer on the tiny Qwen2.5-VL (batching, multi-image rule, no language model), the vLLM refusal, and the engine and
the command line on the synthetic data (exact resume, provenance, extra_info)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from verl_difficulty import cli
from verl_difficulty.data.rows import ScoringRow
from verl_difficulty.models.forward import decoder_layers
from verl_difficulty.models.vision import VisionRequest
from verl_difficulty.schema import EXTRA_INFO, SCORE_PROVENANCE, VISUAL_ENTROPY
from verl_difficulty.scoring import ScoreJob, ScoringContext, run_scoring, visual_entropy
from verl_difficulty.scoring.scorers.visual_entropy import VisualEntropyScorer
from verl_difficulty.scoring.scripted import ScriptedBackend, ScriptedVerifier
from verl_difficulty.scoring.store import OutputDir


def _reference(f: np.ndarray) -> float:
    """H from numpy's float64 covariance and eigen-decomposition (clipped at 1e-9 of the largest eigenvalue)."""
    lam = np.linalg.eigvalsh(np.cov(np.asarray(f, dtype=np.float64), rowvar=False))
    lam = lam[lam > 1e-9 * lam.max()]
    p = lam / lam.sum()
    return float(-(p * np.log(p)).sum())


def _orthonormal(rng, d, r):
    return np.linalg.qr(rng.standard_normal((d, r)))[0]


# ----------------------------------------------------------------------------------------------------------------
# The function
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p,d", [(2, 5), (5, 3), (3, 5), (16, 64), (64, 16), (100, 100), (40, 1), (300, 20)])
def test_matches_a_direct_eigen_decomposition(p, d):
    rng = np.random.default_rng(p * 1000 + d)
    for scale in (1.0, 30.0):
        f = rng.standard_normal((p, d)) * rng.uniform(0.1, 3.0, d) * scale + rng.standard_normal(d)
        want = _reference(f) if d > 1 else 0.0
        assert visual_entropy(torch.tensor(f, dtype=torch.float32)) == pytest.approx(want, abs=2e-4)
        assert visual_entropy(f) == pytest.approx(want, abs=2e-4)  # numpy input, float64 -> float32


@pytest.mark.parametrize("p,d", [(50, 8), (8, 50), (2, 3)])
def test_rank_one_has_zero_entropy(p, d):
    rng = np.random.default_rng(0)
    v = rng.standard_normal(d)
    f = np.outer(rng.standard_normal(p), v) + rng.standard_normal(d) * 5  # every row on one line
    assert visual_entropy(f) == 0.0


@pytest.mark.parametrize("r,d,p_per", [(2, 16, 1), (3, 10, 2), (5, 64, 3), (8, 8, 1), (12, 40, 5)])
def test_isotropic_rank_r_has_entropy_ln_r(r, d, p_per):
    """r orthogonal directions with equal variance: p_k = 1/r, H = ln r."""
    rng = np.random.default_rng(r)
    q = _orthonormal(rng, d, r)
    rows = []
    for _ in range(p_per):  # +-s along each direction: equal variance, zero mean, no cross terms
        for k in range(r):
            rows += [3.0 * q[:, k], -3.0 * q[:, k]]
    f = np.asarray(rows) + rng.standard_normal(d) * 4
    assert visual_entropy(f) == pytest.approx(math.log(r), abs=1e-5)


def test_known_unequal_spectrum():
    # variances 4:1 along two orthogonal directions -> p = (0.8, 0.2)
    q = _orthonormal(np.random.default_rng(1), 6, 2)
    f = np.asarray([2 * q[:, 0], -2 * q[:, 0], q[:, 1], -q[:, 1]])
    want = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert visual_entropy(f) == pytest.approx(want, abs=1e-6)


def test_invariances_and_degenerate_inputs():
    rng = np.random.default_rng(7)
    f = rng.standard_normal((30, 12)).astype(np.float32)
    h = visual_entropy(f)
    assert 0 < h <= math.log(12)
    assert visual_entropy(f + 100.0) == pytest.approx(h, abs=1e-4)  # a constant added to every entry
    assert visual_entropy(f + rng.standard_normal(12).astype(np.float32) * 50) == pytest.approx(h, abs=1e-4)
    assert visual_entropy(f * 1e3) == pytest.approx(h, abs=1e-5)  # scale-free
    assert visual_entropy(f[rng.permutation(30)]) == pytest.approx(h, abs=1e-5)  # row order
    assert visual_entropy(f[:1]) == 0.0  # P = 1
    assert visual_entropy(np.ones((9, 4))) == 0.0  # all rows equal: no spread
    assert visual_entropy(torch.zeros(3, 5, dtype=torch.bfloat16)) == 0.0
    for bad in (np.zeros((0, 3)), np.zeros(5), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError, match="matrix"):
            visual_entropy(bad)
    with pytest.raises(ValueError, match="finite"):
        visual_entropy(np.asarray([[0.0, 1.0], [np.nan, 2.0]]))


# ----------------------------------------------------------------------------------------------------------------
# The scorer on the tiny Qwen2.5-VL
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "m"
    assert cli.main(["tiny-model", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def backend(tiny):
    from verl_difficulty.scoring.backends import TransformersBackend

    return TransformersBackend(tiny, device="cpu", num_threads=1)


def _image(seed, size):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _row(row_id, sizes):
    msgs = [{"role": "user", "content": [{"type": "image"} for _ in sizes] + [{"type": "text", "text": "q"}]}]
    return ScoringRow(row_id=row_id, position=row_id, messages=msgs, text_messages=[{"role": "user", "content": "q"}],
                      images=[_image(10 * row_id + j, s) for j, s in enumerate(sizes)], ground_truth="x")


ROWS = [((56, 56),), ((112, 84),), ((84, 112), (56, 56)), ((112, 112),), ((28 * 4, 28 * 2), (112, 84), (56, 84)),
        ((56, 84),)]


@pytest.fixture(scope="module")
def rows():
    return [_row(i, sizes) for i, sizes in enumerate(ROWS)]


def _score(backend, rows, batch_size=16, **params):
    ctx = ScoringContext(backend, ScriptedVerifier(), seed=0, batch_size=batch_size)
    ctx.scorer = "visual_entropy"
    res = VisualEntropyScorer(**params).score(rows, ctx)
    return res, ctx


@pytest.mark.parametrize("features", ["merged", "vit"])
def test_batched_scores_equal_one_row_at_a_time(backend, rows, features):
    batched, ctx = _score(backend, rows, batch_size=4, features=features)
    assert ctx.forwards == len(rows) and ctx.generations == 0
    single = [_score(backend, [r], batch_size=1, features=features)[0][0] for r in rows]
    for b, s in zip(batched, single):
        assert b[VISUAL_ENTROPY] == pytest.approx(s[VISUAL_ENTROPY], rel=1e-5, abs=1e-6)
        assert 0.0 < b[VISUAL_ENTROPY] < 10
    assert len({round(b[VISUAL_ENTROPY], 6) for b in batched}) == len(rows)


@pytest.mark.parametrize("features", ["merged", "vit"])
def test_multi_image_rule(backend, rows, features):
    pooled, _ = _score(backend, rows, features=features)
    mean, _ = _score(backend, rows, features=features, multi_image="mean")
    for row, p, m in zip(rows, pooled, mean):
        (per_image,) = backend.vision_features([VisionRequest(images=row.images)], features)
        assert p[VISUAL_ENTROPY] == pytest.approx(visual_entropy(torch.cat(per_image)), rel=1e-6)
        assert m[VISUAL_ENTROPY] == pytest.approx(np.mean([visual_entropy(f) for f in per_image]), rel=1e-6)
        if len(row.images) == 1:
            assert p[VISUAL_ENTROPY] == m[VISUAL_ENTROPY]
        else:  # pooling the images of the row is not averaging their entropies
            assert p[VISUAL_ENTROPY] != pytest.approx(m[VISUAL_ENTROPY], rel=1e-3)


def test_only_the_vision_tower_runs(backend, rows):
    calls = []
    handles = [layer.register_forward_pre_hook(lambda *a: calls.append(1))
               for layer in decoder_layers(backend.generator.model)]
    try:
        res, ctx = _score(backend, rows)
    finally:
        for h in handles:
            h.remove()
    assert calls == [] and all(VISUAL_ENTROPY in r for r in res)


def test_rows_without_image_and_backends_without_vision_tower(backend, rows):
    bare = _row(99, [])
    res, _ = _score(backend, [rows[0], bare])
    assert isinstance(res[0], dict) and isinstance(res[1], Exception) and "no image" in str(res[1])
    ctx = ScoringContext(ScriptedBackend(), ScriptedVerifier())
    ctx.scorer = "visual_entropy"
    with pytest.raises(RuntimeError, match="'visual_entropy' needs a forward pass of the vision tower.*scripted"):
        VisualEntropyScorer().score(rows[:1], ctx)


def test_vllm_job_gets_a_transformers_forward_model_checked_before_any_work(tmp_path):
    """vLLM cannot read the vision tower: the job becomes a two-backend job (vLLM samples, a transformers copy of the
    checkpoint runs the vision forward pass), and a checkpoint that cannot be loaded stops it in preflight."""
    assert cli.main(["synth", str(tmp_path), "--n-train", "2", "--n-val", "1"]) == 0
    data = str(tmp_path / "train.parquet")
    job = ScoreJob(inputs=[data], output_dir=str(tmp_path / "v"), model_path="/nonexistent", backend="vllm",
                   scorers={"visual_entropy": {}}, num_workers=0, progress=False)
    spec = job.forward_spec()
    assert spec["name"] == "transformers" and spec["model_path"] == "/nonexistent"
    assert spec["attn_implementation"] == "sdpa"  # visual entropy reads no attention weights
    with pytest.raises(ValueError, match="'visual_entropy' needs a teacher-forced forward pass, which the vllm backend "
                                         "cannot run, and its transformers forward model cannot be loaded"):
        run_scoring(job, log=lambda s: None)
    assert not (tmp_path / "v" / "scored.parquet").exists()


# ----------------------------------------------------------------------------------------------------------------
# Engine and command line on the synthetic data
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert cli.main(["synth", str(out), "--n-train", "10", "--n-val", "2", "--seed", "4"]) == 0
    return str(out / "train.parquet")


def _job(data, tiny, out, **kw):
    base = dict(inputs=[data], output_dir=str(out), model_path=tiny, scorers={"visual_entropy": {}},
                backend_kwargs={"device": "cpu"}, shard_size=4, batch_size=3, num_workers=0, progress=False)
    base.update(kw)
    return ScoreJob(**base)


@pytest.fixture(scope="module")
def reference(data, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return out, run_scoring(_job(data, tiny, out), log=lambda s: None)


def test_engine_writes_entropy_with_provenance(reference, data):
    out, s = reference
    rows = pq.read_table(out / "scored.parquet").to_pylist()
    assert s["rows_in"] == s["rows_scored"] == 10 and s["generations"] == 0
    for r in rows:
        assert r[EXTRA_INFO][VISUAL_ENTROPY] == r[VISUAL_ENTROPY] and r[VISUAL_ENTROPY] > 0
        prov = json.loads(r[SCORE_PROVENANCE])["visual_entropy"]
        assert prov["scorer"] == "visual_entropy" and prov["version"] == "1"
        assert prov["params"] == {"features": "merged", "multi_image": "pool"}
        assert r[EXTRA_INFO][SCORE_PROVENANCE] == r[SCORE_PROVENANCE]
    stats = s["scorers"]["visual_entropy"]
    h = np.asarray([r[VISUAL_ENTROPY] for r in rows])
    assert stats["count"] == 10 and stats["mean"] == pytest.approx(h.mean(), abs=1e-6)
    assert stats["q25"] <= stats["median"] <= stats["q75"]
    assert stats["median"] == pytest.approx(np.median(h), abs=1e-6)
    # what the durian estimator reads: extra_info as the seam hands it over
    from verl_difficulty.estimators.durian import read_visual_entropy

    got = read_visual_entropy({EXTRA_INFO: np.array([r[EXTRA_INFO] for r in rows], dtype=object)}, len(rows))
    assert got.tolist() == h.tolist()


def test_partial_run_then_rerun_equals_uninterrupted(reference, data, tiny, tmp_path, monkeypatch, scored_bytes):
    real_commit = OutputDir.commit

    def commit(self, *a, **k):
        real_commit(self, *a, **k)
        if len(self.manifest["done"]) == 1:
            raise KeyboardInterrupt("simulated crash after one shard")

    monkeypatch.setattr(OutputDir, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        run_scoring(_job(data, tiny, tmp_path / "o"), log=lambda s: None)
    monkeypatch.undo()
    s = run_scoring(_job(data, tiny, tmp_path / "o"), log=lambda s: None)
    assert s["shards_resumed"] == 1 and s["rows_this_run"] == 6
    assert scored_bytes(tmp_path / "o" / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")


def test_cli_equals_engine_and_prints_the_summary(reference, data, tiny, tmp_path, capsys, scored_bytes):
    args = ["score", data, "--model", tiny, "-o", str(tmp_path / "cli"), "--scorers", "visual_entropy",
            "--shard-size", "4", "--batch-size", "3", "--device", "cpu", "--num-workers", "0", "--no-progress"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "visual_entropy: count=10, mean=" in err and "q25=" in err
    assert scored_bytes(tmp_path / "cli" / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")
    # the options: another feature kind writes other values (and is another job)
    assert cli.main(args[:5] + [str(tmp_path / "vit")] + args[6:] + ["--visual-entropy-features", "vit"]) == 0
    vit = pq.read_table(tmp_path / "vit" / "scored.parquet").column(VISUAL_ENTROPY).to_pylist()
    ref = pq.read_table(reference[0] / "scored.parquet").column(VISUAL_ENTROPY).to_pylist()
    assert len(vit) == 10 and vit != ref
    assert Path(tmp_path / "vit" / "summary.json").exists()
