"""Teacher-forced forward passes over prompt + a given response, with a callback per decoder layer.

The forward-pass scorers (attention-based CMAB / ACE, vision-feature entropy) need what a transformers model computes
inside its decoder layers for a known sequence: the prompt (with its images, Qwen2.5-VL style) followed by a response
sampled earlier. :class:`HFForward` runs that pass batched (left padding, as :class:`~.generation.HFGenerator`) and
calls ``on_layer(capture)`` once per decoder layer, with

* ``capture.attentions``: that layer's attention weights (softmax probabilities; padded keys get weight 0), by
  default all of them, ``(B, heads, T, T)``. Attention weights exist only with ``attn_implementation="eager"`` or
  :data:`ROW_ATTENTION` (SDPA / flash attention never materialise them); otherwise the pass raises a ValueError saying
  so. A callback that reads only some query rows or some layers declares it with :func:`reads_attention`; the pass
  then runs :data:`ROW_ATTENTION` (an eager model is switched to it for the pass): the layers not declared run torch
  SDPA; a declared layer computes the probabilities of the declared query rows,
  ``softmax(q_rows k^T * scale + mask_rows)`` exactly as eager attention does (GQA keys repeated, the same causal /
  padding mask), and takes those rows' output from them (SDPA for the rows before), so every score is computed once.
  With key weights declared no probability is materialised at all: SDPA attends to the weights as if they were
  values (see :func:`row_attention_forward`). ``capture.attentions`` is then the block ``(B, heads, T - q0, T)`` of
  the query positions ``q0 .. T - 1``, ``q0 = capture.query_offset`` (responses end every row of a left-padded batch,
  so the response rows are the last ones), and None in the layers not declared;
* ``capture.hidden_states``: that layer's output hidden states ``(B, T, D)``; with ``hidden_states=True`` the callback
  is also called first with ``layer == -1`` and the decoder's input embeddings, where the image-token positions hold
  the vision tower's merged features.

The weights are read by forward hooks on the attention modules while the model runs, so if ``on_layer`` reduces them
(and keeps no reference), at most one layer's attention tensor (with :func:`reads_attention`: one layer's block of
the declared rows) exists at a time, unlike ``output_attentions=True``, which keeps all of them. The pass runs the
base model (no LM head: no ``(B, T, vocab)`` logits), and a pass that reads attention only (no hidden states) stops
after the last declared layer: the callback gets ``attentions=None`` for the layers after it, as for any undeclared
layer, without them being run (e.g. CMAB's reference layer 20 of 28 skips 8 layers).

``on_layer`` returns one value per row of the batch (e.g. a float); :meth:`HFForward.forward` returns, per request, the
list of its values over the layers in call order. :class:`ForwardBatch` (``capture.batch``) says where each row's
prompt, response and image tokens are in the padded batch; ``capture.num_layers`` is the decoder depth L (a callback
that reads only some layers returns cheap placeholders, e.g. None, for the others).

Reductions for callbacks that read attention (:func:`aggregate_heads`, :func:`key_mass`) work on the whole batch at
once, so a hook costs a few batched tensor operations and keeps only ``(B, T, masks)`` numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from verl_difficulty.models.generation import HFModel


@dataclass
class ForwardRequest:
    """One teacher-forced sequence: prompt token ids (image placeholders expanded, as built by the backend's
    processor), the response token ids that follow it, and the prompt's images."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    images: Optional[list[Any]] = None
    tag: dict = field(default_factory=dict)


@dataclass
class ForwardBatch:
    """Where the tokens of each row are in a left-padded batch of ``T`` positions (all masks ``(B, T)`` bool)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    response_mask: torch.Tensor
    image_mask: torch.Tensor
    """Image placeholder tokens of the prompt (their hidden states hold the image features)."""
    requests: list[ForwardRequest]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class LayerCapture:
    """What one decoder layer computed for a batch (see the module docstring)."""

    layer: int
    batch: ForwardBatch
    attentions: Optional[torch.Tensor] = None
    hidden_states: Optional[torch.Tensor] = None
    num_layers: int = 0
    """The number of decoder layers L of the model (``layer`` runs 0..L-1)."""
    query_offset: int = 0
    """The query position of the first row of ``attentions`` / ``key_mass`` (0 unless the callback declared fewer
    rows)."""
    key_mass: Optional[torch.Tensor] = None
    """With key weights declared (:func:`reads_attention` ``keys``): ``(B, heads, T - query_offset, M)`` float32, the
    attention probabilities of the declared rows times the key weights (``attentions @ keys`` per head), computed
    inside the attention function (the probabilities never leave it); ``attentions`` is then None."""


OnLayer = Callable[[LayerCapture], Sequence[Any]]

ATTENTION_ROWS = ("all", "response", "generating")
"""Query rows a callback can declare (:func:`reads_attention`): every position; the response positions (the rows
from the first response position of the batch on); the same plus one position earlier (the row that generated each
response token)."""

ROW_ATTENTION = "sdpa_rows"
"""The attention implementation (registered with transformers' ``AttentionInterface``) that computes the layer output
with torch SDPA and, for the layers a callback reads, the probabilities of the declared query rows only."""

_ROWS_ATTR = "_vd_attention_rows"
"""Attribute set on an attention module for one pass: the first query position whose probabilities it returns."""


def reads_attention(rows: str = "all", layers: Union[None, Iterable[int], Callable[[int], Iterable[int]]] = None,
                    keys: Optional[Callable[["ForwardBatch"], torch.Tensor]] = None):
    """Declare what an ``on_layer`` callback reads of the attention weights (a decorator; returns the callback).

    ``rows``: one of :data:`ATTENTION_ROWS`; ``layers``: the layer indices read (negative: from the end), or a function
    of the depth L giving them; None = every layer. Undeclared layers pass ``capture.attentions = None`` and compute no
    attention probabilities. ``keys``: a function of the batch giving ``(B, T, M)`` key weights: the callback then
    gets only ``capture.key_mass`` (the probabilities times these weights, per head) instead of the probabilities.
    The declaration travels with the callback through any scoring backend."""
    if rows not in ATTENTION_ROWS:
        raise ValueError(f"attention rows must be one of {ATTENTION_ROWS}, got {rows!r}")

    def wrap(fn):
        fn.attention_rows, fn.attention_layers, fn.attention_keys = rows, layers, keys
        return fn

    return wrap


def _declared_layers(layers, num_layers: int) -> set[int]:
    if layers is None:
        return set(range(num_layers))
    got = layers(num_layers) if callable(layers) else layers
    return {int(i) % num_layers for i in got if -num_layers <= int(i) < num_layers}


def row_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                          scaling: Optional[float] = None, **kwargs):
    """The :data:`ROW_ATTENTION` function.

    A module not marked for this pass: ``transformers``' SDPA attention, unchanged (output, None). A module marked
    with query rows ``q0..Q-1``: the probabilities of those rows are computed as eager attention does (keys repeated
    for GQA, ``q k^T * scale + mask``, float32 softmax, cast to the query dtype) and give those rows' output
    (``probs @ v``, as eager); the rows before ``q0`` attend only to keys before ``q0`` (causal), so their output is
    SDPA over that ``q0 x q0`` block. Every attention score is computed once. Returns (output, probabilities), or
    (output, probabilities @ key weights) when the plan carries key weights."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    plan = getattr(module, _ROWS_ATTR, None)
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q0, weights_of_keys = plan
    q0 = max(0, min(int(q0), query.shape[2]))
    if weights_of_keys is not None:
        return _key_mass_attention(module, query, key, value, attention_mask, q0, weights_of_keys, dropout, scaling,
                                   **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    keys, values = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    weights = torch.matmul(query[:, :, q0:], keys.transpose(2, 3)).mul_(scale)  # eager's operations, in place
    if attention_mask is not None:
        weights.add_(attention_mask[:, :, q0:, : keys.shape[-2]])
    probs = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    del weights
    rows_out = torch.matmul(probs, values).transpose(1, 2)  # (B, Q - q0, heads, d), eager's layout
    if q0:
        mask = None if attention_mask is None else attention_mask[:, :, :q0, :q0]
        head, _ = sdpa_attention_forward(module, query[:, :, :q0], key[:, :, :q0], value[:, :, :q0], mask,
                                         dropout=dropout, scaling=scaling, **kwargs)
        out = torch.cat([head, rows_out], dim=1)
    else:
        out = rows_out.contiguous()
    return out, probs


def _key_mass_attention(module, query, key, value, attention_mask, q0, weights_of_keys, dropout, scaling, **kwargs):
    """Output and per-head key mass ``softmax(q k^T * scale + mask) @ W`` of the rows ``q0..`` without materialising
    a probability: the key weights ``W`` (B, T, M) are attended to like values. In float32, one fused SDPA gives both
    (values ``[v, W, 0]``, queries and keys zero-padded to the same width: torch's fused CPU kernel needs value width
    == head width). Otherwise the layer's output is SDPA's (unchanged) and a second SDPA in float32 over the rows
    ``q0..`` gives the mass (W in chunks of the head width), so a bf16 model's mass keeps float32 precision.
    Returns (output, (B, heads, Q - q0, M) float32)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    batch, heads, _, head_dim = query.shape
    n_keys, n_sets = key.shape[2], weights_of_keys.shape[-1]
    scale = scaling if scaling is not None else head_dim ** -0.5
    groups = getattr(module, "num_key_value_groups", 1)
    mask = None if attention_mask is None else attention_mask[:, :, :, :n_keys]
    if query.dtype == torch.float32 and dropout == 0.0 and n_sets <= head_dim:
        # one fused pass: queries and keys padded with zeros (scores unchanged), values = [v, W, 0]
        zeros = query.new_zeros(batch, heads, max(query.shape[2], n_keys), head_dim)
        q = torch.cat([query, zeros[:, :, : query.shape[2]]], dim=-1)
        k = torch.cat([repeat_kv(key, groups), zeros[:, :, :n_keys]], dim=-1)
        w = weights_of_keys.to(device=query.device, dtype=torch.float32)[:, None, :n_keys].expand(-1, heads, -1, -1)
        v = torch.cat([repeat_kv(value, groups), w, zeros[:, :, :n_keys, n_sets:]], dim=-1)
        both = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return (both[..., :head_dim].transpose(1, 2).contiguous(),
                both[:, :, q0:, head_dim : head_dim + n_sets])
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
    width = -(-n_sets // head_dim) * head_dim
    w = torch.zeros(batch, 1, n_keys, width, device=query.device, dtype=torch.float32)
    w[..., :n_sets] = weights_of_keys.to(device=query.device, dtype=torch.float32)[:, None, :n_keys]
    keys = repeat_kv(key, groups).float()
    q = query[:, :, q0:].float()
    mask = None if mask is None else mask[:, :, q0:].float()
    pieces = [torch.nn.functional.scaled_dot_product_attention(
        q, keys, w[..., c : c + head_dim].expand(batch, heads, n_keys, head_dim), attn_mask=mask, scale=scale)
        for c in range(0, width, head_dim)]
    mass = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
    return out, mass[..., :n_sets]


def register_row_attention() -> None:
    """Register :data:`ROW_ATTENTION` (attention function and its mask: eager's additive float mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ROW_ATTENTION, row_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ROW_ATTENTION, eager_mask)


register_row_attention()


@contextmanager
def _attention_implementation(model, layers: torch.nn.ModuleList, name: str):
    """Switch the attention implementation of the decoder (its text config) and of the vision tower, if any, to
    ``name`` for one pass (the vision tower's attention is never read: SDPA there)."""
    base = getattr(model, "model", model)
    vision = getattr(getattr(base, "visual", None), "config", None)
    found = [layer.self_attn.config for layer in layers] + ([vision] if vision is not None else [])
    configs = list({id(c): c for c in found}.values())
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = name
        yield
    finally:
        for c, b in zip(configs, before):
            c._attn_implementation = b


HEAD_AGGREGATIONS = ("mean", "max")
"""How :func:`aggregate_heads` combines the attention heads of a layer."""


def aggregate_heads(attn: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """``(B, H, Q, K)`` attention weights -> ``(B, Q, K)`` float32: the mean or the max over the heads.

    The mean is accumulated in float32 without a float32 copy of all heads (bf16/fp16 weights stay as they are)."""
    if how == "mean":
        return attn.sum(1, dtype=torch.float32).div_(attn.shape[1])
    if how == "max":
        return attn.amax(1).float()
    raise ValueError(f"head aggregation must be one of {HEAD_AGGREGATIONS}, got {how!r}")


def key_mass(attn: torch.Tensor, keys: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Attention mass per query on sets of key positions, for the whole batch at once.

    ``attn``: ``(B, H, Q, K)`` weights; ``keys``: ``(B, K, M)`` (M key sets, bool or weights). Returns ``(B, Q, M)``
    float32: ``out[b, q, m] = sum_k agg_h(attn)[b, q, k] * keys[b, k, m]`` with ``agg_h`` = :func:`aggregate_heads`.
    """
    return torch.bmm(aggregate_heads(attn, how), keys.to(device=attn.device, dtype=torch.float32))


class _LayersDone(Exception):
    """Raised by the attention hook of the last layer a pass reads, to stop the decoder there."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a transformers causal LM or image-text-to-text model (Qwen2 / Qwen2.5-VL layout)."""
    base = getattr(model, "model", model)
    for owner in (getattr(base, "language_model", None), base):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


class HFForward(HFModel):
    """Batched teacher-forced forward passes with per-layer callbacks (arguments: :class:`~.generation.HFModel`)."""

    def _batch(self, requests: Sequence[ForwardRequest]) -> tuple[ForwardBatch, dict]:
        seqs = [list(r.prompt_ids) + list(r.response_ids) for r in requests]
        inputs = self._batch_inputs(seqs, requests)
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        width = ids.shape[1]
        pos = torch.arange(width, device=ids.device)
        start = torch.tensor([width - len(s) for s in seqs], device=ids.device)[:, None]
        split = start + torch.tensor([len(r.prompt_ids) for r in requests], device=ids.device)[:, None]
        prompt = (pos >= start) & (pos < split)
        image = prompt & (ids == self.image_token_id) if self.image_token_id is not None else torch.zeros_like(mask)
        batch = ForwardBatch(input_ids=ids, attention_mask=mask, prompt_mask=prompt, response_mask=pos >= split,
                             image_mask=image, requests=list(requests))
        return batch, inputs

    @torch.no_grad()
    def forward(self, requests: Sequence[ForwardRequest], on_layer: OnLayer, attentions: bool = False,
                hidden_states: bool = False) -> list[list[Any]]:
        """Run one batch; returns per request the values ``on_layer`` gave for its row, layer after layer.

        The attention rows and layers read are those ``on_layer`` declares (:func:`reads_attention`; default: all)."""
        if not requests:
            return []
        if not (attentions or hidden_states):
            raise ValueError("forward: ask for attentions and/or hidden_states")
        batch, inputs = self._batch(requests)
        values: list[list[Any]] = [[] for _ in requests]
        pending: dict[int, torch.Tensor] = {}

        layers = decoder_layers(self.model)
        rows = getattr(on_layer, "attention_rows", "all") if attentions else "all"
        read = _declared_layers(getattr(on_layer, "attention_layers", None), len(layers)) if attentions else set()
        key_fn = getattr(on_layer, "attention_keys", None) if attentions else None
        impl = getattr(layers[0].self_attn.config, "_attn_implementation", None) if len(layers) else None
        use_rows = attentions and (impl == ROW_ATTENTION or (impl == "eager" and (
            rows != "all" or len(read) < len(layers) or key_fn is not None)))
        key_weights = key_fn(batch) if use_rows and key_fn is not None else None
        width = batch.input_ids.shape[1]
        if rows == "all":
            offset = 0
        else:
            first = torch.where(batch.response_mask.any(1), batch.response_mask.float().argmax(1), width)
            offset = int(first.min()) if batch.size else width
            offset = max(0, offset - (rows == "generating"))

        def emit(layer: int, attn: Optional[torch.Tensor], hidden: Optional[torch.Tensor]) -> None:
            capture = LayerCapture(layer, batch, attn, hidden, num_layers=len(layers), query_offset=offset)
            if key_weights is not None:
                capture.attentions, capture.key_mass = None, attn
            got = list(on_layer(capture))
            if len(got) != batch.size:
                raise ValueError(f"on_layer returned {len(got)} values for a batch of {batch.size} rows")
            for row, v in zip(values, got):
                row.append(v)

        def attn_hook(index: int):
            def hook(module, args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if index not in read:
                    weights = None
                elif weights is None:
                    raise ValueError("attention weights are not computed by this attention implementation: load the "
                                     f"model with attn_implementation='eager' (or {ROW_ATTENTION!r}) to read "
                                     "attention")
                elif key_fn is not None and key_weights is None:
                    raise ValueError(f"key weights need the {ROW_ATTENTION!r} (or eager) attention implementation")
                elif offset and weights.shape[-2] == width:  # eager weights of all rows: the declared block
                    weights = weights[:, :, offset:]
                if hidden_states:
                    pending[index] = weights  # handed over with the layer's output right after
                else:
                    emit(index, weights, None)
                    if index == last_read:
                        raise _LayersDone  # no later layer is read: the rest of the decoder is not run
            return hook

        def layer_hook(index: int):
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                emit(index, pending.pop(index, None), hidden)
            return hook

        def embeddings_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            emit(-1, None, hidden)

        # attention-only callbacks get no value from the layers after the last declared one (placeholders below)
        last_read = max(read) if attentions and not hidden_states and read else None
        handles, marked = [], []
        try:
            if hidden_states:
                handles.append(layers[0].register_forward_pre_hook(embeddings_hook, with_kwargs=True))
            for i, layer in enumerate(layers):
                if attentions:
                    handles.append(layer.self_attn.register_forward_hook(attn_hook(i)))
                    if use_rows and i in read:
                        setattr(layer.self_attn, _ROWS_ATTR, (offset, key_weights))
                        marked.append(layer.self_attn)
                if hidden_states:
                    handles.append(layer.register_forward_hook(layer_hook(i)))
            base = getattr(self.model, "model", self.model)
            try:
                if use_rows:
                    with _attention_implementation(self.model, layers, ROW_ATTENTION):
                        base(**inputs, use_cache=False)
                else:
                    base(**inputs, use_cache=False)
            except _LayersDone:
                for index in range(last_read + 1, len(layers)):
                    emit(index, None, None)
        finally:
            for h in handles:
                h.remove()
            for m in marked:
                delattr(m, _ROWS_ATTR)
        return values
