"""The recipes, shipped in the wheel as the package data of ``verl_difficulty.recipes`` (see setup.py).

One folder per recipe: hydra YAMLs that extend verl's trainer config, launchers, a README.
"""
