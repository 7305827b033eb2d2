"""Reward settings parsed strictly (unknown keys, wrong types, bounds, cross-field rules: errors with the full dotted
key), and the rewards package light to import (no verl, no torch; grader processes load only the grading modules)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from verl_difficulty.config import ConfigError, describe, parse
from verl_difficulty.rewards import functions, pool
from verl_difficulty.rewards.config import (
    MANAGER_DEFAULTS,
    MANAGER_NAMES,
    RewardFields,
    RewardSettings,
    resolve_settings,
    settings_from_config,
)
from verl_difficulty.schema import ACC, TASK_TYPE

GRADING_MODULES = ("results", "extract", "math_grading", "perception", "pool")
ALL_MODULES = GRADING_MODULES + ("config", "functions")


def trainer_config(difficulty_reward=None, reward_kwargs=None, yaml: str | None = None):
    """The parts of verl's trainer config the managers read their settings from."""
    if yaml is not None:
        return OmegaConf.create(yaml)
    cfg: dict = {"reward": {"reward_manager": {"name": "math_acc_format"}}}
    if reward_kwargs is not None:
        cfg["reward"]["reward_kwargs"] = reward_kwargs
    if difficulty_reward is not None:
        cfg["difficulty"] = {"reward": difficulty_reward}
    return OmegaConf.create(cfg)


@contextmanager
def raises_naming(*parts: str):
    """Expect a ConfigError whose message contains each of ``parts`` (the first: the full dotted key)."""
    with pytest.raises(ConfigError) as info:
        yield
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


# ====================================================================================================================
# Importing the rewards package is light
# ====================================================================================================================
def test_importing_rewards_and_grading_modules_does_not_import_verl_or_torch():
    mods = ", ".join(f"verl_difficulty.rewards.{m}" for m in ALL_MODULES)
    code = (
        "import sys\n"
        "import verl_difficulty.rewards\n"
        f"import {mods}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('verl', 'torch'))\n"
        "assert 'verl_difficulty.rewards.managers' not in sys.modules\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_grader_process_loads_only_the_grading_modules():
    g = pool.SafeGrader(timeout_s=30, num_procs=1)
    try:
        r = g.grade("_debug_modules", "x", None)
    finally:
        g.close()
    assert r.reason == "" and r.acc == 1.0
    loaded = r.extras["modules"]
    assert not [m for m in loaded if m.split(".")[0] in ("verl", "torch")], loaded
    allowed = {"verl_difficulty", "verl_difficulty.rewards", "verl_difficulty.schema"}
    allowed |= {f"verl_difficulty.rewards.{m}" for m in GRADING_MODULES}
    # rapidfuzz (OCR similarity) is loaded at the start, not at the first OCR call; it pulls in nothing heavy
    allowed |= {m for m in loaded if m.split(".")[0] == "rapidfuzz"}
    assert set(loaded) <= allowed, sorted(set(loaded) - allowed)
    assert "verl_difficulty.rewards.pool" in loaded
    assert "rapidfuzz.distance.Levenshtein" in loaded


def test_grader_process_ignores_the_working_directory(tmp_path, monkeypatch):
    """``python -c`` puts the working directory first on sys.path: a file there must not shadow a grading library."""
    (tmp_path / "math_verify.py").write_text("raise ImportError('shadowed by the working directory')\n")
    monkeypatch.chdir(tmp_path)
    g = pool.SafeGrader(timeout_s=30, num_procs=1)
    try:
        g.pool.ping()
        assert g.grade("math", "\\boxed{1/2}", "0.5").acc == 1.0
    finally:
        g.close()


def test_bootstrap_finds_this_module_from_its_name():
    """The child gets the package root and this module's dotted name: they must point at pool.py, wherever installed."""
    assert pool._MODULE == "verl_difficulty.rewards.pool"
    assert Path(pool._PACKAGE_ROOT, *pool._MODULE.split(".")).with_suffix(".py") == Path(pool.__file__).resolve()


# ====================================================================================================================
# Declared with setting(); defaults valid
# ====================================================================================================================
def test_every_setting_is_documented_and_each_manager_default_is_valid():
    for s in describe(RewardSettings):
        assert s.help and s.source, s.name
    for manager, values in MANAGER_DEFAULTS.items():
        parse(RewardFields, values, f"MANAGER_DEFAULTS.{manager}")
        s = resolve_settings(manager)
        assert all(getattr(s, k) == v for k, v in values.items())
    assert set(MANAGER_DEFAULTS) == set(MANAGER_NAMES)
    assert resolve_settings("math_acc_format") == RewardSettings(
        acc_weight=0.9, format_weight=0.1, format_style="think_boxed", require_boxed=True)


def test_precedence_of_the_four_layers():
    cfg = trainer_config(
        difficulty_reward={"acc_weight": 0.5, "format_weight": 0.5, "timeout_s": 3,
                           "math_acc_format": {"acc_weight": 0.6, "max_chars": 100}},
        reward_kwargs={"format_weight": 0.2, "math_acc_format": {"acc_weight": 0.8}},
    )
    s = settings_from_config(cfg, "math_acc_format")
    assert (s.acc_weight, s.format_weight, s.timeout_s, s.max_chars) == (0.8, 0.2, 3.0, 100)
    s = settings_from_config(cfg, "r1v_acc")  # the math_acc_format sub-dicts do not apply
    assert (s.acc_weight, s.format_weight, s.timeout_s, s.max_chars) == (0.5, 0.2, 3.0, 8000)


# ====================================================================================================================
# Unknown keys
# ====================================================================================================================
@pytest.mark.parametrize("difficulty_reward, reward_kwargs, key", [
    ({"acc_wieght": 0.5}, None, "difficulty.reward.acc_wieght"),
    ({"math_acc_format": {"acc_wieght": 0.5}}, None, "difficulty.reward.math_acc_format.acc_wieght"),
    (None, {"timeout": 3}, "reward.reward_kwargs.timeout"),
    (None, {"math_acc_format": {"acc_wieght": 0.5}}, "reward.reward_kwargs.math_acc_format.acc_wieght"),
    # the sub-dict of another manager is checked too
    (None, {"perception": {"iou": 0.5}}, "reward.reward_kwargs.perception.iou"),
    # verl's DAPO keys are only allowed in reward.reward_kwargs
    ({"max_resp_len": 1024}, None, "difficulty.reward.max_resp_len"),
    (None, {"math_acc_format": {"overlong_buffer_cfg": None}},
     "reward.reward_kwargs.math_acc_format.overlong_buffer_cfg"),
])
def test_unknown_keys_are_rejected_with_the_full_dotted_key(difficulty_reward, reward_kwargs, key):
    with raises_naming(key, "unknown setting"):
        settings_from_config(trainer_config(difficulty_reward, reward_kwargs), "math_acc_format")


def test_verl_dapo_keys_in_reward_kwargs_are_allowed_and_ignored():
    cfg = trainer_config(reward_kwargs={"overlong_buffer_cfg": {"enable": True, "len": 512, "penalty_factor": 1.0},
                                        "max_resp_len": 2048, "acc_weight": 0.7})
    s = settings_from_config(cfg, "math_acc_format")
    assert s.acc_weight == 0.7 and s == RewardSettings(**{**MANAGER_DEFAULTS["math_acc_format"], "acc_weight": 0.7})


# ====================================================================================================================
# Types, bounds, choices
# ====================================================================================================================
@pytest.mark.parametrize("value, key, what", [
    ({"require_boxed": "yes"}, "difficulty.reward.require_boxed", "true/false"),
    ({"require_reasoning": "true"}, "difficulty.reward.require_reasoning", "true/false"),
    ({"require_think_open": 1}, "difficulty.reward.require_think_open", "true/false"),
    ({"acc_weight": "0.5"}, "difficulty.reward.acc_weight", "number"),
    ({"acc_weight": True}, "difficulty.reward.acc_weight", "number"),
    ({"acc_weight": None}, "difficulty.reward.acc_weight", "number"),
    ({"num_procs": 2.5}, "difficulty.reward.num_procs", "integer"),
    ({"think_open": ["<think>"]}, "difficulty.reward.think_open", "string"),
    ({"r1v_acc": {"max_chars": "8000"}}, "difficulty.reward.r1v_acc.max_chars", "integer"),
    ({"timeout_s": 0}, "difficulty.reward.timeout_s", "> 0"),
    ({"num_procs": 0}, "difficulty.reward.num_procs", ">= 1"),
    ({"iou_threshold": 1.5}, "difficulty.reward.iou_threshold", "<= 1"),
    ({"format_weight": -0.1}, "difficulty.reward.format_weight", ">= 0"),
    ({"timeout_s": float("nan")}, "difficulty.reward.timeout_s", "finite"),
    ({"format_style": "bogus"}, "difficulty.reward.format_style", "think_boxed"),
    ({"grader_mode": "thread"}, "difficulty.reward.grader_mode", "subprocess"),
    ({"answer_close": "  "}, "difficulty.reward.answer_close", "non-empty"),
    ({"math_acc_format": 3}, "difficulty.reward.math_acc_format", "mapping"),
])
def test_wrong_values_are_rejected_with_the_full_dotted_key(value, key, what):
    with raises_naming(key, what):
        settings_from_config(trainer_config(difficulty_reward=value), "math_acc_format")


def test_a_section_that_is_not_a_mapping_is_rejected():
    with raises_naming("reward.reward_kwargs", "mapping"):
        settings_from_config(trainer_config(reward_kwargs=[1, 2]), "r1v_acc")


def test_yaml_booleans_are_booleans_and_strings_are_not():
    yaml = "difficulty:\n  reward:\n    require_boxed: false\n    r1v_acc:\n      require_reasoning: false\n"
    s = settings_from_config(trainer_config(yaml=yaml), "math_acc_format")
    assert s.require_boxed is False and s.require_reasoning is True
    assert settings_from_config(trainer_config(yaml=yaml), "r1v_acc").require_reasoning is False
    with raises_naming("difficulty.reward.require_boxed", "'yes'"):
        settings_from_config(trainer_config(yaml="difficulty:\n  reward:\n    require_boxed: 'yes'\n"),
                             "math_acc_format")


# ====================================================================================================================
# Cross-field checks (on the resolved settings, once)
# ====================================================================================================================
@pytest.mark.parametrize("value, what", [
    ({"think_open": "</think>"}, "think_open and think_close"),
    ({"acc_weight": 0, "format_weight": 0}, "both 0"),
    ({"format_style": "none"}, "format_style is 'none'"),
])
def test_cross_field_rules(value, what):
    with raises_naming("math_acc_format reward settings (difficulty.reward)", what):
        settings_from_config(trainer_config(difficulty_reward=value), "math_acc_format")


def test_cross_field_rules_see_the_final_values_not_each_layer():
    # r1v_acc: acc_weight 0 in one layer and format_weight 1 in a later one is valid
    cfg = trainer_config(difficulty_reward={"acc_weight": 0}, reward_kwargs={"r1v_acc": {"format_weight": 1.0}})
    s = settings_from_config(cfg, "r1v_acc")
    assert (s.acc_weight, s.format_weight) == (0.0, 1.0)
    # math_acc_format: format_style none is fine once its format weight is 0
    s = settings_from_config(trainer_config(difficulty_reward={"format_style": "none", "format_weight": 0}),
                             "math_acc_format")
    assert s.format_style == "none"


def test_unknown_reward_name():
    with pytest.raises(ConfigError, match="unknown reward 'bogus'"):
        resolve_settings("bogus")


# ====================================================================================================================
# The functions' reward_kwargs and the verifier's settings
# ====================================================================================================================
def test_function_reward_kwargs_are_strict():
    prefix = "reward.custom_reward_function.reward_kwargs"
    with raises_naming(f"{prefix}.acc_wieght", "unknown setting"):
        functions.math_acc_format("src", "\\boxed{1}", "1", acc_wieght=0.5)
    with raises_naming(f"{prefix}.require_boxed", "true/false"):
        functions.math_acc_format("src", "\\boxed{1}", "1", require_boxed="yes")
    with raises_naming(f"{prefix}.r1v_acc.timeout_s", "> 0"):
        functions.r1v_acc("src", "<answer>1</answer>", "1", r1v_acc={"timeout_s": -1})


def test_function_call_kwargs_are_not_settings():
    r = functions.perception("src", "<answer>three</answer>", 3, {}, reward_model={TASK_TYPE: "count"},
                             reward_router_address=None, reward_model_tokenizer=None, grader_mode="inline")
    assert r[ACC] == 1.0 and r["score"] == 1.0
    r = functions.math_acc_format("src", "<think>w</think> \\boxed{2}", "2", format_weight=0.5, acc_weight=0.5,
                                  grader_mode="inline")
    assert r["score"] == pytest.approx(1.0)


def test_verifier_style_settings_name_their_mapping():
    with raises_naming("reward_kwargs.timeout", "unknown setting"):
        resolve_settings("r1v_acc", {"timeout": 5})
    with raises_naming("--reward-kwargs.num_procs", "integer"):
        resolve_settings("r1v_acc", {"num_procs": "2"}, "--reward-kwargs")
