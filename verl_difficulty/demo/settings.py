"""The demo's settings (one typed dataclass: the command line's flags, help texts and defaults come from here), its
stages, and which settings each stage depends on (what its done-marker records).

Default sizes: 64 synthetic rows (4 tasks x 4 true levels x 4), a 6000-step warm-up, all six scorers, 2 x 12 GRPO
steps of 4 prompts x 4 rollouts: about 9 minutes on a 2-core CPU. :data:`QUICK` is the reduced run of the CI test.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from verl_difficulty.config import ConfigError, parse, setting

STAGES: tuple[str, ...] = ("data", "model", "score", "select", "train", "report")
"""The stages, in order; each reads only what the stages before it wrote."""
STAGE_TITLES = {
    "data": "synthetic multimodal dataset with known difficulty",
    "model": "tiny Qwen2.5-VL warmed up to partial competence",
    "score": "difficulty scores of every row, with every scorer (on Ray)",
    "select": "training sets of P1, P2 and P4 from the scores",
    "train": "GRPO steps through stock verl: Durian + difficulty sampler vs plain GRPO",
    "report": "HTML report: scores, selections, agreement with the true difficulty, training curves",
}
UPSTREAM = {"data": (), "model": ("data",), "score": ("data", "model"), "select": ("score",),
            "train": ("model", "score", "select"), "report": ("score", "select", "train")}
"""The stages whose outputs each stage reads (their tokens are recorded in its marker)."""
ALL_SCORERS = ("passk", "pism", "cde", "visual_entropy", "cmab", "ace")
METHODS = ("p1", "p2", "p4")
METHOD_NEEDS = {"p1": ("pism",), "p2": ("passk",), "p4": ("cde", "ace")}
"""The scorers whose columns each selection reads (P1 can also use cmab; the demo uses its PISM default)."""
RUNS = ("durian", "grpo")
"""The two training runs: Durian (perceptual branch on) with the difficulty sampler; plain GRPO."""


@dataclass
class DemoSettings:
    """What the demo does (every field is a ``--flag`` of ``verl-difficulty demo``)."""

    output: str = setting("outputs/demo", help="the demo folder: data, model, scores, selections, training runs, "
                          "report, logs/ and the stage markers (.stages/)")
    data: Optional[str] = setting(None, help="your own verl parquet instead of the synthetic dataset (its rows are "
                                  "scored and trained on; a true_difficulty column, flat or in extra_info, enables "
                                  "the comparisons with the true difficulty)")
    model: Optional[str] = setting(None, help="your own model folder (transformers, with its processor) instead of "
                                   "the tiny Qwen2.5-VL; used as is, no warm-up")
    n_train: int = setting(64, ge=16, help="synthetic rows (a multiple of 16 keeps the 4 tasks x 4 levels balanced)")
    seed: int = setting(0, ge=0, help="seed of the data, the model, the scoring, the selections and the statistics")
    warmup_steps: int = setting(6000, ge=0, help="warm-up steps (one teacher-forced row per step) of the tiny model")
    warmup_lr: float = setting(3e-3, gt=0, help="warm-up learning rate")
    warmup_exposure: list = setting(default_factory=lambda: [6.0, 3.0, 1.0, 0.0], ge=0,
                                    help="copies of each row of true level 0, 1, 2, 3 in the warm-up feed: the tiny "
                                    "model cannot learn to see in minutes, so it learns answers by heart, more "
                                    "often those of easier rows, and its accuracy falls with the true level")
    scorers: list = setting(default_factory=lambda: list(ALL_SCORERS),
                            help="scorers to run (comma-separated): " + ",".join(ALL_SCORERS))
    max_tokens: int = setting(24, ge=1, help="new tokens per generation of the scorers")
    passk_k: int = setting(16, ge=1, help="rollouts per row of the passk scorer (16: a finer pass rate than the "
                           "scorer's default 8, cheap on the tiny model)")
    passk_temperature: float = setting(1.0, gt=0, help="sampling temperature of the passk scorer")
    pism_tries: int = setting(10, ge=1, help="PISM tries per mask ratio (K)")
    num_workers: int = setting(2, ge=0, help="Ray scoring workers (0 = in this process, no Ray)")
    shard_size: int = setting(8, ge=1, help="rows per committed scoring shard (the resume unit)")
    train_on: str = setting("p2", choices=("p1", "p2", "p4", "all"),
                            help="which selection's train.parquet both runs train on (all = every scored row)")
    train_steps: int = setting(12, ge=1, help="GRPO steps of each run")
    batch_size: int = setting(4, ge=2, help="prompts per training step")
    rollout_n: int = setting(4, ge=2, help="rollouts per prompt (the GRPO group size)")
    test_freq: int = setting(4, ge=1, help="validate (accuracy per true level) every this many steps, and before "
                             "training")
    val_n: int = setting(4, ge=1, help="sampled answers per validation prompt (acc/mean@val_n)")
    bootstrap: int = setting(1000, ge=10, help="bootstrap resamples of each Spearman interval")
    random_subsets: int = setting(2000, ge=10, help="random subsets each selection is compared with")

    def check(self, where: str) -> None:
        unknown = [s for s in self.scorers if s not in ALL_SCORERS]
        if unknown or not self.scorers:
            raise ConfigError(f"{where}.scorers: unknown {unknown}; choose from {list(ALL_SCORERS)}")
        if "visual_entropy" not in self.scorers:
            raise ConfigError(f"{where}.scorers: the Durian run's perceptual branch reads the visual_entropy scorer's "
                              "column; keep visual_entropy in --scorers")
        if self.train_on != "all":
            missing = [s for s in METHOD_NEEDS[self.train_on] if s not in self.scorers]
            if missing:
                raise ConfigError(f"{where}.train_on: {self.train_on} selects from the {', '.join(missing)} "
                                  f"scorer(s); add them to --scorers or train on another selection")
        if len(self.warmup_exposure) < 1:
            raise ConfigError(f"{where}.warmup_exposure: give one weight per true level")
        for name in ("data", "model"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                raise ConfigError(f"{where}.{name}: {path} does not exist")

    def resolved(self) -> "DemoSettings":
        """The same settings with absolute paths."""
        out = dataclasses.replace(self)
        out.output = os.path.abspath(self.output)
        out.data = os.path.abspath(self.data) if self.data else None
        out.model = os.path.abspath(self.model) if self.model else None
        return out


QUICK = {"n_train": 32, "warmup_steps": 1500, "passk_k": 4, "pism_tries": 4, "train_steps": 2, "test_freq": 2,
         "val_n": 2, "bootstrap": 200, "random_subsets": 200, "train_on": "all"}
"""The reduced demo (``--quick``, the CI test): about 4 minutes on 2 cores; its numbers are not meant to be read."""


def make_settings(values: Optional[dict] = None) -> DemoSettings:
    """Parse ``values`` (``ConfigError`` naming ``demo.<field>``)."""
    return parse(DemoSettings, values or {}, "demo")


def _file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_settings(s: DemoSettings, stage: str) -> dict:
    """The settings a stage's result depends on (a change redoes the stage; runtime-only settings such as the number
    of Ray workers are left out)."""
    if stage == "data":
        if s.data:
            return {"data": _file_identity(s.data)}
        return {"synthetic": {"n_train": s.n_train, "seed": s.seed}}
    if stage == "model":
        if s.model:
            return {"model": os.path.abspath(s.model)}
        return {"tiny": {"seed": s.seed, "steps": s.warmup_steps, "lr": s.warmup_lr,
                         "exposure": list(s.warmup_exposure)}}
    if stage == "score":
        return {"scorers": list(s.scorers), "max_tokens": s.max_tokens, "passk_k": s.passk_k,
                "passk_temperature": s.passk_temperature, "pism_tries": s.pism_tries, "shard_size": s.shard_size,
                "seed": s.seed}
    if stage == "select":
        return {"methods": list(METHODS), "seed": s.seed, "random_subsets": s.random_subsets}
    if stage == "train":
        return {"train_on": s.train_on, "steps": s.train_steps, "batch_size": s.batch_size, "rollout_n": s.rollout_n,
                "test_freq": s.test_freq, "val_n": s.val_n, "runs": list(RUNS)}
    if stage == "report":
        return {"bootstrap": s.bootstrap, "seed": s.seed}
    raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
