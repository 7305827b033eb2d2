"""Model backends of the offline scorers behind one interface, :class:`~.context.GenerationBackend`.

* :class:`TransformersBackend` (CPU or GPU): the plugin's batched, left-padded transformers generation
  (:class:`verl_difficulty.models.generation.HFGenerator`), images through the model's processor, one seeded
  ``torch.Generator`` per request (a row's sample does not depend on the other rows of its batch).
  It also runs teacher-forced forward passes with per-layer hooks (``ctx.forward``,
  :class:`verl_difficulty.models.forward.HFForward`); attention weights need ``attn_implementation="eager"`` (the
  engine asks for it when a scorer reads attention), and runs the vision tower alone (``ctx.vision_features``,
  :class:`verl_difficulty.models.vision.HFVision`: image features without the language model).
* :class:`VLLMBackend` (GPU, optional extra ``verl-difficulty[gpu]``): ``vllm.LLM.generate`` with the chat-template
  text and ``multi_modal_data`` images, one ``SamplingParams(seed=...)`` per request; each result also carries the
  prompt token ids vLLM conditioned on (:class:`SampledResult`). Import-guarded: importing this module never imports
  vLLM; constructing the backend without vLLM raises an ``ImportError`` that says what to install. It runs no
  forward passes: see below.

Two-backend jobs. A generation backend that cannot run teacher-forced forward passes or the vision tower (vLLM, a
``module:Class`` backend without ``forward`` / ``vision_features``) gets, when a scorer of the job needs them, a
*forward model*: a :class:`TransformersBackend` of the SAME checkpoint, described by
:meth:`verl_difficulty.scoring.job.ScoreJob.forward_spec` and built by :class:`LazyForwardModel` on its first forward
pass (a job whose scorers only generate never loads it). The scoring context sends ``generate`` to the generation
backend and ``forward`` / ``vision_features`` to the forward model (:mod:`verl_difficulty.scoring.context`).

Both apply the model's own chat template to the structured messages built by
:mod:`verl_difficulty.data.rows` (``{"type": "image"}`` parts where the ``<image>`` placeholders were).

:func:`make_backend` builds a backend from a JSON-able spec (what the engine sends to each Ray worker):
``{"name": "transformers" | "vllm" | "module.path:ClassName", "model_path": ..., **kwargs}``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from verl_difficulty.models.generation import GenRequest, GenResult, Prompt, SamplingConfig
from verl_difficulty.scoring.scorer import FORWARD, GENERATE

BACKENDS = ("transformers", "vllm")
CAPABILITIES = {"transformers": frozenset({GENERATE, FORWARD}), "vllm": frozenset({GENERATE})}
"""What each built-in backend can do for a scorer (other backends: generation, and forward passes if they have a
``forward`` method)."""


def _backend_class(name: str) -> Any:
    """The class named by a ``module:Class`` backend, or None when it cannot be imported (preflight names why)."""
    module, _, cls = name.partition(":")
    try:
        return getattr(importlib.import_module(module), cls, None)
    except Exception:  # noqa: BLE001 - reported by the preflight check of --backend
        return None


def _runs(backend: Any, method: str) -> Optional[bool]:
    """Whether ``backend`` (a name, a class or an object) has ``method``; None when unknown (unimportable class)."""
    if isinstance(backend, str):
        if backend in CAPABILITIES:
            return FORWARD in CAPABILITIES[backend]
        backend = _backend_class(backend) if ":" in backend else None
        if backend is None:
            return None
    return callable(getattr(backend, method, None))


def needs_forward_model(backend: Any, scorers: Sequence[Any]) -> bool:
    """Whether a job needs a separate transformers forward model: a scorer needs forward passes (``FORWARD`` in its
    ``needs``) and the generation backend (a name, ``module:Class``, a class or an object) lacks ``forward`` or
    ``vision_features``. False when the backend class cannot be imported (preflight reports that)."""
    if not any(FORWARD in s.needs for s in scorers):
        return False
    return any(_runs(backend, m) is False for m in ("forward", "vision_features"))


def forward_model_problem(model_path: Optional[str]) -> Optional[str]:
    """Why the forward model cannot be loaded from ``model_path`` (None: it can be tried)."""
    if not model_path:
        return "no --model was given"
    if not os.path.isdir(str(model_path)):
        return f"--model {model_path} is not a directory"
    if not os.path.isfile(os.path.join(str(model_path), "config.json")):
        return f"--model {model_path} has no config.json"
    return None


def check_needs(backend: Any, scorers: Sequence[Any], forward_model: Optional[str] = None) -> None:
    """Raise ``ValueError`` naming the scorer if ``backend`` (a name, ``module:Class`` or an object) cannot do what a
    scorer needs. ``forward_model``: the checkpoint of the transformers forward model that runs the forward passes a
    generation backend cannot (None: no forward model; the directory is checked here)."""
    label = backend if isinstance(backend, str) else getattr(backend, "name", type(backend).__name__)
    runs = _runs(backend, "forward")
    if runs is None:
        return  # a module:Class that does not import: preflight names it
    can = frozenset({GENERATE}) | (frozenset({FORWARD}) if runs else frozenset())
    for s in scorers:
        missing = sorted(set(s.needs) - can)
        if not missing:
            continue
        what = "a teacher-forced forward pass" if FORWARD in missing else " and ".join(missing)
        if missing == [FORWARD] and forward_model is not None:
            problem = forward_model_problem(forward_model)
            if problem is None:
                continue
            raise ValueError(f"scorer {s.name!r} needs {what}, which the {label} backend cannot run, and its "
                             f"transformers forward model cannot be loaded: {problem}; give the local checkpoint "
                             "directory, or use --backend transformers")
        raise ValueError(f"scorer {s.name!r} needs {what}, which the {label} backend cannot run; use "
                         "--backend transformers")


@dataclass
class SampledResult(GenResult):
    """A :class:`GenResult` that also says which prompt token ids the engine conditioned on (image placeholders
    expanded as the engine's own processor expanded them). The scoring context compares them with the forward model's
    prompt before it teacher-forces the response."""

    prompt_ids: Optional[list[int]] = None


def _load_processor(model_path: str):
    """``(tokenizer, processor or None)`` of a checkpoint (processor only when it has an image processor)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    processor = None
    try:
        processor = transformers.AutoProcessor.from_pretrained(model_path)
    except Exception:  # noqa: BLE001 - text-only checkpoints have no processor
        processor = None
    if processor is not None and getattr(processor, "image_processor", None) is None:
        processor = None
    if processor is not None:
        tokenizer = getattr(processor, "tokenizer", tokenizer)
    return tokenizer, processor


def _chat_text(tokenizer, processor, messages: list[dict]) -> str:
    templ = processor if processor is not None else tokenizer
    return templ.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class TransformersBackend:
    """Batched transformers generation (text and images), CPU or GPU.

    Args:
        model_path: a local checkpoint directory (``from_pretrained``).
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2``.
        num_threads: torch intra-op threads (CPU); None leaves torch's setting. The engine sets it to the worker's
            CPUs so every worker computes with the same thread count.
    """

    name = "transformers"

    def __init__(self, model_path: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa",
                 num_threads: Optional[int] = None):
        import torch

        from verl_difficulty.models.forward import HFForward
        from verl_difficulty.models.generation import HFGenerator, load_generation_model
        from verl_difficulty.models.vision import HFVision

        if num_threads:
            torch.set_num_threads(int(num_threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        self.model_path = str(model_path)
        self.device = str(device)
        self.dtype = str(dtype)
        self.attn_implementation = attn_implementation
        self.tokenizer, self.processor = _load_processor(self.model_path)
        model = load_generation_model(self.model_path, dtype=getattr(torch, self.dtype),
                                      attn_implementation=attn_implementation)
        model.to(self.device)
        self.generator = HFGenerator(model, self.tokenizer, self.processor)
        self.forwarder = HFForward(model, self.tokenizer, self.processor)
        self.vision = HFVision(model, self.tokenizer, self.processor)

    def prepare(self, messages: list[dict], images: Optional[list[Any]]) -> Prompt:
        text = _chat_text(self.tokenizer, self.processor, messages)
        if images:
            if self.processor is None:
                raise ValueError(f"{self.model_path} has no image processor but the row has images")
            ids = self.processor(text=[text], images=list(images), return_tensors="pt")["input_ids"][0].tolist()
        elif self.processor is not None:
            ids = self.processor(text=[text], return_tensors="pt")["input_ids"][0].tolist()
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Prompt(text=text, prompt_ids=list(ids), num_images=len(images or []))

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        greedy = sampling.temperature <= 0
        reqs = [GenRequest(prompt_ids=r.prompt_ids, images=r.images, seed=None if greedy else int(r.seed))
                for r in requests]
        results = self.generator.generate(reqs, sampling)
        for res in results:
            res.text = self.tokenizer.decode(res.token_ids, skip_special_tokens=True)
        return results

    def forward(self, requests: Sequence, on_layer, attentions: bool = False, hidden_states: bool = False) -> list:
        """Teacher-forced forward passes with per-layer hooks (:meth:`verl_difficulty.models.forward.HFForward.forward`)."""
        return self.forwarder.forward(requests, on_layer, attentions=attentions, hidden_states=hidden_states)

    def vision_features(self, requests: Sequence, which: str = "merged", reduce=None) -> list:
        """Vision-tower features of the requests' images, no language model
        (:meth:`verl_difficulty.models.vision.HFVision.features`)."""
        return self.vision.features(requests, which, reduce)

    def describe(self) -> dict:
        return {"backend": self.name, "model_path": self.model_path, "device": self.device, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation}


class VLLMBackend:
    """vLLM offline engine (GPU). Per-request seeds; images as ``multi_modal_data``.

    Args:
        model_path: checkpoint directory.
        dtype: vLLM dtype (``auto``, ``bfloat16`` ...).
        gpu_memory_utilization, max_model_len, tensor_parallel_size, enforce_eager: passed to ``vllm.LLM``.
        max_images_per_prompt: ``limit_mm_per_prompt={"image": N}``.
        llm_kwargs: any other ``vllm.LLM`` keyword.

    vLLM's per-request seeds make each request's sample reproducible for the same batch; vLLM does not promise
    bit-identical logits across batch compositions (kernels pick tile sizes by batch shape), so two runs with
    different shard layouts can differ in rare tokens. The engine keeps the shard batches fixed to limit this.
    """

    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: Optional[int] = None, tensor_parallel_size: int = 1, enforce_eager: bool = False,
                 max_images_per_prompt: int = 4, num_threads: Optional[int] = None, device: str = "cuda",
                 **llm_kwargs):
        try:
            import vllm
        except ImportError as e:  # pragma: no cover - exercised where vLLM is missing
            raise ImportError(
                "the vllm backend needs vLLM (GPU): pip install 'verl-difficulty[gpu]'; or use --backend transformers"
            ) from e
        self.model_path = str(model_path)
        self.dtype = dtype
        self.tokenizer, self.processor = _load_processor(self.model_path)
        kwargs: dict[str, Any] = dict(model=self.model_path, dtype=dtype, seed=0,
                                      gpu_memory_utilization=gpu_memory_utilization,
                                      tensor_parallel_size=int(tensor_parallel_size), enforce_eager=enforce_eager)
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        if self.processor is not None:
            kwargs["limit_mm_per_prompt"] = {"image": int(max_images_per_prompt)}
        kwargs.update(llm_kwargs)
        self.llm_kwargs = {k: v for k, v in kwargs.items() if k != "model"}
        self.vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    def prepare(self, messages: list[dict], images: Optional[list[Any]]) -> Prompt:
        return Prompt(text=_chat_text(self.tokenizer, self.processor, messages), num_images=len(images or []))

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        prompts = []
        params = []
        for r in requests:
            p: dict[str, Any] = {"prompt": r.text}
            if r.images:
                p["multi_modal_data"] = {"image": list(r.images)}
            prompts.append(p)
            params.append(self.vllm.SamplingParams(
                n=1, temperature=max(0.0, float(sampling.temperature)), top_p=float(sampling.top_p),
                top_k=int(sampling.top_k) if sampling.top_k and sampling.top_k > 0 else -1,
                max_tokens=int(sampling.max_new_tokens), seed=int(r.seed), skip_special_tokens=True,
            ))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        res = []
        for o in outs:
            c = o.outputs[0]
            ids = getattr(o, "prompt_token_ids", None)
            res.append(SampledResult(token_ids=list(c.token_ids), finish_reason=str(c.finish_reason), text=c.text,
                                     prompt_ids=list(ids) if ids is not None else None))
        return res

    def describe(self) -> dict:
        return {"backend": self.name, "model_path": self.model_path, "vllm_version": self.vllm.__version__,
                **{k: v for k, v in self.llm_kwargs.items() if isinstance(v, (str, int, float, bool, dict))}}


class LazyForwardModel:
    """The transformers forward model of a two-backend job (see the module docstring), built from ``spec``
    (:func:`make_backend`) on the first call and kept; a failed build is tried again by the next call.

    Calling it returns the backend; :attr:`loaded` says whether it was built."""

    def __init__(self, spec: dict):
        self.spec = dict(spec)
        self.backend: Any = None

    @property
    def loaded(self) -> bool:
        return self.backend is not None

    def __call__(self) -> Any:
        if self.backend is None:
            self.backend = make_backend(self.spec)
        return self.backend

    def describe(self) -> dict:
        """The loaded backend's description, or the spec (``loaded: false``) before it is built."""
        if self.backend is not None:
            return {**self.backend.describe(), "loaded": True}
        return {**{k: v for k, v in self.spec.items() if k != "name"}, "backend": self.spec.get("name"),
                "loaded": False}


def vllm_available() -> bool:
    """True if vLLM can be imported (without importing it when it is already known to be missing)."""
    return importlib.util.find_spec("vllm") is not None


def make_backend(spec: dict):
    """Build a backend from ``{"name": ..., "model_path": ..., **kwargs}``.

    ``name``: ``transformers``, ``vllm``, or ``package.module:ClassName`` of any class with the
    :class:`~verl_difficulty.scoring.context.GenerationBackend` methods (constructed with the remaining keys).
    """
    spec = dict(spec)
    name = spec.pop("name")
    if name == "transformers":
        return TransformersBackend(**spec)
    if name == "vllm":
        return VLLMBackend(**spec)
    if ":" in name:
        module, _, cls = name.partition(":")
        return getattr(importlib.import_module(module), cls)(**spec)
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS} or 'module:Class'")
