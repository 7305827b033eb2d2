"""Offline difficulty scoring on Ray: the engine, the model backends, the scorer interface and registry.

* :mod:`.engine`: ``run_scoring`` (``verl-difficulty score``), built from :mod:`.job` (settings, fingerprint),
  :mod:`.shards` (planning, reading), :mod:`.store` (output directory, manifest, atomic commits, merge),
  :mod:`.runner` (in-process and Ray workers), :mod:`.preflight` (checks before any work) and :mod:`.summary`.
* :mod:`.scorer`: the :class:`Scorer` interface and the seed contract; :mod:`.registry`: scorers by name (built-in,
  entry points ``verl_difficulty.scorers``, ``--scorer-module``); :mod:`.context`: what a scorer gets per shard
  (``ctx.generate``, ``ctx.forward``, ``ctx.verify``).
* :mod:`.backends`: transformers (CPU/GPU) and vLLM (GPU, optional); :mod:`.verifier`: the plugin's rewards as
  verifiers; :mod:`.scripted`: a scripted model/verifier for tests.
* the built-in scorers: :mod:`.scorers` (one module each); :func:`visual_entropy` is P3's spectral entropy of a
  ``(P, d)`` feature matrix (:mod:`.scorers.visual_entropy`).
"""

from __future__ import annotations

from verl_difficulty.data.rows import ExecutionFault, RowFailure, ScoringRow
from verl_difficulty.models.forward import ForwardBatch, ForwardRequest, LayerCapture
from verl_difficulty.models.generation import GenRequest, GenResult, Prompt, SamplingConfig
from verl_difficulty.scoring.context import GenerationBackend, ScoringContext, Verifier
from verl_difficulty.scoring.engine import run_scoring
from verl_difficulty.scoring.job import ScoreJob
from verl_difficulty.scoring.registry import (
    get_scorer,
    load_scorer_module,
    make_scorer,
    register_scorer,
    scorer_names,
)
from verl_difficulty.scoring.scorer import FORWARD, GENERATE, Scorer, derive_seed
from verl_difficulty.scoring.scorers.visual_entropy import visual_entropy

__all__ = [
    "ExecutionFault",
    "FORWARD",
    "GENERATE",
    "ForwardBatch",
    "ForwardRequest",
    "GenRequest",
    "GenResult",
    "GenerationBackend",
    "LayerCapture",
    "Prompt",
    "RowFailure",
    "SamplingConfig",
    "ScoreJob",
    "Scorer",
    "ScoringContext",
    "ScoringRow",
    "Verifier",
    "derive_seed",
    "get_scorer",
    "load_scorer_module",
    "make_scorer",
    "register_scorer",
    "run_scoring",
    "scorer_names",
    "visual_entropy",
]
