"""Every shipped recipe YAML composes through hydra with verl's own config, and every key in it exists.

For each ``recipes/<name>/*.yaml`` (the configs of all recipes, found by glob: a new recipe is covered without an edit
here):

1. hydra composes it from its folder with the ``pkg://`` search paths, as ``main_ppo`` (or verl's SFT trainer) does;
2. every plugin key is known: the ``difficulty`` section (sampler, hints, reward settings) and ``algorithm.difficulty``
   go through the plugin's own parsers, which reject unknown keys and wrong types with the dotted key;
3. every other key the YAML sets exists in verl's base config (``ppo_trainer`` / ``sft_trainer_engine``), except under
   an open mapping (an empty ``{}`` in verl's config such as ``override_config``, or :data:`OPEN_MAPPINGS`) or the
   few documented dataclass fields verl's YAML omits (:data:`VERL_FIELDS_NOT_IN_YAML`);
4. the tiny CPU variant's overrides (:mod:`verl_difficulty.cpu.recipe_overrides`) apply to every RL config.

A renamed key fails: the last tests rename one plugin key and one verl key in a copy of a shipped YAML.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
RECIPES = REPO / "recipes"
CONFIGS = sorted(p for p in RECIPES.glob("*/*.yaml"))

# fields of verl's config dataclasses that verl's YAML does not list (so hydra needs them declared by the recipe)
VERL_FIELDS_NOT_IN_YAML = {
    # verl/workers/config/engine.py FSDPEngineConfig.mixed_precision: Optional[dict] = None
    "actor_rollout_ref.actor.fsdp_config.mixed_precision",
    "actor_rollout_ref.ref.fsdp_config.mixed_precision",
    "model.fsdp_config.mixed_precision",
    "engine.mixed_precision",
    # verl/utils/dataset/multiturn_sft_dataset.py:104 reads config.get("image_key", "images"); sft_trainer_engine.yaml
    # does not list it
    "data.image_key",
}
# mappings whose keys are free by design although verl's YAML lists some of them
OPEN_MAPPINGS = {
    "actor_rollout_ref.rollout.engine_kwargs",  # kwargs per rollout backend: the plugin's `transformers` reads its own
    "ray_kwargs.ray_init",  # keyword arguments of ray.init()
}
PLUGIN_SECTIONS = ("difficulty", "algorithm.difficulty")


def _base_name(raw: dict) -> str:
    for entry in raw.get("defaults", []):
        if isinstance(entry, str) and entry in ("ppo_trainer", "sft_trainer_engine", "sft_trainer"):
            return entry
    raise AssertionError(f"defaults {raw.get('defaults')} extend no verl trainer config")


def _compose(folder: Path, name: str, overrides=()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(folder), version_base=None):
        return compose(name, overrides=list(overrides))


def _verl_base(name: str):
    import verl

    return _compose(Path(verl.__file__).parent / "trainer" / "config", name)


def _leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix


def unknown_verl_keys(raw: dict, base) -> list[str]:
    """Keys set by ``raw`` (outside hydra, defaults and the plugin's sections) that verl's ``base`` config lacks."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(base, resolve=False)
    bad = []
    for key in _leaves({k: v for k, v in raw.items() if k not in ("hydra", "defaults")}):
        if key.startswith(tuple(s + "." for s in PLUGIN_SECTIONS)) or key in PLUGIN_SECTIONS:
            continue
        node, parts = plain, key.split(".")
        for i, part in enumerate(parts):
            if ".".join(parts[: i + 1]) in VERL_FIELDS_NOT_IN_YAML or ".".join(parts[:i]) in OPEN_MAPPINGS:
                break
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            if not (isinstance(node, dict) and not node):  # an empty {} in verl's config is an open mapping
                bad.append(key)
            break
    return bad


def check_plugin_keys(cfg) -> None:
    """Raise the plugin's ConfigError (with the dotted key) for any unknown or ill-typed plugin setting."""
    from verl_difficulty.rewards.config import MANAGER_NAMES, settings_from_config
    from verl_difficulty.seam.config import read_difficulty_config, read_estimator_config

    read_difficulty_config(cfg).check("difficulty")
    read_estimator_config(cfg)
    for manager in MANAGER_NAMES:
        settings_from_config(cfg, manager)


def _check(path: Path) -> list[str]:
    raw = yaml.safe_load(path.read_text())
    base = _base_name(raw)
    cfg = _compose(path.parent, path.stem)
    if base == "ppo_trainer":
        check_plugin_keys(cfg)
    return unknown_verl_keys(raw, _verl_base(base))


def test_every_recipe_has_configs():
    names = {p.parent.name for p in CONFIGS}
    assert {"cpu_smoke", "p3_durian"} <= names, names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_composes_and_every_key_exists(path):
    assert _check(path) == []


RL_CONFIGS = [p for p in CONFIGS if _base_name(yaml.safe_load(p.read_text())) == "ppo_trainer"]


@pytest.mark.parametrize("path", RL_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tiny_cpu_overrides_apply(path):
    from verl_difficulty.cpu.recipe_overrides import tiny_cpu_overrides

    cfg = _compose(path.parent, path.stem, tiny_cpu_overrides(steps=1))
    assert cfg.trainer.device == "cpu" and cfg.actor_rollout_ref.rollout.name == "transformers"
    assert cfg.data.train_batch_size == 4 and cfg.trainer.total_training_steps == 1
    assert cfg.trainer.v1.trainer_mode == "difficulty"  # the recipe's method settings survive the overrides
    check_plugin_keys(cfg)


def _renamed_copy(tmp_path: Path, old: str, new: str) -> Path:
    src = RECIPES / "p3_durian" / "durian_grpo.yaml"
    dst = tmp_path / "p3_durian" / src.name
    dst.parent.mkdir()
    text = src.read_text()
    assert text.count(old) == 1, old
    dst.write_text(text.replace(old, new))
    return dst


def test_a_renamed_plugin_key_fails(tmp_path):
    from verl_difficulty.config import ConfigError

    with pytest.raises(ConfigError, match=r"algorithm\.difficulty\.durian\.alpha_perception"):
        _check(_renamed_copy(tmp_path, "alpha_percep:", "alpha_perception:"))


def test_a_renamed_verl_key_fails(tmp_path):
    assert _check(_renamed_copy(tmp_path, "ppo_mini_batch_size:", "ppo_minibatch_size:")) == [
        "actor_rollout_ref.actor.ppo_minibatch_size"]


def test_open_mappings_and_undeclared_dataclass_fields_are_allowed():
    base = {"a": {"override_config": {}, "fsdp_config": {"x": 1}}}
    raw = {"a": {"override_config": {"attn_implementation": "sdpa"}, "fsdp_config": {"y": 2}}}
    from omegaconf import OmegaConf

    assert unknown_verl_keys(raw, OmegaConf.create(base)) == ["a.fsdp_config.y"]


def test_shipped_recipes_are_listed_with_pins():
    from verl_difficulty.cli.recipes import list_recipes, read_pins

    recipes = list_recipes(RECIPES)
    assert set(recipes) == {p.parent.name for p in CONFIGS}
    pins = read_pins(RECIPES)
    for name, r in recipes.items():
        assert r.pinned_verl == pins[name]["verl"], name
    for name in recipes:
        if name != "cpu_smoke":  # paper recipes are complete folders
            folder = RECIPES / name
            for f in ("README.md", "prepare_data.py", "run_qwen2_5_vl_7b.sh", "ray_job.sh", "slurm.sbatch"):
                assert (folder / f).is_file(), f"{name}/{f}"
                if f.endswith((".sh", ".sbatch")):
                    assert os.access(folder / f, os.X_OK), f"{name}/{f} is not executable"


@pytest.mark.parametrize("script", sorted(RECIPES.glob("*/*.sh")) + sorted(RECIPES.glob("*/*.sbatch")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_launchers_parse_and_check_the_pin_first(script):
    import subprocess

    bash = shutil.which("bash")
    assert subprocess.run([bash, "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    if script.suffix == ".sh":
        assert f"recipes check" in text and script.parent.name in text, script
