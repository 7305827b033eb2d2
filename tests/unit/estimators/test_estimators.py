"""Tests of the difficulty-aware advantage estimators (issue 3): P2 ``difficulty_weighted`` and P3 ``durian``."""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage

import verl_difficulty.estimators as est
from verl_difficulty.config import ConfigError, defaults
from verl_difficulty.estimators import durian as durian_mod
from verl_difficulty.estimators import groups as groups_mod
from verl_difficulty.estimators import metrics as metrics_mod
from verl_difficulty.estimators.config import (
    MAX_EXP_BETA,
    AlgorithmDifficultyConfig,
    DifficultyWeightingConfig,
    DurianConfig,
)
from verl_difficulty.estimators.difficulty_weighted import (
    compute_difficulty_weighted_advantage,
    difficulty_weight,
    difficulty_weighted_advantage,
    pass_rates,
)
from verl_difficulty.estimators.durian import (
    compute_durian_advantage,
    durian_advantage,
    quantile_edges,
    quantile_group_ids,
)
from verl_difficulty.schema import ACC, CORRECT, EXTRA_INFO, METRIC_PREFIX, VISUAL_ENTROPY

YAML_PATH = Path(__file__).resolve().parents[3] / "verl_difficulty" / "config" / "algorithm_difficulty.yaml"
ATOL = 1e-5


# ======================================================================================================================
# batch builders
# ======================================================================================================================
def make_batch(sizes, T=12, seed=0, reward_values=(0.0, 0.1, 0.9, 1.0), outcome=True, empty=(), entropy_values=None,
               mask_dtype=torch.float32):
    """A verl-like batch: prompts with ``sizes[k]`` rollouts each, shuffled so groups are not contiguous.

    Returns dict with token_level_rewards, response_mask, old_log_probs (bs, T), index (uid objects), acc,
    non_tensor_batch.
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    uids = np.array([f"uid-{k}" for k, n in enumerate(sizes) for _ in range(n)], dtype=object)
    bs = len(uids)
    perm = rng.permutation(bs)
    uids = uids[perm]
    lengths = torch.randint(1, T + 1, (bs,), generator=g)
    for i in empty:
        lengths[i] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(mask_dtype)
    r = torch.tensor(rng.choice(np.asarray(reward_values), size=bs), dtype=torch.float32)
    tlr = torch.zeros(bs, T)
    if outcome:  # verl puts the outcome reward on the last response token
        tlr[torch.arange(bs), (lengths - 1).clamp(min=0)] = r
    else:
        tlr = torch.randn(bs, T, generator=g) * 0.3
    lp = -torch.rand(bs, T, generator=g) * 2.0
    acc = (tlr.sum(-1) >= 0.5).numpy().astype(np.float64)
    if entropy_values is None:
        entropy_values = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
    h_prompt = {u: float(rng.choice(np.asarray(entropy_values))) for u in set(uids.tolist())}
    extra = np.array([{"index": int(u.split("-")[1]), VISUAL_ENTROPY: h_prompt[u]} for u in uids], dtype=object)
    ntb = {"uid": uids, EXTRA_INFO: extra, ACC: acc, "prompt_id": np.array([int(u.split("-")[1]) for u in uids]),
           "data_source": np.array(["synthetic"] * bs, dtype=object)}
    return dict(token_level_rewards=tlr, response_mask=mask, old_log_probs=lp, index=uids, non_tensor_batch=ntb)


def algo(**sections):
    """verl algorithm DictConfig with ``difficulty.<section>`` settings."""
    return OmegaConf.create({"adv_estimator": "grpo", "norm_adv_by_std_in_grpo": True, "difficulty": sections})


def per_response(adv):
    """(bs, T) token advantages -> per-response scalar (the value on any unmasked token)."""
    return adv.sum(-1) / adv.ne(0).sum(-1).clamp(min=1)


# ======================================================================================================================
# loop references written straight from the equations (PAPERS.md P2, P3)
# ======================================================================================================================
def ref_groups(index, mask):
    groups = defaultdict(list)
    for i in range(len(index)):
        if float(mask[i].sum()) > 0:
            groups[index[i]].append(i)
    return groups


def ref_difficulty_weighted(batch, cfg: DifficultyWeightingConfig, correct):
    tlr, mask, index = batch["token_level_rewards"], batch["response_mask"], batch["index"]
    r = [float(x) for x in tlr.double().sum(-1)]
    groups = ref_groups(index, mask)
    w = {}
    for u, rows in groups.items():
        judged = [float(correct[i]) for i in rows if not math.isnan(float(correct[i]))]  # NaN: no verdict
        if not judged:
            w[u] = 1.0
            continue
        x = 1.0 - sum(judged) / len(judged)
        w[u] = {"constant": 1.0, "linear": 1.0 + cfg.beta * x, "exponential": math.exp(cfg.beta * x),
                "steep_exp": math.exp(cfg.beta * x ** cfg.steep_power)}[cfg.weight]
    if cfg.renormalize:
        mean_w = sum(w.values()) / len(w)
        w = {u: v / mean_w for u, v in w.items()}
    adv = [0.0] * len(r)
    for u, rows in groups.items():
        if len(rows) < 2:
            continue
        vals = [r[i] for i in rows]
        mu = statistics.mean(vals)
        sd = statistics.stdev(vals)
        for i in rows:
            a = w[u] * (r[i] - mu)
            if cfg.keep_std:
                a /= sd + cfg.epsilon
            adv[i] = a
    return torch.tensor(adv, dtype=torch.float64)[:, None] * mask.double()


def ref_quantile_groups(values, fractions, edges=None):
    """Linear-interpolation quantile edges at exact rational positions; group = #edges strictly below the value."""
    if edges is None:
        sv = sorted(values)
        last = len(sv) - 1
        edges = []
        for q in fractions:
            pos = Fraction(q) * last
            lo = math.floor(pos)
            frac = pos - lo
            hi = min(lo + 1, last)
            edges.append(sv[lo] if frac == 0 else min(sv[lo] + (sv[hi] - sv[lo]) * float(frac), sv[hi]))
    return [sum(1 for e in edges if e < v) for v in values]


def ref_durian(batch, cfg: DurianConfig, entropy=None):
    tlr, mask, index, lp = batch["token_level_rewards"], batch["response_mask"], batch["index"], batch["old_log_probs"]
    r = [float(x) for x in tlr.double().sum(-1)]
    groups = ref_groups(index, mask)
    prompts = list(groups)
    mu = {u: statistics.mean([r[i] for i in groups[u]]) for u in prompts}
    sd = {u: statistics.stdev([r[i] for i in groups[u]]) if len(groups[u]) > 1 else 0.0 for u in prompts}

    def conf(i):
        toks = [t for t in range(mask.shape[1]) if mask[i, t] > 0]
        if cfg.sum_prob:
            return sum(math.exp(float(lp[i, t])) for t in toks)
        return sum(float(lp[i, t]) for t in toks) / len(toks)

    def branch_sigma(values, fractions, edges):
        g = ref_quantile_groups([values[u] for u in prompts], fractions, edges)
        grp = dict(zip(prompts, g))
        pools = defaultdict(list)
        for u in prompts:
            pools[grp[u]].extend(r[i] for i in groups[u])
        sigma = {a: statistics.stdev(v) if len(v) > 1 else 0.0 for a, v in pools.items()}
        return {u: sigma[grp[u]] for u in prompts}

    sig_p = sig_r = None
    if cfg.alpha_percep > 0:
        h = {u: sum(entropy[i] for i in groups[u]) / len(groups[u]) for u in prompts}
        sig_p = branch_sigma(h, cfg.percep_quantiles, cfg.percep_edges)
    if cfg.alpha_reason > 0:
        lv = {u: sum(conf(i) for i in groups[u]) / len(groups[u]) for u in prompts}
        sig_r = branch_sigma(lv, [Fraction(k, cfg.reason_groups) for k in range(1, cfg.reason_groups)], None)
    adv = [0.0] * len(r)
    for u in prompts:
        for i in groups[u]:
            num = r[i] - mu[u]
            a = cfg.alpha_ori * num / (sd[u] + cfg.epsilon)
            if sig_p is not None:
                a += cfg.alpha_percep * num / (sig_p[u] + cfg.epsilon)
            if sig_r is not None:
                a += cfg.alpha_reason * num / (sig_r[u] + cfg.epsilon)
            adv[i] = a
    return torch.tensor(adv, dtype=torch.float64)[:, None] * mask.double()


def entropy_of(batch):
    return [e[VISUAL_ENTROPY] for e in batch["non_tensor_batch"][EXTRA_INFO]]


def run_dw(batch, seam=True, **cfg):
    kwargs = dict(token_level_rewards=batch["token_level_rewards"], response_mask=batch["response_mask"],
                  config=algo(weighting=cfg), index=batch["index"])
    if seam:
        kwargs.update(non_tensor_batch=batch["non_tensor_batch"], old_log_probs=batch["old_log_probs"])
    return compute_difficulty_weighted_advantage(**kwargs)


def run_durian(batch, **cfg):
    return compute_durian_advantage(
        token_level_rewards=batch["token_level_rewards"], response_mask=batch["response_mask"],
        config=algo(durian=cfg), index=batch["index"], non_tensor_batch=batch["non_tensor_batch"],
        old_log_probs=batch["old_log_probs"],
    )


def random_sizes(rng, n_prompts, lo=1, hi=9):
    return [int(x) for x in rng.integers(lo, hi, size=n_prompts)]


# ======================================================================================================================
# registration and verl integration
# ======================================================================================================================
def test_registration():
    assert core_algos.get_adv_estimator_fn("durian") is est.compute_durian_advantage
    assert core_algos.get_adv_estimator_fn("difficulty_weighted") is est.compute_difficulty_weighted_advantage


def _dataproto(batch, with_seam_fields=False):
    tensors = {"token_level_rewards": batch["token_level_rewards"], "response_mask": batch["response_mask"]}
    non_tensors = {"uid": batch["index"]}
    if with_seam_fields:
        non_tensors.update(batch["non_tensor_batch"])
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


def test_difficulty_weighted_through_verl_compute_advantage():
    batch = make_batch([4, 4, 3, 5], seed=1, mask_dtype=torch.int64)
    cfg = algo(weighting={"weight": "linear", "beta": 1.5})
    data = compute_advantage(_dataproto(batch), adv_estimator="difficulty_weighted", config=cfg)
    # no seam: correctness falls back to reward >= 0.5
    expected = ref_difficulty_weighted(batch, DifficultyWeightingConfig(weight="linear", beta=1.5),
                                       (batch["token_level_rewards"].sum(-1) >= 0.5).tolist())
    assert data.batch["advantages"].dtype == torch.float32
    torch.testing.assert_close(data.batch["advantages"].double(), expected, atol=ATOL, rtol=0)
    assert torch.equal(data.batch["advantages"], data.batch["returns"])


def test_durian_through_verl_compute_advantage():
    batch = make_batch([4, 4, 3, 5], seed=2)
    data = compute_advantage(_dataproto(batch), adv_estimator="durian",
                             config=algo(durian={"alpha_ori": 1.0, "alpha_percep": 0.0, "alpha_reason": 0.0}))
    ref, _ = core_algos.compute_grpo_outcome_advantage(batch["token_level_rewards"], batch["response_mask"],
                                                       batch["index"])
    torch.testing.assert_close(data.batch["advantages"], ref, atol=1e-6, rtol=0)
    # stock verl passes neither non_tensor_batch nor old_log_probs: the defaults need them -> clear error
    with pytest.raises(ValueError, match=rf"(?s)old_log_probs.*{VISUAL_ENTROPY}"):
        compute_advantage(_dataproto(batch), adv_estimator="durian", config=algo())


def test_unknown_kwargs_are_ignored():
    batch = make_batch([3, 3], seed=3)
    a, _ = run_dw(batch)
    b, _ = compute_difficulty_weighted_advantage(**{k: batch[k] for k in ("token_level_rewards", "response_mask")},
                                                 config=algo(), index=batch["index"],
                                                 non_tensor_batch=batch["non_tensor_batch"], epsilon=0.1,
                                                 reward_baselines=None, something_new=object())
    assert torch.equal(a, b)
    c, _ = compute_durian_advantage(batch["token_level_rewards"], batch["response_mask"], config=algo(),
                                    index=batch["index"], non_tensor_batch=batch["non_tensor_batch"],
                                    old_log_probs=batch["old_log_probs"], sum_pi_squared=None, foo=1)
    d, _ = run_durian(batch)
    assert torch.equal(c, d)


def test_metrics_collector_and_names():
    metrics_mod.pop_all()
    batch = make_batch([4, 4, 4, 4, 1], seed=4)
    run_dw(batch)
    run_durian(batch)
    m = metrics_mod.pop_all()
    assert metrics_mod.pop_all() == {}
    for name in ("weight_mean", "weight_min", "weight_max", "zero_variance_frac", "group_size_mean",
                 "group_size_min", "group_size_max", "singleton_frac", "num_prompts"):
        assert f"{METRIC_PREFIX}weighting/{name}" in m
    for name in ("percep_std/g0", "percep_std/g1", "percep_std/g2", "percep_prompts/g0", "entropy_mean",
                 "entropy_min", "entropy_max", "confidence_mean", "confidence_min", "confidence_max",
                 "zero_variance_frac", "reason_std_mean", "percep_edge/0", "percep_edge/1"):
        assert f"{METRIC_PREFIX}durian/{name}" in m, name
    assert m[f"{METRIC_PREFIX}durian/num_prompts"] == 5
    assert m[f"{METRIC_PREFIX}durian/singleton_frac"] == pytest.approx(0.2)
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    metrics_mod.record({"difficulty/x/y": 1})
    assert metrics_mod.pop_all() == {"difficulty/x/y": 1.0}


# ======================================================================================================================
# config
# ======================================================================================================================
def _assert_same_tree(got, want, path="algorithm"):
    """Recursive equality of keys, values and value types (a YAML ``2`` is not the default ``2.0``)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), path
        assert set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            _assert_same_tree(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_tree(g, w, f"{path}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{path}: {got!r} != {want!r}"


def test_yaml_defaults_equal_dataclass_defaults():
    raw = yaml.safe_load(YAML_PATH.read_text())
    _assert_same_tree(raw, {"difficulty": defaults(AlgorithmDifficultyConfig)})
    assert raw["difficulty"]["weighting"] == defaults(DifficultyWeightingConfig)
    assert raw["difficulty"]["durian"] == defaults(DurianConfig)
    cfg = OmegaConf.create(raw)
    assert DifficultyWeightingConfig.from_algorithm_config(cfg) == DifficultyWeightingConfig()
    assert DurianConfig.from_algorithm_config(cfg) == DurianConfig()
    assert "correctness" not in raw["difficulty"]["weighting"]  # the verdict is the seam's, not an estimator setting
    assert "correct_threshold" not in raw["difficulty"]["weighting"]


def test_config_sources():
    assert DurianConfig.from_algorithm_config(None) == DurianConfig()
    assert DurianConfig.from_algorithm_config({}) == DurianConfig()
    assert DurianConfig.from_algorithm_config({"difficulty": {"durian": {"reason_groups": 16}}}).reason_groups == 16
    c = DurianConfig.from_algorithm_config(algo(durian={"percep_edges": [1.0, 2.0]}))
    assert c.percep_edges == (1.0, 2.0)
    from verl.trainer.config.algorithm import AlgoConfig

    assert DifficultyWeightingConfig.from_algorithm_config(AlgoConfig()) == DifficultyWeightingConfig()


W = r"algorithm\.difficulty\.weighting"
D = r"algorithm\.difficulty\.durian"


@pytest.mark.parametrize(
    "section, values, match",
    [
        ("weighting", {"weight": "cubic"}, rf"{W}\.weight: 'cubic' is not one of"),
        ("weighting", {"beta": -1.0}, rf"{W}\.beta: must be >= 0"),
        ("weighting", {"beta": "big"}, rf"{W}\.beta: expected a number"),
        ("weighting", {"beta": True}, rf"{W}\.beta: expected a number"),
        ("weighting", {"epsilon": 0.0}, rf"{W}\.epsilon: must be > 0"),
        ("weighting", {"steep_power": 0.0}, rf"{W}\.steep_power: must be > 0"),
        ("weighting", {"renormalize": "yes"}, rf"{W}\.renormalize: expected true/false"),
        ("weighting", {"correctness": "acc"}, rf"unknown setting {W}\.correctness"),  # removed: the seam's verdict
        ("weighting", {"correct_threshold": 0.5}, rf"unknown setting {W}\.correct_threshold"),
        ("weighting", {"wieght": "linear"}, rf"unknown setting {W}\.wieght"),
        ("weighting", {"weight": "exponential", "beta": 89.0}, rf"{W}\.beta: 89\.0 overflows float32.*beta <= 88\.72"),
        ("weighting", {"weight": "steep_exp", "beta": 1e3}, rf"{W}\.beta: 1000\.0 overflows float32.*beta <= 88\.72"),
        ("durian", {"alpha_ori": 0.0, "alpha_percep": 0.0, "alpha_reason": 0.0}, rf"{D}: .*all 0"),
        ("durian", {"alpha_reason": -0.1}, rf"{D}\.alpha_reason: must be >= 0"),
        ("durian", {"alpha_ori": float("nan")}, rf"{D}\.alpha_ori: expected a finite number"),
        ("durian", {"percep_quantiles": [0.75, 0.25]}, rf"{D}\.percep_quantiles: must satisfy 0 < q1 < q2 < 1"),
        ("durian", {"percep_quantiles": [0.0, 0.75]}, rf"{D}\.percep_quantiles\[0\]: must be > 0"),
        ("durian", {"percep_quantiles": [0.25]}, rf"{D}\.percep_quantiles: expected a list of 2 items"),
        ("durian", {"percep_quantiles": "0.25,0.75"}, rf"{D}\.percep_quantiles: expected a list, got str"),
        ("durian", {"percep_edges": [2.0, 1.0]}, rf"{D}\.percep_edges: must satisfy e1 <= e2"),
        ("durian", {"percep_edges": {"lo": 1.0}}, rf"{D}\.percep_edges: expected a list"),
        ("durian", {"reason_groups": 0}, rf"{D}\.reason_groups: must be >= 1"),
        ("durian", {"reason_groups": 2.5}, rf"{D}\.reason_groups: expected an integer"),
        ("durian", {"reason_groups": "12"}, rf"{D}\.reason_groups: expected an integer"),
        ("durian", {"on_missing_entropy": "ignore"}, rf"{D}\.on_missing_entropy: 'ignore' is not one of"),
    ],
)
def test_config_validation(section, values, match):
    cls = DifficultyWeightingConfig if section == "weighting" else DurianConfig
    with pytest.raises(ConfigError, match=match):
        cls.from_algorithm_config(algo(**{section: values}))
    with pytest.raises(ValueError, match=match):  # ConfigError is a ValueError; plain dicts are checked alike
        cls.from_algorithm_config({"difficulty": {section: values}})


@pytest.mark.parametrize(
    "difficulty, match",
    [
        ([], r"algorithm\.difficulty: expected a mapping of settings, got list"),
        ("durian", r"algorithm\.difficulty: expected a mapping of settings, got str"),
        ({"durian": []}, rf"{D}: expected a mapping of settings, got list"),
        ({"weighting": 3}, rf"{W}: expected a mapping of settings, got int"),
        ({"duran": {}}, r"unknown setting algorithm\.difficulty\.duran"),
    ],
)
def test_config_wrong_section_types_name_the_key(difficulty, match):
    for cls in (DifficultyWeightingConfig, DurianConfig):
        with pytest.raises(ConfigError, match=match):
            cls.from_algorithm_config(OmegaConf.create({"difficulty": difficulty}))
        with pytest.raises(ConfigError, match=match):
            cls.from_algorithm_config({"difficulty": difficulty})
    with pytest.raises(ConfigError, match="algorithm: expected a mapping"):
        DurianConfig.from_algorithm_config(42)


def test_exponential_beta_bound():
    # the largest accepted beta keeps exp(beta) (the weight of a prompt nobody solves) finite in float32
    assert MAX_EXP_BETA == 88.72 and math.isfinite(float(np.float32(math.exp(MAX_EXP_BETA))))
    for family in ("exponential", "steep_exp"):
        cfg = DifficultyWeightingConfig.from_algorithm_config(algo(weighting={"weight": family, "beta": MAX_EXP_BETA}))
        w = difficulty_weight(torch.zeros(1, dtype=torch.float32), cfg)
        assert np.isfinite(w.astype(np.float32)).all()  # the weight of an unsolved prompt fits float32
    # linear weights 1 + beta stay finite for any finite beta
    assert DifficultyWeightingConfig.from_algorithm_config(algo(weighting={"weight": "linear", "beta": 1e3})).beta == 1e3
    batch = make_batch([4, 4], seed=23, reward_values=(0.0, 1.0))
    batch["non_tensor_batch"][CORRECT] = np.zeros(8)  # nobody solves anything: w = exp(beta)
    adv, _ = run_dw(batch, weight="exponential", beta=MAX_EXP_BETA)
    assert torch.isfinite(adv).all()


# ======================================================================================================================
# difficulty_weighted: hand-computed cases, verl equivalence, loop reference
# ======================================================================================================================
def _core_dw(scores, groups, correct, **cfg):
    adv, _ = difficulty_weighted_advantage(torch.tensor(scores, dtype=torch.float64), torch.tensor(groups),
                                           torch.tensor(correct, dtype=torch.float64),
                                           DifficultyWeightingConfig(**cfg))
    return adv


def test_dw_hand_computed_steep_exp():
    # prompt 0: rewards [1, 0, 0, 0] -> p = 1/4, mean = 0.25; x = 0.75, w = exp(2 * 0.75^2) = exp(1.125) = 3.080217
    #   A = 3.080217 * [0.75, -0.25, -0.25, -0.25] = [2.310163, -0.770054, -0.770054, -0.770054]
    # prompt 1: rewards [1, 1, 0, 0] -> p = 1/2, mean = 0.5; w = exp(2 * 0.25) = exp(0.5) = 1.648721
    #   A = 1.648721 * [0.5, 0.5, -0.5, -0.5] = [0.824361, 0.824361, -0.824361, -0.824361]
    adv = _core_dw([1, 0, 0, 0, 1, 1, 0, 0], [0] * 4 + [1] * 4, [1, 0, 0, 0, 1, 1, 0, 0])
    expected = [2.310163, -0.770054, -0.770054, -0.770054, 0.824361, 0.824361, -0.824361, -0.824361]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_dw_hand_computed_linear_exponential_renormalize_keep_std():
    scores, groups, correct = [1, 0, 0, 0, 1, 1, 0, 0], [0] * 4 + [1] * 4, [1, 0, 0, 0, 1, 1, 0, 0]
    # linear beta=2: w(1/4) = 1 + 2*0.75 = 2.5; w(1/2) = 1 + 2*0.5 = 2
    adv = _core_dw(scores, groups, correct, weight="linear", beta=2.0)
    torch.testing.assert_close(adv, torch.tensor([1.875, -0.625, -0.625, -0.625, 1, 1, -1, -1.0], dtype=torch.float64))
    # exponential beta=1: w(1/4) = e^0.75 = 2.117000; w(1/2) = e^0.5 = 1.648721
    adv = _core_dw(scores, groups, correct, weight="exponential", beta=1.0)
    torch.testing.assert_close(adv[[0, 4]], torch.tensor([0.75 * 2.117000, 0.5 * 1.648721], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    # renormalize (linear beta=2): mean weight (2.5 + 2)/2 = 2.25 -> w = [1.111111, 0.888889]
    adv = _core_dw(scores, groups, correct, weight="linear", beta=2.0, renormalize=True)
    torch.testing.assert_close(adv[[0, 4]], torch.tensor([0.75 * 2.5 / 2.25, 0.5 * 2 / 2.25], dtype=torch.float64))
    # keep_std (constant): prompt 0 std = sqrt((0.75^2 + 3*0.25^2)/3) = sqrt(0.25) = 0.5 -> A_0 = 0.75/0.5 = 1.5
    adv = _core_dw(scores, groups, correct, weight="constant", keep_std=True, epsilon=1e-6)
    assert adv[0].item() == pytest.approx(0.75 / (0.5 + 1e-6), abs=1e-9)


def test_dw_renormalize_batch_mean_weight_is_one():
    metrics_mod.pop_all()
    run_dw(make_batch([4, 5, 6, 2, 8], seed=5), renormalize=True)
    assert metrics_mod.pop_all()[f"{METRIC_PREFIX}weighting/weight_mean"] == pytest.approx(1.0, abs=1e-12)


def test_weight_families_are_decreasing_in_p():
    p = torch.linspace(0, 1, 11, dtype=torch.float64)
    for family in ("linear", "exponential", "steep_exp"):
        w = difficulty_weight(p, DifficultyWeightingConfig(weight=family))
        assert np.all(w[1:] < w[:-1]) and w[-1] == 1.0
    assert np.all(difficulty_weight(p, DifficultyWeightingConfig(weight="constant")) == 1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("keep_std", [False, True])
def test_dw_constant_equals_verl_grpo(seed, keep_std):
    rng = np.random.default_rng(seed)
    batch = make_batch(random_sizes(rng, 12, lo=2), seed=seed, outcome=seed % 2 == 0)
    adv, ret = run_dw(batch, weight="constant", keep_std=keep_std)
    ref, _ = core_algos.compute_grpo_outcome_advantage(batch["token_level_rewards"], batch["response_mask"],
                                                       batch["index"], norm_adv_by_std_in_grpo=keep_std)
    assert adv is ret
    torch.testing.assert_close(adv, ref, atol=1e-6 if seed % 2 == 0 else 1e-5, rtol=1e-6)


@pytest.mark.parametrize("seed", range(25))
def test_dw_matches_loop_reference(seed):
    rng = np.random.default_rng(100 + seed)
    sizes = random_sizes(rng, int(rng.integers(1, 15)), lo=1, hi=10)
    bs = sum(sizes)
    empty = rng.choice(bs, size=int(rng.integers(0, 3)), replace=False).tolist() if bs > 2 else []
    batch = make_batch(sizes, seed=seed, empty=empty, outcome=seed % 3 != 0)
    family = ["steep_exp", "exponential", "linear", "constant"][seed % 4]
    cfg = dict(weight=family, beta=float(rng.uniform(0, 4)), renormalize=bool(seed % 2), keep_std=bool(seed % 5 == 0))
    ntb = batch["non_tensor_batch"]
    lengths = batch["response_mask"].sum(-1).numpy()
    source = ["seam", "acc", "reward"][seed % 3]
    if source == "seam":  # the seam's verdict, independent of the reward here; NaN on empty responses
        ntb[CORRECT] = rng.integers(0, 2, size=bs).astype(np.float64)
        ntb[CORRECT][lengths == 0] = np.nan
        correct = ntb[CORRECT]
    elif source == "acc":
        ntb[ACC] = rng.integers(0, 2, size=bs).astype(np.float64)
        correct = ntb[ACC]
    else:  # neither: reward >= 0.5 (the seam's default threshold)
        del ntb[ACC]
        correct = (batch["token_level_rewards"].sum(-1) >= 0.5).numpy()
    adv, _ = run_dw(batch, **cfg)
    ref = ref_difficulty_weighted(batch, DifficultyWeightingConfig(**cfg), correct)
    torch.testing.assert_close(adv.double(), ref, atol=ATOL, rtol=1e-5)


def test_dw_verdict_sources():
    batch = make_batch([4, 4], seed=6, reward_values=(0.0, 0.6, 1.0))
    ntb = batch["non_tensor_batch"]
    by_reward = (batch["token_level_rewards"].sum(-1) >= 0.5).numpy().astype(np.float64)
    # acc disagrees with the threshold on purpose: all-correct acc gives p = 1, w = 1
    ntb[ACC] = np.ones(8)
    a_acc, _ = run_dw(batch)
    a_const, _ = run_dw(batch, weight="constant")
    assert torch.allclose(a_acc, a_const)
    # the seam's verdict wins over acc
    ntb[CORRECT] = by_reward
    a_seam, _ = run_dw(batch)
    assert not torch.allclose(a_seam, a_acc)
    # no verdict, no acc: the seam's rule on the reward (>= 0.5), which is what the verdict said above
    del ntb[CORRECT], ntb[ACC]
    a_rew, _ = run_dw(batch)
    assert torch.equal(a_rew, a_seam)
    a_noseam, _ = run_dw(batch, seam=False)
    assert torch.equal(a_noseam, a_seam)
    # acc with a missing value is not used (the seam's rule): falls back to the reward
    ntb[ACC] = np.array([1, np.nan, 1, 1, 1, 1, 1, 1], dtype=np.float64)
    assert torch.equal(run_dw(batch)[0], a_seam)
    # a verdict outside [0, 1] is an error
    ntb[CORRECT] = np.array([1, 0, 2, 0, 1, 1, 0, 0], dtype=np.float64)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_dw(batch)


def test_dw_pass_rate_is_the_samplers_pass_rate():
    """p_s of the estimator = the per-prompt mean of the same ``correct`` array the sampler receives (NaN left out)."""
    batch = make_batch([4, 5, 3, 6, 2], seed=21, empty=[1, 7, 19])
    ntb = batch["non_tensor_batch"]
    bs = len(batch["index"])
    rng = np.random.default_rng(21)
    correct = rng.integers(0, 2, size=bs).astype(np.float64)
    correct[[1, 7, 19]] = np.nan  # the seam's verdict of an empty response
    ntb[CORRECT] = correct
    ntb[ACC] = 1.0 - np.nan_to_num(correct)  # must not be used: the seam's verdict is the one
    # what DifficultySampler.update(prompt_ids, correct) averages per prompt (finite outcomes only)
    pid = ntb["prompt_id"]
    known = np.isfinite(correct)
    ids, inv = np.unique(pid[known], return_inverse=True)
    sampler_p = dict(zip(ids.tolist(), np.bincount(inv, weights=correct[known]) / np.bincount(inv)))

    # 1) the helper the estimator uses
    gid, num_groups = groups_mod.group_ids(batch["index"], bs)
    valid = batch["response_mask"].sum(-1) > 0
    p, judged = pass_rates(torch.from_numpy(correct), gid, num_groups, valid)
    for g in range(num_groups):
        assert p[g].item() == pytest.approx(sampler_p[int(pid[gid == g][0])], abs=1e-12)
        assert judged[g].item() == int((known & (gid == g).numpy()).sum())
    # 2) the advantages are w(p_s) * (r - mean_s) with exactly these p_s
    metrics_mod.pop_all()
    adv, _ = run_dw(batch, weight="linear", beta=1.5)
    r = batch["token_level_rewards"].double().sum(-1)
    for i in range(bs):
        if not valid[i]:
            assert torch.all(adv[i] == 0)
            continue
        rows = [j for j in range(bs) if pid[j] == pid[i] and valid[j]]
        expected = (1.0 + 1.5 * (1.0 - sampler_p[int(pid[i])])) * (r[i] - r[rows].mean())
        assert per_response(adv[i:i + 1]).item() == pytest.approx(float(expected), abs=1e-5)
    # 3) the recorded pass-rate metrics are over the same per-prompt values
    m = metrics_mod.pop_all()
    values = list(sampler_p.values())
    assert m[f"{METRIC_PREFIX}weighting/pass_rate_mean"] == pytest.approx(float(np.mean(values)), abs=1e-12)
    assert m[f"{METRIC_PREFIX}weighting/pass_rate_min"] == pytest.approx(min(values), abs=1e-12)
    assert m[f"{METRIC_PREFIX}weighting/pass_rate_max"] == pytest.approx(max(values), abs=1e-12)


# ======================================================================================================================
# durian: hand-computed cases, verl equivalence, loop reference
# ======================================================================================================================
def test_durian_hand_computed():
    # 4 prompts x 2 rollouts. rewards: A=[1,0] B=[1,1] C=[0,1] D=[1,0]; per-prompt mean 0.5, 1, 0.5, 0.5.
    # visual entropy H: A=1, B=2, C=3, D=4 -> edges: q25 at position 0.75 -> 1.75, q75 at 2.25 -> 3.25
    #   groups: A -> g0 (1 <= 1.75), B, C -> g1, D -> g2.
    # pooled sigma: g0 = std([1,0]) = 0.707107; g1 = std([1,1,0,1]) = 0.5; g2 = std([1,0]) = 0.707107.
    # alpha = (0, 1, 0): A_percep = (r - mean) / (sigma + eps):
    #   A: +-0.5/0.707107 = +-0.707107; B: 0; C: -+0.5/0.5 = -+1; D: +-0.707107.
    scores = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    entropy = torch.tensor([1, 1, 2, 2, 3, 3, 4, 4], dtype=torch.float64)
    cfg = DurianConfig(alpha_ori=0.0, alpha_percep=1.0, alpha_reason=0.0)
    adv, m = durian_advantage(scores, groups, cfg, entropy=entropy)
    s = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([s, -s, 0, 0, -0.5 / (0.5 + 1e-6), 0.5 / (0.5 + 1e-6), s, -s],
                                                 dtype=torch.float64))
    assert m[f"{METRIC_PREFIX}durian/percep_edge/0"] == 1.75 and m[f"{METRIC_PREFIX}durian/percep_edge/1"] == 3.25
    assert m[f"{METRIC_PREFIX}durian/percep_std/g1"] == pytest.approx(0.5)
    # reasoning branch, b = 2, confidences A=-1, B=-2, C=-3, D=-4: edge at 1/2 -> position 1.5 -> -2.5;
    #   g0 = {C, D} (<= -2.5): pool [0,1,1,0] std = 0.57735; g1 = {A, B}: pool [1,0,1,1] std = 0.5
    #   alpha = (0.5, 0, 0.5): GRPO part for A: 0.5/0.707107 = 0.707107 -> A_0 = 0.5*0.707107 + 0.5*0.5/0.5 = 0.853553
    #   C row 4: 0.5 * (-0.707107) + 0.5 * (-0.5/0.57735) = -0.353553 - 0.433013 = -0.786566
    conf = torch.tensor([-1, -1, -2, -2, -3, -3, -4, -4], dtype=torch.float64)
    cfg = DurianConfig(alpha_ori=0.5, alpha_percep=0.0, alpha_reason=0.5, reason_groups=2)
    adv, _ = durian_advantage(scores, groups, cfg, confidence=conf)
    assert adv[0].item() == pytest.approx(0.853553, abs=1e-5)
    assert adv[4].item() == pytest.approx(-0.786566, abs=1e-5)
    assert adv[2].item() == 0.0 and adv[3].item() == 0.0


@pytest.mark.parametrize("seed", range(8))
def test_durian_grpo_only_equals_verl_grpo(seed):
    rng = np.random.default_rng(seed)
    batch = make_batch(random_sizes(rng, 10, lo=2), seed=seed)
    adv, _ = run_durian(batch, alpha_ori=1.0, alpha_percep=0.0, alpha_reason=0.0)
    ref, _ = core_algos.compute_grpo_outcome_advantage(batch["token_level_rewards"], batch["response_mask"],
                                                       batch["index"])
    torch.testing.assert_close(adv, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(30))
def test_durian_matches_loop_reference(seed):
    rng = np.random.default_rng(200 + seed)
    sizes = random_sizes(rng, int(rng.integers(1, 20)), lo=1, hi=9)
    bs = sum(sizes)
    empty = rng.choice(bs, size=int(rng.integers(0, 3)), replace=False).tolist() if bs > 2 else []
    batch = make_batch(sizes, seed=seed, empty=empty, entropy_values=(1.0, 1.5, 2.0, 2.5)[: 1 + seed % 4])
    alphas = [(0.4, 0.3, 0.3), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.2, 0.5, 0.7)][seed % 4]
    cfg = dict(alpha_ori=alphas[0], alpha_percep=alphas[1], alpha_reason=alphas[2],
               reason_groups=int(rng.integers(1, 16)), sum_prob=bool(seed % 3 == 0))
    if seed % 5 == 0:
        cfg["percep_edges"] = [1.25, 2.0]
    adv, _ = run_durian(batch, **cfg)
    ref = ref_durian(batch, DurianConfig(**cfg), entropy_of(batch))
    torch.testing.assert_close(adv.double(), ref, atol=ATOL, rtol=1e-5)


def test_durian_sum_prob_hand_computed():
    # one response per prompt x 2 prompts... use 2 prompts x 2 rollouts with 2 tokens each:
    # lp rows: [ln .5, ln .5] -> sum_prob 1.0; [ln .25, ln .25] -> 0.5; [ln 1, ln .5] -> 1.5; [ln .1, ln .1] -> 0.2
    # prompt 0 confidence (1.0 + 0.5)/2 = 0.75, prompt 1 (1.5 + 0.2)/2 = 0.85 -> b=2: edge 0.8, g0={p0}, g1={p1}
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.25], [1.0, 0.5], [0.1, 0.1]]))
    mask = torch.ones(4, 2)
    conf = durian_mod.response_confidence(lp, mask, mask.sum(-1), sum_prob=True)
    torch.testing.assert_close(conf, torch.tensor([1.0, 0.5, 1.5, 0.2], dtype=torch.float64), atol=1e-6, rtol=0)
    conf = durian_mod.response_confidence(lp, mask, mask.sum(-1), sum_prob=False)
    torch.testing.assert_close(conf, torch.log(torch.tensor([0.5, 0.25, 0.5 ** 0.5, 0.1], dtype=torch.float64)),
                               atol=1e-6, rtol=0)
    groups, edges = quantile_group_ids(torch.tensor([0.75, 0.85], dtype=torch.float64), [Fraction(1, 2)])
    assert groups.tolist() == [0, 1] and edges.item() == pytest.approx(0.8)


# ======================================================================================================================
# edge cases (each one a test)
# ======================================================================================================================
@pytest.mark.parametrize("which", ["dw", "durian"])
def test_singleton_groups_get_zero(which):
    batch = make_batch([1, 1, 1, 3], seed=7, reward_values=(0.0, 1.0, 0.3))
    adv, _ = run_dw(batch) if which == "dw" else run_durian(batch)
    single = [i for i, u in enumerate(batch["index"]) if u != "uid-3"]
    assert torch.all(adv[single] == 0)
    assert torch.isfinite(adv).all()


@pytest.mark.parametrize("which", ["dw", "durian"])
def test_all_equal_rewards_in_a_prompt_get_exactly_zero(which):
    batch = make_batch([5, 5, 5], seed=8)
    r = torch.tensor([0.9 if u == "uid-0" else float(i % 2) for i, u in enumerate(batch["index"])])
    tlr = torch.zeros_like(batch["token_level_rewards"])
    tlr[:, 0] = r
    batch["token_level_rewards"] = tlr
    adv, _ = run_dw(batch, keep_std=True) if which == "dw" else run_durian(batch)
    rows = [i for i, u in enumerate(batch["index"]) if u == "uid-0"]
    assert torch.all(adv[rows] == 0)
    assert adv.abs().sum() > 0


def test_durian_whole_difficulty_group_with_zero_variance():
    # prompts 0,1 (lowest entropy -> g0 with q25 edge) all rewards 1: sigma_g0 = 0 -> A_percep = 0 / eps = 0 there.
    scores = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1, 1, 0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    entropy = torch.tensor([1, 1, 1, 1, 2, 2, 3, 3, 4, 4], dtype=torch.float64)
    cfg = DurianConfig(alpha_ori=0.0, alpha_percep=1.0, alpha_reason=0.0)
    metrics_mod.pop_all()
    adv, m = durian_advantage(scores, groups, cfg, entropy=entropy)
    # edges: sorted H [1,1,2,3,4], q25 at position 1 -> 1 (tie goes to g0), q75 at position 3 -> 3
    assert m[f"{METRIC_PREFIX}durian/percep_prompts/g0"] == 2 and m[f"{METRIC_PREFIX}durian/percep_std/g0"] == 0.0
    assert torch.all(adv[:4] == 0) and torch.isfinite(adv).all()
    # g1 = prompts 2, 3 (H 2, 3 <= 3): pool [1,0,0,1] std = 0.57735 -> prompt 2 row 4: 0.5/0.57735 = 0.866025
    assert adv[4].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-6))
    assert m[f"{METRIC_PREFIX}durian/zero_variance_frac"] == pytest.approx(0.4)


@pytest.mark.parametrize("which", ["dw", "durian"])
def test_uneven_group_sizes(which):
    batch = make_batch([1, 2, 3, 7, 16, 5], seed=9)
    if which == "dw":
        adv, _ = run_dw(batch)
        ref = ref_difficulty_weighted(batch, DifficultyWeightingConfig(), batch["non_tensor_batch"][ACC])
    else:
        adv, _ = run_durian(batch, reason_groups=4)
        ref = ref_durian(batch, DurianConfig(reason_groups=4), entropy_of(batch))
    torch.testing.assert_close(adv.double(), ref, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("which", ["dw", "durian"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rewards_raise_with_indices(which, bad):
    batch = make_batch([4, 4], seed=10)
    batch["token_level_rewards"][2, 0] = bad
    batch["token_level_rewards"][5, 0] = bad
    with pytest.raises(ValueError, match=r"2 of 8 responses have a non-finite reward .*\[2, 5\]"):
        run_dw(batch) if which == "dw" else run_durian(batch)


@pytest.mark.parametrize("which", ["dw", "durian"])
def test_empty_response_masks(which):
    batch = make_batch([4, 4, 4, 2], seed=11, empty=[0, 5, 9])
    batch["token_level_rewards"][[0, 5, 9]] = 7.0  # rewards on empty rows must not leak into group statistics
    run = run_dw if which == "dw" else run_durian
    adv, _ = run(batch)
    assert torch.all(adv[[0, 5, 9]] == 0) and torch.isfinite(adv).all()
    keep = [i for i in range(len(batch["index"])) if i not in (0, 5, 9)]
    sub = dict(batch, token_level_rewards=batch["token_level_rewards"][keep],
               response_mask=batch["response_mask"][keep],
               old_log_probs=batch["old_log_probs"][keep], index=batch["index"][keep],
               non_tensor_batch={k: v[keep] for k, v in batch["non_tensor_batch"].items()})
    adv_sub, _ = run(sub)
    torch.testing.assert_close(adv[keep], adv_sub, atol=1e-6, rtol=0)
    # a whole batch of empty rows
    all_empty = dict(batch, response_mask=torch.zeros_like(batch["response_mask"]))
    adv0, _ = run(all_empty)
    assert torch.all(adv0 == 0)


def test_durian_every_prompt_in_one_quantile():
    batch = make_batch([4, 3, 5, 4], seed=12, entropy_values=(2.0,))
    batch["old_log_probs"] = torch.full_like(batch["old_log_probs"], -0.5)  # equal confidence for all prompts
    metrics_mod.pop_all()
    adv, _ = run_durian(batch, alpha_ori=0.0, alpha_percep=0.5, alpha_reason=0.5)
    m = metrics_mod.pop_all()
    assert m[f"{METRIC_PREFIX}durian/percep_prompts/g0"] == 4 and m[f"{METRIC_PREFIX}durian/reason_prompts/g0"] == 4
    assert m[f"{METRIC_PREFIX}durian/percep_edge/0"] == 2.0 == m[f"{METRIC_PREFIX}durian/percep_edge/1"]
    # every prompt in g0 of both branches: sigma = pooled std of the whole batch
    r = batch["token_level_rewards"].double().sum(-1)
    sigma = r.std()
    mu = {u: r[[i for i, v in enumerate(batch["index"]) if v == u]].mean() for u in set(batch["index"])}
    expected = torch.stack([(r[i] - mu[u]) / (sigma + 1e-6) for i, u in enumerate(batch["index"])])
    torch.testing.assert_close(per_response(adv).double(), expected, atol=1e-5, rtol=0)


def test_ties_at_quantile_edges():
    # P = 5, H sorted [1, 2, 2, 2, 3]: q25 at position 1 -> e1 = 2, q75 at position 3 -> e2 = 2.
    # ties go to the lower group: 1 and the three 2s -> g0; 3 -> g2; g1 empty.
    h = torch.tensor([2.0, 3.0, 2.0, 1.0, 2.0], dtype=torch.float64)
    groups, edges = quantile_group_ids(h, [0.25, 0.75])
    assert edges.tolist() == [2.0, 2.0] and groups.tolist() == [0, 2, 0, 0, 0]
    # interpolated edge between tied values equals them: [1, 1, 5, 5] q75 at 2.25 -> 5 -> 5s are in g1, not g2
    groups, edges = quantile_group_ids(torch.tensor([5.0, 1.0, 5.0, 1.0], dtype=torch.float64), [0.25, 0.75])
    assert edges.tolist() == [1.0, 5.0] and groups.tolist() == [1, 0, 1, 0]
    # equal-frequency b = 4 on 8 distinct values: 2 per group; with ties, equal values share a group
    v = torch.tensor([8, 7, 6, 5, 4, 3, 2, 1], dtype=torch.float64)
    fr = [Fraction(k, 4) for k in range(1, 4)]
    assert quantile_group_ids(v, fr)[0].tolist() == [3, 3, 2, 2, 1, 1, 0, 0]
    v = torch.tensor([1, 2, 2, 2, 2, 6, 7, 8], dtype=torch.float64)  # positions 1.75, 3.5, 5.25 -> 2, 2, 6.25
    assert quantile_group_ids(v, fr)[0].tolist() == [0, 0, 0, 0, 0, 2, 3, 3]
    # the ties rule is order-independent
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert quantile_group_ids(v[perm], fr)[0].tolist() == quantile_group_ids(v, fr)[0][perm].tolist()
    # fixed edges: value equal to an edge goes to the lower group
    assert quantile_group_ids(torch.tensor([1.0, 1.5, 2.0, 2.5]), [], edges=[1.5, 2.0])[0].tolist() == [0, 0, 1, 2]


def test_quantile_edges_match_torch_quantile():  # inputs: tensors, outputs: numpy float64
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7, 50, 333):
        x = torch.randn(n, generator=g, dtype=torch.float64)
        for b in (2, 3, 12, 16):
            fr = [Fraction(k, b) for k in range(1, b)]
            ref = torch.quantile(x, torch.tensor([float(f) for f in fr], dtype=torch.float64))
            np.testing.assert_allclose(quantile_edges(x, fr), ref.numpy(), atol=1e-12, rtol=0)


def test_durian_missing_entropy_error_and_warn_once(monkeypatch):
    batch = make_batch([3, 3, 3], seed=13)
    batch["non_tensor_batch"][EXTRA_INFO] = np.array([{"index": 0}] * 9, dtype=object)
    with pytest.raises(ValueError, match=rf"no finite '{VISUAL_ENTROPY}'.*verl-difficulty score"):
        run_durian(batch)
    with pytest.raises(ValueError, match=VISUAL_ENTROPY):  # no non_tensor_batch at all
        compute_durian_advantage(batch["token_level_rewards"], batch["response_mask"], config=algo(),
                                 index=batch["index"], old_log_probs=batch["old_log_probs"])
    monkeypatch.setitem(durian_mod._WARNED, "missing_entropy", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a1, _ = run_durian(batch, on_missing_entropy="warn")
        a2, _ = run_durian(batch, on_missing_entropy="warn")
    assert len([w for w in caught if VISUAL_ENTROPY in str(w.message)]) == 1
    # the branch is dropped, the other weights are not renormalised
    expected, _ = run_durian(batch, alpha_percep=0.0)
    assert torch.equal(a1, expected) and torch.equal(a2, expected)
    # a flat visual_entropy column in non_tensor_batch is used when present
    batch["non_tensor_batch"][VISUAL_ENTROPY] = np.array([1.0] * 3 + [2.0] * 3 + [3.0] * 3)
    a3, _ = run_durian(batch)
    assert torch.isfinite(a3).all()


def test_durian_branch_inputs_only_needed_when_active():
    batch = make_batch([3, 3, 3], seed=14)
    with pytest.raises(ValueError, match="old_log_probs"):
        compute_durian_advantage(batch["token_level_rewards"], batch["response_mask"], config=algo(),
                                 index=batch["index"], non_tensor_batch=batch["non_tensor_batch"])
    # alpha_reason = 0: no old_log_probs needed; alpha_percep = 0: no entropy needed
    a, _ = compute_durian_advantage(batch["token_level_rewards"], batch["response_mask"],
                                    config=algo(durian={"alpha_reason": 0.0}), index=batch["index"],
                                    non_tensor_batch=batch["non_tensor_batch"])
    b, _ = compute_durian_advantage(batch["token_level_rewards"], batch["response_mask"],
                                    config=algo(durian={"alpha_percep": 0.0}), index=batch["index"],
                                    old_log_probs=batch["old_log_probs"])
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    # -inf log-probs on a real token: clear error
    batch["old_log_probs"][4, 0] = -float("inf")
    with pytest.raises(ValueError, match=r"non-finite confidence .*\[4\]"):
        run_durian(batch)


@pytest.mark.parametrize("which", ["dw", "durian"])
def test_mask_dtypes_agree_and_mask_is_not_modified(which):
    base = make_batch([4, 3, 5], seed=15)
    outs = []
    for dtype in (torch.float32, torch.int64, torch.bool, torch.float64):
        batch = dict(base, response_mask=base["response_mask"].to(dtype))
        before = batch["response_mask"].clone()
        adv, _ = run_dw(batch) if which == "dw" else run_durian(batch)
        assert torch.equal(batch["response_mask"], before)
        assert adv.dtype == torch.float32 and adv.shape == before.shape
        outs.append(adv)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-6, rtol=0)


def test_group_ids_any_labels():
    batch = make_batch([3, 4], seed=16)
    a, _ = run_dw(batch)
    b, _ = compute_difficulty_weighted_advantage(batch["token_level_rewards"], batch["response_mask"], config=algo(),
                                                 index=np.array([{"uid-0": 42, "uid-1": 7}[u] for u in batch["index"]]),
                                                 non_tensor_batch=batch["non_tensor_batch"])
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="uid"):
        compute_difficulty_weighted_advantage(batch["token_level_rewards"], batch["response_mask"], config=algo())


@pytest.mark.parametrize("sum_prob", [False, True])
def test_durian_confidence_ignores_masked_positions(sum_prob):
    """-inf / NaN / +inf log-probs at masked positions (padding, holes) are selected out: no row breaks."""
    batch = make_batch([4, 4, 4, 3], seed=22)
    mask = batch["response_mask"].clone()
    mask[2, 0] = 0  # a hole inside a response (multi-turn tool tokens are masked like this)
    mask[5, :] = 0  # and an empty response
    batch["response_mask"] = mask
    clean, _ = run_durian(batch, sum_prob=sum_prob, alpha_ori=0.2, alpha_reason=0.8)
    conf_clean = durian_mod.response_confidence(batch["old_log_probs"], mask, sum_prob=sum_prob)
    lp = batch["old_log_probs"].clone()
    masked = mask == 0
    assert masked.sum() > 10
    lp[masked] = -float("inf")
    lp[2, 0] = float("nan")
    lp[5, 1] = float("inf")
    dirty = dict(batch, old_log_probs=lp)
    adv, _ = run_durian(dirty, sum_prob=sum_prob, alpha_ori=0.2, alpha_reason=0.8)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv, clean, atol=1e-6, rtol=1e-6)
    conf = durian_mod.response_confidence(lp, mask, sum_prob=sum_prob)
    assert torch.isfinite(conf).all()
    torch.testing.assert_close(conf, conf_clean, atol=1e-6, rtol=1e-6)
    # the same rows by explicit selection, written straight from the definition
    for i in range(len(conf)):
        toks = [float(x) for x, k in zip(lp[i], mask[i]) if k != 0]
        if not toks:
            assert conf[i].item() == 0.0
            continue
        want = sum(math.exp(t) for t in toks) if sum_prob else sum(toks) / len(toks)
        assert conf[i].item() == pytest.approx(want, abs=1e-5)
    # a non-finite log-prob at a real token still is an error naming the row
    lp[3, 0] = -float("inf") if not sum_prob else float("nan")
    with pytest.raises(ValueError, match=r"non-finite confidence .*\[3\]"):
        run_durian(dict(batch, old_log_probs=lp), sum_prob=sum_prob, alpha_reason=0.8)


@pytest.mark.parametrize("which", ["dw", "durian"])
def test_estimators_leave_the_torch_thread_count_alone(which):
    before = torch.get_num_threads()
    batch = make_batch([4, 4, 3], seed=24)
    run_dw(batch) if which == "dw" else run_durian(batch)
    assert torch.get_num_threads() == before
