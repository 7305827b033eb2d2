"""The sampler's parts: config errors with dotted keys, observe vs update, counters, the fast target draw against a
brute-force O(N) reference, and each part's own state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from verl_difficulty import schema
from verl_difficulty.config import ConfigError
from verl_difficulty.sampling.config import HintConfig, SamplerConfig
from verl_difficulty.sampling.nearest import Fenwick
from verl_difficulty.sampling.sampler import DifficultySampler


def _sampler(n=10, priors=None, batch_size=1, buckets=None, **cfg):
    return DifficultySampler(np.arange(100, 100 + n), priors, SamplerConfig.from_dict({"enable": True, **cfg}),
                             buckets=buckets, batch_size=batch_size)


def _batch(s, k):
    """The next ``k`` indices (a fresh iterator starts a new epoch when the last one ended)."""
    it = getattr(s, "_it", None) or iter(s)
    out = []
    while len(out) < k:
        try:
            out.append(next(it))
        except StopIteration:
            it = iter(s)
    s._it = it
    return out


# --------------------------------------------------------------------------------------------------------------------
# config: wrong types and unknown keys name the full dotted key
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, msg", [
    ({"seed": "1"}, r"difficulty\.sampler\.seed: expected an integer, got str '1'"),
    ({"replacement": "yes"}, r"difficulty\.sampler\.replacement: expected true/false"),
    ({"target": True}, r"difficulty\.sampler\.target: expected a number, got bool"),
    ({"buckets": "easy"}, r"difficulty\.sampler\.buckets: expected a list, got str"),
    ({"mix": [0.5]}, r"difficulty\.sampler\.mix: expected a mapping"),
    ({"mode": "stratified", "mix": {"hard": "1"}}, r"difficulty\.sampler\.mix\.hard: expected a number"),
    ({"band": {"readmit_after": 0.5}}, r"difficulty\.sampler\.band\.readmit_after: expected an integer"),
    ({"band": {"high": 2}}, r"difficulty\.sampler\.band\.high: must be <= 1\.0, got 2\.0"),
    ({"band": []}, r"difficulty\.sampler\.band: expected a mapping of settings"),
    ({"schedule": {"end_step": "5"}}, r"difficulty\.sampler\.schedule\.end_step: expected an integer"),
    ({"schedule": {"type": "step", "phases": [{"start_step": 1, "band": [0.1]}]}},
     r"difficulty\.sampler\.schedule\.phases\[0\]\.band: expected true/false or a list or null, got \[0\.1\]"),
    ({"schedule": {"type": "step", "phases": [{"start_step": 1, "band": True}]}},
     r"difficulty\.sampler\.schedule\.phases\[0\]\.band: expected \[low, high\] or false"),
    ({"schedule": {"type": "two_stage", "switch_step": 3, "stage1": {"start_step": 1}, "stage2": {}}},
     r"difficulty\.sampler\.schedule\.stage1: expected a mapping \{mix\?, target\?, band\?\} \(no start_step"),
    ({"schedule": {"type": "two_stage", "switch_step": 3, "stage1": {}, "stage2": {"mixx": 1}}},
     r"unknown setting difficulty\.sampler\.schedule\.stage2\.mixx"),
    ({"beta_prior": 0, "prior_strength": 0}, r"difficulty\.sampler: beta_prior and prior_strength cannot both be 0"),
    ({"beta_discount": 0}, r"difficulty\.sampler\.beta_discount: must be > 0\.0"),
    ({"mode": "stratified", "include_buckets": ["hard"]}, r"difficulty\.sampler\.include_buckets: mode=stratified"),
])
def test_sampler_config_errors_name_the_dotted_key(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        SamplerConfig.from_dict(cfg)


@pytest.mark.parametrize("cfg, msg", [
    ({"enable": 1}, r"difficulty\.hints\.enable: expected true/false, got int 1"),
    ({"select": "flag"}, r"difficulty\.hints\.select: expected a list, got str"),
    ({"stages": ["2"]}, r"difficulty\.hints\.stages\[0\]: expected an integer"),
    ({"template": 3}, r"difficulty\.hints\.template: expected a string"),
    ({"select": ["bucket"], "buckets": []}, r"difficulty\.hints\.buckets: select=bucket needs at least one bucket"),
    ({"flagkey": "x"}, r"unknown setting difficulty\.hints\.flagkey"),
])
def test_hint_config_errors_name_the_dotted_key(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        HintConfig.from_dict(cfg)


def test_an_unchecked_instance_is_checked_when_the_sampler_is_built():
    with pytest.raises(ConfigError, match=r"difficulty\.sampler\.mode: 'near' is not one of"):
        DifficultySampler(np.arange(4), None, SamplerConfig(mode="near"))


# --------------------------------------------------------------------------------------------------------------------
# observe vs update, counters
# --------------------------------------------------------------------------------------------------------------------
def test_observe_adds_outcomes_without_finishing_the_step():
    a, b = _sampler(6, estimator="ema", ema_alpha=0.5), _sampler(6, estimator="ema", ema_alpha=0.5)
    a.observe([100, 100], [1.0, 1.0])  # an evicted group (all correct)
    assert a.step == 1 and a.metrics().get(schema.metric("curriculum", "step")) is None  # the step is not finished
    assert a.pass_rate()[0] == pytest.approx(0.75)
    a.update([101, 101], [0.0, 1.0], step=1)
    b.update([100, 100, 101, 101], [1.0, 1.0, 0.0, 1.0], step=1)
    assert np.array_equal(a.pass_rate(), b.pass_rate()) and a.step == b.step == 2
    ma, mb = a.metrics(), b.metrics()
    assert ma[schema.metric("sampler", "update_acc_mean")] == mb[schema.metric("sampler", "update_acc_mean")] == 0.75
    assert ma[schema.metric("sampler", "prompts_updated")] == 2  # one group by observe, one by update
    assert mb[schema.metric("sampler", "prompts_updated")] == 2


def test_nan_outcomes_are_left_out_but_the_group_is_counted():
    s = _sampler(4)
    s.update([100, 100, 101, 101], [1.0, np.nan, np.nan, np.nan], step=1)
    assert s.pass_rate()[0] == pytest.approx(2 / 3) and s.pass_rate()[1] == 0.5  # Beta(1,1) + one success
    m = s.metrics()
    assert m[schema.metric("sampler", "prompts_updated")] == 2
    assert m[schema.metric("sampler", "prompts_seen")] == 1 and m[schema.metric("sampler", "update_acc_mean")] == 1.0


def test_observed_outcomes_move_the_adaptive_target():
    s = _sampler(40, batch_size=4, mode="target", schedule={"type": "adaptive", "eta": 0.1})
    batch = _batch(s, 4)
    s.observe(s.prompt_ids[batch[:2]], np.ones(2))
    s.update(s.prompt_ids[batch[2:]], np.zeros(2), step=1)  # step accuracy 0.5: the target stays
    assert s.curriculum.target_state == pytest.approx(0.5)


@pytest.mark.parametrize("mode", [{"mode": "uniform"}, {"mode": "target"},
                                  {"mode": "stratified", "mix": {"easy": 1, "hard": 1}}])
def test_every_drawn_prompt_reaches_the_sampler(mode):
    s = _sampler(64, batch_size=8, buckets=[schema.BUCKETS[i % 4] for i in range(64)], **mode)
    for step in range(1, 13):
        ids = s.prompt_ids[_batch(s, 8)]
        evicted, kept = ids[:3], ids[3:]  # DAPO drops some groups before the advantage step
        s.observe(np.repeat(evicted, 4), np.zeros(12))
        s.update(np.repeat(kept, 4), np.ones(20), step=step)
        m = s.metrics()
        assert m[schema.metric("sampler", "prompts_drawn")] == m[schema.metric("sampler", "prompts_updated")] == 8 * step
    state = s.state_dict()
    assert state["drawer"]["totals"]["drawn"] == state["tracker"]["groups"] == 96


# --------------------------------------------------------------------------------------------------------------------
# the fast target draw against a brute-force O(N) reference
# --------------------------------------------------------------------------------------------------------------------
def _reference(s, n: int, target: float, band, rng: np.random.Generator) -> tuple[list, int, int]:
    """O(N) reference of a target-mode batch at T = 0 on the sampler's current state: (rows, repeats, skipped).

    The same semantics as the index: admissible = inside the band or re-admitted; without replacement the rows drawn
    this epoch are left out unless fewer than ``n`` remain; nearest first, ties at the boundary distance broken by
    ``rng.choice`` over the tied rows in (estimate, row) order."""
    d, est, step = s.drawer, s.tracker.est, s.step
    pool = d.pools[0].astype(np.int64)
    adm = np.ones(len(pool), dtype=bool)
    skipped = 0
    if band is not None:
        p, bu = est[pool], d.banned_until[pool].copy()
        newly = ((p < band[0]) | (p > band[1])) & (bu == 0)
        ra = s.config.band.readmit_after
        bu[newly] = np.iinfo(np.int32).max if ra is None else step + ra
        adm = ((p >= band[0]) & (p <= band[1])) | ((bu > 0) & (bu <= step))
        skipped = int((~adm).sum())
    cand, repeats = pool[adm], 0
    if d.drawn is not None:
        fresh = pool[adm & ~d.drawn[pool]]
        if len(fresh) < n:
            repeats = n - len(fresh)
        else:
            cand = fresh
    cand = cand[np.lexsort((cand, est[cand]))]  # (estimate, row) order
    dist = np.abs(est[cand] - target)
    if len(cand) <= n:
        return cand[np.lexsort((cand, est[cand], dist))].tolist(), repeats, skipped
    d_star = np.sort(dist)[n - 1]
    closer, cdist = cand[dist < d_star], dist[dist < d_star]
    closer = closer[np.lexsort((closer, est[closer], cdist))]  # nearest first, then (estimate, row)
    tied = cand[dist == d_star]
    pick = tied[rng.choice(len(tied), size=n - len(closer), replace=False)]
    return closer.tolist() + pick.tolist(), repeats, skipped


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("band", [None, {"enable": True, "low": 0.3, "high": 0.7},
                                  {"enable": True, "low": 0.2, "high": 0.6, "readmit_after": 2}])
@pytest.mark.parametrize("replacement", [False, True])
def test_fast_target_draw_equals_the_brute_force_reference(seed, band, replacement):
    rng = np.random.default_rng(seed)
    n, b = 300, 16
    priors = np.round(rng.random(n) * 10) / 10  # coarse values: many ties, symmetric distances too
    priors[rng.random(n) < 0.3] = np.nan  # unscored rows all start at 0.5
    cfg = {"mode": "target", "target": float(rng.choice([0.3, 0.5, 0.55])), "seed": seed, "replacement": replacement,
           "epoch_size": 12 * b, "estimator": "ema", "ema_alpha": 0.5}
    if band is not None:
        cfg["band"] = band
    s = _sampler(n, priors=priors, batch_size=b, **cfg)
    s.drawer.index.max_dirty = 40  # merge often
    for step in range(1, 30):
        setting, d = s.setting(), s.drawer
        if d.needs_batch() and d.epoch_done():
            d.new_epoch()
            s._it = iter(s)
        want, repeats, skipped = _reference(s, b, setting.target, setting.band,
                                            d.rng(2, d.epoch, d.batch_in_epoch))
        before = dict(d.totals)
        got = _batch(s, b)
        if len(want) == b:  # (short of candidates: the fallback fills the batch)
            assert got == want, step
        assert d.totals["repeats"] - before["repeats"] == repeats
        assert d.totals["skipped"] - before["skipped"] == skipped
        outcome = (rng.random(len(got)) < 0.5).astype(float)
        s.update(s.prompt_ids[got], np.where(rng.random(len(got)) < 0.3, 0.5, outcome), step=step)


def test_tempered_draw_follows_the_softmax_law():
    """T > 0: the first row of a batch is row i with probability exp(-|p_i - t| / T) / sum (Plackett-Luce)."""
    priors = np.linspace(0.0, 1.0, 41)
    t, tau = 0.4, 0.1
    first = np.zeros(41)
    reps = 3000
    s = _sampler(41, priors=priors, batch_size=5, mode="target", target=t, prior_strength=1e6,
                 target_temperature=tau, replacement=True, epoch_size=5 * reps)
    it = iter(s)
    for _ in range(reps):
        batch = [next(it) for _ in range(5)]
        assert len(set(batch)) == 5
        first[batch[0]] += 1
    w = np.exp(-np.abs(s.pass_rate() - t) / tau)
    expected = reps * w / w.sum()
    chi2 = float((((first - expected) ** 2) / expected).sum())
    assert chi2 < 80, chi2  # 40 degrees of freedom: p ~ 3e-4


def test_tempered_draw_with_a_tiny_temperature_takes_the_nearest():
    priors = np.linspace(0.0, 1.0, 101)
    s = _sampler(101, priors=priors, batch_size=6, mode="target", target=0.5, prior_strength=1e6,
                 target_temperature=1e-6)
    got = sorted(np.abs(s.pass_rate()[_batch(s, 6)] - 0.5).round(6))
    assert got == sorted(np.sort(np.abs(s.pass_rate() - 0.5))[:6].round(6))


def test_fenwick_counts_and_finds():
    rng = np.random.default_rng(0)
    bits = rng.random(1000) < 0.3
    f = Fenwick(bits)
    flips = rng.choice(1000, 50, replace=False)
    f.set(flips, True)
    bits[flips] = True
    q = rng.integers(0, 1001, 30)
    assert f.prefix(q).tolist() == [int(bits[:i].sum()) for i in q]
    ones = np.flatnonzero(bits)
    assert f.find(np.arange(1, len(ones) + 1)).tolist() == ones.tolist()


# --------------------------------------------------------------------------------------------------------------------
# each part's state round trip
# --------------------------------------------------------------------------------------------------------------------
def _run(s, steps, first=1):
    for step in range(first, first + steps):
        batch = _batch(s, 4)
        s.update(np.repeat(s.prompt_ids[batch], 2), np.tile([1.0, 0.0], 4), step=step)


@pytest.mark.parametrize("cfg", [
    {"mode": "target", "band": {"enable": True, "low": 0.3, "high": 0.7, "readmit_after": 2},
     "schedule": {"type": "adaptive"}},
    {"mode": "stratified", "mix": {"easy": 1, "hard": 2}, "estimator": "ema"},
])
def test_state_round_trip_per_part(cfg):
    a = _sampler(40, priors=np.linspace(0, 1, 40), batch_size=4, buckets=[schema.BUCKETS[i % 4] for i in range(40)],
                 **cfg)
    _run(a, 5)
    b = _sampler(40, priors=np.linspace(0, 1, 40), batch_size=4, buckets=[schema.BUCKETS[i % 4] for i in range(40)],
                 **cfg)
    for part in ("tracker", "curriculum", "drawer"):
        getattr(b, part).load_state_dict(getattr(a, part).state_dict(), *(() if part != "drawer" else (a.step,)))
    b.record.load_state_dict(a.record.state_dict())
    b.step = a.step
    for part in ("tracker", "curriculum", "drawer", "record"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            va, vb = sa[k], sb[k]
            assert (np.array_equal(va, vb) if isinstance(va, np.ndarray) else str(va) == str(vb)), (part, k)
    state = a.state_dict()
    assert set(state) == {"version", "config", "num_rows", "fingerprint", "step", "tracker", "curriculum", "drawer",
                          "record"}
    _run(a, 3, first=6)
    _run(b, 3, first=6)
    assert np.array_equal(a.pass_rate(), b.pass_rate()) and a.metrics() == b.metrics()
