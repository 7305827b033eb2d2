"""Two-backend scoring jobs: a generation backend that runs no forward passes (vLLM's role) plus the transformers
forward model of the same checkpoint for the scorers that need one (cmab, ace, visual_entropy).

vLLM needs a GPU, so :class:`GenerationOnly` plays its part here: the tiny model's transformers backend behind vLLM's
interface (prompts as chat-template text without ids, generation from text + images with per-request seeds, the
prompt ids it conditioned on reported with each result, no ``forward`` / ``vision_features``). It samples exactly what
the plain transformers backend samples, so a two-backend job must write the values of the plain job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from verl_difficulty import cli
from verl_difficulty.data.rows import ExecutionFault, RowFailure, prepare_row
from verl_difficulty.models.generation import GenRequest, Prompt
from verl_difficulty.schema import CMAB_RATIO, SCORE_PROVENANCE
from verl_difficulty.scoring import ScoreJob, run_scoring
from verl_difficulty.scoring.backends import SampledResult, TransformersBackend, check_needs
from verl_difficulty.scoring.context import ScoringContext
from verl_difficulty.scoring.job import SHARED_GPU_MEMORY_UTILIZATION, describe_job, fingerprint
from verl_difficulty.scoring.registry import make_scorer
from verl_difficulty.scoring.scorers.cmab import CmabScorer
from verl_difficulty.scoring.scripted import ScriptedVerifier

HASH_VERIFIER = {"name": "scripted", "mode": "hash", "rate": 0.5}
SCORERS = {"cmab": {"max_tokens": 8}, "ace": {"max_tokens": 8}, "visual_entropy": {}}
GEN_ONLY = f"{__name__}:GenerationOnly"
LAUNCH = ("import importlib.util, sys; "
          f"spec = importlib.util.spec_from_file_location({__name__!r}, {os.path.abspath(__file__)!r}); "
          "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod); "
          "from verl_difficulty import cli; sys.exit(cli.main(sys.argv[1:]))")
"""``python -c LAUNCH score ...``: the command line in a process where this module is importable under its pytest
name (a ``tests`` package of another distribution may shadow this checkout's), so --backend GEN_ONLY resolves."""


class GenerationOnly:
    """The transformers backend behind vLLM's interface (see the module docstring); every generation is recorded in
    :attr:`generated` as ``(request tag, reported prompt ids, response ids)`` (in-process jobs)."""

    name = "generation_only"
    generated: list = []

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "auto", attn_implementation: str = "eager",
                 sleep_s: float = 0.0, inner=None, **settings):
        self.inner = inner or TransformersBackend(model_path, device=device, dtype=dtype,
                                                  attn_implementation=attn_implementation,
                                                  num_threads=settings.get("num_threads"))
        self.model_path = str(model_path)
        self.tokenizer = self.inner.tokenizer
        self.sleep_s = float(sleep_s)

    def prepare(self, messages, images):
        p = self.inner.prepare(messages, images)
        return Prompt(text=p.text, num_images=p.num_images)  # like vLLM: the prompt travels as text

    def engine_prompt_ids(self, req) -> list:
        """The ids this engine conditions on: its processor over the request's text and images."""
        kw = {"images": list(req.images)} if req.images else {}
        return self.inner.processor(text=[req.text], return_tensors="pt", **kw)["input_ids"][0].tolist()

    def generate(self, requests, sampling):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        ids = [self.engine_prompt_ids(r) for r in requests]
        out = self.inner.generate([GenRequest(prompt_ids=i, images=r.images, seed=r.seed, text=r.text, tag=r.tag)
                                   for i, r in zip(ids, requests)], sampling)
        res = [SampledResult(token_ids=list(g.token_ids), log_probs=list(g.log_probs), finish_reason=g.finish_reason,
                             text=g.text, prompt_ids=i) for g, i in zip(out, ids)]
        GenerationOnly.generated.extend((dict(r.tag), list(g.prompt_ids), list(g.token_ids))
                                        for r, g in zip(requests, res))
        return res

    def describe(self) -> dict:
        return {"backend": self.name, "model_path": self.model_path}


class ShiftedIds(GenerationOnly):
    """Reports one extra prompt token for one row (as an engine whose processor expands an image differently)."""

    shifted_row = -1

    def engine_prompt_ids(self, req) -> list:
        ids = super().engine_prompt_ids(req)
        return ids + [ids[-1]] if req.tag.get("row") == self.shifted_row else ids


class OtherTemplate(GenerationOnly):
    """Reports no prompt ids and renders one row's chat template differently (only the text can be compared); the row
    is the one whose image list is :attr:`odd_images`."""

    odd_images = None

    def prepare(self, messages, images):
        p = super().prepare(messages, images)
        return Prompt(text=p.text + " " if images is self.odd_images else p.text, num_images=p.num_images)

    def generate(self, requests, sampling):
        return [SampledResult(token_ids=g.token_ids, text=g.text, finish_reason=g.finish_reason)
                for g in super().generate(requests, sampling)]


class PickyForward:
    """A forward model (the shared transformers backend) whose processor refuses one row's images."""

    name = "transformers"

    def __init__(self, inner, bad_images):
        self.inner, self.bad_images = inner, bad_images

    def prepare(self, messages, images):
        if images is self.bad_images:
            raise ValueError("image too small for this processor")
        return self.inner.prepare(messages, images)

    def forward(self, requests, *a, **k):
        return self.inner.forward(requests, *a, **k)


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from verl_difficulty.models.tiny import build_tiny_model_dir

    return build_tiny_model_dir(str(tmp_path_factory.mktemp("tiny") / "m"))


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
    """The plain transformers job (one backend samples and runs the forward passes)."""
    out = tmp_path_factory.mktemp("ref")
    return out, run_scoring(_job(data, tiny, out), log=lambda s: None)


@pytest.fixture
def spy(monkeypatch):
    """Counts transformers models built and records the requests of every transformers forward pass."""
    seen = {"built": 0, "forward": [], "vision": 0}
    init, fwd, vis = TransformersBackend.__init__, TransformersBackend.forward, TransformersBackend.vision_features

    def counted_init(self, *a, **k):
        seen["built"] += 1
        init(self, *a, **k)

    def recorded_forward(self, requests, *a, **k):
        seen["forward"].extend((dict(r.tag), list(r.prompt_ids), list(r.response_ids)) for r in requests)
        return fwd(self, requests, *a, **k)

    def counted_vision(self, requests, *a, **k):
        seen["vision"] += len(requests)
        return vis(self, requests, *a, **k)

    monkeypatch.setattr(TransformersBackend, "__init__", counted_init)
    monkeypatch.setattr(TransformersBackend, "forward", recorded_forward)
    monkeypatch.setattr(TransformersBackend, "vision_features", counted_vision)
    GenerationOnly.generated = []
    return seen


# ----------------------------------------------------------------------------------------------------------------
# The job: what it needs, its identity
# ----------------------------------------------------------------------------------------------------------------
def test_forward_spec_and_identity(tiny, tmp_path):
    files = [str(tmp_path / "x.parquet")]
    vllm = _job(files[0], tiny, tmp_path / "o", backend="vllm", backend_kwargs={"dtype": "bfloat16"})
    spec = vllm.forward_spec()
    assert spec == {"name": "transformers", "model_path": tiny, "device": "auto", "dtype": "bfloat16",
                    "attn_implementation": "eager"}
    assert vllm.backend_spec()["gpu_memory_utilization"] == SHARED_GPU_MEMORY_UTILIZATION
    entropy_only = _job(files[0], tiny, tmp_path / "o", backend="vllm", scorers={"visual_entropy": {}},
                        backend_kwargs={"dtype": "half"}, forward_device="cpu")
    assert entropy_only.forward_spec()["attn_implementation"] == "sdpa"  # eager only where attention is read
    assert entropy_only.forward_spec()["dtype"] == "float16"
    assert "gpu_memory_utilization" not in entropy_only.backend_spec()  # the forward model is not on the GPU
    assert _job(files[0], tiny, tmp_path / "o", backend="vllm", scorers={"passk": {}}).forward_spec() is None
    assert _job(files[0], tiny, tmp_path / "o").forward_spec() is None  # transformers runs its own passes
    assert _job(files[0], tiny, tmp_path / "o", backend=GEN_ONLY).forward_spec()["device"] == "cpu"
    # the forward settings are part of the identity of a two-backend job, and only of such a job
    scorers = [make_scorer(n, p) for n, p in SCORERS.items()]
    plain = describe_job(_job(files[0], tiny, tmp_path / "o"), [], scorers)
    assert "forward" not in plain
    two = describe_job(vllm, [], scorers)
    assert two["forward"]["batch_size"] == 4 and two["forward"]["dtype"] == "bfloat16"
    other = _job(files[0], tiny, tmp_path / "o", backend="vllm", backend_kwargs={"dtype": "bfloat16"},
                 forward_dtype="float32")
    assert fingerprint(describe_job(other, [], scorers)) != fingerprint(two)
    assert _job(files[0], tiny, tmp_path / "o", backend="vllm", batch_size=None).resolved_forward_batch_size() == 16
    # what the driver checks before any work
    check_needs("vllm", scorers, forward_model=tiny)
    with pytest.raises(ValueError, match="'cmab' needs a teacher-forced forward pass, which the vllm backend cannot "
                                         "run, and its transformers forward model cannot be loaded: --model /nope"):
        check_needs("vllm", scorers, forward_model="/nope")
    with pytest.raises(ValueError, match="'cmab' needs a teacher-forced forward pass.*vllm"):
        check_needs("vllm", scorers)


def test_bad_forward_settings_name_the_flag(data, tiny, tmp_path, capsys):
    args = ["score", data, "--model", tiny, "-o", str(tmp_path / "o"), "--backend", "vllm", "--scorers", "cmab"]
    assert cli.main(args + ["--forward-device", "gpu0"]) == 2
    assert "--forward-device: 'gpu0' is not auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(args + ["--forward-dtype", "int8"])
    assert "--forward-dtype" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------
# The context: routing, prompt checks, load failures
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tiny):
    return TransformersBackend(tiny, device="cpu", attn_implementation="eager", num_threads=1)


@pytest.fixture(scope="module")
def rows():
    from verl_difficulty.data.synthetic import generate_rows

    return [prepare_row(r, i) for i, r in enumerate(generate_rows(4, seed=3))]


def test_a_row_whose_prompt_differs_fails_alone(tiny, shared, rows):
    gen = ShiftedIds(tiny, inner=shared)
    gen.shifted_row = rows[1].row_id
    loads = []

    def load():
        loads.append(1)
        return PickyForward(shared, rows[3].images)

    ctx = ScoringContext(gen, ScriptedVerifier(mode="hash"), seed=0, batch_size=4, forward_model=load)
    ctx.scorer = "cmab"
    res = CmabScorer(max_tokens=4).score(rows, ctx)
    assert isinstance(res[1], RowFailure)
    assert (f"cmab: forward pass failed: the forward model's prompt token ids of row {rows[1].row_id} differ from "
            "those the generation_only backend sampled from") in str(res[1])
    assert "first difference at position" in str(res[1])
    assert isinstance(res[3], RowFailure)
    assert (f"cmab: forward pass failed: the forward model could not build the prompt of row {rows[3].row_id}: "
            "ValueError: image too small") in str(res[3])
    assert all(isinstance(res[i], dict) for i in (0, 2))
    assert loads == [1] and ctx.forwards == 2  # loaded once; the two failed rows never ran


def test_without_reported_ids_the_template_text_is_compared(tiny, shared, rows):
    gen = OtherTemplate(tiny, inner=shared)
    gen.odd_images = rows[2].images
    ctx = ScoringContext(gen, ScriptedVerifier(mode="hash"), seed=0, batch_size=4, forward_model=lambda: shared)
    ctx.scorer = "ace"
    res = make_scorer("ace", {"max_tokens": 4}).score(rows, ctx)
    assert isinstance(res[2], RowFailure) and "chat-template text of row" in str(res[2])
    assert all(isinstance(res[i], dict) for i in (0, 1, 3))


def test_a_forward_model_that_does_not_load_is_an_execution_fault(tiny, shared, rows):
    def broken():
        raise OSError("disk read error")

    ctx = ScoringContext(GenerationOnly(tiny, inner=shared), ScriptedVerifier(), forward_model=broken)
    ctx.scorer = "visual_entropy"
    with pytest.raises(ExecutionFault, match="'visual_entropy': the transformers forward model failed to load: "
                                             "OSError: disk read error"):
        make_scorer("visual_entropy").score(rows, ctx)
    ctx = ScoringContext(GenerationOnly(tiny, inner=shared), ScriptedVerifier())  # no forward model at all
    ctx.scorer = "visual_entropy"
    with pytest.raises(RuntimeError, match="needs a forward pass of the vision tower, which the generation_only "
                                           "backend cannot run"):
        make_scorer("visual_entropy").score(rows, ctx)


# ----------------------------------------------------------------------------------------------------------------
# The engine and the command line
# ----------------------------------------------------------------------------------------------------------------
def test_two_backend_job_equals_the_transformers_job(reference, data, tiny, tmp_path, spy, scored_bytes):
    out = tmp_path / "two"
    s = run_scoring(_job(data, tiny, out, backend=GEN_ONLY), log=lambda s: None)
    assert s["rows_scored"] == 8 and s["rows_bad"] == 0
    assert scored_bytes(out / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")
    assert spy["built"] == 2  # the generation backend's model and the forward model, once per worker
    assert spy["vision"] == 8  # visual_entropy ran on the forward model
    # the forward passes read exactly the responses the generation backend returned, after the same prompt ids
    sampled = {(t["scorer"], t["row"]): (p, r) for t, p, r in GenerationOnly.generated}
    forwarded = {(t["scorer"], t["row"]): (p, r) for t, p, r in spy["forward"]}
    assert len(forwarded) == len(spy["forward"]) == 16 and {k[0] for k in forwarded} == {"cmab", "ace"}
    assert forwarded == sampled
    # provenance: which backend sampled, which ran the forward pass
    rows = pq.read_table(out / "scored.parquet").to_pylist()
    prov = json.loads(rows[0][SCORE_PROVENANCE])
    for name in ("cmab", "ace"):
        assert prov[name]["generation_backend"] == GEN_ONLY and prov[name]["forward_backend"] == "transformers"
        assert prov[name]["forward_model"] == {"name": "transformers", "model_path": os.path.abspath(tiny),
                                               "device": "cpu", "dtype": "auto", "attn_implementation": "eager",
                                               "batch_size": 4}
    assert "generation_backend" not in prov["visual_entropy"]
    assert prov["visual_entropy"]["forward_backend"] == "transformers"
    ref_prov = json.loads(pq.read_table(reference[0] / "scored.parquet").column(SCORE_PROVENANCE)[0].as_py())
    assert ref_prov["cmab"]["generation_backend"] == ref_prov["cmab"]["forward_backend"] == "transformers"
    assert "forward_model" not in ref_prov["cmab"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["job"]["forward"]["attn_implementation"] == "eager"
    assert "forward" not in json.loads((reference[0] / "manifest.json").read_text())["job"]


def test_generation_scorers_never_load_the_forward_model(data, tiny, tmp_path, spy):
    s = run_scoring(_job(data, tiny, tmp_path / "gen", backend=GEN_ONLY, scorers={"passk": {"k": 2, "max_tokens": 4}},
                         limit=4), log=lambda s: None)
    assert s["rows_scored"] == 4
    assert spy["built"] == 1 and spy["forward"] == [] and spy["vision"] == 0
    assert len(GenerationOnly.generated) == 8
    prov = json.loads(pq.read_table(tmp_path / "gen" / "scored.parquet").column(SCORE_PROVENANCE)[0].as_py())
    assert prov["passk"]["generation_backend"] == GEN_ONLY and "forward_backend" not in prov["passk"]
    assert "forward" not in json.loads((tmp_path / "gen" / "manifest.json").read_text())["job"]


def test_injected_generation_backend_object(reference, data, tiny, shared, tmp_path, spy, scored_bytes):
    out = tmp_path / "obj"
    s = run_scoring(_job(data, tiny, out, scorers={"cmab": {"max_tokens": 8}}, limit=3),
                    backend=GenerationOnly(tiny, inner=shared), log=lambda s: None)
    assert s["rows_scored"] == 3 and spy["built"] == 1  # the forward model; the injected backend was built before
    ref = pq.read_table(reference[0] / "scored.parquet").column(CMAB_RATIO).to_pylist()[:3]
    assert pq.read_table(out / "scored.parquet").column(CMAB_RATIO).to_pylist() == ref
    prov = json.loads(pq.read_table(out / "scored.parquet").column(SCORE_PROVENANCE)[0].as_py())["cmab"]
    assert prov["generation_backend"] == "generation_only" and prov["forward_backend"] == "transformers"


def _cli(data, tiny, out, *extra, sleep_s=0.0):
    return ["score", data, "--model", tiny, "-o", str(out), "--scorers", "cmab,ace,visual_entropy",
            "--cmab-max-tokens", "8", "--ace-max-tokens", "8", "--shard-size", "3", "--batch-size", "4",
            "--backend", GEN_ONLY, "--backend-kwargs", json.dumps({"device": "cpu", "sleep_s": sleep_s}),
            "--num-workers", "0", "--no-progress", "--verifier", json.dumps(HASH_VERIFIER), *extra]


def test_cli_killed_mid_job_resumes_exactly(reference, data, tiny, tmp_path, scored_bytes, capsys):
    out = tmp_path / "killed"
    manifest = out / "manifest.json"
    cmd = [sys.executable, "-c", LAUNCH, *_cli(data, tiny, out, sleep_s=0.4)]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=log)
    t0 = time.time()
    try:
        while time.time() - t0 < 300 and proc.poll() is None:
            try:
                if json.loads(manifest.read_text())["done"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, open(tmp_path / "first.log").read()[-3000:]
    done = len(json.loads(manifest.read_text())["done"])
    assert 0 < done < 3 and not (out / "scored.parquet").exists()
    # the same command resumes (here in-process: the same module:Class, the same identity)
    assert cli.main(_cli(data, tiny, out, sleep_s=0.4)) == 0
    assert f"{done} resumed" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["shards_resumed"] == done
    assert scored_bytes(out / "scored.parquet") == scored_bytes(reference[0] / "scored.parquet")
    # the forward settings are part of the job's identity
    assert cli.main(_cli(data, tiny, out, "--forward-dtype", "bfloat16", sleep_s=0.4)) == 2
    assert "settings differ in: forward" in capsys.readouterr().err
