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


PLUGIN_ESTIMATORS = ("difficulty_weighted", "durian")


def read_estimator_config(config: Any):
    """Parse ``algorithm.difficulty`` at start-up (``AlgorithmDifficultyConfig``), so that a typo, a wrong type or an
    overflowing parameter stops the run before any worker loads a model, not at the first advantage step. Returns
    None when the run uses none of the plugin's estimators and has no ``algorithm.difficulty`` section."""
    from verl_difficulty.estimators.config import AlgorithmDifficultyConfig

    algorithm = config.get("algorithm", None) if hasattr(config, "get") else None
    if algorithm is None:
        return None
    if algorithm.get("adv_estimator", None) not in PLUGIN_ESTIMATORS and algorithm.get("difficulty", None) is None:
        return None
    return AlgorithmDifficultyConfig.from_algorithm_config(algorithm)


def check_training_rows(dataset: Any, adv_estimator: Any, estimators: Any) -> None:
    """Checks of the training rows that would otherwise fail only after the first rollout.

    ``durian`` with ``alpha_percep > 0`` (and ``on_missing_entropy=error``) needs a finite ``visual_entropy`` (flat
    column or ``extra_info``) on every training row: the error names how many rows lack one, a few of their
    ``extra_info.index`` values, and the command that writes the column.
    """
    import numpy as np

    from verl_difficulty import schema
    from verl_difficulty.sampling.rows import read_float_field

    if adv_estimator != "durian" or estimators is None:
        return
    cfg = estimators.durian
    if cfg.alpha_percep <= 0 or cfg.on_missing_entropy != "error":
        return
    pids, values = read_float_field(dataset, schema.VISUAL_ENTROPY)
    bad = ~np.isfinite(values)
    if bad.any():
        examples = ", ".join(str(int(p)) for p in pids[bad][:5])
        raise ValueError(
            f"algorithm.difficulty.durian.alpha_percep={cfg.alpha_percep} needs a finite {schema.VISUAL_ENTROPY} on "
            f"every training row, but {int(bad.sum())} of {len(values)} rows have none (extra_info.index: "
            f"{examples}{', ...' if bad.sum() > 5 else ''}). Score the data first: `verl-difficulty score "
            f"TRAIN.parquet --model MODEL -o OUT --scorers visual_entropy` and train on OUT/scored.parquet, or set "
            f"algorithm.difficulty.durian.alpha_percep=0 (on_missing_entropy=warn drops the branch per step instead)"
        )
