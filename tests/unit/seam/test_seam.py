"""The seam's per-sample plumbing: TransferQueue fields -> estimator keyword arguments; the legacy trainer's error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import verl  # noqa: F401  (loads the plugin)
from verl_difficulty import schema
from verl_difficulty.seam.inputs import response_verdicts, seam_inputs, with_seam_inputs
from verl_difficulty.seam.trainer import batch_metrics, per_sample_fields


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
    # the third response is empty (no valid token): left out of every pass rate
    td["response_mask"] = torch.nested.as_nested_tensor([torch.tensor([1, 1]), torch.tensor([1]),
                                                         torch.tensor([0, 0, 0])], layout=torch.jagged)
    return td


def test_per_sample_fields_from_transferqueue_like_batch():
    ntb = per_sample_fields(_tq_like_batch(), 3)
    assert list(ntb["uid"]) == ["u0", "u0", "u1"]
    assert ntb[schema.SEAM_PROMPT_ID].tolist() == [7, 7, -1]  # missing extra_info.index -> -1
    assert ntb[schema.ACC].tolist() == [1.0, 0.0, 0.0]
    assert ntb[schema.FORMAT].tolist() == [1.0, 1.0, 0.0]
    assert list(ntb["reason"]) == ["", "wrong", "no tag"]  # non-numeric extras stay objects
    assert ntb[schema.EXTRA_INFO][0][schema.VISUAL_ENTROPY] == 1.5
    # the one verdict: the reward's acc, NaN for the empty response
    np.testing.assert_array_equal(ntb[schema.CORRECT], [1.0, 0.0, np.nan])
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


def test_one_verdict_rule():
    scores = np.array([1.0, 0.2, 0.9, 0.6])
    # acc reported (finite everywhere): it decides, whatever the reward
    np.testing.assert_array_equal(response_verdicts(scores, np.array([0.0, 1.0, 1.0, 0.0])), [0, 1, 1, 0])
    # no acc, or acc with a gap: the one threshold on the scalar reward
    np.testing.assert_array_equal(response_verdicts(scores), [1, 0, 1, 1])
    np.testing.assert_array_equal(response_verdicts(scores, np.array([1.0, np.nan, 0.0, 0.0]), threshold=0.7),
                                  [1, 0, 1, 0])
    # empty responses are left out
    np.testing.assert_array_equal(response_verdicts(scores, lengths=np.array([3, 0, 2, 1])), [1, np.nan, 1, 1])


def test_batch_metrics_leave_empty_responses_out():
    ntb = per_sample_fields(_tq_like_batch(), 3)
    m = batch_metrics(ntb, None)
    assert m["difficulty/batch/acc_mean"] == 0.5  # the empty response does not count as wrong
    assert m["difficulty/batch/group_pass_rate_mean"] == 0.5  # u1 has no valid response: no group rate
    assert m["difficulty/batch/empty_responses"] == 1.0
    assert all(k.startswith("difficulty/") for k in m)
