"""The plugin's ``difficulty`` section: parsed once by the one mechanism, errors name the full dotted key, and the
shipped YAML defaults equal the dataclass defaults key for key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from verl_difficulty.config import ConfigError, defaults, describe
from verl_difficulty.seam.config import DifficultyConfig, read_difficulty_config

YAML = Path(__file__).resolve().parents[3] / "verl_difficulty" / "config" / "difficulty.yaml"


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_shipped_yaml_lists_exactly_the_dataclass_keys_and_defaults():
    shipped = _leaves(yaml.safe_load(YAML.read_text()))
    declared = _leaves(defaults(DifficultyConfig))
    assert sorted(shipped) == sorted(declared)
    for key, value in declared.items():
        assert shipped[key] == value, key


def test_every_field_is_documented_where_declared():
    from verl_difficulty.sampling.config import BandConfig, HintConfig, SamplerConfig, ScheduleConfig

    for cls in (DifficultyConfig, SamplerConfig, BandConfig, ScheduleConfig, HintConfig):
        for s in describe(cls):
            assert s.help.strip() and s.source.strip(), f"{cls.__name__}.{s.name}"


def test_the_section_parses_from_a_trainer_config():
    cfg = OmegaConf.create({"difficulty": yaml.safe_load(YAML.read_text())})
    cfg.difficulty.sampler.enable = True
    cfg.difficulty.reward = {"format_weight": 0.5, "math_acc_format": {"acc_weight": 0.8}}
    parsed = read_difficulty_config(cfg)
    assert parsed.sampler.enable is True and parsed.correct_threshold == 0.5
    assert read_difficulty_config(OmegaConf.create({})).sampler.enable is False  # no section: defaults


@pytest.mark.parametrize(
    "section, key",
    [
        ({"samplr": {}}, "difficulty.samplr"),
        ({"sampler": []}, "difficulty.sampler"),
        ({"sampler": {"band": {"hgih": 0.9}}}, "difficulty.sampler.band.hgih"),
        ({"sampler": {"include_buckets": "hard"}}, "difficulty.sampler.include_buckets"),
        ({"correct_threshold": "0.5"}, "difficulty.correct_threshold"),
        ({"hints": {"enable": "yes"}}, "difficulty.hints.enable"),
        ({"reward": {"acc_wieght": 1.0}}, "difficulty.reward.acc_wieght"),
        ({"reward": {"math_acc_format": {"format_weight": "high"}}}, "difficulty.reward.math_acc_format.format_weight"),
    ],
)
def test_bad_keys_and_types_name_the_dotted_key(section, key):
    with pytest.raises(ConfigError) as err:
        read_difficulty_config({"difficulty": section})
    assert key in str(err.value)
