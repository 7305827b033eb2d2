"""P1 selection (arXiv 2511.06722, "Revisiting the Data Sampling in Multimodal Post-training from a
Difficulty-Distinguish View"): difficulty buckets, GRPO on medium+hard, its baselines, and SFT -> GRPO.

Buckets (``--bucket-source``):

* ``pism`` (default): recomputed from ``pism_lambda_star`` (the failure point lambda* = min{lambda : P_c(lambda) <
  tau}; null = never fails): ``unsolved`` if lambda* = 0 (P_c(0) < tau), ``hard`` if lambda* <= 0.4, ``medium`` if
  0.4 < lambda* < 0.7, ``easy`` if lambda* > 0.7 or never fails. lambda* = 0.7 itself is ``easy`` in the paper's text
  and ``medium`` in its appendix table: ``--lambda-boundary text|appendix`` (default ``text``). The 0.4 / 0.7
  thresholds are read from the pism scorer's provenance (``hard_max``, ``medium_max``) when recorded.
* ``cmab``: the stored ``cmab_bucket`` (cross-modal attention balance; wrong answers are ``unsolved``).

Outputs (all rows keep their input order; the bucket is written to ``difficulty_bucket``, mirrored in
``extra_info``, so the sampler can stratify on it):

* ``train.parquet``: the ``--train-buckets`` rows (default ``medium,hard``: the paper's winner, GRPO only);
* ``subsets/random.parquet``: a seeded sample (``--seed``) of the same size as ``train`` drawn from all rows;
  ``subsets/fullset.parquet``: every row; ``subsets/unsolved.parquet``: the ``unsolved`` bucket (``--baselines``);
* the SFT -> GRPO paradigm: ``sft.parquet`` = the ``--sft-buckets`` rows (default ``easy``) as an SFT set, and
  ``grpo.parquet`` = the ``--grpo-buckets`` rows (default ``medium,hard``) for the GRPO stage after it.

The SFT set is what verl 0.9.1's ``MultiTurnSFTDataset`` (``verl/utils/dataset/multiturn_sft_dataset.py``) reads: a
``messages`` column (its ``data.messages_key`` default) holding the row's prompt messages (``<image>`` placeholders
kept, ``images`` column kept, so the dataset splits them with the processor) followed by one assistant message, the
target response. The target is ``--sft-template`` with ``{answer}`` replaced by the ground truth
(``reward_model.ground_truth``): by default ``<think>...</think><answer>{answer}</answer>``, the answer format of the
P1 recipe's system prompt (reasoning in <think></think>, final answer in <answer></answer>); P1 does not publish its
SFT targets, so the default think text is a placeholder (OURS). ``--sft-response-column COL`` takes the whole target
from a column of the row instead (e.g. distilled reasoning traces).

Decisions: ``kept`` = in ``train``; ``reason`` = ``kept`` or the row's bucket (``easy``, ``unsolved`` ...), or
``no_bucket`` when the scorer left none; ``subset`` lists every output the row is in (``train``, ``random``,
``fullset``, ``unsolved``, ``sft``, ``grpo``). P1 has no released selection code: ``paper`` mode only.

No row in ``--train-buckets`` is an error (exit 1, naming ``--train-buckets`` and the rows per bucket) even when the
other sets are not empty: ``train`` is the selection (the random baseline is its size), and the sets of other
buckets are had by naming them in ``--train-buckets``; none of the tables is written then (see
:mod:`verl_difficulty.selection.io`).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Optional

from verl_difficulty import schema
from verl_difficulty.config import ConfigError, setting
from verl_difficulty.data.rows import GROUND_TRUTH, PROMPT, REWARD_MODEL, as_list
from verl_difficulty.selection.common import (CommonParams, Decision, Outcome, Output, is_missing,
                                              provenance_params, register_selection, require)

BASELINES = ("random", "fullset", "unsolved")
DEFAULT_SFT_TEMPLATE = "<think>...</think><answer>{answer}</answer>"


def bucket_of(lam: Optional[float], boundary: str = "text", hard_max: float = 0.4, medium_max: float = 0.7) -> str:
    """P1 PISM bucket of a failure point ``lam`` (None/NaN = never fails); ``boundary`` places lambda* = medium_max."""
    from verl_difficulty.scoring.scorers.pism import pism_bucket

    lam = None if is_missing(lam) else float(lam)
    return pism_bucket(lam, hard_max, medium_max, "easy" if boundary == "text" else "medium")


@dataclasses.dataclass
class P1Params(CommonParams):
    """P1 options."""

    bucket_source: str = setting("pism", choices=("pism", "cmab"), source="P1",
                                 help="which scorer's buckets: pism (from pism_lambda_star) or cmab (cmab_bucket)")
    lambda_boundary: str = setting("text", choices=("text", "appendix"), source="P1",
                                   help="bucket of lambda* = 0.7: easy (the paper's text) or medium (its appendix "
                                   "table)")
    train_buckets: list[str] = setting(default_factory=lambda: ["medium", "hard"], choices=schema.BUCKETS,
                                       source="P1", help="buckets of train.parquet (GRPO only; the paper's winner)")
    baselines: list[str] = setting(default_factory=lambda: list(BASELINES), choices=BASELINES, source="P1",
                                   help="baseline subsets written under subsets/: random (same size as train), "
                                   "fullset, unsolved")
    sft_buckets: list[str] = setting(default_factory=lambda: ["easy"], choices=schema.BUCKETS,
                                     help="SFT -> GRPO paradigm: buckets of sft.parquet (empty: no SFT set)")
    grpo_buckets: list[str] = setting(default_factory=lambda: ["medium", "hard"], choices=schema.BUCKETS,
                                      help="SFT -> GRPO paradigm: buckets of grpo.parquet (empty: none)")
    sft_template: str = setting(DEFAULT_SFT_TEMPLATE, help="SFT target; {answer} = the ground truth (the P1 "
                                "recipe's <think>/<answer> format; the think text is a placeholder)")
    sft_response_column: Optional[str] = setting(None, help="take the SFT target from this column instead of "
                                                 "--sft-template")

    def check(self, where: str) -> None:
        if not self.train_buckets:
            raise ConfigError(f"{where}.train_buckets: give at least one bucket")
        if "{answer}" not in self.sft_template and self.sft_response_column is None:
            raise ConfigError(f"{where}.sft_template: must contain {{answer}} (the ground truth), got "
                              f"{self.sft_template!r}")


def buckets(table: Any, p: P1Params) -> list:
    """The P1 bucket of every row from the chosen scorer (None where it has none)."""
    if p.bucket_source == "cmab":
        return require(table, schema.CMAB_BUCKET, "p1 --bucket-source cmab")
    lams = require(table, schema.PISM_LAMBDA, "p1 --bucket-source pism")
    prov = provenance_params(table, "pism")
    hard_max, medium_max = float(prov.get("hard_max", 0.4)), float(prov.get("medium_max", 0.7))
    return [bucket_of(lam, p.lambda_boundary, hard_max, medium_max) for lam in lams]


def sft_messages(table: Any, positions: list, p: P1Params) -> list:
    """The ``messages`` of the SFT rows: prompt messages + the assistant's target response."""
    if p.sft_response_column is not None:
        targets = require(table, p.sft_response_column, "p1 --sft-response-column")
        responses = [str(targets[i]) for i in positions]
    else:
        rewards = table.column(REWARD_MODEL).to_pylist() if REWARD_MODEL in table.column_names else None
        if rewards is None:
            raise ConfigError(f"p1 sft: the input has no {REWARD_MODEL} column (ground truth of the SFT target); "
                              "use --sft-response-column")
        responses = [p.sft_template.replace("{answer}", str((rewards[i] or {}).get(GROUND_TRUTH))) for i in positions]
    prompts = table.column(PROMPT).to_pylist()
    return [[{"role": m["role"], "content": m["content"]} for m in as_list(prompts[i])]
            + [{"role": "assistant", "content": r}] for i, r in zip(positions, responses)]


@register_selection("p1", P1Params, "P1 PISM/CMAB buckets: GRPO on medium+hard, baselines, SFT -> GRPO "
                    "(arXiv 2511.06722)")
def select_p1(table: Any, ids: list, p: P1Params) -> Outcome:
    b = buckets(table, p)
    n = len(b)
    members: dict[str, list] = {"train": [i for i in range(n) if b[i] in p.train_buckets]}
    if "random" in p.baselines:
        k = len(members["train"])
        members["random"] = sorted(random.Random(p.seed).sample(range(n), k))
    if "fullset" in p.baselines:
        members["fullset"] = list(range(n))
    if "unsolved" in p.baselines:
        members["unsolved"] = [i for i in range(n) if b[i] == "unsolved"]
    if p.sft_buckets:
        members["sft"] = [i for i in range(n) if b[i] in p.sft_buckets]
    if p.grpo_buckets:
        members["grpo"] = [i for i in range(n) if b[i] in p.grpo_buckets]
    subsets: list[list] = [[] for _ in range(n)]
    for name, rows in members.items():
        for i in rows:
            subsets[i].append(name)
    train = set(members["train"])
    decisions = [Decision(kept=i in train, reason="kept" if i in train else (b[i] or "no_bucket"), bucket=b[i],
                          subsets=tuple(subsets[i])) for i in range(n)]
    extra = {name: Output(f"subsets/{name}.parquet", rows) for name, rows in members.items()
             if name in BASELINES}
    if "grpo" in members:
        extra["grpo"] = Output("grpo.parquet", members["grpo"])
    if "sft" in members:
        extra["sft"] = Output("sft.parquet", members["sft"],
                              plain={schema.SFT_MESSAGES: sft_messages(table, members["sft"], p)})
    notes = [f"bucket source {p.bucket_source}" + (f", lambda*=0.7 as in the paper's {p.lambda_boundary}"
                                                   if p.bucket_source == "pism" else "")]
    loosen = {**{bucket: ("train_buckets",) for bucket in set(b) if bucket}, "no_bucket": ("bucket_source",)}
    return Outcome(decisions, columns={schema.DIFFICULTY_BUCKET: b}, extra=extra, notes=notes, loosen=loosen)


__all__ = ["P1Params", "select_p1", "bucket_of", "buckets", "sft_messages"]
