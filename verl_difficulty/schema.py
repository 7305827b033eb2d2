"""The one schema of every difficulty field verl-difficulty writes or reads.

Every scorer, selector, the sampler, the estimators and the trainer seam import field names from here; no other
module spells a difficulty field name as a string literal. A user reading a scored parquet finds the meaning of each
column below (and in ``verl-difficulty schema``, which prints this table).

Where a field lives:

* **Row level** (a verl RLHFDataset parquet row): score columns are written twice, as a flat column
  (``pism_bucket``) and mirrored inside the row's ``extra_info`` dict under the same key, because verl forwards
  ``extra_info`` to the reward loop and into TransferQueue but drops unknown top-level columns.
* **Prompt id**: ``extra_info["index"]`` is the stable per-prompt id. verl's ``uid`` is random per step, so online
  statistics (pass rates, groups) are keyed by this id.
* **Per response, online**: the reward managers put ``acc`` (0/1 correctness) and ``format`` in their
  ``reward_extra_info``; the seam forwards them to estimators and the sampler as ``non_tensor_batch`` entries.
"""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------------------------------------
# Row identity
# --------------------------------------------------------------------------------------------------------------------
EXTRA_INFO = "extra_info"
"""verl's per-row dict column; forwarded by verl to reward managers and stored per trajectory in TransferQueue."""
PROMPT_ID = "index"
"""int: stable prompt id inside ``extra_info`` (verl convention). Required by the sampler and online statistics."""
DATA_SOURCE = "data_source"
"""str: verl's dataset-name column; selects the reward function."""
IMAGES = "images"
"""list of images (``{"bytes","path"}`` dicts): verl's default ``data.image_key``."""

# --------------------------------------------------------------------------------------------------------------------
# Known difficulty (synthetic data only)
# --------------------------------------------------------------------------------------------------------------------
TRUE_LEVEL = "true_difficulty"
"""int in [0, levels): the generator's known difficulty level of a synthetic row (0 = easiest)."""
TASK_TYPE = "task_type"
"""str: task family of a row (``count``, ``color``, ``arith``, ``compare``, ``bbox``, ``ocr``); selects a verifier."""

# --------------------------------------------------------------------------------------------------------------------
# Offline scores (one column each; mirrored in extra_info)
# --------------------------------------------------------------------------------------------------------------------
PASS_RATE = "pass_rate"
"""float in [0,1]: P2 offline accuracy over k rollouts of the base model (the U-shape input)."""
NUM_CORRECT = "num_correct"
"""int: P2 number of correct rollouts out of ``pass_k``."""
PASS_K = "pass_k"
"""int: P2 number of rollouts behind ``pass_rate``."""
PISM_LAMBDA = "pism_lambda_star"
"""float or null: P1 failure point lambda* (smallest mask ratio with P_c < tau); null if never fails."""
PISM_PASS = "pism_pass_vector"
"""list[float]: P1 per mask ratio (provenance ``ratios``): P_c if all K tries ran, else 1 pass / 0 fail; NaN untried."""
PISM_TRIES = "pism_tries"
"""list[int]: P1 generations spent per mask ratio (same order as ``pism_pass_vector``; 0 = not tried)."""
PISM_BUCKET = "pism_bucket"
"""str: P1 PISM bucket, one of ``BUCKETS``."""
CMAB_RATIO = "cmab_ratio"
"""float: P1 mean image/text attention ratio rho-bar."""
CMAB_BUCKET = "cmab_bucket"
"""str: P1 CMAB bucket, one of ``BUCKETS``."""
VISUAL_ENTROPY = "visual_entropy"
"""float: P3 spectral entropy of the visual tokens' covariance (perceptual difficulty, higher = harder)."""
CDE_ACC_IMG = "cde_acc_img"
"""float: P4 accuracy over M rollouts with the image."""
CDE_ACC_TXT = "cde_acc_txt"
"""float: P4 accuracy over M rollouts with the image removed."""
CDE_D = "cde_discrepancy"
"""float: P4 D(x) = acc_img - acc_txt."""
CDE_ROLLOUTS = "cde_rollouts"
"""int: P4 rollouts per arm (M) behind ``cde_acc_img`` and ``cde_acc_txt``."""
CDE_IMG_CORRECT = "cde_img_correct"
"""int: P4 number of the M rollouts WITH the image that are correct (format ignored; the official RAP script's
``reward >= 0.9`` count)."""
CDE_IMG_CORRECT_FORMATTED = "cde_img_correct_formatted"
"""int: P4 number of the M rollouts WITH the image that are correct AND well formatted (the official RAP script's
``reward == 1`` count under 0.9*acc + 0.1*format)."""
CDE_TXT_CORRECT = "cde_txt_correct"
"""int: P4 number of the M rollouts WITHOUT the image that are correct (format ignored)."""
CDE_TXT_CORRECT_FORMATTED = "cde_txt_correct_formatted"
"""int: P4 number of the M rollouts WITHOUT the image that are correct AND well formatted."""
ACE_SCORE = "ace_score"
"""float: P4 attention-confidence score max_j psi_j, as log(max_j psi_j) by default (provenance ``scale``: ``log``
or ``linear``); high = attention dominated by few tokens (ACE, reconstructed from secondary sources)."""
DIFFICULTY_BUCKET = "difficulty_bucket"
"""str: the bucket the sampler stratifies on (copied from whichever scorer a selection used), one of ``BUCKETS``."""
DIFFICULTY_SCORE = "difficulty_score"
"""float in [0,1]: a scalar prior pass-rate the sampler starts its online estimate from (1 = easy)."""
HARD_HINT = "hard_hint"
"""bool: P2 stage-2 sample marked to receive the difficulty hint."""
HINT_APPLIED = "difficulty_hint_applied"
"""bool: set in a drawn row's ``extra_info`` by the hint dataset when the P2 difficulty hint was added to its prompt."""
SCORE_PROVENANCE = "difficulty_provenance"
"""str (JSON): scorer name/version, parameters, model path, seed, date of the scores in a row."""
BAD_ROW_REASON = "bad_row_reason"
"""str: why a scorer skipped a row (side file of a scoring run)."""

BUCKETS = ("easy", "medium", "hard", "unsolved")
"""The difficulty buckets shared by P1 PISM/CMAB and the sampler, easiest first."""

# --------------------------------------------------------------------------------------------------------------------
# Online, per response (reward extra info) and what the seam hands estimators
# --------------------------------------------------------------------------------------------------------------------
ACC = "acc"
"""float 0/1: per-response correctness reported by every plugin reward manager in ``reward_extra_info``."""
FORMAT = "format"
"""float 0/1: per-response format score reported in ``reward_extra_info``."""
SEAM_PROMPT_ID = "prompt_id"
"""int64 array in ``non_tensor_batch``: ``extra_info.index`` of each response's prompt (-1 where missing)."""
SEAM_OLD_LOG_PROBS = "old_log_probs"
"""(bs, response_length) tensor keyword: the rollout policy's log-probs, given to estimators by the seam."""

CORRECT = "correct"
"""float64 array in ``non_tensor_batch``: the seam's one verdict per response, 1.0 / 0.0, NaN for an empty response
(left out of every pass rate). The reward's ``acc`` when it reports one, else ``reward >= difficulty.correct_threshold``
(:func:`verl_difficulty.seam.inputs.response_verdicts`); the estimators and the sampler read this same value."""

# --------------------------------------------------------------------------------------------------------------------
# Metric names in verl's tracker: every plugin metric is difficulty/<part>/<name>[/<detail>...]
# --------------------------------------------------------------------------------------------------------------------
METRIC_PREFIX = "difficulty/"
METRIC_PARTS = ("batch", "seam", "sampler", "curriculum", "hints", "weighting", "durian")
"""The parts that report metrics: the seam's batch statistics and plumbing, the sampler and its curriculum, the P2
hints, and the two estimators."""


def metric(part: str, *names: str) -> str:
    """The tracker key ``difficulty/<part>/<name>/...`` of a plugin metric (the only place metric names are built)."""
    if part not in METRIC_PARTS:
        raise ValueError(f"unknown metric part {part!r}; known: {METRIC_PARTS}")
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"metric {part!r}: expected non-empty name parts, got {names!r}")
    return METRIC_PREFIX + "/".join((part,) + tuple(names))


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    meaning: str


def fields() -> list[Field]:
    """All named fields of this module with their documented type and meaning (for ``verl-difficulty schema``)."""
    import ast
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    tree = ast.parse(source)
    out: list[Field] = []
    body = tree.body
    for i, node in enumerate(body):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        if not isinstance(node.value, ast.Constant) or not isinstance(node.value.value, str):
            continue
        doc = ""
        if i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) and isinstance(body[i + 1].value, ast.Constant):
            doc = str(body[i + 1].value.value)
        type_, _, meaning = doc.partition(":")
        out.append(Field(name=node.value.value, type=type_.strip(), meaning=meaning.strip()))
    return out


def row_score(row: dict, name: str, default=None):
    """Read a difficulty field of a dataset row: the flat column first, then ``extra_info[name]``."""
    if name in row and row[name] is not None:
        return row[name]
    extra = row.get(EXTRA_INFO) or {}
    return extra.get(name, default)

# --------------------------------------------------------------------------------------------------------------------
# Selection outputs (``verl-difficulty select``; verl_difficulty/selection/): the decisions file and the rows it keeps
# --------------------------------------------------------------------------------------------------------------------
SELECTION_STAGE = "difficulty_stage"
"""int: P2 training stage of a selected row (1 = moderate, 2 = moderate-to-hard); mirrored in extra_info."""
SELECTION_KEPT = "kept"
"""bool: decisions.parquet: whether the selection kept the row in ``train.parquet``."""
SELECTION_REASON = "reason"
"""str: decisions.parquet: why the row was kept or dropped (``kept``, ``easy``, ``below_band``, ``drm_added`` ...)."""
SELECTION_BUCKET = "bucket"
"""str or null: decisions.parquet: the bucket the selection read or assigned for the row."""
SELECTION_STAGE_COLUMN = "stage"
"""int or null: decisions.parquet: the row's training stage (P2), null where the method has none."""
SELECTION_SUBSET = "subset"
"""str or null: decisions.parquet: the comma-separated named subsets the row belongs to (P1 baselines, SFT/GRPO)."""
SFT_MESSAGES = "messages"
"""list of {role, content}: P1 SFT set: prompt plus target answer, the column verl's MultiTurnSFTDataset reads."""
