"""P1 CMAB, Cross-Modality Attention Balance (arXiv 2511.06722, "Revisiting the Data Sampling in Multimodal
Post-training from a Difficulty-Distinguish View"): how evenly the base model's answer attends to image and text.

Procedure per row: one response is sampled with the row's images by the job's generation backend (seed
``derive_seed(seed, row id, "cmab", 0, 0)``), graded by the job's verifier, then ONE teacher-forced forward pass over
prompt + response with eager attention gives, for every decoder layer l and every counted response position t, the
attention row ``A^(l,t)`` over the input positions (heads combined by ``heads``: mean by default, as the released code;
the paper does not say; ``max`` as an option). A teacher-forced pass gives the attention rows generation computed for
the same tokens. The rows are reduced INSIDE per-layer hooks to two numbers per counted position (the attention on the
image tokens and on the text tokens) for the whole batch at once, so at most one layer's attention tensor exists at a
time (``output_attentions=True`` keeps all L of them).

Positions (all in the row's own, unpadded sequence):

* image tokens: the ``<|image_pad|>`` placeholder positions of the prompt (each holds one merged visual token);
* response positions t (``queries``): ``response`` (default) = the rows whose query is the response token t itself;
  ``generating`` = the row that PRODUCED token t during generation, i.e. the query one position earlier (the last
  prompt token for t = 1). Every generated token counts, the end-of-sequence token included when it was sampled;
* text tokens, ``paper`` mode (``text_tokens``): ``prompt`` (default) = every prompt position that is not an image
  token: the system and user text, the chat template's role and special tokens (``<|im_start|>``, ``system``,
  ``user``, ``assistant``, newlines), the ``<|vision_start|>``/``<|vision_end|>`` markers; ``no_special`` = the same
  minus the tokenizer's special tokens. The response positions are never text tokens (attention on earlier response
  tokens counts in neither sum);
* text tokens, ``reference_code`` mode: every position before the first image token (system prompt, user turn header,
  ``<|vision_start|>``), as the released code; the question text after the image does not count.

Paper mode (default): S_img = sum of ``A^(l,t)`` over the image tokens, S_txt = the sum over the text tokens,
rho^(l,t) = S_img / S_txt (S_txt floored at 1e-12); per token rho_t = exp(mean over layers l = 2..L-1 (1-based; the
first and the last layer excluded; 0-based 1..L-2) of log(rho^(l,t) + 1e-8)); sample ratio rho-bar = mean of rho_t over
the generated tokens. A model with fewer than 3 layers (the tiny test model) has no such layer: all its layers count.

Reference-code mode: ONE layer, 0-based index ``ref_layer`` (default: 20 for the 28 layers of Qwen2.5-VL-7B,
round(20 / 28 * L) for a model of L layers); per token img_t = MEAN attention per image token, txt_t = MEAN per text
token; the response is truncated at its first reasoning step; sample ratio = sum_t img_t / sum_t txt_t. "First
reasoning step" is our reading of the code: the response tokens up to and including the token that completes the first
match of ``step_pattern`` (default: a newline, or ``.``/``!``/``?`` followed by whitespace or the end of the response)
that comes after some non-blank text of the decoded response; the whole response if there is none; an empty
``step_pattern`` keeps the whole response. The truncated response is what the forward pass runs over (causal attention:
the counted rows are unchanged).

Buckets, for correctly answered samples only (a wrong response gives ``unsolved``), with ``edges`` = (e1, m1, m2, e2)
= (0.1, 0.4, 1.6, 1.9): ``easy`` if rho-bar < e1 or rho-bar > e2; ``medium`` if e1 <= rho-bar < m1 or
m2 < rho-bar <= e2; ``hard`` if m1 <= rho-bar <= m2.

Writes :data:`~verl_difficulty.schema.CMAB_RATIO` (rho-bar, or the reference-code ratio) and
:data:`~verl_difficulty.schema.CMAB_BUCKET`. Needs the transformers backend (the forward pass; eager attention is
loaded automatically).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from verl_difficulty.config import ConfigError, setting
from verl_difficulty.data.rows import RowFailure
from verl_difficulty.models.forward import HEAD_AGGREGATIONS, key_mass, reads_attention
from verl_difficulty.schema import CMAB_BUCKET, CMAB_RATIO
from verl_difficulty.scoring.registry import register_scorer
from verl_difficulty.scoring.scorer import FORWARD, GENERATE, RolloutParams, Scorer

MODES = ("paper", "reference_code")
QUERIES = ("response", "generating")
TEXT_TOKENS = ("prompt", "no_special")
REF_LAYER, REF_DEPTH = 20, 28
"""The released code reads layer index 20 of Qwen2.5-VL-7B's 28 decoder layers."""
DEFAULT_EDGES = (0.1, 0.4, 1.6, 1.9)
DEFAULT_STEP_PATTERN = r"\n|[.!?](?=\s|$)"
LOG_EPS = 1e-8
TXT_FLOOR = 1e-12


# ----------------------------------------------------------------------------------------------------------------
# The pure parts: layers, ratios, buckets, first reasoning step
# ----------------------------------------------------------------------------------------------------------------
def paper_layers(num_layers: int) -> list[int]:
    """0-based layers of paper mode: 1..L-2 (1-based 2..L-1); all layers when L < 3."""
    inner = list(range(1, num_layers - 1))
    return inner or list(range(num_layers))


def reference_layer(num_layers: int, layer: Optional[int] = None) -> int:
    """0-based layer of reference-code mode: ``layer`` if given, else round(20 / 28 * L) (at most L - 1)."""
    if layer is None:
        return min(num_layers - 1, int(round(REF_LAYER / REF_DEPTH * num_layers)))
    if not 0 <= layer < num_layers:
        raise ValueError(f"cmab.ref_layer {layer} is not a layer of this {num_layers}-layer model")
    return int(layer)


def paper_ratio(img: Any, txt: Any) -> float:
    """rho-bar from ``(layers, tokens)`` sums S_img and S_txt of the counted layers:
    mean_t exp(mean_l log(S_img / S_txt + 1e-8))."""
    img, txt = np.asarray(img, dtype=np.float64), np.asarray(txt, dtype=np.float64)
    rho = img / np.maximum(txt, TXT_FLOOR)
    return float(np.exp(np.log(rho + LOG_EPS).mean(axis=0)).mean())


def reference_ratio(img_mean: Any, txt_mean: Any) -> float:
    """sum_t img_t / sum_t txt_t of the per-token MEAN attentions (NaN when the text side is 0)."""
    den = float(np.sum(txt_mean, dtype=np.float64))
    return float(np.sum(img_mean, dtype=np.float64)) / den if den > 0 else float("nan")


def cmab_bucket(ratio: float, correct: bool, edges: Sequence[float] = DEFAULT_EDGES) -> str:
    """P1 CMAB bucket of a sample ratio (see the module docstring); ``unsolved`` if the response was wrong."""
    if not correct:
        return "unsolved"
    e1, m1, m2, e2 = edges
    if ratio < e1 or ratio > e2:
        return "easy"
    if ratio < m1 or ratio > m2:
        return "medium"
    return "hard"


def first_step_length(token_ids: Sequence[int], decode: Callable[[Sequence[int]], str],
                      pattern: str = DEFAULT_STEP_PATTERN) -> int:
    """Number of response tokens in the first reasoning step (the tokens up to and including the one that completes
    the first match of ``pattern`` after some non-blank text of ``decode(token_ids)``); all of them if none."""
    n = len(token_ids)
    if not pattern or n == 0:
        return n
    text = decode(list(token_ids))
    match = next((m for m in re.finditer(pattern, text) if text[: m.start()].strip()), None)
    if match is None:
        return n
    lo, hi = 1, n  # the shortest prefix whose text reaches the end of the match
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(list(token_ids[:mid]))) >= match.end():
            hi = mid
        else:
            lo = mid + 1
    return lo


# ----------------------------------------------------------------------------------------------------------------
# The hook-based measurement
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CmabParams(RolloutParams):
    """One sampled response per row; temperature 0.7 and 1024 tokens as P1's scoring decoding (CMAB's own decoding is
    not stated: ours), and:"""

    temperature: float = setting(0.7, ge=0.0, source="P1 reference code (scoring decoding)",
                                 help="sampling temperature of the response (0 = greedy)")
    mode: str = setting("paper", choices=MODES, source="P1",
                        help="paper = image/text sums over layers 2..L-1, per-token geometric mean, mean over tokens; "
                        "reference_code = one layer, per-token means, first reasoning step, ratio of sums")
    heads: str = setting("mean", choices=HEAD_AGGREGATIONS, source="P1 reference code (paper: unspecified)",
                         help="how the attention heads of a layer are combined")
    queries: str = setting("response", choices=QUERIES,
                           help="response = rows of the response tokens; generating = the rows that produced them "
                           "(one position earlier)")
    text_tokens: str = setting("prompt", choices=TEXT_TOKENS,
                               help="paper mode text tokens: prompt = every non-image prompt token (system/user "
                               "text, template and special tokens); no_special = minus the tokenizer's special tokens")
    ref_layer: Optional[int] = setting(None, ge=0, source="P1 reference code",
                                       help="reference_code mode: 0-based layer (default round(20/28*L): 20 of 28)")
    step_pattern: str = setting(DEFAULT_STEP_PATTERN,
                                help="reference_code mode: regex ending the first reasoning step (ours; empty = whole "
                                "response)")
    edges: tuple[float, float, float, float] = setting(DEFAULT_EDGES, ge=0.0, source="P1",
                                                       help="e1,m1,m2,e2: easy < e1 or > e2; medium [e1,m1) or "
                                                       "(m2,e2]; hard [m1,m2]")

    def check(self, where: str) -> None:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ConfigError(f"{where}.edges: must be strictly ascending, got {list(self.edges)}")
        try:
            re.compile(self.step_pattern)
        except re.error as e:
            raise ConfigError(f"{where}.step_pattern: not a regular expression: {e}") from e


def _key_sets(batch, p: CmabParams, special_ids: Sequence[int]) -> Any:
    """``(B, T, 2)`` key weights [image, text]: 0/1 in paper mode, 1/count (per-token means) in reference mode."""
    import torch

    image = batch.image_mask
    if p.mode == "paper":
        text = batch.prompt_mask & ~image
        if p.text_tokens == "no_special" and special_ids:
            text &= ~torch.isin(batch.input_ids, torch.tensor(list(special_ids), device=image.device))
        return torch.stack([image, text], dim=-1).float()
    pos = torch.arange(image.shape[1], device=image.device).expand_as(image)
    first = torch.where(image, pos, image.shape[1]).amin(dim=1, keepdim=True)
    keys = torch.stack([image, batch.prompt_mask & (pos < first)], dim=-1).float()
    return keys / keys.sum(dim=1, keepdim=True).clamp(min=1.0)


def _query_mask(batch, queries: str) -> Any:
    if queries == "response":
        return batch.response_mask
    q = batch.response_mask.clone()
    q[:, :-1] = batch.response_mask[:, 1:]
    q[:, -1] = False
    return q


def attention_balance(forward: Any, requests: Sequence, p: CmabParams, special_ids: Sequence[int] = ()) -> list:
    """The CMAB sample ratio of each teacher-forced request: a float, or the exception/:class:`RowFailure` that
    ``forward.forward`` gave for it (``forward``: a :class:`~verl_difficulty.scoring.context.ScoringContext` or a
    :class:`~verl_difficulty.models.forward.HFForward`). Each layer's attention is reduced in its hook to ``(tokens,
    2)`` numbers per row (image, text)."""
    import torch

    cache: dict = {}

    def layers(num_layers: int) -> list[int]:
        return paper_layers(num_layers) if p.mode == "paper" else [reference_layer(num_layers, p.ref_layer)]

    def keys(b) -> Any:
        if cache.get("batch") is not b:
            cache.update(batch=b, keys=_key_sets(b, p, special_ids), queries=_query_mask(b, p.queries))
        return cache["keys"]

    # only the counted query rows of the counted layers; the head mean is linear: the image / text masses are then
    # computed inside the attention function (probabilities @ key sets per head): no probabilities handed over
    @reads_attention(rows=p.queries, layers=layers, keys=keys if p.heads == "mean" else None)
    def on_layer(c) -> list:
        b = c.batch
        if c.layer not in layers(c.num_layers):
            return [None] * b.size
        keys(b)
        if c.key_mass is not None:  # (B, heads, rows from c.query_offset, 2)
            mass = c.key_mass.sum(1, dtype=torch.float32).div_(c.key_mass.shape[1])
        else:
            mass = key_mass(c.attentions, cache["keys"], p.heads)  # (B, rows from c.query_offset, 2)
        q = cache["queries"][:, c.query_offset:]
        return [mass[r][q[r]].double().cpu().numpy() for r in range(b.size)]

    out: list = []
    for values in forward.forward(requests, on_layer, attentions=True):
        if isinstance(values, Exception):
            out.append(values)
            continue
        layers = np.stack([v for v in values if v is not None])  # (counted layers, tokens, 2)
        if p.mode == "paper":
            out.append(paper_ratio(layers[..., 0], layers[..., 1]))
        else:
            out.append(reference_ratio(layers[0, :, 0], layers[0, :, 1]))
    return out


def backend_tokenizer(ctx: Any, scorer: str) -> Any:
    """The tokenizer of the scoring backend (the transformers backend has one)."""
    tok = getattr(ctx.backend, "tokenizer", None)
    if tok is None:
        raise RuntimeError(f"{scorer}: the {getattr(ctx.backend, 'name', '?')} backend has no tokenizer")
    return tok


# ----------------------------------------------------------------------------------------------------------------
# The scorer
# ----------------------------------------------------------------------------------------------------------------
@register_scorer
class CmabScorer(Scorer):
    """P1 CMAB: image/text attention ratio of a sampled response and its bucket (needs an image per row)."""

    name = "cmab"
    version = "1"
    title = "P1 cross-modality attention balance"
    Params = CmabParams
    needs = frozenset({GENERATE, FORWARD})
    needs_attention = True
    requires_image = True

    def fields(self):
        import pyarrow as pa

        return [(CMAB_RATIO, pa.float64()), (CMAB_BUCKET, pa.string())]

    def score(self, rows: Sequence, ctx) -> list:
        out, got = self.sampled_responses(rows, ctx, verify=True)
        p = self.p
        truncate = p.mode == "reference_code" and bool(p.step_pattern)
        special: list[int] = []
        tok = None
        if got and (truncate or (p.mode == "paper" and p.text_tokens == "no_special")):
            tok = backend_tokenizer(ctx, self.name)
            special = list(getattr(tok, "all_special_ids", []))
        keys, requests = [], []
        for i, (gen, _) in got.items():
            ids = list(gen.token_ids)
            if truncate:
                ids = ids[: first_step_length(ids, lambda t: tok.decode(t, skip_special_tokens=True), p.step_pattern)]
            requests.append(ctx.forward_request(rows[i], ids, tag={"scorer": self.name, "row": rows[i].row_id}))
            keys.append(i)
        for i, ratio in zip(keys, attention_balance(ctx, requests, p, special)):
            if isinstance(ratio, Exception):
                out[i] = ratio if isinstance(ratio, RowFailure) else RowFailure(f"{self.name}: {ratio}")
            elif not math.isfinite(ratio):
                out[i] = RowFailure(f"{self.name}: the attention ratio is not finite ({ratio})")
            else:
                out[i] = {CMAB_RATIO: ratio, CMAB_BUCKET: cmab_bucket(ratio, got[i][1], p.edges)}
        return out

    def summarize(self, table) -> dict:
        ratio = np.asarray(table.column(CMAB_RATIO).to_pylist(), dtype=float)
        buckets = Counter(table.column(CMAB_BUCKET).to_pylist())
        return {"buckets": dict(sorted(buckets.items())), "mean_ratio": float(ratio.mean()),
                "median_ratio": float(np.median(ratio))}
