"""P4 selection (arXiv 2506.04755, RAP "Truth in the Few: High-Value Data Selection for Efficient Multi-Modal
Reasoning"): CDE -> ACE -> DRM (``--mode paper``) and the official selection script (``--mode reference_code``).

Paper mode (inputs from ``verl-difficulty score --scorers cde,ace``):

1. CDE: keep rows whose causal discrepancy D(x) = acc_img - acc_txt (``cde_discrepancy``) is >= lambda_c
   (``--lambda-c``, default 0.5); others: ``cde_below_threshold``; a row without D: ``no_score``.
2. ACE: of those, drop rows whose attention-confidence score exceeds lambda_a (``--lambda-a``, default 0.1):
   ``ace_above_threshold``. ``ace_score`` is stored as log(max_j psi_j) when the ace scorer's provenance ``scale`` is
   ``log`` (its default): then it is compared with log(lambda_a); with ``scale = linear`` with lambda_a itself. A NaN
   score is not above the threshold (kept). Without an ``ace_score`` column (or with ``--no-ace``) the step is
   skipped and the summary says so. ACE is reconstructed from secondary sources.
3. DRM (``--no-drm`` to skip): the trivially easy kept rows (acc_img = 1, ``cde_acc_img``) are removed
   (``replaced_trivial``) and replaced by the hardest rows with non-zero accuracy from the discarded pool (the rows
   dropped by steps 1-2 with 0 < acc_img < 1), ranked by acc_img ascending, then D descending, ties by
   ``extra_info.index`` ascending: ``drm_added``. k = the number removed (``--drm-k`` to set it); fewer if the pool
   is smaller.

Reference-code mode reproduces the official ``select/selection.py`` EXACTLY (M rollouts per arm, reward 0.9*acc +
0.1*format), from the cde scorer's counts (``cde_img_correct``, ``cde_img_correct_formatted``,
``cde_txt_correct_formatted``, ``cde_rollouts``):

* a_img = (correct AND formatted image rollouts) / M, a_txt likewise without the image (the script counts reward ==
  1); Python float division;
* mean_img, mean_txt = the dataset means of a_img and a_txt (numpy's mean, as the script's arrays give it);
  D = a_img - a_txt and diff = mean_img - mean_txt, Python float subtraction;
* ``easy`` = all M image rollouts correct, ``right1`` = exactly one correct, both format ignored (the script's
  reward >= 0.9 count, ``cde_img_correct``);
* score = 1 - (a_img - mean_img)^2 / (1 - mean_img)^2 (LIMR-style alignment);
* main set = {score >= 0.6 and D > 0.2} minus ``easy`` (``reference_main``);
* add-back pool = ``right1`` and ({score >= 0.85 and (D > diff or D >= 0.2)} or {D >= 0.6}); ``int(0.1 * len(pool))``
  of its row positions (dataset order) are drawn with ``random.seed(42); random.sample(pool, k)``
  (``reference_addback``; the other pool rows: ``addback_not_drawn``).

Every comparison is made on those Python floats, as the script makes it: with M = 5, 0.8 - 0.6 =
0.20000000000000007 > 0.2 is True (kept) while 0.6 - 0.4 = 0.19999999999999996 > 0.2 is False (dropped). The seed 42
is the script's (``--seed`` does not apply in this mode), and ``--lambda-c``/``--lambda-a``/DRM are not used.
Other dropped rows: ``easy``, ``score_below_threshold``, ``cde_below_threshold``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Optional

import numpy as np

from verl_difficulty import schema
from verl_difficulty.config import setting
from verl_difficulty.selection.common import (CommonParams, Decision, Outcome, is_missing,
                                              provenance_params, ranked, register_selection, require, values)

REFERENCE_SEED = 42
REFERENCE_FRACTION = 0.1


@dataclasses.dataclass
class P4Params(CommonParams):
    """P4 options (paper mode; reference_code mode uses the script's constants)."""

    lambda_c: float = setting(0.5, ge=-1.0, le=1.0, source="P4", help="CDE: keep D(x) >= lambda_c")
    lambda_a: float = setting(0.1, gt=0.0, source="P4", help="ACE: drop rows whose max psi exceeds lambda_a")
    ace: bool = setting(True, help="apply the ACE step when the input has ace_score")
    drm: bool = setting(True, source="P4", help="DRM: replace trivially easy kept rows (acc_img = 1)")
    drm_k: Optional[int] = setting(None, ge=0, source="P4", help="DRM replacements (default: the number removed)")


def _floats(table: Any, name: str, why: str) -> list:
    return [None if is_missing(v) else float(v) for v in require(table, name, "p4", why)]


def paper(table: Any, ids: list, p: P4Params) -> Outcome:
    """CDE -> ACE -> DRM (see the module docstring)."""
    d = _floats(table, schema.CDE_D, " (CDE discrepancy)")
    acc = _floats(table, schema.CDE_ACC_IMG, " (CDE image accuracy, for DRM)")
    n = len(d)
    reason = {i: "no_score" if d[i] is None else "cde_below_threshold" for i in range(n)
              if d[i] is None or not d[i] >= p.lambda_c}
    notes = [f"CDE: D >= {p.lambda_c} keeps {n - len(reason)} of {n}"]
    ace = values(table, schema.ACE_SCORE) if p.ace else None
    if ace is None:
        notes.append("ACE step skipped: " + ("--no-ace" if not p.ace else "no ace_score column (run `verl-difficulty "
                                             "score ... --scorers ace` to add it)"))
    else:
        scale = provenance_params(table, "ace").get("scale", "log")
        limit = math.log(p.lambda_a) if scale == "log" else p.lambda_a
        dropped = [i for i in range(n) if i not in reason and not is_missing(ace[i]) and float(ace[i]) > limit]
        reason.update({i: "ace_above_threshold" for i in dropped})
        notes.append(f"ACE ({scale} scale): score > {limit:.6g} drops {len(dropped)}")
    if p.drm:
        trivial = [i for i in range(n) if i not in reason and acc[i] == 1.0]
        pool = [i for i in reason if reason[i] != "no_score" and acc[i] is not None and 0.0 < acc[i] < 1.0]
        k = len(trivial) if p.drm_k is None else p.drm_k
        added = ranked(pool, lambda i: (acc[i], -d[i]), ids)[:k]
        reason.update({i: "replaced_trivial" for i in trivial})
        reason.update({i: "drm_added" for i in added})
        notes.append(f"DRM: removed {len(trivial)} trivially easy rows, added {len(added)} of k={k}")
    kept_reasons = ("kept", "drm_added")
    decisions = [Decision(kept=reason.get(i, "kept") in kept_reasons, reason=reason.get(i, "kept")) for i in range(n)]
    loosen = {"cde_below_threshold": ("lambda_c",), "ace_above_threshold": ("lambda_a", "ace"),
              "replaced_trivial": ("drm",)}
    return Outcome(decisions, notes=notes, loosen=loosen)


def _counts(table: Any, name: str) -> list:
    vals = require(table, name, "p4 --mode reference_code", " (per-rollout counts of the cde scorer)")
    bad = sum(is_missing(v) for v in vals)
    if bad:
        raise ValueError(f"p4 --mode reference_code: {bad} rows have no {name}; rescore them with --scorers cde")
    return [int(v) for v in vals]


def reference_code(table: Any, ids: list, p: P4Params) -> Outcome:
    """The official RAP selection script, exactly (see the module docstring)."""
    m = _counts(table, schema.CDE_ROLLOUTS)
    img_ok = _counts(table, schema.CDE_IMG_CORRECT)
    a_img = [c / k for c, k in zip(_counts(table, schema.CDE_IMG_CORRECT_FORMATTED), m)]
    a_txt = [c / k for c, k in zip(_counts(table, schema.CDE_TXT_CORRECT_FORMATTED), m)]
    mean_img, mean_txt = float(np.mean(a_img)), float(np.mean(a_txt))
    if mean_img == 1.0:
        raise ValueError("p4 --mode reference_code: every image rollout is correct and formatted (mean a_img = 1): "
                         "the script's alignment score divides by zero")
    diff = mean_img - mean_txt
    n = len(m)
    d = [a_img[i] - a_txt[i] for i in range(n)]
    score = [1 - (a_img[i] - mean_img) ** 2 / (1 - mean_img) ** 2 for i in range(n)]
    easy = [img_ok[i] == m[i] for i in range(n)]
    right1 = [img_ok[i] == 1 for i in range(n)]
    main = {i for i in range(n) if score[i] >= 0.6 and d[i] > 0.2 and not easy[i]}
    pool = [i for i in range(n) if right1[i] and ((score[i] >= 0.85 and (d[i] > diff or d[i] >= 0.2)) or d[i] >= 0.6)]
    k = int(REFERENCE_FRACTION * len(pool))
    added = set(random.Random(REFERENCE_SEED).sample(pool, k))
    decisions = []
    for i in range(n):
        if i in main:
            r = "reference_main"
        elif i in added:
            r = "reference_addback"
        elif i in pool:
            r = "addback_not_drawn"
        elif easy[i]:
            r = "easy"
        else:
            r = "score_below_threshold" if not score[i] >= 0.6 else "cde_below_threshold"
        decisions.append(Decision(kept=i in main or i in added, reason=r))
    notes = [f"reference_code: mean a_img={mean_img:.6g}, mean a_txt={mean_txt:.6g}, diff={diff:.6g}; main "
             f"{len(main)}, add-back pool {len(pool)}, drawn {k} (random.seed({REFERENCE_SEED}))"]
    # the script's thresholds are constants: only the paper mode (--lambda-c, --lambda-a, DRM) selects otherwise
    loosen = {r: ("mode",) for r in ("easy", "score_below_threshold", "cde_below_threshold", "addback_not_drawn")}
    return Outcome(decisions, notes=notes, loosen=loosen)


@register_selection("p4", P4Params, "P4 RAP: CDE -> ACE -> DRM, or the official selection script (arXiv "
                    "2506.04755)", modes=("paper", "reference_code"))
def select_p4(table: Any, ids: list, p: P4Params) -> Outcome:
    return paper(table, ids, p) if p.mode == "paper" else reference_code(table, ids, p)
