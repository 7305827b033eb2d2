"""Teacher-forced forward passes over prompt + a given response, with a callback per decoder layer.

The forward-pass scorers (attention-based CMAB / ACE, vision-feature entropy) need what a transformers model computes
inside its decoder layers for a known sequence: the prompt (with its images, Qwen2.5-VL style) followed by a response
sampled earlier. :class:`HFForward` runs that pass batched (left padding, as :class:`~.generation.HFGenerator`) and
calls ``on_layer(capture)`` once per decoder layer, with

* ``capture.attentions``: that layer's attention weights ``(B, heads, T, T)`` (softmax probabilities; padded keys get
  weight 0). Attention weights exist only with ``attn_implementation="eager"`` (SDPA / flash attention never
  materialise them): load the model that way only when a scorer reads attention (``load_generation_model(...,
  attn_implementation="eager")``); otherwise the pass raises a ValueError saying so;
* ``capture.hidden_states``: that layer's output hidden states ``(B, T, D)``; with ``hidden_states=True`` the callback
  is also called first with ``layer == -1`` and the decoder's input embeddings, where the image-token positions hold
  the vision tower's merged features.

The weights are read by forward hooks on the attention modules while the model runs, so if ``on_layer`` reduces them
(and keeps no reference), at most one layer's attention tensor exists at a time, unlike ``output_attentions=True``,
which keeps all of them. The pass runs the base model (no LM head: no ``(B, T, vocab)`` logits).

``on_layer`` returns one value per row of the batch (e.g. a float); :meth:`HFForward.forward` returns, per request, the
list of its values over the layers in call order. :class:`ForwardBatch` (``capture.batch``) says where each row's
prompt, response and image tokens are in the padded batch; ``capture.num_layers`` is the decoder depth L (a callback
that reads only some layers returns cheap placeholders, e.g. None, for the others).

Reductions for callbacks that read attention (:func:`aggregate_heads`, :func:`key_mass`) work on the whole batch at
once, so a hook costs a few batched tensor operations and keeps only ``(B, T, masks)`` numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

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


OnLayer = Callable[[LayerCapture], Sequence[Any]]

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
        """Run one batch; returns per request the values ``on_layer`` gave for its row, layer after layer."""
        if not requests:
            return []
        if not (attentions or hidden_states):
            raise ValueError("forward: ask for attentions and/or hidden_states")
        batch, inputs = self._batch(requests)
        values: list[list[Any]] = [[] for _ in requests]
        pending: dict[int, torch.Tensor] = {}

        layers = decoder_layers(self.model)

        def emit(layer: int, attn: Optional[torch.Tensor], hidden: Optional[torch.Tensor]) -> None:
            got = list(on_layer(LayerCapture(layer, batch, attn, hidden, num_layers=len(layers))))
            if len(got) != batch.size:
                raise ValueError(f"on_layer returned {len(got)} values for a batch of {batch.size} rows")
            for row, v in zip(values, got):
                row.append(v)

        def attn_hook(index: int):
            def hook(module, args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise ValueError("attention weights are not computed by this attention implementation: load the "
                                     "model with attn_implementation='eager' to read attention")
                if hidden_states:
                    pending[index] = weights  # handed over with the layer's output right after
                else:
                    emit(index, weights, None)
            return hook

        def layer_hook(index: int):
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                emit(index, pending.pop(index, None), hidden)
            return hook

        def embeddings_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            emit(-1, None, hidden)

        handles = []
        try:
            if hidden_states:
                handles.append(layers[0].register_forward_pre_hook(embeddings_hook, with_kwargs=True))
            for i, layer in enumerate(layers):
                if attentions:
                    handles.append(layer.self_attn.register_forward_hook(attn_hook(i)))
                if hidden_states:
                    handles.append(layer.register_forward_hook(layer_hook(i)))
            base = getattr(self.model, "model", self.model)
            base(**inputs, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return values
