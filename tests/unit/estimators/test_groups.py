"""Tests of the group math shared by the estimators (``verl_difficulty.estimators.groups``)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from verl_difficulty.estimators import groups as G


def _ragged_batch(bs=23, T=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(bs, T, generator=g) > 0.35).float()  # holes anywhere, not only right padding
    mask[3] = 0  # an empty response
    tlr = torch.randn(bs, T, generator=g)
    lp = -torch.rand(bs, T, generator=g) * 3
    lp[mask == 0] = -float("inf")  # padding log-probs need not be finite
    return tlr, mask, lp


def _selected(lp, mask, exp):
    x = torch.exp(lp.double()) if exp else lp.double()
    return torch.stack([x[i][mask[i] != 0].sum() for i in range(len(x))])


@pytest.mark.parametrize("block_bytes", [4 * 17, 4 * 17 * 5, 1 << 20])  # 1 row, 5 rows, one block
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float64, torch.int64, torch.bool])
@pytest.mark.parametrize("exp", [False, True])
def test_row_sums_any_block_size_and_mask_dtype(monkeypatch, block_bytes, mask_dtype, exp):
    monkeypatch.setattr(G, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(G, "GUFUNC_MIN_ROWS", 1)  # blocks of 1 and 5 rows: both threads take blocks
    tlr, mask, lp = _ragged_batch()
    m = mask.to(mask_dtype)
    before = m.clone()
    s = G.row_sums(m, tlr, lp, exp_log_probs=exp, dtype=torch.float32)
    assert torch.equal(m, before)  # the caller's mask is never modified
    torch.testing.assert_close(s.scores.double(), tlr.double().sum(-1), atol=1e-5, rtol=1e-5)
    assert s.lengths.tolist() == mask.sum(-1).tolist()
    assert s.valid.tolist() == (mask.sum(-1) > 0).tolist() and not s.valid[3]
    assert torch.isfinite(s.log_prob_sum).all()
    torch.testing.assert_close(s.log_prob_sum.double(), _selected(lp, mask, exp), atol=1e-5, rtol=1e-5)


def test_row_sums_dtypes_and_optional_inputs():
    tlr, mask, lp = _ragged_batch(seed=1)
    s = G.row_sums(mask, tlr.double(), lp.double(), dtype=torch.float64)
    assert s.scores.dtype == s.lengths.dtype == s.log_prob_sum.dtype == torch.float64
    torch.testing.assert_close(s.log_prob_sum, _selected(lp, mask, False), atol=1e-12, rtol=0)
    s = G.row_sums(mask, None, lp.to(torch.bfloat16), dtype=torch.float32)  # log-probs of another dtype
    assert s.scores is None and s.log_prob_sum.dtype == torch.float32
    torch.testing.assert_close(s.log_prob_sum.double(), _selected(lp.to(torch.bfloat16).float(), mask, False),
                               atol=1e-4, rtol=1e-4)
    s = G.row_sums(mask, tlr)
    assert s.log_prob_sum is None
    empty = G.row_sums(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, 5))
    assert empty.scores.shape == (0,) and empty.log_prob_sum.shape == (0,)
    with pytest.raises(ValueError, match="log_probs"):
        G.row_sums(mask, tlr, lp[:, :-1])


def test_broadcast_to_tokens_writes_a_fresh_masked_tensor():
    _, mask, _ = _ragged_batch(seed=2)
    v = torch.randn(mask.shape[0], dtype=torch.float64)
    for dtype in (torch.float32, torch.float64, torch.int64, torch.bool):
        m = mask.to(dtype)
        out = G.broadcast_to_tokens(v, m, torch.float32)
        assert out.dtype == torch.float32 and out.data_ptr() != m.data_ptr()
        torch.testing.assert_close(out, v.float()[:, None] * mask, atol=0, rtol=0)
    # a converted copy of the mask that the caller owns (row_sums' mask_copy) becomes the output, in place
    tlr, mask, lp = _ragged_batch(seed=4)
    s = G.row_sums(mask.to(torch.int64), tlr, lp)
    assert s.mask_copy is not None and s.mask_copy.dtype == torch.float32
    assert torch.equal(s.mask_copy, mask)
    out = G.broadcast_to_tokens(v[: mask.shape[0]], mask.to(torch.int64), torch.float32, s.mask_copy)
    assert out.data_ptr() == s.mask_copy.data_ptr()
    torch.testing.assert_close(out, v[: mask.shape[0]].float()[:, None] * mask, atol=0, rtol=0)
    assert G.row_sums(mask, tlr, lp).mask_copy is None  # a mask of the output dtype is not copied


def test_group_ids_and_dense_ids():
    gid, n = G.group_ids(np.array(["b", "a", "b", "c"], dtype=object), 4)
    assert gid.tolist() == [0, 1, 0, 2] and n == 3
    gid, n = G.group_ids(None, 3, {"uid": np.array([7, 7, 9])})
    assert gid.tolist() == [0, 0, 1] and n == 2
    with pytest.raises(ValueError, match="uid"):
        G.group_ids(None, 3, {})
    with pytest.raises(ValueError, match="length 3"):
        G.group_ids(np.array([1, 2]), 3)
    ids, n = G.dense_ids(torch.tensor([2, 0, 1, 0]))
    assert ids.tolist() == [2, 0, 1, 0] and n == 3  # already dense: unchanged
    ids, n = G.dense_ids(torch.tensor([42, 7, 42, -1]))
    assert n == 3 and ids[0] == ids[2] and len({ids[0].item(), ids[1].item(), ids[3].item()}) == 3
    ids, n = G.dense_ids(torch.tensor([0, 2, 2]))  # id 1 unused: not dense
    assert n == 2 and ids.tolist() == [0, 1, 1]


@pytest.mark.parametrize("seed", range(6))
def test_group_moments_and_pooled_moments_match_loops(seed):
    rng = np.random.default_rng(seed)
    bs, num_groups = 40, 9
    gid = torch.from_numpy(rng.integers(0, num_groups, size=bs))
    values = torch.from_numpy(rng.choice([0.0, 0.5, 1.0, 2.0], size=bs))
    valid = torch.from_numpy(rng.random(bs) > 0.2)
    values[~valid] = float("nan")  # invalid rows are selected out, even when not finite
    m = G.group_moments(values, gid, num_groups, valid)
    for g in range(num_groups):
        rows = [i for i in range(bs) if gid[i] == g and valid[i]]
        vals = [values[i].item() for i in rows]
        assert m.count[g].item() == len(rows)
        assert m.mean[g].item() == pytest.approx(statistics.mean(vals) if vals else 0.0, abs=1e-12)
        assert m.std[g].item() == pytest.approx(statistics.stdev(vals) if len(vals) > 1 else 0.0, abs=1e-12)
        assert bool(m.const[g]) == (len(vals) > 1 and len(set(vals)) == 1)
        for i in rows:
            assert m.centred[i].item() == pytest.approx(vals[rows.index(i)] - statistics.mean(vals), abs=1e-12)
    assert isinstance(m.centred, np.ndarray) and m.centred.dtype == np.float64  # statistics: numpy float64
    assert np.all(m.centred[~valid.numpy()] == 0) and np.isfinite(m.centred).all()
    for g in range(num_groups):
        vals = [values[i].item() for i in range(bs) if gid[i] == g and valid[i]]
        assert m.vmin[g].item() == (min(vals) if vals else math.inf)
        assert m.vmax[g].item() == (max(vals) if vals else -math.inf)
        assert m.total[g].item() == pytest.approx(sum(vals), abs=1e-12)
    # pools of groups: the std of all valid values of all groups in the pool
    for n_pools in (1, 3, 12):
        pool_of_group = torch.from_numpy(rng.integers(0, n_pools, size=num_groups))
        pm = G.pooled_moments(m, pool_of_group, n_pools)
        for a in range(n_pools):
            vals = [values[i].item() for i in range(bs) if pool_of_group[gid[i]] == a and valid[i]]
            assert pm.count[a].item() == len(vals)
            want = statistics.stdev(vals) if len(vals) > 1 else 0.0
            assert pm.std[a].item() == pytest.approx(want, abs=1e-12)
            if len(set(vals)) <= 1:
                assert pm.std[a].item() == 0.0  # exactly


def test_pooled_std_of_equal_values_is_exactly_zero():
    # 0.1 is inexact: the prompts' means need not equal 0.1 bit for bit, the pooled std must still be exactly 0
    values = torch.tensor([0.1] * 7 + [0.3, 0.1, 0.2], dtype=torch.float64)
    gid = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    valid = torch.ones(10, dtype=torch.bool)
    m = G.group_moments(values, gid, 3, valid)
    pm = G.pooled_moments(m, torch.tensor([0, 0, 1]), 2)
    assert pm.std[0].item() == 0.0 and pm.count.tolist() == [7.0, 3.0]
    assert pm.std[1].item() == pytest.approx(0.1, abs=1e-12)


def test_group_reductions_and_unbiased_std():
    gid = torch.tensor([0, 0, 1, 2, 2, 2])
    valid = torch.tensor([True, True, False, True, True, False])
    v = torch.tensor([1.0, 3.0, math.nan, 2.0, 4.0, math.inf])
    assert G.group_count(gid, 3, valid).tolist() == [2.0, 0.0, 2.0]
    assert G.group_sum(v, gid, 3, valid).tolist() == [4.0, 0.0, 6.0]
    assert G.group_mean(v, gid, 3, valid).tolist() == [2.0, 0.0, 3.0]
    f64 = torch.float64
    std = G.unbiased_std(torch.tensor([2.0, 5.0, 0.0], dtype=f64), torch.tensor([2.0, 1.0, 0.0], dtype=f64))
    assert std.tolist() == pytest.approx([math.sqrt(2.0), 0.0, 0.0], abs=1e-15)


def test_nonempty_rows_reads_whole_rows_only_when_the_first_token_is_masked():
    _, mask, _ = _ragged_batch(seed=3)
    mask[5, 0] = 0  # a response whose first token is masked but which is not empty
    mask[5, 4] = 1
    mask[7] = 0
    for dtype in (torch.float32, torch.int64, torch.bool):
        m = mask.to(dtype)
        assert G.nonempty_rows(m).tolist() == (mask.sum(-1) > 0).tolist()
    assert G.nonempty_rows(torch.zeros(3, 0)).tolist() == [False] * 3
    s = G.row_sums(mask, torch.ones_like(mask))
    assert s.lengths is None and s.valid.tolist() == (mask.sum(-1) > 0).tolist()
    assert s.scores.tolist() == [float(mask.shape[1])] * mask.shape[0]


def test_row_sums_work_in_a_forked_child_after_the_parent_used_its_threads(monkeypatch):
    import multiprocessing as mp

    monkeypatch.setattr(G, "BLOCK_BYTES", 4 * 17)  # many blocks: the helper threads are used
    monkeypatch.setattr(G, "GUFUNC_MIN_ROWS", 1)
    tlr, mask, lp = _ragged_batch()
    parent = G.row_sums(mask, tlr, lp).log_prob_sum
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_child_sums, (mask, tlr, lp)).get(timeout=60)
    torch.testing.assert_close(child, parent)


def _child_sums(mask, tlr, lp):
    G.BLOCK_BYTES, G.GUFUNC_MIN_ROWS = 4 * 17, 1
    return G.row_sums(mask, tlr, lp).log_prob_sum
