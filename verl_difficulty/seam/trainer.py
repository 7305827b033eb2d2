"""The seam between verl-difficulty and verl's v1 trainer: the ``difficulty`` trainer mode.

Select it with ``trainer.v1.trainer_mode=difficulty``. It is verl's synchronous trainer (``PPOTrainerSync``) plus:

1. **Per-sample estimator inputs.** Before verl's advantage step it fetches, for the same TransferQueue keys,
   ``extra_info`` (with the stable prompt id ``extra_info.index``), ``data_source``, the reward's extra info (``acc``,
   ``format``...) and ``old_log_probs``, and publishes them (:mod:`verl_difficulty.seam.inputs`) so the plugin's
   estimators receive them as keyword arguments.
2. **The plugin's sampler.** It rebuilds verl's ``StatefulDataLoader`` around :class:`DifficultySampler` and feeds
   it each step's outcomes (prompt id, correctness per response). The sampler's state rides in verl's ``data.pt``.
3. **Metrics.** ``difficulty/...`` entries are added to verl's step metrics.

verl internals this depends on (check them on a verl upgrade; verl 0.9.1 line numbers):

* ``verl/trainer/ppo/v1/trainer_base.py:1996-2023`` ``register_trainer``; ``trainer_sync.py:24`` ``PPOTrainerSync``.
* ``trainer_base.py:129`` ``self.trainer_mode`` read from ``config.trainer.v1.trainer_mode``; the base compares it
  with ``"sync"`` (``:153,:731,:902,:912,:1004,:1499``), so this mode rewrites the config value to ``"sync"``.
* ``trainer_base.py:708-758`` ``_init_dataloader`` (attributes ``train_dataset``, ``train_dataloader``,
  ``train_dataloader_it``); the dataloader state is saved to / loaded from ``data.pt`` (``:1001``, ``:885-889``).
* ``trainer_base.py:1743-1802`` ``_compute_advantage(batch: KVBatchMeta, metrics)`` reading TransferQueue with
  ``tq.kv_batch_get(keys, partition_id, select_fields)``; non-GRPO estimators see the rows in ``batch.keys`` order
  (``trainer/ppo/v1/utils.py:167-176``).
* ``verl/utils/dataset/rl_dataset.py`` ``get_dataset_class`` / ``data.custom_cls.{path,name}``: with hints on, the
  datasets are built as :mod:`verl_difficulty.seam.hint_dataset` hint datasets (an ``RLHFDataset`` subclass).
* Per-trajectory TransferQueue fields written by the agent loop (``trainer/ppo/v1/agent_loop_tq.py:182-227``):
  dataset columns (``extra_info``, ``data_source``), ``extra_fields["reward_extra_info"]``, ``rm_scores``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from verl_difficulty import schema
from verl_difficulty.sampling.hints import batch_hint_metrics
from verl_difficulty.sampling.sampler import DifficultySampler
from verl_difficulty.seam.config import (
    DifficultyConfig,
    check_training_rows,
    read_difficulty_config,
    read_estimator_config,
)
from verl_difficulty.seam.inputs import DEFAULT_CORRECT_THRESHOLD, response_verdicts, seam_inputs

logger = logging.getLogger(__name__)

TRAINER_MODE = "difficulty"
# TransferQueue fields holding per-sample data (agent_loop_tq.py:182-227)
_FIELDS = ["uid", "extra_info", "data_source", "extra_fields", "rm_scores", "response_mask", "old_log_probs"]


def _as_list(value: Any, n: int) -> list:
    """TransferQueue non-tensor fields come back as NonTensorStack / lists / arrays: make a plain list of n."""
    if value is None:
        return [None] * n
    if hasattr(value, "tolist"):
        value = value.tolist()
    value = list(value)
    if len(value) != n:
        raise RuntimeError(f"verl-difficulty seam: field has {len(value)} rows, expected {n}")
    return value


def _padded(t: torch.Tensor) -> torch.Tensor:
    """Right-padded dense copy of a (possibly nested/jagged) per-response tensor, as verl pads it."""
    return torch.nested.to_padded_tensor(t, 0.0) if getattr(t, "is_nested", False) else t


def per_sample_fields(data, n: int, correct_threshold: float = DEFAULT_CORRECT_THRESHOLD) -> dict[str, np.ndarray]:
    """Build the estimators' ``non_tensor_batch`` from a TransferQueue batch (TensorDict) of n trajectories.

    Besides the dataset and reward fields it holds the seam's one verdict per response, ``schema.CORRECT``
    (:func:`~verl_difficulty.seam.inputs.response_verdicts`: the reward's ``acc`` when reported, else
    ``reward >= correct_threshold``; NaN for an empty response), which the estimators and the sampler both read.
    """
    keys = set(data.keys())
    out: dict[str, np.ndarray] = {}
    out["uid"] = np.array(_as_list(data["uid"], n), dtype=object)
    extra = _as_list(data["extra_info"] if "extra_info" in keys else None, n)
    extra = [e if isinstance(e, dict) else {} for e in extra]
    out[schema.EXTRA_INFO] = np.array(extra, dtype=object)
    pid = [e.get(schema.PROMPT_ID) for e in extra]
    out[schema.SEAM_PROMPT_ID] = np.array([int(p) if p is not None else -1 for p in pid], dtype=np.int64)
    out[schema.DATA_SOURCE] = np.array(_as_list(data["data_source"] if "data_source" in keys else None, n), dtype=object)
    fields = _as_list(data["extra_fields"] if "extra_fields" in keys else None, n)
    reward_extra = [(f or {}).get("reward_extra_info", {}) if isinstance(f, dict) else {} for f in fields]
    names = sorted({k for r in reward_extra for k in (r or {}) if k not in out})
    for name in names:
        vals = [(r or {}).get(name) for r in reward_extra]
        try:
            arr = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.array(vals, dtype=object)
        out[name] = arr
    scores = _padded(data["rm_scores"]).float().sum(-1).cpu().numpy() if "rm_scores" in keys else np.zeros(n)
    lengths = _padded(data["response_mask"]).sum(-1).cpu().numpy() if "response_mask" in keys else None
    out[schema.CORRECT] = response_verdicts(scores, out.get(schema.ACC), lengths, correct_threshold)
    return out


def _trainer_classes():
    from verl.trainer.ppo.v1.trainer_base import register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    return register_trainer, PPOTrainerSync


def register_trainer_mode() -> None:
    """Register :class:`DifficultyTrainer` under ``difficulty`` in verl's trainer registry (idempotent)."""
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    if TRAINER_MODE in TRAINER_REGISTRY:
        return
    register_trainer, PPOTrainerSync = _trainer_classes()

    @register_trainer(TRAINER_MODE)
    class DifficultyTrainer(PPOTrainerSync):
        """verl's sync trainer with per-sample estimator inputs, the difficulty sampler and difficulty metrics."""

        def __init__(self, config: DictConfig):
            # keep verl's sync semantics: the base class compares trainer_mode with "sync" in several places.
            with open_dict(config):
                config.trainer.v1.trainer_mode = "sync"
            # the whole plugin configuration, parsed once, before any Ray worker loads a model
            self.difficulty_config: DifficultyConfig = read_difficulty_config(config)
            self.difficulty_estimators = read_estimator_config(config)
            self.difficulty_sampler: Optional[DifficultySampler] = None
            super().__init__(config)

        # -------------------------------------------------------------- sampler
        def _init_dataloader(self):
            from verl_difficulty.sampling.sampler import check_dataloader_workers
            from verl_difficulty.seam.hint_dataset import configure_dataset_hints, install_hint_dataset

            hints = self.difficulty_config.hints
            if hints.enable:
                # verl's own dataset hook (rl_dataset.py get_dataset_class): build the datasets as hint datasets
                install_hint_dataset(self.config.data)
            super()._init_dataloader()
            check_training_rows(self.train_dataset, self.config.algorithm.get("adv_estimator", None),
                                self.difficulty_estimators)
            scfg = self.difficulty_config.sampler
            if scfg.enable:
                from torchdata.stateful_dataloader import StatefulDataLoader
                from verl.utils.dataset.rl_dataset import collate_fn

                check_dataloader_workers(self.config.data.get("dataloader_num_workers", 0))
                # read after super(): verl forces gen_batch_size=1 for DAPO / async refills
                gen_batch_size = self.config.data.get("gen_batch_size", None) or self.config.data.train_batch_size
                self.difficulty_sampler = DifficultySampler.from_dataset(
                    self.train_dataset, scfg, batch_size=int(gen_batch_size)
                )
                self.train_dataloader = StatefulDataLoader(
                    dataset=self.train_dataset,
                    batch_size=gen_batch_size,
                    num_workers=0,
                    drop_last=True,
                    collate_fn=collate_fn,
                    sampler=self.difficulty_sampler,
                )
                self.train_dataloader_it = None
                logger.info(
                    "verl-difficulty: difficulty sampler (mode=%s, schedule=%s) installed over %d prompts",
                    scfg.mode, scfg.schedule.type, len(self.difficulty_sampler.prompt_ids),
                )
            if hints.enable:
                configure_dataset_hints(self.train_dataset, hints, "train", sampler=self.difficulty_sampler)
                configure_dataset_hints(self.val_dataset, hints, "val")

        # -------------------------------------------------------------- advantage step
        def _compute_advantage(self, batch, metrics: dict):
            import transfer_queue as tq

            from verl_difficulty.estimators import metrics as est_metrics

            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_FIELDS)
            n = len(batch.keys)
            ntb = per_sample_fields(data, n, self.difficulty_config.correct_threshold)
            old_log_probs = _padded(data["old_log_probs"]) if "old_log_probs" in data.keys() else None
            est_metrics.pop_all()
            with seam_inputs(ntb, old_log_probs):
                batch = super()._compute_advantage(batch, metrics)
            metrics.update(est_metrics.pop_all())

            metrics.update(batch_metrics(ntb, old_log_probs))
            if self.difficulty_sampler is not None:
                # the outcomes of step N (the same verdicts the estimator read); the next draws are for step N + 1
                self.difficulty_sampler.update(ntb[schema.SEAM_PROMPT_ID], ntb[schema.CORRECT],
                                               step=int(self.global_steps))
                metrics.update(self.difficulty_sampler.metrics())
            if self.difficulty_config.hints.enable:  # from the rows' marks: right with dataloader workers too
                metrics.update(batch_hint_metrics(ntb[schema.EXTRA_INFO], ntb["uid"]))
            return batch

        # -------------------------------------------------------------- DAPO: groups dropped before the advantage step
        def _build_replay_buffer(self):
            buffer = super()._build_replay_buffer()
            if getattr(buffer, "filter_groups_metric", None) is not None:
                buffer.__class__ = _observing_replay_buffer_class(type(buffer))
                buffer.difficulty_observer = self._observe_evicted
            return buffer

        def _observe_evicted(self, data, n: int) -> None:
            """Outcomes of the groups DAPO drops (evicted all-right / all-wrong groups, refill surplus) reach the sampler."""
            if self.difficulty_sampler is None or n == 0:
                return
            ntb = per_sample_fields(data, n, self.difficulty_config.correct_threshold)
            self.difficulty_sampler.observe(ntb[schema.SEAM_PROMPT_ID], ntb[schema.CORRECT])

    DifficultyTrainer.__module__ = __name__
    globals()["DifficultyTrainer"] = DifficultyTrainer


def batch_metrics(ntb: dict, old_log_probs: Any) -> dict[str, float]:
    """``difficulty/batch/*`` and ``difficulty/seam/*`` metrics of one advantage step (from the seam's verdicts)."""
    correct = ntb[schema.CORRECT]
    valid = np.isfinite(correct)
    _, inv = np.unique(ntb["uid"], return_inverse=True)
    n_groups = int(inv.max()) + 1 if len(inv) else 0
    sums = np.bincount(inv[valid], weights=correct[valid], minlength=n_groups)
    counts = np.bincount(inv[valid], minlength=n_groups)
    has = counts > 0
    p = sums[has] / counts[has]
    pid = ntb[schema.SEAM_PROMPT_ID]
    m = schema.metric
    return {
        m("batch", "acc_mean"): float(correct[valid].mean()) if valid.any() else 0.0,
        m("batch", "group_pass_rate_mean"): float(p.mean()) if len(p) else 0.0,
        m("batch", "zero_variance_frac"): float(((p == 0) | (p == 1)).mean()) if len(p) else 0.0,
        m("batch", "empty_responses"): float((~valid).sum()),
        m("seam", "prompt_id_coverage"): float((pid >= 0).mean()) if len(pid) else 0.0,
        m("seam", "has_old_log_probs"): float(old_log_probs is not None),
        m("seam", "has_acc"): float(schema.ACC in ntb),
    }


def _observing_replay_buffer_class(base: type) -> type:
    """verl's replay buffer, telling the plugin the outcomes of finished groups it drops before the advantage step.

    Under DAPO (``algorithm.filter_groups``) verl 0.9.1's sync replay buffer removes finished groups in two places,
    both through ``ReplayBuffer._clear_groups(partition_id, uids)`` (``replay_buffer.py:241-259``): the zero-variance
    groups that ``_evict_terminal_groups`` evicts (``:345-381``), and the surplus of the speculative refills once the
    batch is full (``sample``, ``:483-492``). Both were generated and graded, so their outcomes are evidence about
    their prompts. This subclass reads the finished, non-failed groups' fields from TransferQueue before they are
    cleared and hands them to ``difficulty_observer(data, n)``; verl's behaviour is otherwise unchanged.
    """

    class ObservingReplayBuffer(base):
        difficulty_observer = None

        def _clear_groups(self, partition_id, uids):
            if uids and self.difficulty_observer is not None and partition_id == "train":
                done = (set(uids) & self.finished_keys[partition_id]) - self.failure_keys[partition_id]
                keys = [k for k in self.partitions[partition_id] if k.split("_")[0] in done]
                if keys:
                    import transfer_queue as tq

                    data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=_FIELDS)
                    self.difficulty_observer(data, len(keys))
            return super()._clear_groups(partition_id, uids)

    ObservingReplayBuffer.__name__ = f"Observing{base.__name__}"
    return ObservingReplayBuffer
