"""verl-difficulty: difficulty-aware data selection and advantage estimation for multimodal RL with verl.

Importing this package is light on purpose: verl imports the plugin entry point (:mod:`verl_difficulty.plugin`) in
every process, and registrations happen lazily when the verl module they extend is imported.
"""

__version__ = "0.1.0"
