"""What every offline scorer shares: request types, deterministic seeds, the scoring context, the scorer base class.

Determinism contract (why reruns, resumed runs and runs with another number of workers give the same values):

* every random draw of a scorer is a pure function of ``(job seed, row id, scorer name, arm/ratio, try)``:
  :func:`derive_seed` turns that tuple into a 63-bit seed; each generation request carries its own seed (the
  transformers backend samples every row of a batch with its own ``torch.Generator``; vLLM takes per-request seeds),
  and PISM masks come from a numpy generator seeded the same way;
* the requests of a shard are built in row order and cut into batches of ``batch_size`` in that order, so the batch
  composition is a function of the shard alone (batched generation with left padding can round differently for
  another batch composition; a fixed composition removes that source of drift). Shard boundaries and the batch size
  are part of the job fingerprint, so a resumed job reuses them.
"""

from __future__ import annotations

import abc
import sys
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

_MASK64 = (1 << 64) - 1


def name_key(name: str) -> int:
    """A stable 32-bit integer for a string (crc32; Python's ``hash`` is salted per process)."""
    return zlib.crc32(str(name).encode("utf-8")) & 0xFFFFFFFF


def seed_sequence(seed: int, row_id: int, scope: str, *parts: int) -> np.random.SeedSequence:
    """The numpy ``SeedSequence`` of one random draw: ``(seed, row id, scope, *parts)`` (all reduced mod 2**64)."""
    entropy = [int(seed) & _MASK64, int(row_id) & _MASK64, name_key(scope)] + [int(p) & _MASK64 for p in parts]
    return np.random.SeedSequence(entropy)


def derive_seed(seed: int, row_id: int, scope: str, *parts: int) -> int:
    """A 63-bit sampling seed that depends only on ``(seed, row_id, scope, *parts)``."""
    a, b = seed_sequence(seed, row_id, scope, *parts).generate_state(2, dtype=np.uint32)
    return ((int(a) << 32) | int(b)) & ((1 << 63) - 1)


def ratio_key(ratio: float) -> int:
    """Integer key of a mask ratio for seeding (per-mille, so 0.3 and 0.30000000000000004 agree)."""
    return int(round(float(ratio) * 1000))


# ----------------------------------------------------------------------------------------------------------------
# Requests and results
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters of one scorer's rollouts (``temperature <= 0`` = greedy; ``top_k=-1`` = off)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 1024


@dataclass
class Prompt:
    """A chat prompt ready for a backend: the chat-template text (image placeholders not expanded) and, for backends
    that need them, the token ids with the image placeholders expanded for the row's image sizes."""

    text: str
    prompt_ids: Optional[list[int]] = None
    num_images: int = 0


@dataclass
class GenerationRequest:
    """One rollout to generate. ``tag`` says what it is (scorer, row id, arm/ratio, try) for logs and scripted
    backends; a real backend must not let it influence generation."""

    prompt: Prompt
    images: Optional[list[Any]]
    seed: int
    tag: dict = field(default_factory=dict)


@dataclass
class Generation:
    text: str
    num_tokens: int = 0
    finish_reason: str = "length"


@runtime_checkable
class GenerationBackend(Protocol):
    """What a scorer needs from a model server (see :mod:`verl_difficulty.scoring.backends`)."""

    name: str

    def prepare(self, messages: list[dict], images: Optional[list[Any]]) -> Prompt:
        """Apply the chat template (and, if the backend needs ids, the processor) to structured chat messages."""

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list[Generation]:
        """One generation per request, in order. May raise; the context then retries request by request."""

    def describe(self) -> dict:
        """JSON-able description for provenance (backend name, model path, dtype, device)."""


@runtime_checkable
class Verifier(Protocol):
    """Grades responses of rows (see :mod:`verl_difficulty.scoring.verifier`)."""

    def verify(self, responses: Sequence[str], rows: Sequence["ScoringRow"]) -> list[bool]:
        """``responses[i]`` answers ``rows[i]``; True = correct. Must not raise on model text."""

    def describe(self) -> dict:
        """JSON-able description for provenance."""


@dataclass
class ScoringRow:
    """A validated input row, decoded for scoring."""

    row_id: int
    """``extra_info.index``: the id every seed derives from."""
    position: int
    """Position of the row inside its shard."""
    messages: list[dict]
    """Chat messages with structured content (``<image>`` -> ``{"type": "image"}`` parts), as verl builds them."""
    text_messages: list[dict]
    """The same messages with every image and its placeholder removed (valid text-only input, P4 CDE)."""
    images: list[Any]
    """Decoded RGB PIL images, preprocessed as verl does (``qwen_vl_utils.fetch_image`` sizing)."""
    ground_truth: Any
    data_source: str = ""
    task_type: str = ""
    extra_info: dict = field(default_factory=dict)
    reward_model: dict = field(default_factory=dict)


class RowFailure(Exception):
    """A row could not be scored (bad image, generation error ...); the engine records it as a bad row."""


class ScoringContext:
    """What a scorer gets for a shard: backend, verifier, job seed, batch size, prompt cache and counters.

    :meth:`generate` cuts requests into batches of ``batch_size`` in the given order; if a batch raises, its requests
    are retried one at a time and each request that still fails gets its exception back instead of a
    :class:`Generation` (the scorer then fails that row only).
    """

    def __init__(self, backend: GenerationBackend, verifier: Verifier, seed: int = 0, batch_size: int = 16,
                 on_generations: Optional[Callable[[int], None]] = None):
        self.backend = backend
        self.verifier = verifier
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.on_generations = on_generations
        self.generations = 0
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

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list:
        out: list = []
        for start in range(0, len(requests), self.batch_size):
            chunk = list(requests[start : start + self.batch_size])
            try:
                res = self.backend.generate(chunk, sampling)
                if len(res) != len(chunk):
                    raise RuntimeError(f"backend returned {len(res)} generations for {len(chunk)} requests")
                out.extend(res)
            except Exception:  # noqa: BLE001 - isolate the failing request(s)
                if len(chunk) == 1:
                    out.append(_failure(chunk[0]))
                else:
                    for req in chunk:
                        try:
                            out.extend(self.backend.generate([req], sampling))
                        except Exception:  # noqa: BLE001
                            out.append(_failure(req))
            self.generations += len(chunk)
            if self.on_generations is not None:
                self.on_generations(len(chunk))
        return out

    def verify(self, generations: Sequence, rows: Sequence[ScoringRow]) -> list[bool]:
        """Grade generations (exceptions are skipped and count as wrong; the scorer fails their rows anyway)."""
        idx = [i for i, g in enumerate(generations) if isinstance(g, Generation)]
        verdicts = [False] * len(generations)
        if idx:
            got = self.verifier.verify([generations[i].text for i in idx], [rows[i] for i in idx])
            for i, v in zip(idx, got):
                verdicts[i] = bool(v)
        return verdicts


def _failure(req: GenerationRequest) -> RowFailure:
    """The :class:`RowFailure` of a request whose generation raised (called inside the ``except`` block)."""
    exc = sys.exc_info()[1]
    msg = f"generation failed: {type(exc).__name__}: {exc}" if exc is not None else "generation failed"
    failure = RowFailure(msg[:500])
    failure.__cause__ = exc
    return failure


class Scorer(abc.ABC):
    """A generation-based offline scorer.

    Subclasses define ``name`` / ``version`` (bump the version when the values a scorer writes change for the same
    parameters), their parameters (:meth:`params`, recorded in the provenance and the job fingerprint), their output
    columns (:meth:`fields`, names from :mod:`verl_difficulty.schema`) and :meth:`score`.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    requires_image: ClassVar[bool] = False
    params_cls: ClassVar[type]
    """The scorer's parameter dataclass; ``Scorer(**params)`` builds it (validation in its ``__post_init__``)."""

    def __init__(self, **params):
        self.p = self.params_cls(**params)

    def params(self) -> dict:
        """JSON-able parameters."""
        return asdict(self.p)

    @abc.abstractmethod
    def fields(self) -> list[tuple[str, Any]]:
        """``(column name, pyarrow type)`` of every value :meth:`score` writes."""

    @abc.abstractmethod
    def score(self, rows: Sequence[ScoringRow], ctx: ScoringContext) -> list:
        """One entry per row: a ``{column: value}`` dict, or a :class:`RowFailure`."""
