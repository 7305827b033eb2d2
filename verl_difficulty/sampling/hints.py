"""P2 difficulty hints (arXiv 2505.13261): tell the policy that a hard prompt is hard.

P2 adds "an explicit hint that the problem is difficult and needs careful, reflective reasoning" to its stage-2 (hard)
samples but does not publish the wording: :data:`DEFAULT_HINT` is OURS, and every part of it is configurable
(``difficulty.hints.*``): the template, where it goes (``prefix``/``suffix`` of the ``user`` or ``system`` message)
and which rows get it.

Where it is applied: verl builds each training prompt in its dataset class (``RLHFDataset.__getitem__`` ->
``_build_messages``, ``verl/utils/dataset/rl_dataset.py:299-411``) in the trainer process, from the row's ``prompt``
column; the agent loop applies the chat template later. :class:`DifficultyHintDataset` is an ``RLHFDataset`` subclass
that edits the chat messages of the selected rows just before verl splits the ``<image>``/``<video>`` placeholders, so
placeholders, their order and the images stay intact (the template itself may not contain a placeholder). It is
selected through verl's own hook, ``data.custom_cls.{path,name}``; the ``difficulty`` trainer mode sets that hook
when ``difficulty.hints.enable=true`` and ``data.custom_cls`` is unset (a user class must subclass this one).

Which rows (``difficulty.hints.select``, any of):

* ``flag``: rows whose ``hard_hint`` field (flat column or ``extra_info``) is true: written by the selection step
  for P2's stage-2 set;
* ``bucket``: rows whose bucket (``bucket_key``) is in ``buckets`` (default ``[hard]``);
* ``online``: training rows whose current sampler estimate of the pass rate is ``<= max_pass_rate`` (the sampler
  and the dataset live in the same trainer process; decided when verl fetches the row, i.e. right after the sampler
  drew it);
* ``stage``: every training row drawn while the sampler's curriculum is in one of ``stages`` (P2: stage 2 of a
  ``two_stage`` schedule).

Validation prompts get no hint unless ``difficulty.hints.validation=true`` (P2 evaluates without hints); for them only
``flag`` and ``bucket`` apply (the sampler knows training prompts only). Each hinted row carries
``extra_info.difficulty_hint_applied = true`` (``schema.HINT_APPLIED``); ``difficulty/hints/applied`` and
``difficulty/hints/applied_frac`` report the count and fraction per training step.

Note: the hint lengthens the prompt (about 30 tokens for the default); verl's ``filter_overlong_prompts`` runs on the
un-hinted prompt, so leave that margin in ``data.max_prompt_length``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from verl_difficulty import schema
from verl_difficulty.sampling.curriculum import reject_unknown_keys

logger = logging.getLogger(__name__)

DEFAULT_HINT = (
    "Note: this is a difficult problem. Think carefully, reason step by step, double-check each step and reflect "
    "on your reasoning before you give the final answer."
)
"""The default hint text. OURS: P2 describes the hint's intent but does not publish its wording."""

POSITIONS = ("prefix", "suffix")
ROLES = ("user", "system")
SELECTORS = ("flag", "bucket", "online", "stage")
HINT_DATASET_PATH = "pkg://verl_difficulty.sampling.hints"
HINT_DATASET_NAME = "DifficultyHintDataset"
_PLACEHOLDERS = ("<image>", "<video>", "<audio>")


@dataclass
class HintConfig:
    """P2 difficulty hints (``difficulty.hints`` in a recipe; defaults in ``verl_difficulty/config/difficulty.yaml``).

    Args:
        enable (`bool`, defaults to `False`):
            Add the hint to the selected training prompts (needs ``trainer.v1.trainer_mode=difficulty``).
        template (`str`, defaults to :data:`DEFAULT_HINT`):
            The hint text. Ours (P2 does not publish its wording). May not contain ``<image>``-style placeholders.
        position (`str`, defaults to `"suffix"`):
            ``prefix`` or ``suffix`` of the message content. Ours.
        role (`str`, defaults to `"user"`):
            ``user``: the last user message (the question); ``system``: the system message (one is inserted first
            if the prompt has none). Ours.
        separator (`str`, defaults to `"\\n"`):
            Put between the hint and the existing content.
        select (`list[str]`, defaults to `["flag"]`):
            Which rows get the hint: any of ``flag``, ``bucket``, ``online``, ``stage`` (module docstring).
        flag_key (`str`, defaults to `"hard_hint"`):
            ``flag``: the boolean row field (``schema.HARD_HINT``).
        bucket_key (`str`, defaults to `"difficulty_bucket"`):
            ``bucket``: the row field holding the bucket.
        buckets (`list[str]`, defaults to `["hard"]`):
            ``bucket``: buckets whose rows get the hint.
        max_pass_rate (`float`, defaults to `0.25`):
            ``online``: rows whose sampler estimate is at most this get the hint. Ours.
        stages (`list[int]`, defaults to `[2]`):
            ``stage``: curriculum stages (``curriculum/stage``) whose draws get the hint (P2: stage 2).
        validation (`bool`, defaults to `False`):
            Also hint validation prompts (``flag``/``bucket`` only). P2 evaluates without hints.
    """

    enable: bool = False
    template: str = DEFAULT_HINT
    position: str = "suffix"
    role: str = "user"
    separator: str = "\n"
    select: list = field(default_factory=lambda: ["flag"])
    flag_key: str = schema.HARD_HINT
    bucket_key: str = schema.DIFFICULTY_BUCKET
    buckets: list = field(default_factory=lambda: ["hard"])
    max_pass_rate: float = 0.25
    stages: list = field(default_factory=lambda: [2])
    validation: bool = False

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "HintConfig":
        d = dict(d or {})
        reject_unknown_keys(cls, d, "difficulty.hints")
        return cls(**d).validate()

    def validate(self) -> "HintConfig":
        w = "difficulty.hints"
        for name in ("enable", "validation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{w}.{name}: expected true/false, got {getattr(self, name)!r}")
        if not isinstance(self.template, str) or not self.template.strip():
            raise ValueError(f"{w}.template: expected a non-empty string")
        bad = [p for p in _PLACEHOLDERS if p in self.template]
        if bad:
            raise ValueError(f"{w}.template: may not contain {bad} (verl counts placeholders against the images)")
        if self.position not in POSITIONS:
            raise ValueError(f"{w}.position: {self.position!r} is not one of {POSITIONS}")
        if self.role not in ROLES:
            raise ValueError(f"{w}.role: {self.role!r} is not one of {ROLES}")
        if not isinstance(self.separator, str):
            raise ValueError(f"{w}.separator: expected a string")
        if isinstance(self.select, str):
            self.select = [self.select]
        self.select = list(self.select or [])
        unknown = [s for s in self.select if s not in SELECTORS]
        if unknown or not self.select:
            raise ValueError(f"{w}.select: expected a non-empty list of {SELECTORS}, got {self.select!r}")
        self.buckets = list(self.buckets or [])
        if "bucket" in self.select and not self.buckets:
            raise ValueError(f"{w}.buckets: select=bucket needs at least one bucket")
        if isinstance(self.max_pass_rate, bool) or not isinstance(self.max_pass_rate, (int, float)) or not (
            0.0 <= float(self.max_pass_rate) <= 1.0
        ):
            raise ValueError(f"{w}.max_pass_rate: expected a number in [0, 1], got {self.max_pass_rate!r}")
        self.stages = [int(s) for s in (self.stages or [])]
        if "stage" in self.select and not self.stages:
            raise ValueError(f"{w}.stages: select=stage needs at least one stage number")
        return self


def add_hint(messages: list, cfg: HintConfig) -> list:
    """A copy of chat ``messages`` with the hint added (prefix/suffix of the last user or the system message)."""
    msgs = [dict(m) for m in messages]
    if cfg.role == "system":
        idx = next((i for i, m in enumerate(msgs) if m.get("role") == "system"), None)
        if idx is None:
            return [{"role": "system", "content": cfg.template}, *msgs]
    else:
        idx = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i].get("role") == "user"), None)
        if idx is None:
            raise ValueError("difficulty hint: the prompt has no user message to add the hint to (use role=system)")
    content = msgs[idx].get("content")
    if isinstance(content, str):
        joined = (cfg.template, content) if cfg.position == "prefix" else (content, cfg.template)
        msgs[idx]["content"] = cfg.separator.join(joined) if content else cfg.template
    elif isinstance(content, (list, tuple)):
        part = {"type": "text", "text": cfg.template}
        msgs[idx]["content"] = [part, *content] if cfg.position == "prefix" else [*content, part]
    else:
        raise ValueError(f"difficulty hint: unsupported message content type {type(content).__name__}")
    return msgs


def _truthy(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(v)


def _base_dataset_class():
    from verl.utils.dataset.rl_dataset import RLHFDataset

    return RLHFDataset


class _HintMixin:
    """Hint logic, kept apart from verl's class so it is testable without verl's dataset machinery."""

    _hint_cfg: Optional[HintConfig] = None
    _hint_active: bool = False
    _hint_sampler: Any = None
    _hint_split: str = "train"

    def configure_hints(self, cfg: HintConfig, split: str = "train", sampler: Any = None) -> None:
        """Turn hints on for this dataset (``split`` = ``train`` or ``val``; val only when ``cfg.validation``)."""
        cfg = cfg.validate()
        if split == "train" and any(s in cfg.select for s in ("online", "stage")) and sampler is None:
            raise ValueError(
                f"difficulty.hints.select={cfg.select} needs the difficulty sampler (difficulty.sampler.enable=true)"
            )
        self._hint_cfg = cfg
        self._hint_split = split
        self._hint_active = bool(cfg.enable and (split == "train" or cfg.validation))
        self._hint_sampler = sampler if split == "train" else None
        self._hint_applied = 0
        self._hint_rows = 0

    def hint_wanted(self, example: dict) -> bool:
        cfg = self._hint_cfg
        if cfg is None or not self._hint_active:
            return False
        sel = cfg.select
        if "flag" in sel and _truthy(schema.row_score(example, cfg.flag_key)):
            return True
        if "bucket" in sel and schema.row_score(example, cfg.bucket_key) in cfg.buckets:
            return True
        sampler = self._hint_sampler
        if sampler is not None:
            if "stage" in sel and sampler.setting().stage in cfg.stages:
                return True
            if "online" in sel:
                pid = (example.get(schema.EXTRA_INFO) or {}).get(schema.PROMPT_ID)
                if pid is not None:
                    est = sampler.estimate_for_ids([int(pid)])[0]
                    if np.isfinite(est) and est <= cfg.max_pass_rate:
                        return True
        return False

    def apply_hint(self, example: dict, key: str) -> dict:
        """Add the hint to ``example[key]`` (chat messages) in place when the row is selected; mark ``extra_info``."""
        if self._hint_cfg is None or not self._hint_active:
            return example
        wanted = self.hint_wanted(example)
        if wanted:
            example[key] = add_hint(list(example[key]), self._hint_cfg)
        info = example.get(schema.EXTRA_INFO)
        if not isinstance(info, dict):
            info = {}
            example[schema.EXTRA_INFO] = info
        info[schema.HINT_APPLIED] = bool(wanted)
        self._hint_rows += 1
        self._hint_applied += int(wanted)
        return example

    def hint_metrics(self) -> dict[str, float]:
        """Hinted rows since the last call (one training step's fetches): count and fraction."""
        if self._hint_cfg is None or not self._hint_active:
            return {}
        rows, applied = getattr(self, "_hint_rows", 0), getattr(self, "_hint_applied", 0)
        self._hint_rows = self._hint_applied = 0
        return {
            "difficulty/hints/applied": float(applied),
            "difficulty/hints/applied_frac": float(applied) / rows if rows else 0.0,
        }


def _make_class():
    base = _base_dataset_class()

    class DifficultyHintDataset(_HintMixin, base):
        """verl's ``RLHFDataset`` that adds the P2 difficulty hint to selected rows (see the module docstring)."""

        def _build_messages(self, example: dict, key: str):
            self.apply_hint(example, key)
            return super()._build_messages(example, key)

    DifficultyHintDataset.__module__ = __name__
    DifficultyHintDataset.__qualname__ = HINT_DATASET_NAME
    return DifficultyHintDataset


def __getattr__(name: str):
    # built lazily so that importing this module does not import verl's dataset stack (plugin import stays light)
    if name == HINT_DATASET_NAME:
        cls = _make_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def install_hint_dataset(data_config) -> None:
    """Point verl's ``data.custom_cls`` at :class:`DifficultyHintDataset` unless the user set their own class."""
    from omegaconf import open_dict

    custom = data_config.get("custom_cls", None)
    if custom is not None and custom.get("path", None):
        return  # checked after construction by configure_dataset_hints
    with open_dict(data_config):
        data_config.custom_cls = {"path": HINT_DATASET_PATH, "name": HINT_DATASET_NAME}


def configure_dataset_hints(dataset, cfg: HintConfig, split: str, sampler: Any = None) -> None:
    """Configure hints on a dataset verl built; a clear error if it is not a hint dataset."""
    if not isinstance(dataset, _HintMixin):
        raise TypeError(
            f"difficulty.hints.enable=true but the {split} dataset is {type(dataset).__name__}: with your own "
            f"data.custom_cls, subclass verl_difficulty.sampling.hints.{HINT_DATASET_NAME} (or unset data.custom_cls)"
        )
    dataset.configure_hints(cfg, split=split, sampler=sampler)
