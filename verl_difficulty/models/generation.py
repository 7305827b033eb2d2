"""Batched token-in/token-out generation with a transformers model, text and images (Qwen2.5-VL style).

Shared by the CPU rollout replica (``verl_difficulty.cpu.rollout``) and the offline scorers' transformers backend
(:mod:`verl_difficulty.scoring.backends`), which also use the request/result types defined here (the only copy:
:class:`Prompt`, :class:`GenRequest`, :class:`SamplingConfig`, :class:`GenResult`). :class:`HFModel` (padding, vision
inputs) is shared with the teacher-forced forward passes of :mod:`verl_difficulty.models.forward`.
Log-probabilities are computed from the RAW logits, ``log_softmax(logits / T)`` (what verl's actor recomputes), not
from the processed scores (top-k/top-p/suppression), so rollout and actor log-probs agree.

Per-request seeds (``GenRequest.seed``, used by the offline scorers): when every request of a sampled batch carries a
seed, each row draws its tokens from its own ``torch.Generator`` seeded with it (:class:`PerRowSampler`), so a row's
sample depends on its seed and its own logits only, not on which other rows share the batch or in which order.
Without request seeds the batch samples from torch's global RNG (optionally seeded once by ``SamplingConfig.seed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

# Qwen-VL vision placeholder tokens: never sampled (vLLM bans them too).
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


@dataclass
class Prompt:
    """A chat prompt prepared by a backend: the chat-template text (image placeholders not expanded) and, for backends
    that feed token ids, the ids with the image placeholders expanded for the row's image sizes."""

    text: str
    prompt_ids: Optional[list[int]] = None
    num_images: int = 0

    def request(self, images: Optional[list[Any]], seed: Optional[int], tag: Optional[dict] = None) -> "GenRequest":
        """A :class:`GenRequest` of this prompt with ``images`` (None for a text-only prompt) and a sampling seed."""
        return GenRequest(prompt_ids=self.prompt_ids, images=list(images) if images else None, seed=seed,
                          text=self.text, tag=dict(tag or {}))


@dataclass
class GenRequest:
    """One generation request: prompt token ids (image placeholders already expanded) and its images.

    ``text`` is the chat-template text for backends that take text (vLLM, the scripted test backend); ``tag`` says
    what the request is (scorer, row id, arm/ratio, try) for logs and scripted backends: a real backend must not let
    it influence generation.
    """

    prompt_ids: Optional[list[int]] = None
    images: Optional[list[Any]] = None
    seed: Optional[int] = None
    """Per-request sampling seed (0 <= seed < 2**63); either every request of a batch has one or none has."""
    text: Optional[str] = None
    tag: dict = field(default_factory=dict)


@dataclass
class SamplingConfig:
    """Sampling parameters (vLLM-style values are accepted: ``top_k=-1`` means no top-k; ``temperature <= 0`` is
    greedy)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 64
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    seed: Optional[int] = None
    """One global torch seed for a batch without per-request seeds."""

    def key(self) -> tuple:
        return (self.temperature, self.top_p, self.top_k, self.max_new_tokens, self.repetition_penalty, self.ignore_eos)


@dataclass
class GenResult:
    """One generation: new token ids (eos included when hit), their log-probs (backends that compute them), why it
    stopped, and the decoded text (backends that decode)."""

    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    text: str = ""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def load_generation_model(path: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """Load a causal LM or an image-text-to-text model (when the config has a vision part) in eval mode."""
    import transformers

    from verl_difficulty.models.forward import ROW_ATTENTION, register_row_attention

    if attn_implementation == ROW_ATTENTION:
        register_row_attention()
    config = transformers.AutoConfig.from_pretrained(path)
    has_vision = getattr(config, "vision_config", None) is not None
    auto = transformers.AutoModelForImageTextToText if has_vision else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    model.eval()
    return model


class PerRowSampler:
    """Logits processor that samples each row with its own seeded ``torch.Generator`` (temperature, top-k, top-p).

    Runs inside transformers' greedy loop (``do_sample=False``): it applies the warpers itself, draws one token per
    row with ``torch.multinomial(..., generator=row_generator)`` and returns scores that are ``-inf`` everywhere but
    at the drawn token, which the greedy ``argmax`` then picks. Rows never share random state.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_k: Optional[int], top_p: float):
        self.seeds = [int(s) for s in seeds]
        self.temperature = float(temperature)
        self.top_k = int(top_k) if top_k else 0
        self.top_p = float(top_p)
        self._generators: Optional[list[torch.Generator]] = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logits = scores.float() / self.temperature
        if self.top_k > 0:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - self.top_p)
            remove[..., -1:] = False
            logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        chosen = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self._generators)]
        )  # (B, 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


class HFModel:
    """A loaded transformers model with its tokenizer and processor, and what every batched call on it shares: left
    padding, the vision inputs of the requests' images and the multimodal token types.

    Args:
        model: a loaded transformers model (``load_generation_model``).
        tokenizer: its tokenizer (pad / eos ids).
        processor: the multimodal processor (``None`` for text-only models); its ``image_processor`` turns images into
            ``pixel_values`` / ``image_grid_thw``.
    """

    def __init__(self, model, tokenizer, processor=None):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.image_processor = getattr(processor, "image_processor", None)
        cfg = model.config
        self.image_token_id = getattr(cfg, "image_token_id", None)
        self.video_token_id = getattr(cfg, "video_token_id", None)
        vision_cfg = getattr(cfg, "vision_config", None)
        self.merge_size = getattr(vision_cfg, "spatial_merge_size", 2) if vision_cfg is not None else 1
        eos = []
        for src in (getattr(model, "generation_config", None), tokenizer):
            e = getattr(src, "eos_token_id", None)
            if e is None:
                continue
            eos.extend(e if isinstance(e, (list, tuple)) else [e])
        self.eos_ids = sorted(set(int(e) for e in eos))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _vision_inputs(self, requests: Sequence[Any]) -> dict[str, torch.Tensor]:
        """``pixel_values`` / ``image_grid_thw`` of the requests' images (in request order); each request's image
        placeholder count is checked against its images (``requests``: anything with ``prompt_ids`` and ``images``)."""
        images = [img for r in requests for img in (r.images or [])]
        if not images:
            return {}
        if self.image_processor is None:
            raise ValueError("requests carry images but the model has no processor with an image_processor")
        out = self.image_processor(images=images, return_tensors="pt")
        grid = out["image_grid_thw"]
        tokens_per_image = (grid.prod(-1) // (self.merge_size**2)).tolist()
        k = 0
        for i, r in enumerate(requests):
            n_img = len(r.images or [])
            expected = int(sum(tokens_per_image[k : k + n_img]))
            k += n_img
            got = sum(1 for t in r.prompt_ids if t == self.image_token_id)
            if got != expected:
                raise ValueError(
                    f"request {i}: {got} image placeholder tokens in the prompt but its {n_img} image(s) need "
                    f"{expected} (image_grid_thw={grid.tolist()}, merge={self.merge_size}); the prompt must be "
                    "built by the same processor with the same min/max pixels"
                )
        return {"pixel_values": out["pixel_values"].to(self.model.dtype), "image_grid_thw": grid}

    def _batch_inputs(self, sequences: Sequence[Sequence[int]], requests: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` / ``attention_mask`` of token sequences, plus the vision inputs and
        ``mm_token_type_ids`` when the requests carry images (all on the model's device)."""
        lengths = [len(ids) for ids in sequences]
        width = max(lengths)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, width - lengths[i] :] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[i, width - lengths[i] :] = 1
        inputs: dict[str, Any] = self._vision_inputs(requests)
        if inputs:
            mm = torch.zeros_like(input_ids)
            mm[input_ids == self.image_token_id] = 1
            if self.video_token_id is not None:
                mm[input_ids == self.video_token_id] = 2
            mm[attention_mask == 0] = 0
            inputs["mm_token_type_ids"] = mm
        inputs.update(input_ids=input_ids, attention_mask=attention_mask)
        device = self.device
        return {k: v.to(device) for k, v in inputs.items()}


class HFGenerator(HFModel):
    """Batched generation over a transformers model with left padding (arguments: :class:`HFModel`)."""

    def __init__(self, model, tokenizer, processor=None):
        super().__init__(model, tokenizer, processor)
        vocab = tokenizer.get_vocab()
        self.suppress_ids = sorted({vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab})

    @torch.no_grad()
    def generate(self, requests: Sequence[GenRequest], sampling: SamplingConfig) -> list[GenResult]:
        """Generate for a batch of requests sharing one sampling config.

        Returns one ``GenResult`` per request: new token ids (eos included when hit), their log-probs under
        ``log_softmax(raw_logits / T)`` (T = 1 for greedy), and ``finish_reason`` ``stop`` or ``length``.
        """
        if not requests:
            return []
        kwargs = self._batch_inputs([r.prompt_ids for r in requests], requests)
        input_ids = kwargs.pop("input_ids")
        attention_mask = kwargs.pop("attention_mask")
        width = input_ids.shape[1]
        greedy = sampling.temperature is None or sampling.temperature <= 0
        temperature = 1.0 if greedy else float(sampling.temperature)
        top_k = sampling.top_k if sampling.top_k and sampling.top_k > 0 else None
        gen_kwargs = dict(
            do_sample=not greedy,
            max_new_tokens=int(sampling.max_new_tokens),
            pad_token_id=self.pad_id,
            eos_token_id=None if sampling.ignore_eos else (self.eos_ids or None),
            suppress_tokens=self.suppress_ids or None,
            output_logits=True,
            return_dict_in_generate=True,
            repetition_penalty=sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None,
        )
        seeds = [r.seed for r in requests]
        per_row = not greedy and any(s is not None for s in seeds)
        if per_row and any(s is None for s in seeds):
            raise ValueError("either every request of a batch carries a seed or none does")
        if per_row:
            from transformers import LogitsProcessorList

            sampler = PerRowSampler(seeds, temperature, top_k, float(sampling.top_p))
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                              logits_processor=LogitsProcessorList([sampler]))
        elif not greedy:
            gen_kwargs.update(temperature=temperature, top_p=float(sampling.top_p), top_k=top_k or 0)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if sampling.seed is not None and not per_row:
            torch.manual_seed(int(sampling.seed))
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs, **gen_kwargs)
        new_tokens = out.sequences[:, width:].cpu()
        if out.logits:
            logits = torch.stack(out.logits, dim=1).float().cpu()  # (B, new, V)
            logp = torch.log_softmax(logits / temperature, dim=-1)
            token_logp = logp.gather(-1, new_tokens[:, : logits.shape[1]].unsqueeze(-1)).squeeze(-1)
        else:
            token_logp = torch.zeros_like(new_tokens, dtype=torch.float32)
        results = []
        eos = set(self.eos_ids) if not sampling.ignore_eos else set()
        for i in range(len(requests)):
            ids = new_tokens[i].tolist()
            n = len(ids)
            reason = "length"
            for j, t in enumerate(ids):
                if t in eos:
                    n, reason = j + 1, "stop"
                    break
            results.append(GenResult(token_ids=ids[:n], log_probs=token_logp[i, :n].tolist(), finish_reason=reason))
        return results
