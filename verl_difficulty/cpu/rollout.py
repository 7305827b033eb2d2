"""A verl rollout backend on transformers ``generate`` (``actor_rollout_ref.rollout.name=transformers``).

verl 0.9.1's only rollout backends are vLLM, SGLang and TRT-LLM (``verl/workers/rollout/replica.py:388-390``); none
runs on a CPU. This backend plugs into the same two registries verl uses for them:

* ``RolloutReplicaRegistry`` (``replica.py:344``): :class:`TransformersReplica` launches one
  :class:`TransformersServer` Ray actor per replica, which serves verl's token-in/token-out ``generate`` calls from the
  agent loop, text and images (Qwen2.5-VL ``pixel_values``/``image_grid_thw``), with log-probs.
* the rollout adapter registry (``verl/workers/rollout/base.py:86-90``, ``_ROLLOUT_REGISTRY``):
  :class:`TransformersServerAdapter` lives in the trainer worker and pushes the trainer's weights to the server after
  every update (verl's ``naive`` checkpoint engine path, ``engine_workers.py:728``).

It is for smoke tests, CI and the demo: correct, not fast. Requests are micro-batched (``max_num_seqs``) per
sampling configuration and generated with left padding.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Optional

import ray
import torch

from verl_difficulty.models.generation import GenRequest, HFGenerator, SamplingConfig, load_generation_model

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "transformers"
SERVER_PREFIX = "verl_difficulty_transformers_server_"


def _server_name(replica_rank: int, suffix: str = "") -> str:
    return f"{SERVER_PREFIX}{replica_rank}{suffix}"


class TransformersServer:
    """Ray actor serving verl's ``generate(prompt_ids, sampling_params, request_id, image_data, ...)`` contract."""

    def __init__(self, config, model_config, replica_rank: int = 0, max_batch_size: int = 16, num_threads: int = 0):
        from verl.utils import hf_processor, hf_tokenizer

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.config = config
        self.model_config = model_config
        self.replica_rank = replica_rank
        from verl.utils.fs import copy_to_local

        get = model_config.get if hasattr(model_config, "get") else lambda k, d=None: getattr(model_config, k, d)
        path = get("local_path", None) or copy_to_local(get("path"))
        trust_remote_code = bool(get("trust_remote_code", False))
        dtype = getattr(torch, str(config.dtype).replace("torch.", "")) if getattr(config, "dtype", None) else None
        # bf16 sampling on CPU is slow and differs from an fp32 actor: default to float32 unless asked.
        dtype = dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
        self.tokenizer = hf_tokenizer(path, trust_remote_code=trust_remote_code)
        self.processor = hf_processor(path, trust_remote_code=trust_remote_code)
        self.model = load_generation_model(path, dtype=dtype)
        # seeded sampling: a rerun of the same job draws the same rollouts (for a fixed request order)
        torch.manual_seed(int(getattr(config, "seed", 0) or 0) + int(replica_rank))
        self.generator = HFGenerator(self.model, self.tokenizer, self.processor)
        self.max_batch_size = max(1, int(max_batch_size))
        self.global_steps: int = 0
        self._queue: Optional[asyncio.Queue] = None
        self._worker: Optional[asyncio.Task] = None
        self._pending_weights: dict[str, torch.Tensor] = {}
        self._num_requests = 0

    # ------------------------------------------------------------------ verl server contract
    def get_server_address(self) -> tuple[str, int]:
        return _server_name(self.replica_rank), 0

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
        **kwargs: Any,
    ):
        from verl.workers.rollout.replica import TokenOutput

        if video_data is not None or audio_data is not None:
            raise NotImplementedError("the transformers rollout supports text and images only (no video/audio)")
        sampling_params = dict(sampling_params)
        budget = self.config.prompt_length + self.config.response_length - len(prompt_ids)
        max_tokens = sampling_params.pop("max_tokens", sampling_params.pop("max_new_tokens", None))
        max_tokens = min(self.config.response_length, budget) if max_tokens is None else max_tokens
        sampling = SamplingConfig(
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            top_k=int(sampling_params.get("top_k", -1) or -1),
            max_new_tokens=max(1, int(max_tokens)),
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
            ignore_eos=bool(sampling_params.get("ignore_eos", False)),
        )
        request = GenRequest(prompt_ids=list(prompt_ids), images=list(image_data) if image_data else None)
        result = await self._submit(request, sampling)
        self._num_requests += 1
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs if sampling_params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _submit(self, request: GenRequest, sampling: SamplingConfig):
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._batch_loop())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((request, sampling, fut))
        return await fut

    async def _batch_loop(self):
        while True:
            first = await self._queue.get()
            await asyncio.sleep(0.01)  # let concurrent requests of the same step arrive
            items = [first]
            while not self._queue.empty() and len(items) < 4 * self.max_batch_size:
                items.append(self._queue.get_nowait())
            groups: dict[tuple, list] = {}
            for item in items:
                groups.setdefault(item[1].key(), []).append(item)
            for group in groups.values():
                for start in range(0, len(group), self.max_batch_size):
                    chunk = group[start : start + self.max_batch_size]
                    try:
                        results = await asyncio.to_thread(
                            self.generator.generate, [c[0] for c in chunk], chunk[0][1]
                        )
                    except Exception as exc:  # report to every waiting caller, keep serving
                        for _, _, fut in chunk:
                            if not fut.done():
                                fut.set_exception(exc)
                        continue
                    for (_, _, fut), res in zip(chunk, results, strict=True):
                        if not fut.done():
                            fut.set_result(res)

    # ------------------------------------------------------------------ weights
    def load_weights(self, named_tensors: dict[str, torch.Tensor], last: bool, global_steps: Optional[int] = None) -> int:
        """Receive a bucket of weights; apply them all when ``last`` (names must match the model's own)."""
        self._pending_weights.update(named_tensors)
        if not last:
            return 0
        if global_steps is not None:
            self.global_steps = int(global_steps)
        state = self.model.state_dict()
        unknown = sorted(k for k in self._pending_weights if k not in state)
        if unknown:
            raise KeyError(
                f"transformers rollout: {len(unknown)} synced weight names do not match the rollout model "
                f"(first: {unknown[:5]}); model names look like {list(state)[:3]}"
            )
        with torch.no_grad():
            for name, tensor in self._pending_weights.items():
                state[name].copy_(tensor.to(dtype=state[name].dtype))
        n = len(self._pending_weights)
        self._pending_weights = {}
        return n

    # ------------------------------------------------------------------ lifecycle no-ops on CPU
    async def wake_up(self, tags: Optional[list[str]] = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def wait_for_requests_to_drain(self):
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False):
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    def num_requests(self) -> int:
        return self._num_requests


def _replica_base():
    from verl.workers.rollout.replica import RolloutReplica

    return RolloutReplica


def make_replica_class():
    RolloutReplica = _replica_base()

    class TransformersReplica(RolloutReplica):
        """One transformers server actor per replica (single node, tensor parallel 1)."""

        async def launch_servers(self):
            if self.world_size != 1:
                raise ValueError(
                    "the transformers rollout runs one process per replica: set "
                    "actor_rollout_ref.rollout.tensor_model_parallel_size=1 (and data/pipeline parallel 1); got "
                    f"world size {self.world_size}"
                )
            node_id = None
            if self.workers:
                node_id = await self.workers[0].__ray_call__.remote(
                    lambda self: ray.get_runtime_context().get_node_id()
                )
            options: dict[str, Any] = {
                "name": _server_name(self.replica_rank, self.name_suffix),
                "max_concurrency": self.max_concurrency,
                "num_cpus": 0,
            }
            if node_id is not None:
                options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                )
            engine_kwargs = dict((self.config.engine_kwargs or {}).get(ROLLOUT_NAME, {}) or {})
            server = ray.remote(TransformersServer).options(**options).remote(
                config=self.config,
                model_config=self.model_config,
                replica_rank=self.replica_rank,
                max_batch_size=int(engine_kwargs.get("max_batch_size", min(16, self.config.max_num_seqs))),
                num_threads=int(engine_kwargs.get("num_threads", 0)),
            )
            self.servers = [server]
            await server.get_server_address.remote()  # wait until the model is loaded
            self._server_handle = server
            self._server_address = _server_name(self.replica_rank, self.name_suffix)

    TransformersReplica.__module__ = __name__
    return TransformersReplica


_REPLICA_CLASS = None


def _load_replica():
    global _REPLICA_CLASS
    if _REPLICA_CLASS is None:
        _REPLICA_CLASS = make_replica_class()
    return _REPLICA_CLASS


def _adapter_base():
    from verl.workers.rollout.base import BaseRollout

    return BaseRollout


def _make_adapter_class():
    BaseRollout = _adapter_base()

    class TransformersServerAdapter(BaseRollout):
        """Trainer-side adapter: pushes the trainer's weights to this rank's transformers server."""

        def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs):
            super().__init__(config, model_config, device_mesh)
            rank = int(os.environ.get("RANK", "0"))
            world = (
                self.config.tensor_model_parallel_size
                * self.config.data_parallel_size
                * self.config.pipeline_model_parallel_size
            )
            self.replica_rank = rank // world if replica_rank == -1 else replica_rank
            self.rollout_rank = rank % world
            self.is_leader_rank = self.rollout_rank == 0
            self._server = None
            self.bucket_bytes = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20

        def _get_server(self):
            if self._server is None:
                self._server = ray.get_actor(_server_name(self.replica_rank))
            return self._server

        async def resume(self, tags: list[str]):
            return None

        async def release(self):
            return None

        async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
            from verl.workers.rollout.utils import ensure_async_iterator

            if wire_format != "named_tensors":
                raise NotImplementedError(f"transformers rollout: unsupported weight wire format {wire_format!r}")
            bucket: dict[str, torch.Tensor] = {}
            size = 0
            sent = 0
            async for name, tensor in ensure_async_iterator(weights):
                # every rank iterates (the generator may run collectives); only the leader sends
                if hasattr(tensor, "full_tensor"):
                    tensor = tensor.full_tensor()
                if not self.is_leader_rank:
                    continue
                t = tensor.detach().to("cpu").contiguous().clone()
                bucket[name] = t
                size += t.numel() * t.element_size()
                if size >= self.bucket_bytes:
                    await self._get_server().load_weights.remote(bucket, last=False)
                    sent += len(bucket)
                    bucket, size = {}, 0
            if self.is_leader_rank:
                sent += len(bucket)
                await self._get_server().load_weights.remote(bucket, last=True, global_steps=kwargs.get("global_steps"))
                logger.info("transformers rollout %d: synced %d tensors", self.replica_rank, sent)

    return TransformersServerAdapter


TransformersServerAdapter = None  # built on first use by :func:`register_rollout` (needs verl imported)


def register_rollout() -> None:
    """Register the ``transformers`` rollout in verl's replica registry and rollout adapter registry."""
    global TransformersServerAdapter
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    if TransformersServerAdapter is None:
        TransformersServerAdapter = _make_adapter_class()
        TransformersServerAdapter.__module__ = __name__
        TransformersServerAdapter.__qualname__ = "TransformersServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.TransformersServerAdapter"
