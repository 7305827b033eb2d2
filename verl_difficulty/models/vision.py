"""Vision-tower features of images, computed without running the language model (P3 Durian's visual entropy).

:class:`HFVision` runs ONLY the vision tower of a Qwen2-VL / Qwen2.5-VL style model (``model.model.visual``, or
``model.visual``): one call per batch on the concatenated patches of all the batch's images (each image with its own
``image_grid_thw`` row, so images of different sizes mix freely), then splits the output per image by its grid.
Which features (``which``):

* ``merged`` (default): the post-merger visual tokens the language model sees, ``(t*h*w / merge**2, d_text)`` per
  image (``t, h, w`` = the image's ``image_grid_thw``; ``merge`` = ``spatial_merge_size``). These are the rows the
  model writes into the input embeddings at the image placeholder positions, in placeholder order (the tests compare
  them with the embeddings that :class:`~verl_difficulty.models.forward.HFForward` shows at layer -1).
* ``vit``: the pre-merger ViT states, i.e. the output of the last vision block (read with a forward pre-hook on the
  patch merger, whose input it is), ``(t*h*w, d_vision)`` per image.

Split order (Qwen2.5-VL, checked by the tests against transformers' own code): the image processor flattens each
image into ``t*h*w`` patches and concatenates the images in order; the tower permutes the patches into window
order for its windowed-attention blocks with a window index built image after image (each image's indices offset by
the patches of the images before it), so every image's patches stay in ONE contiguous block at the same offset;
full-attention blocks attend within each image only (``cu_seqlens``); after the merger the tower applies the inverse
permutation. Hence the ``merged`` rows are image after image, in each image's original (placeholder) order, and the
``vit`` rows are image after image, each image's block holding a permutation of its own patches (the window order;
row order does not matter for statistics over the rows such as the visual entropy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from verl_difficulty.models.generation import HFModel

FEATURES = ("merged", "vit")
"""``merged``: post-merger visual tokens (what the language model sees); ``vit``: pre-merger ViT states."""


@dataclass
class VisionRequest:
    """The images of one row (at least one), as the processor receives them."""

    images: list[Any]
    tag: dict = field(default_factory=dict)


def vision_tower(model) -> torch.nn.Module:
    """The vision tower (``visual``) of a transformers image-text-to-text model (Qwen2-VL / Qwen2.5-VL layout)."""
    visual = getattr(getattr(model, "model", None), "visual", None)
    visual = visual if visual is not None else getattr(model, "visual", None)
    if not isinstance(visual, torch.nn.Module):
        raise ValueError(f"cannot find the vision tower ('visual') of {type(model).__name__}")
    return visual


class HFVision(HFModel):
    """Batched vision-tower features (arguments: :class:`~.generation.HFModel`; its processor's ``image_processor``
    prepares the images exactly as for generation and forward passes)."""

    @torch.no_grad()
    def features(self, requests: Sequence[VisionRequest], which: str = "merged",
                 reduce: Optional[Callable[[list[torch.Tensor]], Any]] = None) -> list[Any]:
        """Per request, the list of its images' feature matrices (float32, on the model's device; see the module
        docstring for ``which``), or ``reduce(that list)`` when ``reduce`` is given (so a batch's features can be
        dropped as soon as they are reduced)."""
        if which not in FEATURES:
            raise ValueError(f"vision features must be one of {FEATURES}, got {which!r}")
        if not requests:
            return []
        counts = [len(r.images or []) for r in requests]
        if min(counts) == 0:
            raise ValueError("a vision request needs at least one image")
        if self.image_processor is None:
            raise ValueError("the model has no processor with an image_processor")
        visual = vision_tower(self.model)
        inputs = self.image_processor(images=[im for r in requests for im in r.images], return_tensors="pt")
        grid = inputs["image_grid_thw"].to(self.device)
        pixels = inputs["pixel_values"].to(self.device, dtype=next(visual.parameters()).dtype)
        captured: list[torch.Tensor] = []
        handle = None
        if which == "vit":
            merger = getattr(visual, "merger", None)
            if merger is None:
                raise ValueError(f"{type(visual).__name__} has no patch merger: pre-merger states are not defined")
            handle = merger.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            out = visual(pixels, grid_thw=grid)
        finally:
            if handle is not None:
                handle.remove()
        patches = grid.prod(-1)
        if which == "vit":
            feats, sizes = captured[-1], patches
        else:
            feats, sizes = getattr(out, "pooler_output", out), patches // self.merge_size**2
        sizes = [int(s) for s in sizes.tolist()]
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != sum(sizes):
            raise ValueError(f"unexpected {which} vision features {getattr(feats, 'shape', type(feats))} for "
                             f"image_grid_thw={grid.tolist()}")
        per_image = list(torch.split(feats.float(), sizes))
        res: list[Any] = []
        k = 0
        for n in counts:
            mine = per_image[k : k + n]
            k += n
            res.append(reduce(mine) if reduce is not None else mine)
        return res
