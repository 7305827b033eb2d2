"""A scoring job's settings (:class:`ScoreJob`), its fingerprint and the provenance it stamps on every scored row.

The fingerprint is the SHA-256 of the job description: the inputs' identities, the shard and batch layout, the seed,
each scorer's name, version and parameters, the backend (settings that change values only) and the verifier, and, in
a two-backend job, the forward model (:meth:`ScoreJob.forward_spec`: its device, dtype, attention implementation and
batch size; a job that needs none has no such entry, so its fingerprint is as before). A rerun with the same
fingerprint resumes; another one is refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

from verl_difficulty.config import setting
from verl_difficulty.data.io import canonical_json
from verl_difficulty.data.rows import SYSTEM_PROMPT_MODES
from verl_difficulty.scoring.backends import BACKENDS, needs_forward_model
from verl_difficulty.scoring.scorer import FORWARD, GENERATE
from verl_difficulty.scoring.shards import input_identity

DEFAULT_BATCH_SIZE = {"transformers": 16, "vllm": 100_000}
"""Requests per generate call: transformers pads a batch; vLLM schedules a whole shard round itself."""
DTYPES = {"transformers": ("auto", "float32", "bfloat16", "float16"),
          "vllm": ("auto", "float32", "bfloat16", "float16", "half", "float")}
"""The ``--dtype`` values each built-in backend accepts."""
_RUNTIME_ONLY_BACKEND_KEYS = {"num_threads", "gpu_memory_utilization"}
"""Backend settings that do not change the values (left out of the fingerprint, so a resume may change them)."""
FORWARD_DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``--forward-dtype`` values (``auto``: follow ``--dtype``)."""
_TORCH_DTYPE = {"half": "float16", "float": "float32"}
"""vLLM dtype aliases as torch dtype names."""
MAX_FORWARD_BATCH = 16
"""Default cap of the forward model's batch (``--forward-batch-size``); a vLLM job's ``--batch-size`` is a whole
shard."""
SHARED_GPU_MEMORY_UTILIZATION = 0.5
"""The vLLM backend's ``gpu_memory_utilization`` when the job's forward model may share its GPU and the job does not
set it (vLLM's own default in this plugin, 0.85, leaves too little room for a 7B forward model on an 80 GB GPU)."""


@dataclass
class ScoreJob:
    """Everything a scoring job needs (the command line ``verl-difficulty score`` builds one; its help texts and
    defaults come from here)."""

    inputs: list = setting(help="verl parquet file(s) or director(ies) of *.parquet")
    output_dir: str = setting(help="output directory (created; holds scored.parquet)")
    model_path: str = setting(help="local checkpoint directory of the base model")
    scorers: dict = setting(help="scorer name -> parameters, run in this order")
    backend: str = setting("transformers",
                           help="transformers (CPU/GPU, batched generate), vllm (GPU, pip install "
                           "'verl-difficulty[gpu]') or package.module:ClassName of a backend class")
    backend_kwargs: dict = setting(default_factory=dict, help="extra backend arguments (device, dtype, ...)")
    verifier: dict = setting(default_factory=lambda: {"name": "reward", "reward": "r1v_acc"},
                             help="verifier spec (verl_difficulty.scoring.verifier.make_verifier)")
    seed: int = setting(0, help="job seed; every sample and mask derives from (seed, row id, scorer, ratio/arm, try)")
    shard_size: int = setting(128, ge=1, help="rows per committed shard")
    batch_size: Optional[int] = setting(None, ge=1, help="requests per generate call (default: transformers 16, "
                                        "vllm whole shard)")
    system_prompt: str = setting("keep", choices=SYSTEM_PROMPT_MODES,
                                 help="keep the rows' system message or drop it (P1's scoring used none)")
    limit: Optional[int] = setting(None, ge=0, help="score only the first N rows (in input order)")
    num_workers: Optional[int] = setting(None, ge=0, help="model replicas (default: one per GPU, else 1); 0 = in "
                                         "this process without Ray")
    cpus_per_worker: float = setting(1.0, gt=0, help="CPUs per worker (= torch threads, also with --num-workers 0)")
    gpus_per_worker: Optional[float] = setting(None, ge=0, help="GPUs per worker (default 1 if the cluster has GPUs "
                                               "and --device, or a forward model's --forward-device, is not cpu)")
    ray_address: Optional[str] = setting(None, help="existing cluster (auto, HOST:PORT); default: $RAY_ADDRESS or a "
                                         "local ray.init()")
    max_attempts: int = setting(3, ge=1, help="tries of a failing generate/forward batch and of a failing shard "
                                "(worker died, backend error, out of memory); a shard still failing is left "
                                "unfinished, the job exits non-zero and a rerun retries it")
    retry_backoff_s: float = setting(0.5, ge=0.0, help="seconds to wait before the first retry (doubled for each "
                                     "next one)")
    max_bad_fraction: float = setting(0.5, ge=0.0, le=1.0, help="stop the job when more than this share of a "
                                      "shard's rows are bad rows (1 = never stop for bad rows)")
    forward_device: str = setting("auto", help="two-backend jobs (a generation backend without forward passes, e.g. "
                                  "vllm, and a scorer that needs them): device of the transformers forward model of "
                                  "the same checkpoint, auto|cpu|cuda|cuda:N (N counts the worker's own GPUs, "
                                  "--gpus-per-worker; auto: the backend's device setting if any, else the worker's "
                                  "GPU if it has one, else CPU); ignored when the generation backend runs forward "
                                  "passes itself")
    forward_dtype: str = setting("auto", choices=FORWARD_DTYPES, help="two-backend jobs: dtype of the forward model "
                                 "(auto: --dtype when it is a torch dtype, else bf16 on GPU and fp32 on CPU)")
    forward_batch_size: Optional[int] = setting(None, ge=1, help="two-backend jobs: requests per forward pass of the "
                                                f"forward model (default: --batch-size, at most {MAX_FORWARD_BATCH})")
    progress: bool = setting(True, help="show a progress bar")
    overwrite: bool = setting(False, help="discard an existing output of a job with other settings (default: refuse; "
                              "same settings resume)")

    def resolved_batch_size(self) -> int:
        return int(self.batch_size or DEFAULT_BATCH_SIZE.get(self.backend, 16))

    def scorer_classes(self) -> dict[str, type]:
        """The registered class of each scorer of the job (``ValueError`` for an unknown name)."""
        from verl_difficulty.scoring.registry import get_scorer

        return {name: get_scorer(name) for name in self.scorers}

    def backend_spec(self, backend: Any = None) -> dict:
        """The backend spec (:func:`verl_difficulty.scoring.backends.make_backend`); a transformers model is loaded
        with eager attention when a scorer reads attention weights (or with ``sdpa_rows`` if the job says so: the
        forward passes of the attention scorers run that implementation either way, see
        :mod:`verl_difficulty.models.forward`; it also makes generation and the vision tower use SDPA). A vLLM backend
        whose forward model may share its GPU gets ``gpu_memory_utilization`` :data:`SHARED_GPU_MEMORY_UTILIZATION`
        unless the job sets it (``backend``: an injected backend object, see :meth:`forward_spec`)."""
        from verl_difficulty.models.forward import ROW_ATTENTION

        spec = {"name": self.backend, "model_path": self.model_path, **self.backend_kwargs}
        readers = sorted(n for n, c in self.scorer_classes().items() if c.needs_attention)
        if readers and self.backend == "transformers":
            if spec.setdefault("attn_implementation", "eager") not in ("eager", ROW_ATTENTION):
                raise ValueError(f"scorer(s) {readers} read attention weights, which need attn_implementation="
                                 f"'eager' or {ROW_ATTENTION!r}, not {spec['attn_implementation']!r}")
        forward = self.forward_spec(backend)
        if self.backend == "vllm" and forward is not None and forward["device"] != "cpu":
            spec.setdefault("gpu_memory_utilization", SHARED_GPU_MEMORY_UTILIZATION)
        return spec

    def forward_spec(self, backend: Any = None) -> Optional[dict]:
        """The spec of the transformers forward model of a two-backend job, or None when the job needs none (no
        scorer needs a forward pass, or the generation backend runs them and the vision tower itself).

        The same checkpoint (``model_path``) on ``forward_device`` in ``forward_dtype`` (``auto`` resolved as the
        flag help says), with ``attn_implementation="eager"`` only when a scorer reads attention weights (else
        SDPA). ``backend``: an injected backend object (decides instead of the job's backend name)."""
        classes = self.scorer_classes()
        if not needs_forward_model(backend if backend is not None else self.backend, list(classes.values())):
            return None
        device = self.forward_device
        if device == "auto":
            device = str(self.backend_kwargs.get("device", "auto"))
        dtype = self.forward_dtype
        if dtype == "auto":
            dtype = _TORCH_DTYPE.get(str(self.backend_kwargs.get("dtype", "auto")),
                                     str(self.backend_kwargs.get("dtype", "auto")))
            dtype = dtype if dtype in FORWARD_DTYPES else "auto"
        readers = any(c.needs_attention for c in classes.values())
        return {"name": "transformers", "model_path": self.model_path, "device": device, "dtype": dtype,
                "attn_implementation": "eager" if readers else "sdpa"}

    def resolved_forward_batch_size(self) -> int:
        return int(self.forward_batch_size or min(self.resolved_batch_size(), MAX_FORWARD_BATCH))

    def worker_config(self, backend: Any = None) -> dict:
        """What each worker needs (JSON-able; ``backend``: an injected backend object)."""
        return {"backend": self.backend_spec(backend), "verifier": dict(self.verifier),
                "scorers": [[n, dict(p or {})] for n, p in self.scorers.items()], "seed": int(self.seed),
                "batch_size": self.resolved_batch_size(), "system_prompt": self.system_prompt,
                "max_attempts": int(self.max_attempts), "retry_backoff_s": float(self.retry_backoff_s),
                "forward": self.forward_spec(backend), "forward_batch_size": self.resolved_forward_batch_size()}

    def check(self, where: str) -> None:
        from verl_difficulty.config import ConfigError

        if self.backend not in BACKENDS and ":" not in self.backend:
            raise ConfigError(f"{where}.backend: {self.backend!r} is not one of {list(BACKENDS)} or "
                              "'package.module:ClassName'")
        dtype = self.backend_kwargs.get("dtype", "auto")
        if self.backend in DTYPES and dtype not in DTYPES[self.backend]:
            raise ConfigError(f"{where}.dtype: {dtype!r} is not one of {list(DTYPES[self.backend])} for the "
                              f"{self.backend} backend")
        if not self.inputs:
            raise ConfigError(f"{where}.inputs: give at least one parquet file or directory")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.forward_device)):
            raise ConfigError(f"{where}.forward_device: {self.forward_device!r} is not auto, cpu, cuda or cuda:N")


def _local(desc: dict) -> dict:
    if desc.get("model_path") and os.path.exists(str(desc["model_path"])):
        desc["model_path"] = os.path.abspath(str(desc["model_path"]))  # a local dir; remote paths as given
    return desc


def describe_job(job: ScoreJob, files: list[str], scorers: list, backend_desc: Optional[dict] = None,
                 verifier_desc: Optional[dict] = None, backend: Any = None) -> dict:
    """The job description behind the fingerprint (``backend_desc`` / ``verifier_desc``: of injected objects;
    ``backend``: the injected backend object, which decides whether the job has a forward model)."""
    desc = _local(dict(backend_desc) if backend_desc else
                  {k: v for k, v in job.backend_spec(backend).items() if k not in _RUNTIME_ONLY_BACKEND_KEYS})
    out = {
        "inputs": [input_identity(f) for f in files],
        "limit": job.limit,
        "shard_size": int(job.shard_size),
        "batch_size": job.resolved_batch_size(),
        "seed": int(job.seed),
        "scorers": [{"name": s.name, "version": s.version, "params": s.params()} for s in scorers],
        "backend": desc,
        "verifier": verifier_desc or dict(job.verifier),
        "system_prompt": job.system_prompt,
    }
    forward = job.forward_spec(backend)
    if forward is not None:  # two-backend jobs only: the fingerprint of other jobs is unchanged
        out["forward"] = {**_local(forward), "batch_size": job.resolved_forward_batch_size()}
    return out


def fingerprint(desc: dict) -> str:
    """SHA-256 of a job description (:func:`describe_job`)."""
    return hashlib.sha256(canonical_json(desc).encode()).hexdigest()


def provenance(desc: dict, created: str, scorers: Optional[list] = None) -> dict:
    """Per scorer of the job: what produced its values (written, JSON, into every scored row).

    With the scorer objects (``scorers``), an entry also says which backend sampled its responses
    (``generation_backend``, scorers that generate) and which ran its forward passes (``forward_backend``, scorers
    that need them; in a two-backend job ``transformers`` with the forward model's settings in ``forward_model``)."""
    from verl_difficulty import __version__

    needs = {s.name: frozenset(s.needs) for s in scorers or []}
    backend = desc["backend"]
    name = backend.get("name") or backend.get("backend")
    forward = desc.get("forward")
    out: dict[str, Any] = {}
    for s in desc["scorers"]:
        entry = {
            "scorer": s["name"], "version": s["version"], "params": s["params"],
            "model_path": backend.get("model_path"), "backend": backend, "verifier": desc["verifier"],
            "seed": desc["seed"], "date": created, "system_prompt": desc["system_prompt"],
            "shard_size": desc["shard_size"], "batch_size": desc["batch_size"],
            "package": f"verl-difficulty {__version__}",
        }
        if GENERATE in needs.get(s["name"], ()):
            entry["generation_backend"] = name
        if FORWARD in needs.get(s["name"], ()):
            entry["forward_backend"] = forward["name"] if forward else name
            if forward:
                entry["forward_model"] = forward
        out[s["name"]] = entry
    return out
