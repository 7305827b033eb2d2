"""Settings of the difficulty sampler (``difficulty.sampler``) and of the P2 hints (``difficulty.hints``).

Every field is declared with :func:`verl_difficulty.config.setting` (type, default, help, where the default comes
from) and built with :func:`verl_difficulty.config.parse`, which names the full dotted key of a bad value. The
cross-field checks of each section live in its ``check`` method. The shipped defaults are
``verl_difficulty/config/difficulty.yaml`` (a test holds them equal to :func:`verl_difficulty.config.defaults`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from verl_difficulty import schema
from verl_difficulty.config import ConfigError, parse, setting

MODES = ("uniform", "stratified", "target")
ESTIMATORS = ("beta", "ema")
BAD_ROW_POLICIES = ("error", "skip")
SCHEDULE_TYPES = ("constant", "linear", "step", "two_stage", "adaptive")
FALLBACKS = ("nearest", "random")
POSITIONS = ("prefix", "suffix")
ROLES = ("user", "system")
SELECTORS = ("flag", "bucket", "online", "stage")
PLACEHOLDERS = ("<image>", "<video>", "<audio>")

DEFAULT_HINT = (
    "Note: this is a difficult problem. Think carefully, reason step by step, double-check each step and reflect "
    "on your reasoning before you give the final answer."
)
"""The default hint text. OURS: P2 describes the hint's intent but does not publish its wording."""


class _FromDict:
    """``Cls.from_dict(d)``: :func:`parse` under the section's dotted path (kept for the seam and old callers)."""

    WHERE = ""

    @classmethod
    def from_dict(cls, d: Any = None):
        return parse(cls, d, cls.WHERE)


@dataclass
class BandConfig(_FromDict):
    """Band-pass filter on the online pass-rate estimate (``difficulty.sampler.band``): prompts whose estimate is
    outside ``[low, high]`` are skipped (and re-admitted once after ``readmit_after`` steps)."""

    WHERE = "difficulty.sampler.band"

    enable: bool = setting(False, help="Skip prompts whose estimated pass rate is outside [low, high].")
    low: float = setting(0.1, ge=0.0, le=1.0, source="P2",
                         help="Lower edge of the window. P2 keeps offline accuracy in about [0.1, 0.87] "
                              "(dataset-specific).")
    high: float = setting(0.9, ge=0.0, le=1.0, source="ours (P2's 0.87, rounded)", help="Upper edge of the window.")
    readmit_after: Optional[int] = setting(
        None, ge=1,
        help="A prompt found outside the window is excluded for this many training steps and then re-admitted once "
             "(drawn regardless of its estimate, which cannot move while it is not drawn); after that draw it is "
             "judged again. null: never re-admitted (P2's offline band, applied online).")
    fallback: str = setting(
        "nearest", choices=FALLBACKS,
        help="When a pool has too few admissible prompts left to fill a batch, the rest is filled with out-of-band "
             "prompts: nearest (closest to the window first) or random. A batch is never short; every fallback is "
             "counted (difficulty/sampler/bandpass_fallback) and logged (one warning per step).")

    def check(self, where: str) -> None:
        if self.low > self.high:
            raise ConfigError(f"{where}: low {self.low} > high {self.high}; set low <= high")


@dataclass
class PhaseConfig:
    """One phase of a ``step`` schedule (``schedule.phases[i]``) or a stage of ``two_stage`` (``schedule.stage1``):
    a key left out (null) takes the BASE value (``difficulty.sampler.mix/target/band``), not the previous phase's."""

    start_step: Optional[int] = setting(None, ge=0, help="step: first step of the phase (not set in stage1/stage2).")
    mix: Optional[dict[str, float]] = setting(None, ge=0.0, help="stratified: the bucket mix of the phase.")
    target: Optional[float] = setting(None, ge=0.0, le=1.0, help="target: the target pass rate of the phase.")
    band: Optional[Union[bool, tuple[float, float]]] = setting(
        None, ge=0.0, le=1.0, help="[low, high]: band-pass on with this window; false: off for the phase.")

    def check(self, where: str) -> None:
        if self.band is True:
            raise ConfigError(f"{where}.band: expected [low, high] or false, got true")
        if isinstance(self.band, tuple) and self.band[0] > self.band[1]:
            raise ConfigError(f"{where}.band: low {self.band[0]} > high {self.band[1]}; set low <= high")


@dataclass
class ScheduleConfig(_FromDict):
    """How the sampler's aim moves with the training step (``difficulty.sampler.schedule``); the schedule types are
    described in :mod:`verl_difficulty.sampling.curriculum`."""

    WHERE = "difficulty.sampler.schedule"

    type: str = setting("constant", choices=SCHEDULE_TYPES, help="constant, linear, step, two_stage or adaptive.")
    start_step: int = setting(1, ge=0, help="linear: first step of the ramp.")
    end_step: Optional[int] = setting(None, ge=0, help="linear: step at which the end values are reached "
                                                       "(required, > start_step).")
    mix_end: Optional[dict[str, float]] = setting(None, ge=0.0, help="linear + stratified: the bucket mix at "
                                                                     "end_step (mix is the start).")
    target_end: Optional[float] = setting(None, ge=0.0, le=1.0, help="linear + target: the target pass rate at "
                                                                     "end_step (target is the start).")
    phases: list[PhaseConfig] = setting(default_factory=list, help="step: [{start_step, mix?, target?, band?}, ...] "
                                                                   "with increasing start_step.")
    switch_step: Optional[int] = setting(None, ge=1, source="P2: UNSPECIFIED",
                                         help="two_stage: first step of stage 2 (P2: about 2K samples / batch size).")
    stage1: Optional[PhaseConfig] = setting(None, source="P2", help="two_stage: stage-1 settings {mix?, target?, "
                                                                    "band?} (P2: moderate prompts).")
    stage2: Optional[PhaseConfig] = setting(None, source="P2", help="two_stage: stage-2 settings (P2: the "
                                                                    "moderate-to-hard set).")
    eta: float = setting(0.1, ge=0.0, source="ours (AdaRFT: 50 on a 0-100 scale)",
                         help="adaptive: step size of the target update.")
    sharpness: float = setting(2.0, ge=0.0, source="AdaRFT", help="adaptive: AdaRFT's alpha inside the tanh.")
    reward_target: float = setting(0.5, ge=0.0, le=1.0, source="AdaRFT",
                                   help="adaptive: AdaRFT's beta, the batch accuracy the curriculum aims for.")
    target_min: float = setting(0.05, ge=0.0, le=1.0, help="adaptive: lower clip of the target pass rate.")
    target_max: float = setting(0.95, ge=0.0, le=1.0, help="adaptive: upper clip of the target pass rate.")

    def check(self, where: str) -> None:
        t = self.type
        if self.target_min > self.target_max:
            raise ConfigError(f"{where}: target_min {self.target_min} > target_max {self.target_max}")
        if t == "linear" and (self.end_step is None or self.end_step <= self.start_step):
            raise ConfigError(f"{where}: type=linear needs end_step > start_step (got {self.end_step!r})")
        if t != "linear" and (self.mix_end is not None or self.target_end is not None):
            raise ConfigError(f"{where}.mix_end/target_end only apply to type=linear (type={t!r})")
        if t == "step" and not self.phases:
            raise ConfigError(f"{where}: type=step needs phases: [{{start_step: 1, ...}}, ...]")
        if t != "step" and self.phases:
            raise ConfigError(f"{where}.phases only applies to type=step (type={t!r})")
        stages = (self.switch_step, self.stage1, self.stage2)
        if t == "two_stage" and any(x is None for x in stages):
            raise ConfigError(f"{where}: type=two_stage needs switch_step, stage1 and stage2")
        if t != "two_stage" and any(x is not None for x in stages):
            raise ConfigError(f"{where}.switch_step/stage1/stage2 only apply to type=two_stage (type={t!r})")
        for name in ("stage1", "stage2"):
            if getattr(self, name) is not None and getattr(self, name).start_step is not None:
                raise ConfigError(f"{where}.{name}: expected a mapping {{mix?, target?, band?}} (no start_step; "
                                  "stage 2 starts at switch_step)")
        prev = -1
        for i, ph in enumerate(self.phases):
            if ph.start_step is None:
                raise ConfigError(f"{where}.phases[{i}]: missing start_step")
            if ph.start_step <= prev:
                raise ConfigError(f"{where}.phases[{i}].start_step: {ph.start_step} is not after the previous "
                                  f"phase's {prev}; list the phases in increasing start_step")
            prev = ph.start_step

    def named_phases(self, where: str) -> list[tuple[str, PhaseConfig, int]]:
        """(dotted name, phase, start step) of each phase of a ``step`` or ``two_stage`` schedule."""
        if self.type == "step":
            return [(f"{where}.phases[{i}]", p, int(p.start_step)) for i, p in enumerate(self.phases)]
        if self.type == "two_stage":
            return [(f"{where}.stage1", self.stage1, 1), (f"{where}.stage2", self.stage2, int(self.switch_step))]
        return []


@dataclass
class SamplerConfig(_FromDict):
    """Settings of the difficulty sampler (``difficulty.sampler``): which prompts verl's dataloader gets, by
    difficulty (modes ``uniform``, ``stratified``, ``target``; see :mod:`verl_difficulty.sampling.sampler`).
    "ours" marks choices the papers do not make."""

    WHERE = "difficulty.sampler"

    enable: bool = setting(False, help="Replace verl's Random/Sequential sampler with this one (needs "
                                       "trainer.v1.trainer_mode=difficulty and data.dataloader_num_workers=0).")
    mode: str = setting("uniform", choices=MODES, help="uniform, stratified or target.")
    seed: int = setting(1, ge=0, help="Seed of every random choice (permutations, tie-breaks, Gumbel noise); "
                                      "resumed runs reuse it.")
    shuffle: bool = setting(True, help="uniform: a fresh seeded permutation each epoch; false keeps dataset order.")
    replacement: bool = setting(False, help="Draw with replacement within an epoch (a prompt may come back before the "
                                            "epoch ends). A batch never holds the same prompt twice unless its pool "
                                            "is smaller than its share of the batch.")
    epoch_size: Optional[int] = setting(None, ge=1, help="Prompts drawn per sampler epoch; null: the eligible rows "
                                                         "rounded down to a multiple of the batch size.")
    buckets: list[str] = setting(default_factory=lambda: list(schema.BUCKETS), source="P1",
                                 help="Allowed bucket names; a row with another name is a bad row.")
    bucket_key: str = setting(schema.DIFFICULTY_BUCKET, help="Row field holding the bucket (flat column first, then "
                                                             "extra_info), e.g. pism_bucket.")
    score_keys: list[str] = setting(default_factory=lambda: [schema.DIFFICULTY_SCORE, schema.PASS_RATE],
                                    help="Row fields holding an offline pass rate in [0, 1] (first present wins); the "
                                         "online estimate starts there.")
    include_buckets: Optional[list[str]] = setting(None, source="P1", help="uniform/target: draw only rows of these "
                                                                           "buckets (P1's GRPO-only paradigm: "
                                                                           "[medium, hard]).")
    mix: Optional[dict[str, float]] = setting(None, ge=0.0, help="stratified: target proportion per bucket "
                                                                 "(normalised), e.g. {medium: 1, hard: 1} (P1). "
                                                                 "Required unless every schedule phase sets one.")
    target: float = setting(0.5, ge=0.0, le=1.0, source="DOTS", help="target: the target pass rate; the start value "
                                                                     "of linear/adaptive schedules.")
    target_temperature: float = setting(0.0, ge=0.0, help="target: 0 takes the prompts nearest to the target (random "
                                                          "tie-break); > 0 samples without replacement with weights "
                                                          "exp(-|p - target| / T).")
    estimator: str = setting("beta", choices=ESTIMATORS, help="Online pass-rate estimate: beta (posterior mean) or "
                                                              "ema (the papers define no tracker).")
    prior_strength: float = setting(2.0, ge=0.0, help="beta: pseudo-observations of an offline score p0: the "
                                                      "posterior starts at Beta(beta_prior + s*p0, "
                                                      "beta_prior + s*(1-p0)).")
    beta_prior: float = setting(1.0, ge=0.0, help="beta: base pseudo-count of each outcome (1 = uniform prior, "
                                                  "0.5 = Jeffreys).")
    beta_discount: float = setting(1.0, gt=0.0, le=1.0, help="beta: the prompt's counts are multiplied by this before "
                                                             "each update (< 1 forgets old outcomes).")
    ema_alpha: float = setting(0.3, ge=0.0, le=1.0, help="ema: weight of a step's group accuracy: "
                                                         "p <- (1 - a) * p + a * acc.")
    ema_init: float = setting(0.5, ge=0.0, le=1.0, help="ema: start value of prompts without an offline score.")
    band: BandConfig = setting(default_factory=BandConfig, help="Band-pass filter (difficulty.sampler.band.*).")
    schedule: ScheduleConfig = setting(default_factory=ScheduleConfig,
                                       help="Curriculum schedule (difficulty.sampler.schedule.*).")
    on_bad_row: str = setting("error", choices=BAD_ROW_POLICIES,
                              help="A row with a missing field the mode needs, an unknown bucket or a score outside "
                                   "[0, 1]: error stops at start-up naming the row and field; skip leaves such rows "
                                   "out and counts them (difficulty/sampler/bad_rows). A missing or duplicate prompt "
                                   "id is always an error.")
    trace_path: Optional[str] = setting(None, help="Append one JSON line per drawn batch and per update to this file "
                                                   "(audits, the exact-resume test).")

    def check(self, where: str) -> None:
        if not self.buckets or not all(self.buckets) or len(set(self.buckets)) != len(self.buckets):
            raise ConfigError(f"{where}.buckets: expected a non-empty list of distinct names, got {self.buckets!r}")
        if len(self.buckets) > 127:
            raise ConfigError(f"{where}.buckets: at most 127 buckets, got {len(self.buckets)}")
        if not self.bucket_key:
            raise ConfigError(f"{where}.bucket_key: expected a field name, got an empty string")
        if self.beta_prior <= 0 and self.prior_strength <= 0:
            raise ConfigError(f"{where}: beta_prior and prior_strength cannot both be 0 (the posterior would be "
                              "empty); set beta_prior > 0")
        if self.include_buckets is not None:
            if self.mode == "stratified":
                raise ConfigError(f"{where}.include_buckets: mode=stratified selects buckets by its mix; use mix")
            bad = [b for b in self.include_buckets if b not in self.buckets]
            if bad or not self.include_buckets:
                raise ConfigError(f"{where}.include_buckets: unknown buckets {bad}; known: {self.buckets}")
        self._check_schedule(where)

    def _check_schedule(self, where: str) -> None:
        """The schedule against the mode: who moves a mix or a target, and every step has a mix when stratified."""
        s, sw, mode = self.schedule, f"{where}.schedule", self.mode
        mixes = [(f"{where}.mix", self.mix), (f"{sw}.mix_end", s.mix_end)]
        if self.mix is not None and mode != "stratified":
            raise ConfigError(f"{where}.mix is set but only mode=stratified uses a bucket mix (mode={mode!r})")
        if s.type == "linear":
            if mode == "uniform":
                raise ConfigError(f"{sw}: type=linear moves a mix or a target; mode={mode!r} has neither")
            if mode == "stratified" and s.mix_end is None:
                raise ConfigError(f"{sw}: type=linear with mode=stratified needs mix_end")
            if mode == "target" and s.target_end is None:
                raise ConfigError(f"{sw}: type=linear with mode=target needs target_end")
            if s.mix_end is not None and mode != "stratified":
                raise ConfigError(f"{sw}.mix_end only applies to mode=stratified")
            if s.target_end is not None and mode != "target":
                raise ConfigError(f"{sw}.target_end only applies to mode=target")
        if s.type == "adaptive" and mode != "target":
            raise ConfigError(f"{sw}: type=adaptive moves the target pass rate; it needs mode=target")
        phases = s.named_phases(sw)
        for name, ph, _ in phases:
            if ph.mix is not None and mode != "stratified":
                raise ConfigError(f"{name}.mix: only mode=stratified uses a bucket mix (mode={mode!r})")
            if ph.target is not None and mode != "target":
                raise ConfigError(f"{name}.target: only mode=target uses a target pass rate (mode={mode!r})")
            mixes.append((f"{name}.mix", ph.mix))
        for name, mix in mixes:
            if mix is None:
                continue
            unknown = [b for b in mix if b not in self.buckets]
            if unknown:
                raise ConfigError(f"{name}: unknown bucket {unknown[0]!r}; known buckets: {self.buckets}")
            if not mix or sum(mix.values()) <= 0:
                raise ConfigError(f"{name}: expected a mapping bucket -> weight with a positive sum, e.g. "
                                  "{medium: 0.5, hard: 0.5}")
        if mode == "stratified" and self.mix is None:
            if not phases or any(ph.mix is None for _, ph, _ in phases) or phases[0][2] > 1:
                raise ConfigError(
                    f"{where}: mode=stratified needs a bucket mix ({where}.mix, e.g. {{medium: 0.5, hard: 0.5}}) "
                    "for every step (phases that set no mix use it)")


@dataclass
class HintConfig(_FromDict):
    """P2 difficulty hints (``difficulty.hints``): which training prompts get the hint and how it is added; see
    :mod:`verl_difficulty.sampling.hints`."""

    WHERE = "difficulty.hints"

    enable: bool = setting(False, help="Add the hint to the selected training prompts (needs "
                                       "trainer.v1.trainer_mode=difficulty).")
    template: str = setting(DEFAULT_HINT, source="ours (P2 does not publish its wording)",
                            help="The hint text; may not contain <image>-style placeholders.")
    position: str = setting("suffix", choices=POSITIONS, help="prefix or suffix of the message content.")
    role: str = setting("user", choices=ROLES, help="user: the last user message (the question); system: the system "
                                                    "message (one is inserted first if the prompt has none).")
    separator: str = setting("\n", help="Put between the hint and the existing content.")
    select: list[str] = setting(default_factory=lambda: ["flag"], choices=SELECTORS,
                                help="Which rows get the hint: any of flag, bucket, online, stage.")
    flag_key: str = setting(schema.HARD_HINT, help="flag: the boolean row field.")
    bucket_key: str = setting(schema.DIFFICULTY_BUCKET, help="bucket: the row field holding the bucket.")
    buckets: list[str] = setting(default_factory=lambda: ["hard"], help="bucket: buckets whose rows get the hint.")
    max_pass_rate: float = setting(0.25, ge=0.0, le=1.0, help="online: rows whose sampler estimate is at most this "
                                                              "get the hint.")
    stages: list[int] = setting(default_factory=lambda: [2], source="P2",
                                help="stage: curriculum stages (difficulty/curriculum/stage) whose draws get the hint.")
    validation: bool = setting(False, source="P2", help="Also hint validation prompts (flag/bucket only); P2 "
                                                        "evaluates without hints.")

    def check(self, where: str) -> None:
        if not self.template.strip():
            raise ConfigError(f"{where}.template: expected a non-empty string")
        bad = [p for p in PLACEHOLDERS if p in self.template]
        if bad:
            raise ConfigError(f"{where}.template: may not contain {bad} (verl counts placeholders against the images)")
        if not self.select:
            raise ConfigError(f"{where}.select: expected a non-empty list of {list(SELECTORS)}")
        if "bucket" in self.select and not self.buckets:
            raise ConfigError(f"{where}.buckets: select=bucket needs at least one bucket")
        if "stage" in self.select and not self.stages:
            raise ConfigError(f"{where}.stages: select=stage needs at least one stage number")


__all__ = ["BandConfig", "PhaseConfig", "ScheduleConfig", "SamplerConfig", "HintConfig", "DEFAULT_HINT",
           "ConfigError"]
