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


def _frame(rows):
    import datasets

    class _Dataset:
        dataframe = datasets.Dataset.from_list(rows)

    return _Dataset()


def test_durian_perceptual_branch_checks_every_training_row_at_start_up():
    from verl_difficulty.seam.config import check_training_rows, read_estimator_config

    algo = {"algorithm": {"adv_estimator": "durian", "difficulty": {"durian": {"alpha_percep": 0.3}}}}
    estimators = read_estimator_config(algo)
    scored = [{"extra_info": {"index": i, "visual_entropy": 1.0 + i}} for i in range(4)]
    check_training_rows(_frame(scored), "durian", estimators)  # every row has one: fine
    flat = [{"visual_entropy": 2.0, "extra_info": {"index": i}} for i in range(3)]
    check_training_rows(_frame(flat), "durian", estimators)  # the flat column counts too
    partial = scored[:2] + [{"extra_info": {"index": 7, "visual_entropy": None}},
                            {"extra_info": {"index": 9, "visual_entropy": float("nan")}}]
    with pytest.raises(ValueError) as err:
        check_training_rows(_frame(partial), "durian", estimators)
    msg = str(err.value)
    assert "2 of 4 rows" in msg and "7, 9" in msg and "--scorers visual_entropy" in msg
    # the branch off, another estimator, or warn-and-drop: no requirement
    off = read_estimator_config({"algorithm": {"adv_estimator": "durian", "difficulty": {"durian": {"alpha_percep": 0.0}}}})
    check_training_rows(_frame(partial), "durian", off)
    check_training_rows(_frame(partial), "grpo", estimators)


def test_estimator_settings_are_parsed_at_start_up():
    from verl_difficulty.seam.config import read_estimator_config

    assert read_estimator_config({"algorithm": {"adv_estimator": "grpo"}}) is None
    assert read_estimator_config({"algorithm": {"adv_estimator": "durian"}}).durian.alpha_percep == 0.3
    with pytest.raises(ConfigError, match=r"algorithm\.difficulty\.duran"):
        read_estimator_config({"algorithm": {"adv_estimator": "grpo", "difficulty": {"duran": {}}}})
    with pytest.raises(ConfigError, match=r"algorithm\.difficulty\.weighting\.beta"):
        read_estimator_config({"algorithm": {"adv_estimator": "difficulty_weighted",
                                             "difficulty": {"weighting": {"beta": 1000.0}}}})
