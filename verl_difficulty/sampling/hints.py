"""P2 difficulty hints (arXiv 2505.13261): tell the policy that a hard prompt is hard.

P2 adds "an explicit hint that the problem is difficult and needs careful, reflective reasoning" to its stage-2 (hard)
samples but does not publish the wording: :data:`DEFAULT_HINT` is OURS, and every part of it is configurable
(``difficulty.hints.*``): the template, where it goes (``prefix``/``suffix`` of the ``user`` or ``system`` message)
and which rows get it.

Where it is applied: verl builds each training prompt in its dataset class (``RLHFDataset.__getitem__`` ->
``_build_messages``, ``verl/utils/dataset/rl_dataset.py:299-411``) in the trainer process, from the row's ``prompt``
column; the agent loop applies the chat template later. ``DifficultyHintDataset``
(:mod:`verl_difficulty.seam.hint_dataset`, the only part that imports verl) is an ``RLHFDataset`` subclass that edits
the chat messages of the selected rows (with :class:`HintRule` from this module) just before verl splits the
``<image>``/``<video>`` placeholders, so placeholders, their order and the images stay intact (the template itself
may not contain a placeholder). It is selected through verl's own hook, ``data.custom_cls.{path,name}``; the
``difficulty`` trainer mode sets that hook when ``difficulty.hints.enable=true`` and ``data.custom_cls`` is unset (a
user class must subclass that one).

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
``flag`` and ``bucket`` apply (the sampler knows training prompts only). Each row of a hint dataset carries
``extra_info.difficulty_hint_applied`` (``schema.HINT_APPLIED``, true when hinted); ``difficulty/hints/applied`` and
``difficulty/hints/applied_frac`` (:func:`batch_hint_metrics`) report how many of the prompts of each step's training
batch carry the hint, and their share, counted from those marks: they hold with dataloader worker processes too
(verl's default of 8 workers builds the rows in other processes).

Note: the hint lengthens the prompt (about 30 tokens for the default); verl's ``filter_overlong_prompts`` runs on the
un-hinted prompt, so leave that margin in ``data.max_prompt_length``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from verl_difficulty import schema
from verl_difficulty.config import parse
from verl_difficulty.sampling.config import DEFAULT_HINT, HintConfig

__all__ = ["DEFAULT_HINT", "HintConfig", "HintRule", "add_hint", "batch_hint_metrics"]


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


class HintRule:
    """Which rows get the hint, and adding it: mixed into verl's dataset class by
    :mod:`verl_difficulty.seam.hint_dataset` (kept apart so it is testable without verl)."""

    _hint_cfg: Optional[HintConfig] = None
    _hint_active: bool = False
    _hint_sampler: Any = None

    def configure_hints(self, cfg: HintConfig, split: str = "train", sampler: Any = None) -> None:
        """Turn hints on for this dataset (``split`` = ``train`` or ``val``; val only when ``cfg.validation``)."""
        cfg = parse(HintConfig, cfg, "difficulty.hints")
        if split == "train" and any(s in cfg.select for s in ("online", "stage")) and sampler is None:
            raise ValueError(
                f"difficulty.hints.select={cfg.select} needs the difficulty sampler (difficulty.sampler.enable=true)"
            )
        self._hint_cfg = cfg
        self._hint_active = bool(cfg.enable and (split == "train" or cfg.validation))
        self._hint_sampler = sampler if split == "train" else None

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
        return example


def batch_hint_metrics(extra_info: Sequence[Any], prompt_keys: Sequence[Any]) -> dict[str, float]:
    """``difficulty/hints/applied``: the prompts of a training batch that carry the hint (a prompt's rollouts count
    once: ``prompt_keys`` groups them, e.g. verl's ``uid``), and ``difficulty/hints/applied_frac``: their share of the
    batch's prompts; from each row's ``extra_info[HINT_APPLIED]`` (a row without the mark is not hinted)."""
    hinted: dict[Any, bool] = {}
    for key, info in zip(prompt_keys, extra_info):
        mark = isinstance(info, Mapping) and _truthy(info.get(schema.HINT_APPLIED))
        hinted[key] = hinted.get(key, False) or mark
    applied = sum(hinted.values())
    return {
        schema.metric("hints", "applied"): float(applied),
        schema.metric("hints", "applied_frac"): applied / len(hinted) if hinted else 0.0,
    }
