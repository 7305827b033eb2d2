"""Run a GPU recipe's YAML on a CPU with the tiny model: the hydra overrides that swap the backend and shrink the sizes.

The recipes under ``recipes/<paper>/`` are written for GPU nodes (vLLM rollout, bf16, 8 GPUs per node, the papers'
batch sizes). Their tiny variants -- run in CI and by ``TRAIN_OVERRIDES`` of every recipe launcher -- keep the recipe's
YAML and every method setting in it, and only append these overrides:

* **backend** (:data:`CPU_BACKEND`): the plugin's CPU platform (``trainer.device=cpu``, with ``VERL_PLATFORM=cpu`` in
  the environment), the ``transformers`` rollout instead of vLLM, FSDP2 in float32 (rollout and actor agree exactly),
  SDPA attention without remove-padding, one Ray process of each kind;
* **sizes** (:func:`tiny_sizes`): 4 prompts x 4 responses per step, 24 response tokens, a few steps, no validation and
  no checkpoint unless asked;
* verl's SFT trainer (P1's SFT stage): :func:`tiny_cpu_sft_overrides`.

``++key=value`` (add or override) is used where a key may be absent from verl's config (the ``transformers`` engine
kwargs, the model's ``override_config``); plain ``key=value`` everywhere else, so that a key verl renames fails the run
instead of being added silently.
"""

from __future__ import annotations

CPU_BACKEND: tuple[str, ...] = (
    "trainer.device=cpu",
    "trainer.n_gpus_per_node=1",
    "trainer.nnodes=1",
    "ray_kwargs.ray_init.num_cpus=12",
    "++ray_kwargs.ray_init.num_gpus=1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "reward.num_workers=1",
    "data.dataloader_num_workers=0",
    "data.filter_overlong_prompts=false",
    "actor_rollout_ref.model.use_remove_padding=false",
    "actor_rollout_ref.model.enable_gradient_checkpointing=false",
    "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.actor.use_torch_compile=false",
    "actor_rollout_ref.actor.fsdp_config.model_dtype=fp32",
    "actor_rollout_ref.actor.fsdp_config.dtype=float32",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
    "actor_rollout_ref.actor.fsdp_config.param_offload=false",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=false",
    "++actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
    "++actor_rollout_ref.actor.fsdp_config.mixed_precision.reduce_dtype=fp32",
    "++actor_rollout_ref.actor.fsdp_config.mixed_precision.buffer_dtype=fp32",
    "actor_rollout_ref.ref.strategy=fsdp2",
    "actor_rollout_ref.ref.fsdp_config.model_dtype=fp32",
    "actor_rollout_ref.ref.fsdp_config.dtype=float32",
    "actor_rollout_ref.ref.fsdp_config.param_offload=false",
    "actor_rollout_ref.rollout.name=transformers",
    "actor_rollout_ref.rollout.mode=async",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.dtype=float32",
    "actor_rollout_ref.rollout.calculate_log_probs=true",
    "actor_rollout_ref.rollout.free_cache_engine=false",
    "actor_rollout_ref.rollout.load_format=auto",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "actor_rollout_ref.rollout.checkpoint_engine.backend=naive",
    "++actor_rollout_ref.rollout.engine_kwargs.transformers.max_batch_size=16",
)
"""Swap a GPU recipe onto the plugin's CPU backend (run with ``VERL_PLATFORM=cpu``)."""


def tiny_sizes(steps: int = 1, batch: int = 4, n: int = 4, response_length: int = 24,
               prompt_length: int = 384, save_freq: int = -1) -> list[str]:
    """Size overrides of a tiny run: ``batch`` prompts x ``n`` responses per step for ``steps`` steps.

    ``prompt_length`` 384 leaves room for P2's hint (~90 tokens with the tiny byte-level tokenizer). ``save_freq``
    -1 saves no checkpoint; a stage that the next one starts from (P2's stage 1) needs one (``save_freq=steps``).
    """
    micro = batch * n
    return [
        f"data.train_batch_size={batch}",
        f"data.val_batch_size={2 * batch}",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.max_num_seqs={micro}",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=1",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        f"trainer.save_freq={save_freq}",
        "trainer.logger=[console,file]",
    ]


def tiny_cpu_overrides(steps: int = 1, **sizes) -> list[str]:
    """:data:`CPU_BACKEND` plus :func:`tiny_sizes`: what a recipe's tiny variant appends to its command line."""
    return [*CPU_BACKEND, *tiny_sizes(steps=steps, **sizes)]


def tiny_cpu_sft_overrides(batch: int = 2, max_length: int = 512, epochs: int = 1) -> list[str]:
    """The same for verl's SFT trainer (``verl.trainer.sft_trainer``, config ``sft_trainer_engine``; P1's SFT stage,
    run with ``torchrun --nproc_per_node=1`` and ``VERL_PLATFORM=cpu``): backend swap (CPU, float32, SDPA without
    remove-padding, no dataloader workers) and sizes (``batch`` sequences per step, ``max_length`` tokens)."""
    return [
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "engine.model_dtype=fp32",
        "engine.dtype=float32",
        "engine.use_torch_compile=false",
        "model.use_remove_padding=false",
        "model.enable_gradient_checkpointing=false",
        "++model.override_config.attn_implementation=sdpa",
        "data.use_dynamic_bsz=false",
        "data.num_workers=0",
        f"data.max_length={max_length}",
        f"data.train_batch_size={batch}",
        f"data.micro_batch_size_per_gpu={batch}",
        f"trainer.total_epochs={epochs}",
        "trainer.logger=[console,file]",
    ]
