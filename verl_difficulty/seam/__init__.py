"""The seam between verl-difficulty and verl's v1 trainer.

* :mod:`verl_difficulty.seam.trainer`: the ``difficulty`` trainer mode (verl's sync trainer plus per-sample inputs,
  the difficulty sampler and ``difficulty/...`` metrics);
* :mod:`verl_difficulty.seam.inputs`: the per-sample inputs handed to the estimators as keyword arguments (no verl
  imports).
"""
