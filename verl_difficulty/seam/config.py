"""The plugin's top-level ``difficulty`` section of a verl trainer config, parsed once at trainer start-up.

Recipes mount its defaults (``verl_difficulty/config/difficulty.yaml``, hydra group ``difficulty@difficulty``), so
command-line overrides need no ``+``. Every key of the section, at any depth, is parsed by the one configuration
mechanism (:mod:`verl_difficulty.config`): an unknown key or a wrong type stops the trainer before any Ray worker
loads a model, naming the full dotted key (``difficulty.sampler.band.hgih``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl_difficulty.config import parse, setting
from verl_difficulty.sampling.config import HintConfig, SamplerConfig
from verl_difficulty.seam.inputs import DEFAULT_CORRECT_THRESHOLD

SECTION = "difficulty"


@dataclass
class DifficultyConfig:
    """The ``difficulty`` section: the seam's verdict rule, the sampler, the P2 hints and the reward settings."""

    correct_threshold: float = setting(
        DEFAULT_CORRECT_THRESHOLD, ge=0.0,
        help="a response is correct when its scalar reward >= this, for reward functions that report no `acc`; the "
             "one verdict the estimators and the sampler share (0.5 separates 0/1 and 0.9*acc + 0.1*format rewards)",
    )
    sampler: SamplerConfig = setting(
        default_factory=SamplerConfig, help="the difficulty sampler (difficulty.sampler.*)", source="P1/P2/ours"
    )
    hints: HintConfig = setting(default_factory=HintConfig, help="P2 difficulty hints (difficulty.hints.*)",
                                source="P2/ours")
    reward: dict[str, Any] = setting(
        default_factory=dict, source="P1/P3/P4",
        help="settings of the plugin's reward managers: flat keys for every manager or a sub-dict per manager name "
             "(verl_difficulty.rewards.config.RewardSettings)",
    )

    def check(self, where: str) -> None:
        from verl_difficulty.rewards.config import MANAGER_NAMES, resolve_layers

        # every manager reads difficulty.reward: a typo or a bad value there is an error whichever reward is used
        for name in MANAGER_NAMES:
            resolve_layers(name, [(f"{where}.reward", self.reward, ())])


def read_difficulty_config(config: Any) -> DifficultyConfig:
    """Parse the ``difficulty`` section of a whole verl trainer config (a DictConfig or a mapping; absent = defaults)."""
    section = config.get(SECTION, None) if hasattr(config, "get") else None
    return parse(DifficultyConfig, section, SECTION)
