"""End to end: stock ``python -m verl.trainer.main_ppo`` on CPU, tiny Qwen2.5-VL, image prompts, with the plugin.

Real parts only: verl's trainer, TransferQueue, agent loop, reward loop, FSDP2 engine, Ray; the plugin's trainer mode,
sampler, estimator, reward manager and CPU backend. Nothing is mocked. Three launches (~1-2 min each on 2 cores):

1. 2 GRPO-style steps with ``difficulty_weighted`` + ``r1v_acc`` + the difficulty sampler, checkpoint at step 2;
2. the same command with 3 total steps: resumes from the checkpoint and runs step 3 with the sampler state restored;
3. 1 step with ``durian`` under DAPO on the rows scored by the ``visual_entropy`` scorer (perceptual branch on the
   scorer's column, reasoning branch on ``old_log_probs``); the sampler must learn from every generated prompt,
   including the groups DAPO's ``filter_groups`` drops before the advantage step.

Runs 1 and 2 use the sampler in stratified mode with P2's two-stage schedule (stage 1 = medium prompts, stage 2 from
step 3 = half medium, half hard), the band-pass filter and the P2 hints on hard prompts (buckets are the synthetic
data's known levels, :mod:`verl_difficulty.data.true_buckets`). Exact resume is checked without an extra launch: each
run writes a trace of its draws and updates (``difficulty.sampler.trace_path``); a fresh sampler fed run 1's outcomes
in-process reproduces run 1's draws of steps 1-2 and the checkpointed state, and then draws for step 3 exactly what
the resumed run 2 drew. (Comparing with a separate uninterrupted launch would not be sound: the rollouts are not
seeded, so another launch sees other outcomes and its band-pass legitimately draws differently.)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from verl_difficulty.cli import prepare_smoke, smoke_command

pytestmark = pytest.mark.e2e


class _MemoryMonitor:
    """Peak of the machine's used memory above the baseline while a run is going (all Ray processes included)."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self.baseline = psutil.virtual_memory().used
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._psutil.virtual_memory().used)
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float:
        return (self.peak - self.baseline) / 2**30


_SHOWN = ("actor/grad_norm", "critic/score/mean", "difficulty/batch/acc_mean", "difficulty/weighting/weight_mean",
          "training/rollout_probs_diff_max", "timing_s/step", "difficulty/sampler/prompts_seen", "difficulty/sampler/prompts_drawn",
          "difficulty/sampler/prompts_updated", "training/filter_groups/evicted_samples",
          "training/filter_groups/discarded_surplus_samples")


def _run(workdir: Path, name: str, steps: int, extra: list[str]) -> tuple[list[dict], float, float, str]:
    log_path = workdir / f"{name}.metrics.jsonl"
    env = dict(os.environ, VERL_PLATFORM="cpu", VERL_FILE_LOGGER_PATH=str(log_path), RAY_DEDUP_LOGS="0")
    cmd = smoke_command(str(workdir), steps=steps, extra=["trainer.logger=[console,file]", *extra])
    start = time.time()
    with _MemoryMonitor() as mem:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=workdir)
    wall = time.time() - start
    out = proc.stdout + proc.stderr
    (workdir / f"{name}.log").write_text(out)
    assert proc.returncode == 0, f"{name} failed (rc={proc.returncode}):\n{out[-6000:]}"
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    print(f"[e2e] {name}: wall {wall:.1f}s, peak memory above baseline {mem.peak_gib:.2f} GiB")
    for r in records:
        shown = {k: round(v, 4) for k, v in r["data"].items() if k in _SHOWN}
        print(f"[e2e] {name} step {r['step']}: {shown}")
    return records, wall, mem.peak_gib, out


def _finite(record: dict) -> list[str]:
    bad = []
    for k, v in record["data"].items():
        if isinstance(v, (int, float)) and not math.isfinite(v):
            bad.append(k)
    return bad


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from verl_difficulty.data.true_buckets import add_true_buckets

    work = tmp_path_factory.mktemp("e2e")
    prepare_smoke(str(work), n_train=32, n_val=8)
    for split in ("train", "val"):
        add_true_buckets(str(work / "data" / f"{split}.parquet"))
    return work


# stratified sampler + P2 two stages (switch at step 3) + band-pass + hints on hard prompts; 32 rows = 8 per bucket
SAMPLER_OVERRIDES = [
    "difficulty.sampler.mode=stratified",
    "difficulty.sampler.mix={medium:1.0}",
    "difficulty.sampler.schedule.type=two_stage",
    "difficulty.sampler.schedule.switch_step=3",
    "difficulty.sampler.schedule.stage1={mix:{medium:1.0}}",
    "difficulty.sampler.schedule.stage2={mix:{medium:0.5,hard:0.5}}",
    "difficulty.sampler.band.enable=true",
    "difficulty.sampler.band.low=0.2",
    "difficulty.sampler.band.high=1.0",
    "difficulty.hints.enable=true",
    "difficulty.hints.select=[bucket]",
    "difficulty.hints.buckets=[hard]",
    # the default hint is ~90 tokens with the tiny byte-level tokenizer: prompts reach ~265 tokens (a real one: ~30)
    "data.max_prompt_length=384",
]


def _trace_override(workdir: Path, name: str) -> str:
    return f"difficulty.sampler.trace_path={workdir / f'{name}.trace.jsonl'}"


def _trace(workdir: Path, name: str) -> list[dict]:
    path = workdir / f"{name}.trace.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def first_run(workdir):
    return _run(
        workdir, "run1", steps=2,
        extra=["trainer.save_freq=2", *SAMPLER_OVERRIDES, _trace_override(workdir, "run1")],
    )


def test_two_steps_with_plugin(first_run, workdir):
    records, wall, peak, _ = first_run
    steps = [r["step"] for r in records if "actor/grad_norm" in r["data"]]
    assert steps == [1, 2]
    for r in records:
        assert not _finite(r), f"non-finite metrics at step {r['step']}: {_finite(r)}"
    data = {r["step"]: r["data"] for r in records if "actor/grad_norm" in r["data"]}
    # the update really trained something
    assert max(d["actor/grad_norm"] for d in data.values()) > 0
    for d in data.values():
        # the seam handed per-sample fields to the estimator ...
        assert d["difficulty/seam/prompt_id_coverage"] == 1.0
        assert d["difficulty/seam/has_old_log_probs"] == 1.0
        assert d["difficulty/seam/has_acc"] == 1.0  # r1v_acc reports acc in its reward extra info
        # ... and the estimator used them (its own metrics, computed from per-prompt correctness)
        assert any(k.startswith("difficulty/weighting/") for k in d), sorted(k for k in d if "difficulty" in k)
        # rollout (transformers server) and actor agree: weights were synced and log-probs match
        assert d["training/rollout_probs_diff_max"] < 1e-4
        assert 0.0 <= d["difficulty/batch/acc_mean"] <= 1.0
    # the sampler learned from 4 prompts per step, drawn by the stage-1 mix (medium only), no hints yet
    assert data[1]["difficulty/sampler/prompts_seen"] == 4
    assert data[2]["difficulty/sampler/prompts_seen"] == 8
    for step in (1, 2):
        assert data[step]["difficulty/curriculum/stage"] == 1.0 and data[step]["difficulty/curriculum/step"] == step
        assert data[step]["difficulty/sampler/batch_frac/medium"] == 1.0
        assert data[step]["difficulty/hints/applied"] == 0.0
        assert "difficulty/sampler/bandpass_fallback" in data[step]
    ckpt = workdir / "checkpoints" / "global_step_2"
    assert (ckpt / "data.pt").exists()
    assert any((ckpt / "actor").glob("model_world_size_1_rank_0.pt"))
    assert (workdir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    import torch

    # the sampler's own state rides in verl's dataloader checkpoint
    state = torch.load(ckpt / "data.pt", weights_only=False)
    sampler_state = state["_sampler_iter_state"]["sampler_state"]
    assert sampler_state["drawer"]["position"] == 8 and sampler_state["drawer"]["epoch"] == 0
    assert sampler_state["step"] == 3  # the next draws are for step 3
    assert int(sampler_state["tracker"]["seen"].sum()) == 8 * 4  # 8 prompts x rollout.n=4 responses
    trace = _trace(workdir, "run1")
    assert [(e["event"], e["step"]) for e in trace] == [("draw", 1), ("update", 1), ("draw", 2), ("update", 2)]


def test_resume_continues_at_step_3_with_sampler_state(first_run, workdir):
    import datasets
    import numpy as np
    import torch

    from verl_difficulty.sampling.sampler import DifficultySampler, SamplerConfig

    records, wall, peak, out = _run(
        workdir, "run2", steps=3,
        extra=["trainer.save_freq=3", *SAMPLER_OVERRIDES, _trace_override(workdir, "run2")],
    )
    assert "Resuming from" in out and "global_step_2" in out
    steps = [r["step"] for r in records if "actor/grad_norm" in r["data"]]
    assert steps == [3]
    d = records[-1]["data"]
    assert d["training/rollout_probs_diff_max"] < 1e-4  # the resumed weights reached the rollout server
    assert (workdir / "checkpoints" / "global_step_3" / "data.pt").exists()
    # stage 2 from step 3: half medium (a second pass over the 8 medium prompts, band-pass applies), half hard (hinted)
    assert d["difficulty/curriculum/stage"] == 2.0 and d["difficulty/curriculum/step"] == 3.0
    assert d["difficulty/sampler/batch_frac/medium"] == 0.5 and d["difficulty/sampler/batch_frac/hard"] == 0.5
    assert d["difficulty/hints/applied"] == 2.0

    # exact resume: an uninterrupted sampler, fed run 1's outcomes in-process, draws run 2's step-3 batch
    run1, run2 = _trace(workdir, "run1"), _trace(workdir, "run2")
    assert [(e["event"], e["step"]) for e in run2] == [("draw", 3), ("update", 3)]
    saved = torch.load(workdir / "checkpoints" / "global_step_2" / "data.pt", weights_only=False)
    saved = saved["_sampler_iter_state"]["sampler_state"]
    cfg = dict(saved["config"], trace_path=None)

    class _Data:
        dataframe = datasets.load_dataset("parquet", data_files=str(workdir / "data" / "train.parquet"))["train"]

    replay = DifficultySampler.from_dataset(_Data(), SamplerConfig.from_dict(cfg), batch_size=4)
    it = iter(replay)
    draws1 = [e for e in run1 if e["event"] == "draw"]
    updates1 = [e for e in run1 if e["event"] == "update"]
    for draw, update in zip(draws1, updates1):
        assert [next(it) for _ in range(4)] == draw["rows"], f"step {draw['step']} differs from run 1"
        replay.update(update["ids"], update["correct"], step=update["step"])
    state = replay.state_dict()
    for part, key in [("tracker", k) for k in ("est", "alpha", "beta", "seen")] + [
        ("drawer", k) for k in ("banned_until", "cursor", "passes", "carry")
    ]:
        assert np.array_equal(state[part][key], saved[part][key]), (part, key)
    for key in ("epoch", "position", "batch_in_epoch"):
        assert state["drawer"][key] == saved["drawer"][key], key
    assert state["step"] == saved["step"]
    step3 = [next(it) for _ in range(4)]
    assert step3 == run2[0]["rows"]  # the resumed run drew what an uninterrupted one would have
    replay.update(run2[1]["ids"], run2[1]["correct"], step=3)
    m = replay.metrics()
    for key in ("difficulty/curriculum/batch_id_hash", "difficulty/sampler/prompts_seen", "difficulty/sampler/bandpass_fallback",
                "difficulty/sampler/bandpass_skipped", "difficulty/sampler/pass_rate_mean"):
        assert m[key] == pytest.approx(d[key]), key
    print(f"[e2e] step-3 draw {step3} (fallback {run2[0]['fallback']}, skipped {run2[0]['skipped']}) reproduced")


def _score_visual_entropy(workdir: Path) -> Path:
    """Score the training rows with the ``visual_entropy`` scorer (in-process, the tiny model): the durian run's data."""
    from verl_difficulty.scoring import ScoreJob, run_scoring

    out = workdir / "scores_visual_entropy"
    run_scoring(ScoreJob(inputs=[str(workdir / "data" / "train.parquet")], output_dir=str(out),
                         model_path=str(workdir / "tiny_qwen25vl"), scorers={"visual_entropy": {}},
                         num_workers=0, progress=False))
    return out / "scored.parquet"


def test_durian_runs_in_training_under_dapo(first_run, workdir):
    """durian under DAPO: verl's dynamic sampling (filter_groups), clip-higher, token-mean loss.

    All three branches are on: the perceptual one groups prompts by the ``visual_entropy`` column that the
    ``visual_entropy`` scorer wrote (mirrored in ``extra_info``, which verl forwards). Groups are formed from what
    reaches the advantage step: DAPO has already dropped zero-variance groups.
    """
    import pyarrow.parquet as pq

    scored = _score_visual_entropy(workdir)
    entropy = [r["extra_info"]["visual_entropy"] for r in pq.read_table(scored).to_pylist()]
    assert len(entropy) == 32 and all(math.isfinite(h) for h in entropy)
    records, *_ = _run(
        workdir,
        "run_durian_dapo",
        steps=1,
        extra=[
            f"data.train_files={scored}",
            "algorithm.adv_estimator=durian",
            "algorithm.difficulty.durian.alpha_ori=0.4",
            "algorithm.difficulty.durian.alpha_percep=0.3",
            "algorithm.difficulty.durian.alpha_reason=0.3",
            "algorithm.difficulty.durian.reason_groups=2",
            "algorithm.filter_groups.enable=true",
            "algorithm.filter_groups.metric=score",
            "actor_rollout_ref.actor.clip_ratio_high=0.28",
            "actor_rollout_ref.actor.loss_agg_mode=token-mean",
            "trainer.save_freq=-1",
            "trainer.resume_mode=disable",
            f"trainer.default_local_dir={workdir / 'checkpoints_durian'}",
        ],
    )
    d = [r["data"] for r in records if "actor/grad_norm" in r["data"]][-1]
    assert not _finite({"step": 1, "data": d})
    # durian ran on the train batch's 4 prompts, split into its 2 reasoning (confidence) groups and its 3 perceptual
    # (visual-entropy quartile) groups
    assert d["difficulty/durian/num_prompts"] == 4
    assert d["difficulty/durian/reason_prompts/g0"] + d["difficulty/durian/reason_prompts/g1"] == 4
    assert d["difficulty/durian/percep_active"] == 1.0
    assert sum(d[f"difficulty/durian/percep_prompts/g{k}"] for k in range(3)) == 4
    # DAPO filtered before the advantage step: no zero-variance group reached durian
    assert d["difficulty/durian/zero_variance_frac"] == 0.0
    assert d["actor/grad_norm"] > 0
    # ... but the sampler learned from every generated prompt, the evicted (all right / all wrong) groups included
    dropped = d.get("training/filter_groups/evicted_samples", 0) + d.get(
        "training/filter_groups/discarded_surplus_samples", 0)
    print(f"[e2e] DAPO: {d['difficulty/sampler/prompts_drawn']:.0f} prompts generated, {dropped:.0f} dropped by verl")
    assert d["difficulty/sampler/prompts_drawn"] == 4 + dropped
    assert d["difficulty/sampler/prompts_updated"] == d["difficulty/sampler/prompts_drawn"]


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        # durian's perceptual branch on rows without a visual_entropy column (the unscored synthetic data)
        ("no_entropy", ["algorithm.adv_estimator=durian", "algorithm.difficulty.durian.alpha_percep=0.3"],
         "needs a finite visual_entropy on every training row"),
        # a misspelt plugin key (hydra needs the + for a new key; the plugin still refuses it)
        ("typo", ["+difficulty.sampler.band.hgih=0.9"], "unknown setting difficulty.sampler.band.hgih"),
        # an estimator parameter that overflows float32
        ("overflow", ["algorithm.difficulty.weighting.beta=1000"], "algorithm.difficulty.weighting.beta"),
    ],
)
def test_bad_plugin_settings_stop_the_run_before_any_rollout(workdir, name, overrides, message):
    env = dict(os.environ, VERL_PLATFORM="cpu")
    cmd = smoke_command(str(workdir), steps=1, extra=[
        *overrides, "trainer.resume_mode=disable", f"trainer.default_local_dir={workdir / f'checkpoints_{name}'}"])
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=workdir)
    wall = time.time() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert message in out, out[-3000:]
    assert "step:1" not in out and "Loading weights" not in out  # no worker loaded the model, nothing was trained
    print(f"[e2e] {name}: stopped after {wall:.1f}s with: {message}")
