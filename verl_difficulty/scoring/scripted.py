"""A scripted model and verifier: deterministic stand-ins for tests, benchmarks and dry runs (no model needed).

:class:`ScriptedBackend` answers ``<answer>yes</answer>`` (correct) or ``<answer>no</answer>`` per request, either by
a user rule ``outcome(tag, request) -> bool`` (exact pass patterns for PISM tests) or by its built-in rule, a
simulated model that looks at the real images of the request:

    p(correct) = base(row) * (1 - masked fraction)^decay(row)   with the image(s),
    p(correct) = text_acc(row)                                   without an image,

drawn with ``numpy.random.default_rng(request.seed)`` (so the engine's seed contract applies), where ``base`` and
``decay`` are fixed pseudo-random functions of the row id (``base`` U-shaped like P2's accuracy histogram) and the
masked fraction is the share of pixels equal to the PISM fill colour (black). A user rule may also return the
response text itself (e.g. a correct answer without the ``<answer>`` tags). :class:`ScriptedVerifier` says correct
iff the response contains ``yes``, well formatted iff it contains ``</answer>``.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from verl_difficulty.models.generation import GenRequest, GenResult, Prompt, SamplingConfig
from verl_difficulty.scoring.context import Verdict
from verl_difficulty.scoring.scorer import seed_sequence

YES, NO = "<answer>yes</answer>", "<answer>no</answer>"


def row_profile(row_id: int, seed: int = 0) -> tuple[float, float, float]:
    """(base accuracy, decay exponent, text-only accuracy) of a scripted row: base ~ Beta(0.3, 0.3) (U-shape),
    decay ~ U[0.5, 4], text-only accuracy ~ base * U[0, 0.6]."""
    rng = np.random.default_rng(seed_sequence(seed, row_id, "scripted-profile"))
    base = float(rng.beta(0.3, 0.3))
    decay = float(rng.uniform(0.5, 4.0))
    text = base * float(rng.uniform(0.0, 0.6))
    return base, decay, text


def masked_fraction(image: Any, fill: Sequence[int] = (0, 0, 0)) -> float:
    arr = np.asarray(image.convert("RGB"))
    return float(np.all(arr == np.asarray(fill, dtype=arr.dtype), axis=-1).mean())


class ScriptedBackend:
    """Deterministic fake generation backend (see the module docstring).

    Args:
        outcome: ``outcome(tag, request) -> bool`` (``<answer>yes</answer>`` / ``<answer>no</answer>``) or ``-> str``
            (the response text); None = the built-in simulated model.
        profile_seed: seed of the per-row profiles of the built-in rule.
        fail_rows: row ids whose requests raise (tests the per-row failure isolation).
        sleep_s: seconds to sleep per generate call (to make runs slow enough to interrupt).
        fail_first: the first N generate calls raise ``fail_message`` (a transient fault, e.g. an out of memory).
        fail_always: every generate call raises ``fail_message`` (a broken backend).
        images: False = a text-only model: preparing a prompt with images raises.
        settings: other backend settings (``dtype``, ``device`` ...) are accepted and ignored, so the command line
            can run it as ``--backend verl_difficulty.scoring.scripted:ScriptedBackend``.
    """

    name = "scripted"

    def __init__(self, outcome: Optional[Callable[[dict, GenRequest], bool]] = None, profile_seed: int = 0,
                 fail_rows: Sequence[int] = (), sleep_s: float = 0.0, model_path: str = "scripted",
                 fail_first: int = 0, fail_always: bool = False,
                 fail_message: str = "scripted fault: CUDA out of memory", images: bool = True, **settings: Any):
        self.outcome = outcome
        self.profile_seed = int(profile_seed)
        self.fail_rows = set(int(r) for r in fail_rows)
        self.sleep_s = float(sleep_s)
        self.model_path = model_path
        self.fail_first, self.fail_always, self.fail_message = int(fail_first), bool(fail_always), str(fail_message)
        self.images = bool(images)
        self.calls = 0
        self.batch_sizes: list[int] = []

    def prepare(self, messages: list[dict], images: Optional[list[Any]]) -> Prompt:
        if images and not self.images:
            raise ValueError(f"{self.model_path} has no image processor but the row has images")
        parts = []
        for m in messages:
            c = m["content"]
            parts.append(c if isinstance(c, str) else "".join(p.get("text", "<image>") for p in c))
        return Prompt(text="\n".join(parts), prompt_ids=None, num_images=len(images or []))

    def _builtin(self, tag: dict, req: GenRequest) -> bool:
        base, decay, text = row_profile(int(tag.get("row", 0)), self.profile_seed)
        if req.images:
            frac = float(np.mean([masked_fraction(im) for im in req.images]))
            p = base * (1.0 - frac) ** decay
        else:
            p = text
        return bool(np.random.default_rng(int(req.seed)).random() < p)

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        self.calls += 1
        if self.fail_always or self.calls <= self.fail_first:
            raise RuntimeError(self.fail_message)
        self.batch_sizes.append(len(requests))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        out = []
        for req in requests:
            if int(req.tag.get("row", -1)) in self.fail_rows:
                raise RuntimeError(f"scripted failure for row {req.tag.get('row')}")
            ok = self.outcome(req.tag, req) if self.outcome is not None else self._builtin(req.tag, req)
            text = ok if isinstance(ok, str) else (YES if ok else NO)
            out.append(GenResult(token_ids=[0], finish_reason="stop", text=text))
        return out

    def describe(self) -> dict:
        return {"backend": self.name, "model_path": self.model_path, "profile_seed": self.profile_seed}


class ScriptedVerifier:
    """Scripted correctness and format.

    ``mode="token"`` (default): correct iff the response contains ``token`` (pairs with :class:`ScriptedBackend`).
    ``mode="hash"``: correct iff ``crc32(response) mod 1000 < rate * 1000`` -- a pseudo-random verdict that changes
    with any token of the response, so a random model (the tiny test checkpoint) gets varied, text-sensitive scores;
    used to check that two runs generated exactly the same texts.
    Format (:meth:`grade`, both modes): well formatted iff the response contains ``format_token``
    (default ``</answer>``; ``""``: every response).
    """

    def __init__(self, token: str = "yes", mode: str = "token", rate: float = 0.5, format_token: str = "</answer>"):
        if mode not in ("token", "hash"):
            raise ValueError("mode must be 'token' or 'hash'")
        self.token, self.mode, self.rate = token, mode, float(rate)
        self.format_token = str(format_token)

    def verify(self, responses: Sequence[str], rows: Sequence[Any]) -> list[bool]:
        if self.mode == "hash":
            return [zlib.crc32((r or "").encode("utf-8", "surrogatepass")) % 1000 < self.rate * 1000
                    for r in responses]
        return [self.token in (r or "") for r in responses]

    def grade(self, responses: Sequence[str], rows: Sequence[Any]) -> list[Verdict]:
        """(correct as :meth:`verify`, formatted iff ``format_token`` is in the response) per response."""
        return [Verdict(ok, self.format_token in (r or "")) for ok, r in zip(self.verify(responses, rows), responses)]

    def describe(self) -> dict:
        d = {"verifier": "scripted", "mode": self.mode}
        d.update({"token": self.token} if self.mode == "token" else {"rate": self.rate})
        if self.format_token != "</answer>":
            d["format_token"] = self.format_token
        return d
