"""Curriculum schedules of the difficulty sampler: what it aims for at each training step.

A :class:`Curriculum` turns the sampler's base settings (``difficulty.sampler.mix`` / ``target`` / ``band``) and a
schedule (``difficulty.sampler.schedule``) into a :class:`Setting` for a training step: the bucket mix (stratified
mode), the target pass rate (target mode), the band-pass window, and the stage number reported as
``difficulty/curriculum/stage``. Its one piece of state is the adaptive target (:meth:`Curriculum.state_dict`).

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
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from verl_difficulty.sampling.config import SamplerConfig


def mix_vector(mix: dict, buckets: Sequence[str]) -> np.ndarray:
    """A checked ``{bucket: weight}`` mapping as a normalised weight vector over ``buckets``."""
    out = np.zeros(len(buckets), dtype=np.float64)
    for name, w in mix.items():
        out[list(buckets).index(name)] = float(w)
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
    """Per-step settings from a checked :class:`SamplerConfig` (its base settings and schedule), plus the adaptive
    target pass rate it moves after each step (its state)."""

    def __init__(self, config: SamplerConfig):
        self.schedule = s = config.schedule
        self.mode = config.mode
        self.buckets = tuple(config.buckets)
        self.base_mix = mix_vector(config.mix, self.buckets) if config.mix is not None else None
        self.base_target = float(config.target)
        self.base_band = (config.band.low, config.band.high) if config.band.enable else None
        self.mix_end = mix_vector(s.mix_end, self.buckets) if s.mix_end is not None else None
        self.phases = [
            _Phase(
                start,
                mix_vector(ph.mix, self.buckets) if ph.mix is not None else None,
                ph.target,
                _INHERIT if ph.band is None else (None if ph.band is False else tuple(ph.band)),
            )
            for _, ph, start in s.named_phases("difficulty.sampler.schedule")
        ]
        self.target_state = float(config.target)

    # ------------------------------------------------------------------ queries
    def mixes(self) -> list[np.ndarray]:
        """Every mix any step can use (to check that each bucket with weight has rows)."""
        out = [m for m in (self.base_mix, self.mix_end) if m is not None]
        out += [p.mix for p in self.phases if p.mix is not None]
        return out

    def uses_band(self) -> bool:
        return self.base_band is not None or any(isinstance(p.band, tuple) for p in self.phases)

    def adaptive(self) -> bool:
        return self.schedule.type == "adaptive"

    def at(self, step: int) -> Setting:
        """The setting of training step ``step`` (the adaptive target is the current state)."""
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
        elif self.adaptive():
            target = self.target_state
        if self.mode != "stratified":
            mix = None
        if self.mode != "target":
            target = None
        return Setting(stage=stage, mix=mix, target=target, band=band)

    def adapt(self, batch_acc: float) -> None:
        """AdaRFT-style update of the target pass rate after a step whose mean correctness was ``batch_acc``."""
        if not self.adaptive() or not math.isfinite(batch_acc):
            return
        s = self.schedule
        new = self.target_state - s.eta * math.tanh(s.sharpness * (batch_acc - s.reward_target))
        self.target_state = float(min(s.target_max, max(s.target_min, new)))

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"target_state": self.target_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target_state = float(state["target_state"])
