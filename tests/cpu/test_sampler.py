"""The difficulty sampler: deterministic epochs, online Beta pass rates, checkpoint state, verl's StatefulDataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from verl_difficulty.sampler import DifficultySampler, SamplerConfig


def _sampler(n=10, priors=None, **cfg):
    return DifficultySampler(np.arange(100, 100 + n), priors, SamplerConfig(enable=True, **cfg))


def test_epoch_is_a_seeded_permutation_and_next_epoch_differs():
    s = _sampler(10, seed=3)
    e0 = list(iter(s))
    e1 = list(iter(s))
    assert sorted(e0) == list(range(10)) and sorted(e1) == list(range(10))
    assert e0 != e1
    assert e0 == list(np.random.default_rng(3).permutation(10))
    assert s.epoch == 1


def test_beta_posterior_update_by_hand():
    # prior p0 = 0.5 with strength 2 -> Beta(2, 2); then 3 correct of 4 -> Beta(5, 3) -> mean 5/8
    s = _sampler(3, priors=np.array([0.5, np.nan, np.nan]), prior_strength=2.0)
    s.update([100, 100, 100, 100, 101, 999], [1, 1, 1, 0, 0, 1])
    assert s.pass_rate()[0] == pytest.approx(5 / 8)
    assert s.pass_rate()[1] == pytest.approx(1 / 3)  # Beta(1,1) + one failure -> Beta(1,2)
    assert s.pass_rate()[2] == pytest.approx(0.5)
    assert s.unknown_ids == 1
    m = s.metrics()
    assert m["difficulty/sampler/prompts_seen"] == 2
    assert m["difficulty/sampler/unknown_prompt_ids"] == 1


def test_state_round_trip_through_stateful_dataloader_resumes_same_batches():
    data = list(range(12))

    def loader(sampler):
        return StatefulDataLoader(data, batch_size=3, sampler=sampler, num_workers=0, drop_last=True)

    ref = _sampler(12, seed=5)
    ref_loader = loader(ref)
    it = iter(ref_loader)
    first = [next(it) for _ in range(2)]
    ref.update([100, 101], [1, 0])
    state = ref_loader.state_dict()
    rest_ref = [b.tolist() for b in it] + [b.tolist() for b in iter(ref_loader)][:2]

    resumed = _sampler(12, seed=5)
    res_loader = loader(resumed)
    res_loader.load_state_dict(state)
    rest = [b.tolist() for b in iter(res_loader)] + [b.tolist() for b in iter(res_loader)][:2]
    assert rest == rest_ref
    assert resumed.pass_rate()[0] > resumed.pass_rate()[1]
    assert [b.tolist() for b in first] != rest[:2]


def test_bad_config_and_wrong_dataset_are_clear_errors():
    with pytest.raises(ValueError, match="unknown settings"):
        SamplerConfig.from_dict({"enable": True, "mixx": 1})
    s = _sampler(4)
    other = _sampler(5)
    with pytest.raises(ValueError, match="different dataset"):
        other.load_state_dict(s.state_dict())


def test_missing_prompt_id_names_the_row():
    from verl_difficulty.sampler import _row_prompt_ids

    class Frame(list):
        column_names = ["extra_info"]

        def __getitem__(self, key):
            return list(self) if key == "extra_info" else super().__getitem__(key)

    class DS:
        dataframe = Frame([{"index": 0}, {"split": "train"}])

    with pytest.raises(ValueError, match="row 1"):
        _row_prompt_ids(DS())
