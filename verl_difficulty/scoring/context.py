"""What a scorer gets for a shard: :class:`ScoringContext` (prompts, rollouts, grading, teacher-forced forward passes,
vision-tower features) and the protocols of its collaborators, the model backend and the verifier."""

from __future__ import annotations

import re
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

from verl_difficulty.data.rows import ExecutionFault, RowFailure, ScoringRow
from verl_difficulty.models.forward import ForwardRequest, OnLayer
from verl_difficulty.models.generation import GenRequest, GenResult, Prompt, SamplingConfig


_EXECUTION_TEXT = re.compile(r"out of memory|\boom\b|cuda error|cublas|cudnn|nccl|\bnan\b|\binf\b|"
                             r"probability tensor|device-side assert|connection|timed? ?out", re.IGNORECASE)
ISOLATION_LIMIT = 32
"""Requests of a failed batch tried one at a time that may all fail before the batch counts as an execution fault."""


def is_execution_error(exc: BaseException) -> bool:
    """Whether an exception is the machine's fault whatever the row (memory, device, NaN/inf probabilities, I/O)."""
    if isinstance(exc, (ExecutionFault, MemoryError, OSError, TimeoutError, ConnectionError)):
        return True
    return "OutOfMemory" in type(exc).__name__ or bool(_EXECUTION_TEXT.search(str(exc)))


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (a Ray task error is unwrapped to its cause)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit]


@runtime_checkable
class GenerationBackend(Protocol):
    """What a scorer needs from a model server (see :mod:`verl_difficulty.scoring.backends`).

    A backend that can also run teacher-forced forward passes has a ``forward(requests, on_layer, attentions,
    hidden_states)`` method with the contract of :meth:`verl_difficulty.models.forward.HFForward.forward`; one that
    can run the vision tower alone has a ``vision_features(requests, which, reduce)`` method with the contract of
    :meth:`verl_difficulty.models.vision.HFVision.features` (both: the transformers backend; neither: vLLM).
    """

    name: str

    def prepare(self, messages: list[dict], images: Optional[list[Any]]) -> Prompt:
        """Apply the chat template (and, if the backend needs ids, the processor) to structured chat messages."""

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        """One generation (with ``text``) per request, in order. May raise; the context then retries request by
        request."""

    def describe(self) -> dict:
        """JSON-able description for provenance (backend name, model path, dtype, device)."""


class Verdict(NamedTuple):
    """The grade of one response: ``correct`` (the reward's accuracy) and ``formatted`` (the reward's format check,
    whatever its weight in the reward)."""

    correct: bool
    formatted: bool


@runtime_checkable
class Verifier(Protocol):
    """Grades responses of rows (see :mod:`verl_difficulty.scoring.verifier`).

    A verifier that also reports the format of each response has a ``grade(responses, rows) -> list[Verdict]``
    method (the plugin's verifiers do; scorers that count well-formatted responses, P4 CDE, need it).
    """

    def verify(self, responses: Sequence[str], rows: Sequence[ScoringRow]) -> list[bool]:
        """``responses[i]`` answers ``rows[i]``; True = correct. Must not raise on model text."""

    def describe(self) -> dict:
        """JSON-able description for provenance."""


def can_forward(backend: Any) -> bool:
    """Whether a backend runs teacher-forced forward passes (``ctx.forward``)."""
    return callable(getattr(backend, "forward", None))


def can_vision(backend: Any) -> bool:
    """Whether a backend runs the vision tower alone (``ctx.vision_features``)."""
    return callable(getattr(backend, "vision_features", None))


class ScoringContext:
    """What a scorer gets for a shard: backend, verifier, job seed, batch size, prompt cache and counters.

    :meth:`generate`, :meth:`forward` and :meth:`vision_features` cut requests into batches of ``batch_size`` in the
    given order; a batch that raises is retried as a whole up to ``max_attempts`` times (sleeping ``retry_backoff_s``,
    doubled each time), then its requests are tried one at a time and each request that still fails gets a
    :class:`RowFailure` back instead of its result (the scorer then fails that row only). An error that is the
    machine's fault whatever the row (:func:`is_execution_error`: out of memory, NaN probabilities, device errors)
    raises :class:`ExecutionFault` instead, and so do :data:`ISOLATION_LIMIT` failed requests in a row with none
    working; the engine also turns a scorer whose every request failed into an :class:`ExecutionFault` (counters
    ``succeeded`` / ``failed``). ``scorer`` is the name of the scorer being run (the engine sets it; errors name it).
    """

    def __init__(self, backend: GenerationBackend, verifier: Verifier, seed: int = 0, batch_size: int = 16,
                 on_generations: Optional[Callable[[int], None]] = None, max_attempts: int = 1,
                 retry_backoff_s: float = 0.0):
        self.backend = backend
        self.verifier = verifier
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.on_generations = on_generations
        self.max_attempts = max(1, int(max_attempts))
        self.retry_backoff_s = max(0.0, float(retry_backoff_s))
        self.generations = 0
        self.forwards = 0
        self.scorer = ""
        self.succeeded = 0
        """Requests (generations, forward passes) that returned a result."""
        self.failed = 0
        """Requests and prompts that failed (each one then fails its row)."""
        self.retries = 0
        self.last_error = ""
        self._prompts: dict[tuple, Prompt] = {}

    def prompt(self, row: ScoringRow, with_images: bool = True) -> Prompt:
        """The row's prompt (cached per shard): with its images, or the text-only variant."""
        key = (row.position, with_images)
        if key not in self._prompts:
            try:
                if with_images:
                    self._prompts[key] = self.backend.prepare(row.messages, row.images or None)
                else:
                    self._prompts[key] = self.backend.prepare(row.text_messages, None)
            except Exception as e:
                self._failed(e)
                raise
        return self._prompts[key]

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        self.last_error = describe_error(exc)
        if is_execution_error(exc):
            raise ExecutionFault(f"scorer {self.scorer or '?'!r}: {self.last_error}") from exc

    def _call(self, call: Callable[[list], list], chunk: list) -> list:
        res = call(chunk)
        if len(res) != len(chunk):
            raise RuntimeError(f"backend returned {len(res)} results for {len(chunk)} requests")
        return list(res)

    def _batch(self, call: Callable[[list], list], chunk: list, what: str) -> list:
        """One batch: tried ``max_attempts`` times as a whole (so a transient fault leaves the batch composition,
        hence the values, unchanged), then request by request to isolate the failing ones."""
        for attempt in range(self.max_attempts):
            try:
                return self._call(call, chunk)
            except Exception as e:  # noqa: BLE001 - retried, then isolated
                self.last_error = describe_error(e)
                if attempt + 1 < self.max_attempts:
                    self.retries += 1
                    time.sleep(self.retry_backoff_s * 2 ** attempt)
        out: list = []
        ok = 0
        for req in chunk:
            try:
                out.extend(self._call(call, [req]))
                ok += 1
            except Exception:  # noqa: BLE001 - this request fails its row, unless nothing works at all
                out.append(_failure(what))
                self._failed(out[-1].__cause__)
                if not ok and len(out) >= ISOLATION_LIMIT:
                    raise ExecutionFault(f"scorer {self.scorer or '?'!r}: {len(out)} {what}s in a row failed "
                                         f"even one at a time: {self.last_error}") from out[-1].__cause__
        return out

    def _batched(self, requests: Sequence, call: Callable[[list], list], what: str) -> list:
        out: list = []
        for start in range(0, len(requests), self.batch_size):
            chunk = list(requests[start : start + self.batch_size])
            res = self._batch(call, chunk, what)
            self.succeeded += sum(1 for r in res if not isinstance(r, RowFailure))
            out.extend(res)
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
        self._require(can_forward, "a teacher-forced forward pass")
        return self._batched(requests, lambda chunk: self.backend.forward(chunk, on_layer, attentions=attentions,
                                                                         hidden_states=hidden_states), "forward pass")

    def vision_features(self, requests: Sequence, which: str = "merged",
                        reduce: Optional[Callable[[list], Any]] = None) -> list:
        """The vision tower alone on each request's images (:class:`verl_difficulty.models.vision.VisionRequest`;
        the language model does not run): per request the list of its images' feature matrices, or
        ``reduce(that list)``, or a :class:`RowFailure` (``which``: ``merged`` / ``vit``, see
        :mod:`verl_difficulty.models.vision`). Counted as forward passes.

        Raises ``RuntimeError`` naming the scorer if the backend cannot run the vision tower (vLLM).
        """
        self._require(can_vision, "a forward pass of the vision tower")
        return self._batched(requests, lambda chunk: self.backend.vision_features(chunk, which, reduce),
                             "vision forward pass")

    def _require(self, can: Callable[[Any], bool], what: str) -> None:
        if not can(self.backend):
            raise RuntimeError(
                f"scorer {self.scorer or '?'!r} needs {what}, which the "
                f"{getattr(self.backend, 'name', type(self.backend).__name__)} backend cannot run; use the "
                "transformers backend (--backend transformers)")

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
        return self._judge(generations, rows, self.verifier.verify, False, bool)

    def grade(self, generations: Sequence, rows: Sequence[ScoringRow]) -> list[Verdict]:
        """:class:`Verdict` (correct, formatted) of each generation (exceptions: ``Verdict(False, False)``).

        Raises ``RuntimeError`` naming the scorer if the verifier reports no format (it has no ``grade`` method).
        """
        grade = getattr(self.verifier, "grade", None)
        if not callable(grade):
            raise RuntimeError(f"scorer {self.scorer or '?'!r} counts well-formatted responses, but the verifier "
                               f"{type(self.verifier).__name__} reports no format (it has no grade() method)")
        return self._judge(generations, rows, grade, Verdict(False, False),
                           lambda v: Verdict(bool(v[0]), bool(v[1])))

    @staticmethod
    def _judge(generations: Sequence, rows: Sequence[ScoringRow], call: Callable, default: Any,
               cast: Callable) -> list:
        idx = [i for i, g in enumerate(generations) if isinstance(g, GenResult)]
        verdicts = [default] * len(generations)
        if idx:
            got = call([generations[i].text for i in idx], [rows[i] for i in idx])
            for i, v in zip(idx, got):
                verdicts[i] = cast(v)
        return verdicts


def _failure(what: str) -> RowFailure:
    """The :class:`RowFailure` of a request that raised (called inside the ``except`` block)."""
    exc = sys.exc_info()[1]
    msg = f"{what} failed: {type(exc).__name__}: {exc}" if exc is not None else f"{what} failed"
    failure = RowFailure(msg[:500])
    failure.__cause__ = exc
    return failure
