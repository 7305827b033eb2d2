"""Offline difficulty scoring on Ray: the engine, the generation backends and the generation-based scorers.

* :mod:`.engine`: sharded, resumable, provenance-stamped scoring of verl parquet files (``verl-difficulty score``).
* :mod:`.backends`: transformers (CPU/GPU) and vLLM (GPU, optional) behind one interface.
* :mod:`.verifier`: the plugin's rewards as verifiers; :mod:`.scripted`: a scripted model/verifier for tests.
* scorers: :mod:`.passk` (P2 accuracy over k rollouts), :mod:`.pism` (P1 PISM), :mod:`.cde` (P4 CDE).
"""

from __future__ import annotations

from verl_difficulty.scoring.base import (
    Generation,
    GenerationBackend,
    GenerationRequest,
    Prompt,
    RowFailure,
    SamplingParams,
    Scorer,
    ScoringContext,
    ScoringRow,
    Verifier,
    derive_seed,
)
from verl_difficulty.scoring.cde import CdeScorer
from verl_difficulty.scoring.passk import PassKScorer
from verl_difficulty.scoring.pism import PismScorer

SCORERS = {PassKScorer.name: PassKScorer, PismScorer.name: PismScorer, CdeScorer.name: CdeScorer}
"""Generation-based scorers by name (``verl-difficulty score --scorers``)."""


def make_scorer(name: str, params: dict | None = None) -> Scorer:
    """A scorer by name with its parameters (unknown names and parameters raise ``ValueError`` / ``TypeError``)."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; expected one of {sorted(SCORERS)}")
    return SCORERS[name](**(params or {}))


__all__ = [
    "SCORERS",
    "make_scorer",
    "Generation",
    "GenerationBackend",
    "GenerationRequest",
    "Prompt",
    "RowFailure",
    "SamplingParams",
    "Scorer",
    "ScoringContext",
    "ScoringRow",
    "Verifier",
    "derive_seed",
    "CdeScorer",
    "PassKScorer",
    "PismScorer",
]
