"""Property tests (hypothesis) of the difficulty-aware advantage estimators."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from verl_difficulty.estimators.difficulty_weighted import compute_difficulty_weighted_advantage
from verl_difficulty.estimators.durian import compute_durian_advantage
from verl_difficulty.schema import ACC, CORRECT, EXTRA_INFO, VISUAL_ENTROPY

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = 6


@st.composite
def batches(draw, discrete=False):
    """A batch as contiguous blocks of rollouts per prompt (one dict per block, so blocks can be permuted)."""
    n_prompts = draw(st.integers(1, 10))
    reward = st.sampled_from([0.0, 0.1, 0.9, 1.0]) if discrete else st.floats(-100, 100, allow_nan=False)
    blocks = []
    for k in range(n_prompts):
        n = draw(st.integers(1, 8))
        lengths = draw(st.lists(st.integers(0, T), min_size=n, max_size=n))
        rewards = draw(st.lists(reward, min_size=n, max_size=n))
        acc = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
        h = draw(st.sampled_from([0.5, 1.0, 2.0, 3.0]) | st.floats(0, 10))
        lp = draw(st.lists(st.sampled_from([0.0, -0.5, -1.0, -2.5]) | st.floats(-30, 0), min_size=n * T,
                           max_size=n * T))
        blocks.append(dict(uid=f"p{k}", lengths=lengths, rewards=rewards, acc=acc, h=h, lp=lp))
    return blocks


def assemble(blocks, scale=1.0):
    rows = [(b, i) for b in blocks for i in range(len(b["rewards"]))]
    bs = len(rows)
    mask = torch.zeros(bs, T)
    tlr = torch.zeros(bs, T)
    lp = torch.zeros(bs, T)
    for j, (b, i) in enumerate(rows):
        n = b["lengths"][i]
        mask[j, :n] = 1
        tlr[j, max(n - 1, 0)] = b["rewards"][i] * scale
        lp[j] = torch.tensor(b["lp"][i * T:(i + 1) * T])
    uid = np.array([b["uid"] for b, _ in rows], dtype=object)
    ntb = {"uid": uid, ACC: np.array([b["acc"][i] for b, i in rows]),
           EXTRA_INFO: np.array([{VISUAL_ENTROPY: b["h"]} for b, _ in rows], dtype=object)}
    return dict(token_level_rewards=tlr, response_mask=mask, index=uid, non_tensor_batch=ntb, old_log_probs=lp)


weighting_cfgs = st.fixed_dictionaries({
    "weight": st.sampled_from(["steep_exp", "exponential", "linear", "constant"]),
    "beta": st.floats(0, 5),
    "renormalize": st.booleans(),
    "keep_std": st.booleans(),
    "verdict": st.sampled_from(["seam", "acc", "reward"]),  # where the per-response verdict comes from
})
durian_cfgs = st.fixed_dictionaries({
    "alpha_ori": st.sampled_from([0.0, 0.4, 1.0]),
    "alpha_percep": st.sampled_from([0.3, 1.0]),
    "alpha_reason": st.sampled_from([0.0, 0.3, 1.0]),
    "reason_groups": st.integers(1, 16),
    "sum_prob": st.booleans(),
})


def dw(batch, cfg):
    """``cfg["verdict"]``: the seam's ``correct`` column (acc, NaN on empty rows), ``acc`` only, or neither (the
    reward >= 0.5)."""
    cfg = dict(cfg)
    verdict = cfg.pop("verdict", "acc")
    ntb = dict(batch["non_tensor_batch"])
    if verdict == "seam":
        ntb[CORRECT] = np.where(batch["response_mask"].sum(-1).numpy() > 0, ntb[ACC], np.nan)
    elif verdict == "reward":
        del ntb[ACC]
    config = OmegaConf.create({"difficulty": {"weighting": cfg}})
    return compute_difficulty_weighted_advantage(config=config, **dict(batch, non_tensor_batch=ntb))[0]


def durian(batch, cfg):
    return compute_durian_advantage(config=OmegaConf.create({"difficulty": {"durian": cfg}}), **batch)[0]


@SETTINGS
@given(blocks=batches(), cfg=weighting_cfgs)
def test_dw_finite_and_masked(blocks, cfg):
    b = assemble(blocks)
    adv = dw(b, cfg)
    assert torch.isfinite(adv).all()
    assert torch.all(adv[b["response_mask"] == 0] == 0)


@SETTINGS
@given(blocks=batches(), cfg=durian_cfgs)
def test_durian_finite_and_masked(blocks, cfg):
    b = assemble(blocks)
    adv = durian(b, cfg)
    assert torch.isfinite(adv).all()
    assert torch.all(adv[b["response_mask"] == 0] == 0)


def _block_rows(blocks):
    starts = np.cumsum([0] + [len(b["rewards"]) for b in blocks])
    return [list(range(starts[k], starts[k + 1])) for k in range(len(blocks))]


@SETTINGS
@given(blocks=batches(), cfg=weighting_cfgs, data=st.data())
def test_dw_permuting_prompts_permutes_outputs(blocks, cfg, data):
    order = data.draw(st.permutations(range(len(blocks))))
    rows = _block_rows(blocks)
    perm = [i for k in order for i in rows[k]]
    a = dw(assemble(blocks), cfg)
    b = dw(assemble([blocks[k] for k in order]), cfg)
    torch.testing.assert_close(b, a[perm], atol=1e-5, rtol=1e-5)


@SETTINGS
@given(blocks=batches(), cfg=weighting_cfgs, seed=st.integers(0, 2**31 - 1))
def test_dw_permuting_responses_permutes_outputs(blocks, cfg, seed):
    batch = assemble(blocks)
    bs = len(batch["index"])
    perm = torch.randperm(bs, generator=torch.Generator().manual_seed(seed))
    p = perm.numpy()
    shuffled = dict(token_level_rewards=batch["token_level_rewards"][perm], response_mask=batch["response_mask"][perm],
                    index=batch["index"][p], old_log_probs=batch["old_log_probs"][perm],
                    non_tensor_batch={k: v[p] for k, v in batch["non_tensor_batch"].items()})
    torch.testing.assert_close(dw(shuffled, cfg), dw(batch, cfg)[perm], atol=1e-5, rtol=1e-5)


@SETTINGS
@given(blocks=batches(), cfg=durian_cfgs, data=st.data())
def test_durian_permuting_prompts_permutes_outputs(blocks, cfg, data):
    order = data.draw(st.permutations(range(len(blocks))))
    rows = _block_rows(blocks)
    perm = [i for k in order for i in rows[k]]
    a = durian(assemble(blocks), cfg)
    b = durian(assemble([blocks[k] for k in order]), cfg)
    torch.testing.assert_close(b, a[perm], atol=1e-5, rtol=1e-5)


@SETTINGS
@given(blocks=batches(), cfg=weighting_cfgs, c=st.floats(0.01, 100))
def test_dw_scaling_rewards_scales_advantages(blocks, cfg, c):
    cfg = dict(cfg, verdict="acc", keep_std=False)  # correctness from acc: independent of the reward scale
    a = dw(assemble(blocks), cfg)
    b = dw(assemble(blocks, scale=c), cfg)
    # float32 rewards: r * c is rounded once, so compare at float32 precision relative to the batch's scale
    tol = 1e-5 * max(1.0, float(a.abs().max())) * c
    torch.testing.assert_close(b, a * c, atol=tol, rtol=1e-4)
