"""Curriculum schedules of the difficulty sampler: what it aims for at each training step.

A :class:`Curriculum` turns the sampler's base settings (``difficulty.sampler.mix`` / ``target`` / ``band``) and a
schedule (``difficulty.sampler.schedule``) into a :class:`Setting` for a training step: the bucket mix (stratified
mode), the target pass rate (target mode), the band-pass window, and the stage number reported as
``curriculum/stage``. It holds no mutable state: the adaptive target lives in the sampler (and its checkpoint).

Schedule types (``schedule.type``):

* ``constant``: the base settings at every step (stage 1).
* ``linear``: the mix moves linearly from ``mix`` to ``schedule.mix_end`` (stratified) or the target from ``target``
  to ``schedule.target_end`` (target mode) between ``schedule.start_step`` and ``schedule.end_step``; before the start
  the start values, after the end the end values (stage 1).
* ``step``: ``schedule.phases`` is a list of ``{start_step, mix?, target?, band?}``; a phase applies from its
  ``start_step`` until the next one's. A key a phase leaves out takes the BASE value (not the previous phase's).
  ``band`` is ``[low, high]`` (band-pass on with this window) or ``false`` (off for the phase). Steps before the
  first phase use the base settings and report stage 0; phase i (0-based) reports stage i + 1.
* ``two_stage``: P2's two-stage training (arXiv 2505.13261) as a schedule: ``schedule.stage1`` (a phase dict
  without ``start_step``, e.g. ``{mix: {medium: 1.0}}`` or ``{band: [0.3, 0.9]}``: moderate prompts) from step 1 and
  ``schedule.stage2`` (e.g. ``{mix: {hard: 1.0}}``: the hard set) from ``schedule.switch_step``. The paper
  switches after ~2K stage-1 samples; the boundary and the stage contents are UNSPECIFIED there: set them.
* ``adaptive`` (target mode only): AdaRFT-style (arXiv 2504.05520) target that follows the model: after each step
  ``target <- clip(target - eta * tanh(sharpness * (batch_acc - reward_target)), target_min, target_max)``, so a
  batch answered better than ``reward_target`` moves the target pass rate down (harder prompts). AdaRFT moves a
  difficulty target on a 0-100 scale with eta=50, alpha=2, beta=0.5; ours works on pass rates, hence eta=0.1.
  With ``eta: 0`` the target stays fixed: DOTS' (arXiv 2506.05316) "pass rate closest to 0.5" selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import numpy as np

SCHEDULE_TYPES = ("constant", "linear", "step", "two_stage", "adaptive")
FALLBACKS = ("nearest", "random")
_PHASE_KEYS = ("start_step", "mix", "target", "band")


def reject_unknown_keys(cls, d: dict, where: str) -> None:
    """A clear error naming ``where`` for keys of ``d`` that are not fields of dataclass ``cls``."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown}; known: {known}")


def _config_from_dict(cls, d: Optional[dict], where: str):
    """Build dataclass ``cls`` from a dict; unknown keys are a clear error naming ``where``."""
    if d is None:
        return cls()
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__} ({d!r})")
    reject_unknown_keys(cls, d, where)
    obj = cls(**d)
    obj.validate(where)
    return obj


def _number(where: str, name: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{where}.{name}: expected a finite number, got {value!r}")
    if not lo <= float(value) <= hi:
        raise ValueError(f"{where}.{name}: {value!r} outside [{lo}, {hi}]")
    return float(value)


def _integer(where: str, name: str, value: Any, lo: int = -(2**62)) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ValueError(f"{where}.{name}: expected an integer >= {lo}, got {value!r}")
    return int(value)


def _band(where: str, value: Any) -> Optional[tuple[float, float]]:
    """A phase's band: ``[low, high]`` -> on, ``false`` -> off (returned as ``None``)."""
    if value is False:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where}.band: expected [low, high] or false, got {value!r}")
    lo = _number(where, "band[0]", value[0], 0.0, 1.0)
    hi = _number(where, "band[1]", value[1], 0.0, 1.0)
    if lo > hi:
        raise ValueError(f"{where}.band: low {lo} > high {hi}")
    return (lo, hi)


@dataclass
class BandConfig:
    """Band-pass filter on the online pass-rate estimate (``difficulty.sampler.band``).

    Args:
        enable (`bool`, defaults to `False`):
            Skip prompts whose estimated pass rate is outside ``[low, high]``.
        low (`float`, defaults to `0.1`):
            Lower edge of the window. P2 keeps offline accuracy in about [0.1, 0.87] (dataset-specific).
        high (`float`, defaults to `0.9`):
            Upper edge of the window (ours, rounded from P2's 0.87).
        readmit_after (`int` or `None`, defaults to `None`):
            A prompt found outside the window is excluded for this many training steps and then re-admitted once
            (drawn regardless of its estimate, which cannot move while it is not drawn); after that draw it is
            judged again. `None`: never re-admitted (P2's offline band, applied online). Ours.
        fallback (`str`, defaults to `"nearest"`):
            When a pool has too few admissible prompts left to fill a batch (a whole pass over it found fewer than
            needed), the rest is filled with out-of-band prompts: ``"nearest"`` (closest to the window first) or
            ``"random"``. A batch is never short; every fallback is counted (``difficulty/sampler/bandpass_fallback``)
            and logged (one warning per step). Ours.
    """

    enable: bool = False
    low: float = 0.1
    high: float = 0.9
    readmit_after: Optional[int] = None
    fallback: str = "nearest"

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str = "difficulty.sampler.band") -> "BandConfig":
        return _config_from_dict(cls, d, where)

    def validate(self, where: str = "difficulty.sampler.band") -> None:
        if not isinstance(self.enable, bool):
            raise ValueError(f"{where}.enable: expected true/false, got {self.enable!r}")
        self.low = _number(where, "low", self.low, 0.0, 1.0)
        self.high = _number(where, "high", self.high, 0.0, 1.0)
        if self.low > self.high:
            raise ValueError(f"{where}: low {self.low} > high {self.high}")
        if self.readmit_after is not None:
            self.readmit_after = _integer(where, "readmit_after", self.readmit_after, 1)
        if self.fallback not in FALLBACKS:
            raise ValueError(f"{where}.fallback: {self.fallback!r} is not one of {FALLBACKS}")


@dataclass
class ScheduleConfig:
    """How the sampler's aim moves with the training step (``difficulty.sampler.schedule``); see the module doc.

    Args:
        type (`str`, defaults to `"constant"`):
            One of ``constant``, ``linear``, ``step``, ``two_stage``, ``adaptive``.
        start_step (`int`, defaults to `1`):
            ``linear``: first step of the ramp.
        end_step (`int` or `None`, defaults to `None`):
            ``linear``: step at which the end values are reached (required, > ``start_step``).
        mix_end (`dict` or `None`, defaults to `None`):
            ``linear`` + stratified: the bucket mix at ``end_step`` (``mix`` is the start).
        target_end (`float` or `None`, defaults to `None`):
            ``linear`` + target mode: the target pass rate at ``end_step`` (``target`` is the start).
        phases (`list[dict]`, defaults to `[]`):
            ``step``: ``[{start_step, mix?, target?, band?}, ...]`` with increasing ``start_step``.
        switch_step (`int` or `None`, defaults to `None`):
            ``two_stage``: first step of stage 2 (P2: UNSPECIFIED; about 2K samples / batch size).
        stage1 (`dict` or `None`, defaults to `None`):
            ``two_stage``: stage-1 settings ``{mix?, target?, band?}`` (P2: moderate prompts).
        stage2 (`dict` or `None`, defaults to `None`):
            ``two_stage``: stage-2 settings (P2: the moderate-to-hard set).
        eta (`float`, defaults to `0.1`):
            ``adaptive``: step size of the target update (ours; AdaRFT uses 50 on a 0-100 difficulty scale).
        sharpness (`float`, defaults to `2.0`):
            ``adaptive``: AdaRFT's alpha inside the tanh.
        reward_target (`float`, defaults to `0.5`):
            ``adaptive``: AdaRFT's beta, the batch accuracy the curriculum aims for.
        target_min (`float`, defaults to `0.05`):
            ``adaptive``: lower clip of the target pass rate (ours).
        target_max (`float`, defaults to `0.95`):
            ``adaptive``: upper clip of the target pass rate (ours).
    """

    type: str = "constant"
    start_step: int = 1
    end_step: Optional[int] = None
    mix_end: Optional[dict] = None
    target_end: Optional[float] = None
    phases: list = field(default_factory=list)
    switch_step: Optional[int] = None
    stage1: Optional[dict] = None
    stage2: Optional[dict] = None
    eta: float = 0.1
    sharpness: float = 2.0
    reward_target: float = 0.5
    target_min: float = 0.05
    target_max: float = 0.95

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str = "difficulty.sampler.schedule") -> "ScheduleConfig":
        return _config_from_dict(cls, d, where)

    def validate(self, where: str = "difficulty.sampler.schedule") -> None:
        if self.type not in SCHEDULE_TYPES:
            raise ValueError(f"{where}.type: {self.type!r} is not one of {SCHEDULE_TYPES}")
        self.start_step = _integer(where, "start_step", self.start_step, 0)
        if self.end_step is not None:
            self.end_step = _integer(where, "end_step", self.end_step, 0)
        if self.target_end is not None:
            self.target_end = _number(where, "target_end", self.target_end, 0.0, 1.0)
        if self.switch_step is not None:
            self.switch_step = _integer(where, "switch_step", self.switch_step, 1)
        if not isinstance(self.phases, (list, tuple)):
            raise ValueError(f"{where}.phases: expected a list of phase mappings, got {self.phases!r}")
        self.phases = list(self.phases)
        self.eta = _number(where, "eta", self.eta, 0.0)
        self.sharpness = _number(where, "sharpness", self.sharpness, 0.0)
        self.reward_target = _number(where, "reward_target", self.reward_target, 0.0, 1.0)
        self.target_min = _number(where, "target_min", self.target_min, 0.0, 1.0)
        self.target_max = _number(where, "target_max", self.target_max, 0.0, 1.0)
        if self.target_min > self.target_max:
            raise ValueError(f"{where}: target_min {self.target_min} > target_max {self.target_max}")


def mix_vector(mix: Any, buckets: Sequence[str], where: str) -> np.ndarray:
    """A ``{bucket: weight}`` mapping as a normalised weight vector over ``buckets`` (clear errors)."""
    if not isinstance(mix, dict) or not mix:
        raise ValueError(f"{where}: expected a non-empty mapping bucket -> weight, e.g. {{medium: 0.5, hard: 0.5}}")
    out = np.zeros(len(buckets), dtype=np.float64)
    for name, w in mix.items():
        if name not in buckets:
            raise ValueError(f"{where}: unknown bucket {name!r}; known buckets: {list(buckets)}")
        out[list(buckets).index(name)] = _number(where, str(name), w, 0.0)
    if out.sum() <= 0:
        raise ValueError(f"{where}: the weights sum to 0")
    return out / out.sum()


@dataclass(frozen=True)
class Setting:
    """What the sampler aims for at one step."""

    stage: int
    mix: Optional[np.ndarray]  # normalised over the sampler's buckets (stratified mode)
    target: Optional[float]  # target pass rate (target mode)
    band: Optional[tuple[float, float]]  # band-pass window, None = off


@dataclass(frozen=True)
class _Phase:
    start_step: int
    mix: Optional[np.ndarray]
    target: Optional[float]
    band: Any  # tuple, None (off) or _INHERIT


_INHERIT = object()


class Curriculum:
    """Per-step settings from the base settings and a schedule (validated against the sampler's mode)."""

    def __init__(
        self,
        schedule: ScheduleConfig,
        mode: str,
        buckets: Sequence[str],
        base_mix: Optional[dict],
        base_target: float,
        band: BandConfig,
        where: str = "difficulty.sampler",
    ):
        self.schedule = schedule
        self.mode = mode
        self.buckets = tuple(buckets)
        sw = f"{where}.schedule"
        self.base_mix = mix_vector(base_mix, self.buckets, f"{where}.mix") if base_mix is not None else None
        self.base_target = float(base_target)
        self.base_band = (band.low, band.high) if band.enable else None
        if self.base_mix is not None and mode != "stratified":
            raise ValueError(f"{where}.mix is set but only mode=stratified uses a bucket mix (mode={mode!r})")
        t = schedule.type
        self.phases: list[_Phase] = []
        self.mix_end = None
        if t == "linear":
            if schedule.end_step is None or schedule.end_step <= schedule.start_step:
                raise ValueError(f"{sw}: type=linear needs end_step > start_step (got {schedule.end_step!r})")
            if mode == "stratified":
                if schedule.mix_end is None:
                    raise ValueError(f"{sw}: type=linear with mode=stratified needs mix_end")
                self.mix_end = mix_vector(schedule.mix_end, self.buckets, f"{sw}.mix_end")
            elif mode == "target":
                if schedule.target_end is None:
                    raise ValueError(f"{sw}: type=linear with mode=target needs target_end")
            else:
                raise ValueError(f"{sw}: type=linear moves a mix or a target; mode={mode!r} has neither")
            if schedule.mix_end is not None and mode != "stratified":
                raise ValueError(f"{sw}.mix_end only applies to mode=stratified")
            if schedule.target_end is not None and mode != "target":
                raise ValueError(f"{sw}.target_end only applies to mode=target")
        elif t in ("step", "two_stage"):
            if t == "step":
                raw = list(schedule.phases)
                if not raw:
                    raise ValueError(f"{sw}: type=step needs phases: [{{start_step: 1, ...}}, ...]")
                names = [f"{sw}.phases[{i}]" for i in range(len(raw))]
            else:
                if schedule.switch_step is None or schedule.stage1 is None or schedule.stage2 is None:
                    raise ValueError(f"{sw}: type=two_stage needs switch_step, stage1 and stage2")
                for name in ("stage1", "stage2"):
                    st = getattr(schedule, name)
                    if not isinstance(st, dict) or "start_step" in st:
                        raise ValueError(f"{sw}.{name}: expected a mapping {{mix?, target?, band?}} (no start_step)")
                raw = [dict(schedule.stage1, start_step=1), dict(schedule.stage2, start_step=schedule.switch_step)]
                names = [f"{sw}.stage1", f"{sw}.stage2"]
            prev = -1
            for d, name in zip(raw, names):
                ph = self._phase(d, name)
                if ph.start_step <= prev:
                    raise ValueError(f"{name}.start_step: {ph.start_step} is not after the previous phase's {prev}")
                prev = ph.start_step
                self.phases.append(ph)
        elif t == "adaptive":
            if mode != "target":
                raise ValueError(f"{sw}: type=adaptive moves the target pass rate; it needs mode=target")
        for name in ("mix_end", "target_end") if t != "linear" else ():
            if getattr(schedule, name) is not None:
                raise ValueError(f"{sw}.{name} only applies to type=linear")
        if t != "step" and schedule.phases:
            raise ValueError(f"{sw}.phases only applies to type=step")
        if t != "two_stage" and any(x is not None for x in (schedule.switch_step, schedule.stage1, schedule.stage2)):
            raise ValueError(f"{sw}.switch_step/stage1/stage2 only apply to type=two_stage")
        # every step must have a mix in stratified mode
        if mode == "stratified" and self.base_mix is None:
            if not self.phases or any(p.mix is None for p in self.phases) or self.phases[0].start_step > 1:
                raise ValueError(
                    f"{where}: mode=stratified needs a bucket mix ({where}.mix, e.g. {{medium: 0.5, hard: 0.5}}) "
                    "for every step (phases that set no mix use it)"
                )

    def _phase(self, d: Any, where: str) -> _Phase:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping {{start_step, mix?, target?, band?}}, got {d!r}")
        unknown = sorted(set(d) - set(_PHASE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown settings {unknown}; known: {list(_PHASE_KEYS)}")
        if "start_step" not in d:
            raise ValueError(f"{where}: missing start_step")
        start = _integer(where, "start_step", d["start_step"], 0)
        mix = None
        if d.get("mix") is not None:
            if self.mode != "stratified":
                raise ValueError(f"{where}.mix: only mode=stratified uses a bucket mix (mode={self.mode!r})")
            mix = mix_vector(d["mix"], self.buckets, f"{where}.mix")
        target = None
        if d.get("target") is not None:
            if self.mode != "target":
                raise ValueError(f"{where}.target: only mode=target uses a target pass rate (mode={self.mode!r})")
            target = _number(where, "target", d["target"], 0.0, 1.0)
        band = _band(where, d["band"]) if d.get("band") is not None else _INHERIT
        return _Phase(start, mix, target, band)

    # ------------------------------------------------------------------ queries
    def mixes(self) -> list[np.ndarray]:
        """Every mix any step can use (to check that each bucket with weight has rows)."""
        out = [m for m in (self.base_mix, self.mix_end) if m is not None]
        out += [p.mix for p in self.phases if p.mix is not None]
        return out

    def uses_band(self) -> bool:
        return self.base_band is not None or any(isinstance(p.band, tuple) for p in self.phases)

    def at(self, step: int, adaptive_target: Optional[float] = None) -> Setting:
        s = self.schedule
        mix, target, band, stage = self.base_mix, self.base_target, self.base_band, 1
        if s.type == "linear":
            f = min(1.0, max(0.0, (step - s.start_step) / float(s.end_step - s.start_step)))
            if self.mix_end is not None:
                mix = (1.0 - f) * self.base_mix + f * self.mix_end
                mix = mix / mix.sum()
            if s.target_end is not None:
                target = (1.0 - f) * self.base_target + f * float(s.target_end)
        elif self.phases:
            stage = 0
            for i, ph in enumerate(self.phases):
                if step >= ph.start_step:
                    stage = i + 1
            if stage > 0:
                ph = self.phases[stage - 1]
                mix = ph.mix if ph.mix is not None else self.base_mix
                target = ph.target if ph.target is not None else self.base_target
                band = self.base_band if ph.band is _INHERIT else ph.band
        elif s.type == "adaptive" and adaptive_target is not None:
            target = float(adaptive_target)
        if self.mode != "stratified":
            mix = None
        if self.mode != "target":
            target = None
        return Setting(stage=stage, mix=mix, target=target, band=band)

    def adapt(self, target: float, batch_acc: float) -> float:
        """AdaRFT-style update of the target pass rate after a step whose mean correctness was ``batch_acc``."""
        s = self.schedule
        new = target - s.eta * math.tanh(s.sharpness * (batch_acc - s.reward_target))
        return float(min(s.target_max, max(s.target_min, new)))
