"""What a scorer gets for a shard: :class:`ScoringContext` (prompts, rollouts, grading, teacher-forced forward passes)
and the protocols of its collaborators, the model backend and the verifier."""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

from verl_difficulty.data.rows import RowFailure, ScoringRow
from verl_difficulty.models.forward import ForwardRequest, OnLayer
from verl_difficulty.models.generation import GenRequest, GenResult, Prompt, SamplingConfig


@runtime_checkable
class GenerationBackend(Protocol):
    """What a scorer needs from a model server (see :mod:`verl_difficulty.scoring.backends`).

    A backend that can also run teacher-forced forward passes has a ``forward(requests, on_layer, attentions,
    hidden_states)`` method with the contract of :meth:`verl_difficulty.models.forward.HFForward.forward`.
    """

    name: str

    def prepare(self, messages: list[dict], images: Optional[list[Any]]) -> Prompt:
        """Apply the chat template (and, if the backend needs ids, the processor) to structured chat messages."""

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        """One generation (with ``text``) per request, in order. May raise; the context then retries request by
        request."""

    def describe(self) -> dict:
        """JSON-able description for provenance (backend name, model path, dtype, device)."""


@runtime_checkable
class Verifier(Protocol):
    """Grades responses of rows (see :mod:`verl_difficulty.scoring.verifier`)."""

    def verify(self, responses: Sequence[str], rows: Sequence[ScoringRow]) -> list[bool]:
        """``responses[i]`` answers ``rows[i]``; True = correct. Must not raise on model text."""

    def describe(self) -> dict:
        """JSON-able description for provenance."""


def can_forward(backend: Any) -> bool:
    """Whether a backend runs teacher-forced forward passes (``ctx.forward``)."""
    return callable(getattr(backend, "forward", None))


class ScoringContext:
    """What a scorer gets for a shard: backend, verifier, job seed, batch size, prompt cache and counters.

    :meth:`generate` and :meth:`forward` cut requests into batches of ``batch_size`` in the given order; if a batch
    raises, its requests are retried one at a time and each request that still fails gets a :class:`RowFailure` back
    instead of its result (the scorer then fails that row only). ``scorer`` is the name of the scorer being run (the
    engine sets it; errors name it).
    """

    def __init__(self, backend: GenerationBackend, verifier: Verifier, seed: int = 0, batch_size: int = 16,
                 on_generations: Optional[Callable[[int], None]] = None):
        self.backend = backend
        self.verifier = verifier
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.on_generations = on_generations
        self.generations = 0
        self.forwards = 0
        self.scorer = ""
        self._prompts: dict[tuple, Prompt] = {}

    def prompt(self, row: ScoringRow, with_images: bool = True) -> Prompt:
        """The row's prompt (cached per shard): with its images, or the text-only variant."""
        key = (row.position, with_images)
        if key not in self._prompts:
            if with_images:
                self._prompts[key] = self.backend.prepare(row.messages, row.images or None)
            else:
                self._prompts[key] = self.backend.prepare(row.text_messages, None)
        return self._prompts[key]

    def _batched(self, requests: Sequence, call: Callable[[list], list], what: str) -> list:
        out: list = []
        for start in range(0, len(requests), self.batch_size):
            chunk = list(requests[start : start + self.batch_size])
            try:
                res = call(chunk)
                if len(res) != len(chunk):
                    raise RuntimeError(f"backend returned {len(res)} results for {len(chunk)} requests")
                out.extend(res)
            except Exception:  # noqa: BLE001 - isolate the failing request(s)
                if len(chunk) == 1:
                    out.append(_failure(what))
                else:
                    for req in chunk:
                        try:
                            out.extend(call([req]))
                        except Exception:  # noqa: BLE001
                            out.append(_failure(what))
            self._count(what, len(chunk))
        return out

    def _count(self, what: str, n: int) -> None:
        if what == "generation":
            self.generations += n
            if self.on_generations is not None:
                self.on_generations(n)
        else:
            self.forwards += n

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list:
        """One :class:`GenResult` (or :class:`RowFailure`) per request, in order."""
        return self._batched(requests, lambda chunk: self.backend.generate(chunk, sampling), "generation")

    def forward(self, requests: Sequence[ForwardRequest], on_layer: OnLayer, attentions: bool = False,
                hidden_states: bool = False) -> list:
        """Teacher-forced forward passes over prompt + response with a callback per decoder layer (see
        :mod:`verl_difficulty.models.forward`): per request the list of the values ``on_layer`` returned for its row,
        layer after layer, or a :class:`RowFailure`. Batches never mix into a row's values (``on_layer`` must reduce
        each row on its own), so the result does not depend on the batch size.

        Raises ``RuntimeError`` naming the scorer if the backend cannot run forward passes (vLLM).
        """
        if not can_forward(self.backend):
            raise RuntimeError(
                f"scorer {self.scorer or '?'!r} needs a teacher-forced forward pass, which the "
                f"{getattr(self.backend, 'name', type(self.backend).__name__)} backend cannot run; use the "
                "transformers backend (--backend transformers)")
        return self._batched(requests, lambda chunk: self.backend.forward(chunk, on_layer, attentions=attentions,
                                                                         hidden_states=hidden_states), "forward pass")

    def forward_request(self, row: ScoringRow, response_ids: Sequence[int], with_images: bool = True,
                        tag: Optional[dict] = None) -> ForwardRequest:
        """The forward request of the row's prompt (its images or the text-only variant) followed by
        ``response_ids`` (e.g. ``GenResult.token_ids`` of a rollout)."""
        prompt = self.prompt(row, with_images)
        if prompt.prompt_ids is None:
            raise RuntimeError(f"the {getattr(self.backend, 'name', '?')} backend gives no prompt token ids")
        return ForwardRequest(prompt_ids=list(prompt.prompt_ids), response_ids=list(response_ids),
                              images=list(row.images) if with_images and row.images else None, tag=dict(tag or {}))

    def verify(self, generations: Sequence, rows: Sequence[ScoringRow]) -> list[bool]:
        """Grade generations (exceptions are skipped and count as wrong; the scorer fails their rows anyway)."""
        idx = [i for i, g in enumerate(generations) if isinstance(g, GenResult)]
        verdicts = [False] * len(generations)
        if idx:
            got = self.verifier.verify([generations[i].text for i in idx], [rows[i] for i in idx])
            for i, v in zip(idx, got):
                verdicts[i] = bool(v)
        return verdicts


def _failure(what: str) -> RowFailure:
    """The :class:`RowFailure` of a request that raised (called inside the ``except`` block)."""
    exc = sys.exc_info()[1]
    msg = f"{what} failed: {type(exc).__name__}: {exc}" if exc is not None else f"{what} failed"
    failure = RowFailure(msg[:500])
    failure.__cause__ = exc
    return failure
