"""The seam's per-sample plumbing: TransferQueue fields -> estimator keyword arguments; the legacy trainer's error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import verl  # noqa: F401  (loads the plugin)
from verl_difficulty import schema
from verl_difficulty.seam.trainer import SeamConfig, per_sample_fields
from verl_difficulty.seam.inputs import seam_inputs, with_seam_inputs


def _tq_like_batch():
    """A TensorDict shaped like TransferQueue's kv_batch_get answer (non-tensor fields as NonTensorStack)."""
    from verl.utils import tensordict_utils as tu

    rows = [
        {"uid": "u0", "extra_info": {"index": 7, "visual_entropy": 1.5}, "data_source": "synth",
         "extra_fields": {"reward_extra_info": {"acc": 1.0, "format": 1.0, "reason": ""}}},
        {"uid": "u0", "extra_info": {"index": 7, "visual_entropy": 1.5}, "data_source": "synth",
         "extra_fields": {"reward_extra_info": {"acc": 0.0, "format": 1.0, "reason": "wrong"}}},
        {"uid": "u1", "extra_info": {"split": "train"}, "data_source": "synth",
         "extra_fields": {"reward_extra_info": {"acc": 0.0, "format": 0.0, "reason": "no tag"}}},
    ]
    td = tu.list_of_dict_to_tensordict(rows)
    td["rm_scores"] = torch.nested.as_nested_tensor([torch.tensor([0.0, 1.0]), torch.tensor([0.0]),
                                                     torch.tensor([0.0, 0.0, 0.0])], layout=torch.jagged)
    return td


def test_per_sample_fields_from_transferqueue_like_batch():
    ntb = per_sample_fields(_tq_like_batch(), 3)
    assert list(ntb["uid"]) == ["u0", "u0", "u1"]
    assert ntb[schema.SEAM_PROMPT_ID].tolist() == [7, 7, -1]  # missing extra_info.index -> -1
    assert ntb[schema.ACC].tolist() == [1.0, 0.0, 0.0]
    assert ntb[schema.FORMAT].tolist() == [1.0, 1.0, 0.0]
    assert list(ntb["reason"]) == ["", "wrong", "no tag"]  # non-numeric extras stay objects
    assert ntb[schema.EXTRA_INFO][0][schema.VISUAL_ENTROPY] == 1.5
    with pytest.raises(RuntimeError, match="expected 4"):
        per_sample_fields(_tq_like_batch(), 4)


def test_estimator_receives_seam_inputs_as_keywords():
    seen = {}

    @with_seam_inputs
    def est(token_level_rewards, response_mask, index=None, non_tensor_batch=None, old_log_probs=None, **kw):
        seen["ntb"], seen["lp"] = non_tensor_batch, old_log_probs
        return token_level_rewards, token_level_rewards

    r = torch.zeros(2, 3)
    est(r, r, index=np.array(["a", "b"], dtype=object))
    assert seen["ntb"] is None and seen["lp"] is None  # stock verl: nothing to add
    lp = torch.ones(2, 3)
    ntb = {"uid": np.array(["a", "b"], dtype=object)}
    with seam_inputs(ntb, lp):
        est(r, r, index=np.array(["a", "b"], dtype=object))
        assert seen["ntb"] is ntb and seen["lp"] is lp
        explicit = {"uid": np.array(["a", "b"], dtype=object)}
        est(r, r, index=np.array(["a", "b"], dtype=object), non_tensor_batch=explicit)  # verl PR #7473 style
        assert seen["ntb"] is explicit
        with pytest.raises(RuntimeError, match="not aligned"):
            est(r, r, index=np.array(["b", "a"], dtype=object))


def test_legacy_trainer_path_gives_a_clear_error():
    """trainer.use_v1=false calls ray_trainer.compute_advantage without per-sample data: unsupported, loudly."""
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    data = DataProto.from_dict(
        tensors={"token_level_rewards": torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "response_mask": torch.ones(2, 2)},
        non_tensors={"uid": np.array(["a", "a"], dtype=object)},
    )
    cfg = OmegaConf.create({"difficulty": {"durian": {"alpha_percep": 0.0, "alpha_ori": 0.5, "alpha_reason": 0.5}}})
    with pytest.raises(ValueError, match="trainer.v1.trainer_mode=difficulty"):
        compute_advantage(data, adv_estimator="durian", config=cfg)


def test_seam_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown settings"):
        SeamConfig.from_config({"samplr": {}})
    assert SeamConfig.from_config(None).sampler.enable is False
