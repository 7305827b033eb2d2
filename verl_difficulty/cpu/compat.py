"""The places where the plugin must adjust a verl function binding at run time; verl's files are untouched.

Each is installed by a post-import hook in :mod:`verl_difficulty.plugin`, in every process that imports the verl
module concerned (driver, TaskRunner, Ray workers), by rebinding a name in that verl module. Each is idempotent and
wraps the original (which is still called). Check them on a verl upgrade.

CPU platform only (installed only when ``VERL_PLATFORM=cpu``, via ``plugin.CPU_ONLY``):

1. ``verl/workers/engine_workers.py:89`` calls ``initialize_global_process_group_ray()`` whose default backend string
   is ``f"cpu:gloo,{device}:{backend}"`` (``verl/utils/distributed.py:89``). With device ``cpu`` that is
   ``"cpu:gloo,cpu:gloo"``, which torch 2.11 rejects ("Duplicate device type cpu"). On the CPU platform the default
   becomes ``"cpu:gloo"``.
1b. The same string in the torchrun path: ``verl/utils/distributed.py:63-64`` ``initialize_global_process_group()``
   (verl's SFT trainer, ``verl/trainer/sft_trainer.py:453``, imports it at call time) builds
   ``f"cpu:gloo,{device}:{backend}"`` with no backend argument; on the CPU platform it is rebound to a function that
   initialises ``cpu:gloo`` from the same torchrun environment (:func:`patch_torchrun_process_group_init`).

Every platform (not CPU specific; via ``plugin.REGISTRATIONS``, hook on ``verl.utils.tensordict_utils``):

2. M-RoPE ``position_ids`` of a batch whose sequences all have the same length (VERL_NOTES "Pitfall 1"):
   :func:`patch_mrope_same_length`. Versions: verl 0.9.1, TransferQueue 0.1.11, torch 2.11.

   * TransferQueue packs per-sample fields with ``torch.nested.as_nested_tensor(values, layout=torch.jagged)``
     (``transfer_queue/storage/managers/simple_storage_manager.py:574``, also ``.../managers/base.py:669``). For
     per-sample M-RoPE position ids of shape ``(4, L_i)`` torch puts the ragged dimension on the first dimension
     that differs: ``L`` when lengths differ (``_ragged_idx=2``, ``values()`` ``(4, sum L_i)``, offsets over
     tokens), but when all ``L_i`` are equal nothing differs and it defaults to dim 1, the 4 channels
     (``_ragged_idx=1``, ``values()`` ``(B*4, L)``, offsets ``[0, 4, 8, ...]``). That tensor is still consistent.
   * ``maybe_fix_3d_position_ids`` (``verl/utils/tensordict_utils.py:910-915``, called on the batch TQ returned at
     ``verl/workers/engine_workers.py:252`` and before every forward, ``verl/workers/engine/base.py:124,145``)
     sets ``_ragged_idx = 2`` unconditionally (meant for tensors that lost it in a pickle round trip). On the
     same-length tensor that only relabels: values stay ``(B*4, L)`` with offsets ``[0, 4, ...]``, now read
     along ``L``.
   * ``index_select_tensor_dict`` (``verl/utils/tensordict_utils.py:458``; the mini-batch iterator
     ``make_iterator`` at :610, ``seqlen_balancing.py:501``, ``dynamic_cp_scheduler.py:188``) calls
     ``tensor.unbind()`` (:495), which splits ``values()`` dim 1 (size ``L``) by ``[4, 4, ...]``:
     ``RuntimeError: split_with_sizes expects split_sizes to sum exactly to L ...`` in ``update_actor``. When
     ``L == B*4`` it does not raise but returns ``(B*4, 4)`` slices: silently wrong position ids.
   * ``chunk_tensordict`` (:302; ``prepare_micro_batches`` at ``verl/workers/engine/utils.py:128``, i.e. every
     ``infer_batch``/``train_batch`` without dynamic batch size, e.g. ``compute_log_prob``) catches the
     ``unbind`` error and falls back to ``to_padded_tensor`` sliced by ``offsets().diff()`` (:355-366). On this
     tensor that fallback does not raise: it returns ``(4, 4)`` slices of the wrong rows (``values()[:, 4i:4i+4]``),
     i.e. SILENTLY WRONG position ids for old/ref log-probs. So copying that fallback into ``index_select_tensor_dict``
     (as suggested upstream) would be wrong too.

   The fix rebinds ``verl.utils.tensordict_utils.index_select_tensor_dict`` and ``.chunk_tensordict`` to wrappers
   that, only for a ``position_ids`` value in that mislabelled state (``_ragged_idx == 2`` but
   ``values()``/``offsets()`` laid out along dim 1), rebuild it from its true rows with verl's own
   ``nested_tensor_from_tensor_list(..., ragged_idx=2)`` (the layout verl builds for variable lengths) in a
   shallow copy of the batch, then call the original. Every other input goes to the original unchanged. Every
   verl caller looks these names up at call time (``tu.index_select_tensor_dict`` / ``tu.chunk_tensordict``, the
   module global inside ``make_iterator``, the function-local imports in ``verl/utils/skip/rollout_skip.py:438``
   and ``verl/protocol.py:1275``); none binds them at import time (checked with grep over verl 0.9.1), so
   rebinding the module attributes right after ``verl.utils.tensordict_utils`` is imported covers them all.
"""

from __future__ import annotations

import functools


def patch_process_group_init() -> None:
    """Default the process-group backend to ``cpu:gloo`` in verl's training workers (CPU platform only)."""
    from verl.workers import engine_workers

    original = engine_workers.initialize_global_process_group_ray
    if getattr(original, "_verl_difficulty_cpu", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    initialize_global_process_group_ray._verl_difficulty_cpu = True
    engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray


def patch_torchrun_process_group_init() -> None:
    """``verl.utils.distributed.initialize_global_process_group`` with the ``cpu:gloo`` backend (CPU platform only).

    verl's version takes no backend argument, so this one is ours: the same ``init_process_group`` call (timeout,
    ``DIST_INIT_METHOD``) and the same return value (local rank, rank, world size from torchrun's environment), minus
    the device selection a CPU has no use for."""
    from verl.utils import distributed

    original = distributed.initialize_global_process_group
    if getattr(original, "_verl_difficulty_cpu", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group(timeout_second=36000):
        import os
        from datetime import timedelta

        import torch.distributed

        torch.distributed.init_process_group(backend="cpu:gloo", timeout=timedelta(seconds=timeout_second),
                                             init_method=os.environ.get("DIST_INIT_METHOD", None))
        return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    initialize_global_process_group._verl_difficulty_cpu = True
    distributed.initialize_global_process_group = initialize_global_process_group


# ------------------------------------------------------------------------------------------------ every platform
_MROPE_KEY = "position_ids"


def _mrope_rows_along_dim1(nt, batch):
    """The per-sample rows of a mislabelled same-length M-RoPE ``position_ids``, or None if ``nt`` is not one.

    Mislabelled (see item 2 of the module docstring): a contiguous 3-D jagged tensor with ``_ragged_idx == 2`` whose
    ``values()`` ``(V0, V1)`` and ``offsets()`` are laid out along dim 1, i.e. ``V0 == offsets[-1]``. If
    ``V1 != offsets[-1]`` too, the ``_ragged_idx == 2`` reading is impossible. If ``V1 == offsets[-1]`` as well (all
    sequences of length ``L == B*4``) both readings fit; the batch's 2-D jagged ``input_ids`` (true sequence
    lengths) decide, and without it the tensor is left alone (verl's behaviour).
    """
    import torch

    if not (isinstance(nt, torch.Tensor) and nt.is_nested and nt.layout == torch.jagged and nt.dim() == 3):
        return None
    if getattr(nt, "_ragged_idx", None) != 2 or getattr(nt, "_lengths", None) is not None:
        return None
    values, offsets = nt.values(), nt.offsets()
    total = int(offsets[-1])
    if values.dim() != 2 or values.shape[0] != total:
        return None
    if values.shape[1] == total:  # ambiguous: do the sequence lengths match the `_ragged_idx == 2` reading?
        ids = batch.get("input_ids", None) if batch is not None else None
        if not (isinstance(ids, torch.Tensor) and ids.is_nested and ids.layout == torch.jagged and ids.dim() == 2):
            return None
        seq_lens = ids.offsets().diff()
        if seq_lens.shape != offsets.diff().shape or torch.equal(seq_lens.cpu(), offsets.diff().cpu()):
            return None  # consistent as labelled
        if not bool((seq_lens == values.shape[1]).all()):
            return None
    bounds = offsets.tolist()
    return [values[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def _repair_mrope_position_ids(batch):
    """``batch`` itself, or a shallow copy whose mislabelled ``position_ids`` is rebuilt along the sequence dim."""
    from tensordict import TensorDict

    from verl.utils.tensordict_utils import nested_tensor_from_tensor_list

    if not isinstance(batch, TensorDict) or _MROPE_KEY not in batch.keys():
        return batch
    rows = _mrope_rows_along_dim1(batch.get(_MROPE_KEY), batch)
    if rows is None:
        return batch
    fixed = batch.copy()  # shallow: the caller's TensorDict is not modified
    fixed.set(_MROPE_KEY, nested_tensor_from_tensor_list(rows, ragged_idx=2))
    return fixed


def patch_mrope_same_length() -> None:
    """Let ``index_select_tensor_dict`` and ``chunk_tensordict`` handle same-length M-RoPE ``position_ids`` (all
    platforms).

    See item 2 of the module docstring. Rebinds both names in ``verl.utils.tensordict_utils``; the originals are
    called in every case, on a repaired shallow copy of the batch only in the broken one. Idempotent.
    """
    from verl.utils import tensordict_utils

    for name in ("index_select_tensor_dict", "chunk_tensordict"):
        original = getattr(tensordict_utils, name)
        if getattr(original, "_verl_difficulty_mrope", False):
            continue

        def repaired(batch, arg, _original=original):
            return _original(_repair_mrope_position_ids(batch), arg)

        functools.update_wrapper(repaired, original)
        repaired._verl_difficulty_mrope = True
        setattr(tensordict_utils, name, repaired)
