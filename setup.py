"""Packaging glue that pyproject.toml cannot express: the top-level ``recipes/`` folder ships inside the wheel as the
package ``verl_difficulty.recipes`` (recipe YAMLs and launchers as package data), so that a pip-installed user gets
the recipes (``verl-difficulty smoke`` composes its config from there) while the repository keeps ``recipes/`` at
the top. Everything else is declared in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["verl_difficulty", "verl_difficulty.*"]) + ["verl_difficulty.recipes"],
    package_dir={"verl_difficulty.recipes": "recipes"},
)
