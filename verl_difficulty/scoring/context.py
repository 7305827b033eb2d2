"""What a scorer gets for a shard: :class:`ScoringContext` (prompts, rollouts, grading, teacher-forced forward passes,
vision-tower features) and the protocols of its collaborators, the model backend and the verifier.

Two backends. When the generation backend cannot run forward passes (vLLM), the context gets a *forward model* (a
transformers backend of the same checkpoint, built on first use): ``generate`` stays on the generation backend,
``forward`` / ``vision_features`` go to the forward model. A response sampled by the generation backend is
teacher-forced after the row's prompt as the FORWARD model's processor renders it;
:meth:`ScoringContext.forward_request` first checks that this prompt is the one the response was sampled from (the
prompt token ids the generation backend gives or reports, else the chat-template text) and fails the row, naming the
first difference, when it is not.
"""

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
SKIP_REASON = "skip_reason"
"""The ``ForwardRequest.tag`` key of a request that must not run (its prompt differs from the one its response was
sampled from, or the forward model could not build it): :meth:`ScoringContext.forward` fails its row with the
value."""
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
    :meth:`verl_difficulty.models.vision.HFVision.features` (both: the transformers backend; neither: vLLM, whose
    jobs get a transformers forward model for them). A generation result may carry ``prompt_ids``, the prompt token
    ids the engine conditioned on (:class:`verl_difficulty.scoring.backends.SampledResult`): the context then checks
    the forward model's prompt against them.
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

    ``forward_model``: a zero-argument callable returning the backend that runs the forward passes and vision
    features the generation backend cannot (the engine passes a
    :class:`~verl_difficulty.scoring.backends.LazyForwardModel`); it is called at the first such request only, and
    a failure to build it is an :class:`ExecutionFault`. Its batches hold ``forward_batch_size`` requests (default
    ``batch_size``).
    """

    def __init__(self, backend: GenerationBackend, verifier: Verifier, seed: int = 0, batch_size: int = 16,
                 on_generations: Optional[Callable[[int], None]] = None, max_attempts: int = 1,
                 retry_backoff_s: float = 0.0, forward_model: Optional[Callable[[], Any]] = None,
                 forward_batch_size: Optional[int] = None):
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
        self.forward_model = forward_model
        self.forward_batch_size = max(1, int(forward_batch_size or self.batch_size))
        self._forward_backend: Any = None
        self._sampled_prompt_ids: dict[tuple, list[int]] = {}
        """(row id, with images) -> the prompt ids the generation backend reported conditioning on."""

    def prompt(self, row: ScoringRow, with_images: bool = True) -> Prompt:
        """The row's prompt for the generation backend (cached per shard): with its images, or the text-only
        variant."""
        return self._prompt(self.backend, row, with_images, "generation")

    def _prompt(self, backend: Any, row: ScoringRow, with_images: bool, side: str, count: bool = True) -> Prompt:
        key = (row.position, with_images, side)
        if key not in self._prompts:
            try:
                if with_images:
                    self._prompts[key] = backend.prepare(row.messages, row.images or None)
                else:
                    self._prompts[key] = backend.prepare(row.text_messages, None)
            except Exception as e:
                if count:
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

    def _batched(self, requests: Sequence, call: Callable[[list], list], what: str,
                 size: Optional[int] = None) -> list:
        out: list = []
        size = size or self.batch_size
        for start in range(0, len(requests), size):
            chunk = list(requests[start : start + size])
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
        out = self._batched(requests, lambda chunk: self.backend.generate(chunk, sampling), "generation")
        for req, res in zip(requests, out):
            ids = getattr(res, "prompt_ids", None)
            if ids is not None and "row" in req.tag:
                self._sampled_prompt_ids.setdefault((int(req.tag["row"]), bool(req.images)), list(ids))
        return out

    def forward(self, requests: Sequence[ForwardRequest], on_layer: OnLayer, attentions: bool = False,
                hidden_states: bool = False) -> list:
        """Teacher-forced forward passes over prompt + response with a callback per decoder layer (see
        :mod:`verl_difficulty.models.forward`): per request the list of the values ``on_layer`` returned for its row,
        layer after layer, or a :class:`RowFailure`. Batches never mix into a row's values (``on_layer`` must reduce
        each row on its own), so the result does not depend on the batch size.

        Runs on the generation backend if it can, else on the forward model; a request whose prompt does not match
        the generation backend's (:meth:`forward_request`) gets its :class:`RowFailure` without running. Raises
        ``RuntimeError`` naming the scorer if neither can run forward passes (vLLM without a forward model).
        """
        target = self._target(can_forward, "a teacher-forced forward pass")
        out: list = [None] * len(requests)
        run = []
        for i, req in enumerate(requests):
            problem = req.tag.get(SKIP_REASON) if isinstance(req.tag, dict) else None
            if problem:
                out[i] = RowFailure(problem)
                self.failed += 1
                self.last_error = problem
            else:
                run.append(i)
        got = self._batched([requests[i] for i in run],
                            lambda chunk: target.forward(chunk, on_layer, attentions=attentions,
                                                         hidden_states=hidden_states),
                            "forward pass", self._size(target))
        for i, res in zip(run, got):
            out[i] = res
        return out

    def vision_features(self, requests: Sequence, which: str = "merged",
                        reduce: Optional[Callable[[list], Any]] = None) -> list:
        """The vision tower alone on each request's images (:class:`verl_difficulty.models.vision.VisionRequest`;
        the language model does not run): per request the list of its images' feature matrices, or
        ``reduce(that list)``, or a :class:`RowFailure` (``which``: ``merged`` / ``vit``, see
        :mod:`verl_difficulty.models.vision`). Counted as forward passes.

        Runs on the generation backend if it can, else on the forward model. Raises ``RuntimeError`` naming the
        scorer if neither can run the vision tower (vLLM without a forward model).
        """
        target = self._target(can_vision, "a forward pass of the vision tower")
        return self._batched(requests, lambda chunk: target.vision_features(chunk, which, reduce),
                             "vision forward pass", self._size(target))

    def _size(self, target: Any) -> int:
        return self.batch_size if target is self.backend else self.forward_batch_size

    def _target(self, can: Callable[[Any], bool], what: str) -> Any:
        """The backend that runs ``what``: the generation backend if it can, else the forward model (built now)."""
        if can(self.backend):
            return self.backend
        if self.forward_model is not None:
            if self._forward_backend is None:
                try:
                    self._forward_backend = self.forward_model()
                except Exception as e:  # noqa: BLE001 - the machine's or the checkpoint's fault, never a row's
                    raise ExecutionFault(f"scorer {self.scorer or '?'!r}: the transformers forward model failed "
                                         f"to load: {describe_error(e)}") from e
            if can(self._forward_backend):
                return self._forward_backend
        raise RuntimeError(
            f"scorer {self.scorer or '?'!r} needs {what}, which the "
            f"{getattr(self.backend, 'name', type(self.backend).__name__)} backend cannot run"
            + ("" if self.forward_model is None else " (nor its forward model)")
            + "; use the transformers backend (--backend transformers)")

    def forward_request(self, row: ScoringRow, response_ids: Sequence[int], with_images: bool = True,
                        tag: Optional[dict] = None) -> ForwardRequest:
        """The forward request of the row's prompt (its images or the text-only variant) followed by
        ``response_ids`` (e.g. ``GenResult.token_ids`` of a rollout).

        With a forward model, the prompt is the forward model's rendering of the row; if it differs from the prompt
        the response was sampled from (:meth:`prompt_mismatch`), or the forward model cannot build it, the request is
        marked (``tag[SKIP_REASON]``) and :meth:`forward` fails its row with that reason instead of running it."""
        target = self._target(can_forward, "a teacher-forced forward pass")
        tag = dict(tag or {})
        images = list(row.images) if with_images and row.images else None
        if target is self.backend:
            prompt = self.prompt(row, with_images)
        else:
            try:
                prompt = self._prompt(target, row, with_images, "forward", count=False)
            except Exception as e:  # noqa: BLE001 - the row's fault unless it is the machine's
                if is_execution_error(e):
                    raise ExecutionFault(f"scorer {self.scorer or '?'!r}: {describe_error(e)}") from e
                tag[SKIP_REASON] = (f"{self.scorer or '?'}: forward pass failed: the forward model could not build "
                                    f"the prompt of row {row.row_id}: {describe_error(e)}")
                return ForwardRequest(prompt_ids=[], response_ids=list(response_ids), images=images, tag=tag)
            problem = self.prompt_mismatch(row, with_images, prompt)
            if problem:
                tag[SKIP_REASON] = f"{self.scorer or '?'}: forward pass failed: {problem}"
        if prompt.prompt_ids is None:
            raise RuntimeError(f"the {getattr(target, 'name', '?')} backend gives no prompt token ids")
        return ForwardRequest(prompt_ids=list(prompt.prompt_ids), response_ids=list(response_ids), images=images,
                              tag=tag)

    def prompt_mismatch(self, row: ScoringRow, with_images: bool, forward_prompt: Prompt) -> Optional[str]:
        """Why ``forward_prompt`` (the forward model's rendering of the row) is not the prompt the generation backend
        sampled from, or None. Compared: the generation prompt's token ids if the backend gives them, else the ids
        it reported conditioning on (vLLM), else the chat-template text."""
        gen = self.prompt(row, with_images)
        name = getattr(self.backend, "name", type(self.backend).__name__)
        sampled = gen.prompt_ids
        if sampled is None:
            sampled = self._sampled_prompt_ids.get((row.row_id, bool(with_images and row.images)))
        if sampled is not None:
            a, b = list(sampled), list(forward_prompt.prompt_ids or [])
            if a == b:
                return None
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return (f"the forward model's prompt token ids of row {row.row_id} differ from those the {name} backend "
                    f"sampled from ({len(b)} vs {len(a)} ids, first difference at position {at}: "
                    f"{b[at] if at < len(b) else 'end'} vs {a[at] if at < len(a) else 'end'}); both must render the "
                    "prompt alike (same chat template, same image processor settings, e.g. min/max pixels)")
        if gen.text != forward_prompt.text:
            at = next((i for i, (x, y) in enumerate(zip(gen.text, forward_prompt.text)) if x != y),
                      min(len(gen.text), len(forward_prompt.text)))
            return (f"the forward model's chat-template text of row {row.row_id} differs from the {name} backend's "
                    f"at character {at} ({forward_prompt.text[at:at + 20]!r} vs {gen.text[at:at + 20]!r}); both "
                    "must render the prompt alike (same chat template)")
        return None

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
