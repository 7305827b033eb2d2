"""The offline scorer interface and the seed contract every scorer follows.

A scorer is ONE module (the built-in ones are under :mod:`verl_difficulty.scoring.scorers`): a :class:`Scorer`
subclass decorated with :func:`~verl_difficulty.scoring.registry.register_scorer`, with

* ``name`` / ``version`` (bump the version when the values written change for the same parameters), a one-line
  ``title`` (the ``--help`` group of its flags);
* ``Params``: its parameter dataclass, fields declared with :func:`verl_difficulty.config.setting`; the command line
  flags ``--<name>-<param>`` (help, defaults, choices) are generated from it, values are parsed with
  :func:`verl_difficulty.config.parse` and cross-field checks go in its ``check(self, where)``;
* ``needs``: what it asks of the scoring context, a subset of ``{GENERATE, FORWARD}`` (``ctx.generate`` rollouts,
  ``ctx.forward`` teacher-forced passes with per-layer hooks); ``needs_attention``: its forward hooks read attention
  weights (the transformers backend then loads the model with eager attention); ``requires_image``: rows without an
  image are bad rows for it; ``default_selected``: part of the default ``--scorers``;
* :meth:`Scorer.fields` (output columns: names from :mod:`verl_difficulty.schema`, pyarrow types), :meth:`Scorer.score`
  and :meth:`Scorer.summarize` / :meth:`Scorer.summary_lines` (its part of the job summary).

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
import dataclasses
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from verl_difficulty.config import parse, setting
from verl_difficulty.data.rows import ExecutionFault, RowFailure, ScoringRow
from verl_difficulty.models.generation import GenRequest, Prompt, SamplingConfig

if TYPE_CHECKING:
    from verl_difficulty.scoring.context import ScoringContext

GENERATE = "generate"
"""A scorer need: sampled rollouts (``ctx.generate``)."""
FORWARD = "forward"
"""A scorer need: teacher-forced forward passes with per-layer hooks (``ctx.forward``)."""
NEEDS = (GENERATE, FORWARD)

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


@dataclass
class RolloutParams:
    """The sampling parameters of a scorer's rollouts (a parameter dataclass extends it; :meth:`Scorer.sampling`)."""

    temperature: float = setting(1.0, ge=0.0, help="sampling temperature (0 = greedy)")
    top_p: float = setting(1.0, gt=0.0, le=1.0, help="nucleus sampling mass, in (0, 1]")
    max_tokens: int = setting(1024, ge=1, help="max new tokens per rollout")


def stats_line(name: str, stats: dict) -> str:
    """``name: k=v, k=v`` (the default summary line of a scorer)."""
    return f"{name}: " + ", ".join(f"{k}={'n/a' if v is None else v}" for k, v in stats.items())


class Scorer(abc.ABC):
    """An offline scorer (see the module docstring for what a subclass declares)."""

    name: ClassVar[str]
    version: ClassVar[str]
    title: ClassVar[str] = ""
    """One line: what the scorer measures (the ``--help`` group title of its flags)."""
    Params: ClassVar[type]
    """The parameter dataclass (fields declared with ``setting()``); ``Scorer(**params)`` parses it."""
    needs: ClassVar[frozenset] = frozenset({GENERATE})
    needs_attention: ClassVar[bool] = False
    requires_image: ClassVar[bool] = False
    default_selected: ClassVar[bool] = False

    def __init__(self, **params):
        self.p = parse(self.Params, params, self.name)

    def params(self) -> dict:
        """JSON-able parameters (recorded in the provenance and the job fingerprint)."""
        return _plain(dataclasses.asdict(self.p))

    @abc.abstractmethod
    def fields(self) -> list[tuple[str, Any]]:
        """``(column name, pyarrow type)`` of every value :meth:`score` writes."""

    @abc.abstractmethod
    def score(self, rows: Sequence[ScoringRow], ctx: "ScoringContext") -> list:
        """One entry per row: a ``{column: value}`` dict, or a :class:`RowFailure`."""

    def summarize(self, table: Any) -> dict:
        """JSON-able statistics of this scorer's columns (``table``: a pyarrow table of them, at least one row)."""
        return {}

    def summary_lines(self, stats: dict) -> list[str]:
        """The lines the job summary prints for ``stats`` (:meth:`summarize` plus the engine's generation counts)."""
        return [stats_line(self.name, stats)]

    # ------------------------------------------------------------------------------------------------------------
    # Helpers shared by the built-in scorers
    # ------------------------------------------------------------------------------------------------------------
    def sampling(self) -> SamplingConfig:
        """The sampling config of the :class:`RolloutParams` fields of ``self.p``."""
        p = self.p
        return SamplingConfig(temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_tokens)

    def prompts(self, rows: Sequence[ScoringRow], ctx: "ScoringContext",
                variants: Sequence[bool] = (True,)) -> tuple[list, dict[int, list[Prompt]]]:
        """``(out, prompts)``: ``out[i]`` is a :class:`RowFailure` for a row without image (when ``requires_image``)
        or whose prompt failed, else None; ``prompts[i]`` the row's prompts, one per ``variants`` entry (with
        images or not)."""
        out: list = [None] * len(rows)
        prompts: dict[int, list[Prompt]] = {}
        for i, row in enumerate(rows):
            if self.requires_image and not row.images:
                out[i] = RowFailure(f"{self.name}: the row has no image")
                continue
            try:
                prompts[i] = [ctx.prompt(row, with_images=v) for v in variants]
            except ExecutionFault:
                raise
            except Exception as e:  # noqa: BLE001
                out[i] = RowFailure(f"{self.name}: prompt failed: {type(e).__name__}: {e}")
        return out, prompts

    def rollouts(self, ctx: "ScoringContext", rows: Sequence[ScoringRow], requests: Sequence[GenRequest],
                 keys: Sequence[tuple], out: list, formatted: bool = False) -> list[tuple[tuple, Any]]:
        """Generate and grade ``requests`` (``keys[j]``: a tuple starting with the row index of ``requests[j]``).

        A failed generation fails its row (``out[i]``); returns ``(key, correct)`` of the requests of rows that have
        not failed, in order (``formatted=True``: ``(key, Verdict(correct, formatted))``, :meth:`ScoringContext.grade`).
        """
        gens = ctx.generate(requests, self.sampling())
        ok = (ctx.grade if formatted else ctx.verify)(gens, [rows[k[0]] for k in keys])
        res = []
        for key, g, v in zip(keys, gens, ok):
            i = key[0]
            if out[i] is not None:
                continue
            if isinstance(g, Exception):
                out[i] = RowFailure(f"{self.name}: {g}")
                continue
            res.append((key, v))
        return res

    def sampled_responses(self, rows: Sequence[ScoringRow], ctx: "ScoringContext",
                          verify: bool = False) -> tuple[list, dict[int, tuple[Any, bool]]]:
        """One sampled response per row with its images (seed ``derive_seed(seed, row id, name, 0, 0)``), for the
        scorers that then read a teacher-forced pass over it: ``(out, got)`` with ``out`` as :meth:`prompts` (a
        failed or empty generation fails its row) and ``got[i] = (GenResult, correct)`` (``correct`` from the job's
        verifier when ``verify``, else False)."""
        out, prompts = self.prompts(rows, ctx)
        order = sorted(prompts)
        gens = ctx.generate([self.request(ctx, rows[i], prompts[i][0], rows[i].images, 0, 0, **{"try": 0})
                             for i in order], self.sampling())
        verdicts = ctx.verify(gens, [rows[i] for i in order]) if verify else [False] * len(order)
        got: dict[int, tuple[Any, bool]] = {}
        for i, g, ok in zip(order, gens, verdicts):
            if isinstance(g, Exception) or not g.token_ids:
                out[i] = g if isinstance(g, RowFailure) else RowFailure(f"{self.name}: empty response")
            else:
                got[i] = (g, bool(ok))
        return out, got

    def request(self, ctx: "ScoringContext", row: ScoringRow, prompt: Prompt, images: Any, *key: int,
                **tag: Any) -> GenRequest:
        """The request of ``prompt`` with ``images``, seeded with ``derive_seed(seed, row id, name, *key)``."""
        return prompt.request(images, derive_seed(ctx.seed, row.row_id, self.name, *key),
                              {"scorer": self.name, "row": row.row_id, **tag})


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
