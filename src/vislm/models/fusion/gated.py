"""Gated cross-attention captioner (Flamingo, Alayrac et al. 2022, "Flamingo: a Visual
Language Model for Few-Shot Learning").

A causal LM is kept as it is; before every `cross_every`-th of its layers a new block
lets the text attend to the image:

    x = x + tanh(alpha_attn) * CrossAttn(LN(x), image)
    x = x + tanh(alpha_ff)   * FFW(LN(x))

with both alphas initialised at 0, so that at initialisation the model IS the LM, bit
for bit, and training starts from the LM's behaviour rather than from a perturbed one.
With `freeze_lm` the LM's own parameters (embeddings, blocks, final norm, the tied head)
do not learn; only the gated blocks, the vision projection, the optional Perceiver
resampler (`resampler_latents` > 0) and the vision encoder do.

At alpha = 0 the gated blocks' own weights get exactly zero gradient (their output is
multiplied by tanh(0)); only the alphas move on the first step, then everything learns.
`gate_init` exists to start elsewhere, e.g. for tests of gradient flow.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.models.fusion.common import build_towers, projection
from vislm.models.fusion.resampler import PerceiverResampler
from vislm.models.fusion.stream import CaptionGenerator, require_lm, text_embeddings, text_layout
from vislm.models.layers import MLP, CrossAttention, init_transformer_weights, self_attention_mask
from vislm.objectives.lm import lm_loss
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_impl: str = "sdpa", gate_init: float = 0.0):
        super().__init__()
        self.ln_cross = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads, dropout, attn_impl)
        self.attn_gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(mlp_ratio * dim), dropout)
        self.mlp_gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x, image_tokens=None, past=None):
        """Returns (x, cross (k, v)); with `past` the image is not projected again."""
        h, kv = self.cross(self.ln_cross(x), image_tokens, past=past)
        # tanh(0) = 0 exactly and 0 * h = 0, so x + 0 is x: the exact identity at init.
        x = x + torch.tanh(self.attn_gate) * h
        x = x + torch.tanh(self.mlp_gate) * self.mlp(self.ln_mlp(x))
        return x, kv


class GatedCaptioner(CaptionGenerator, nn.Module):
    def __init__(self, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "decoder", text_kwargs: Optional[dict] = None,
                 cross_every: int = 1, freeze_lm: bool = False, resampler_latents: int = 0,
                 resampler_depth: int = 2, gate_init: float = 0.0):
        super().__init__()
        # The LM has no cross-attention of its own: the gated blocks are the only way in.
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        require_lm(self.text, text, "gated_captioner")
        if cross_every < 1:
            raise ConfigError(f"cross_every must be >= 1, got {cross_every}")
        dim, layout = self.text.dim, text_layout(self.text)
        self.image_proj = projection(self.vision.dim, dim)
        self.resampler = None
        if resampler_latents > 0:
            self.resampler = PerceiverResampler(dim, resampler_latents, resampler_depth, **layout)
        # Keyed by the index of the LM layer each block precedes.
        self.gated = nn.ModuleDict({
            str(i): GatedCrossAttentionBlock(dim, **layout, gate_init=gate_init)
            for i in range(0, len(self.text.blocks), cross_every)})
        for block in self.gated.values():
            init_transformer_weights(block, len(self.gated))
        if freeze_lm:
            self.text.requires_grad_(False)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.image_proj(self.vision(pixel_values))
        return tokens if self.resampler is None else self.resampler(tokens)

    def decode(self, image_tokens: Optional[torch.Tensor], input_ids: torch.Tensor,
               attention_mask: Optional[torch.Tensor] = None, past=None, use_cache: bool = False):
        """Logits (B, T, vocab) and the cache ((LM layer caches), (gated cross k/v)).

        The LM part repeats `TextTransformer._hidden` step by step, with the gated blocks
        in between; with `past`, image_tokens may be None (the cache holds their k/v).
        """
        lm_past, cross_past = (None, None) if past is None else past
        T = input_ids.size(1)
        start = 0 if lm_past is None else lm_past[0][0].size(2)
        x, rope = text_embeddings(self.text, input_ids, start)
        x = self.text.drop(x)
        mask, causal = self_attention_mask(attention_mask, T, start + T, True)
        lm_caches, cross_caches = [], []
        for i, block in enumerate(self.text.blocks):
            gate = self.gated[str(i)] if str(i) in self.gated else None
            if gate is not None:
                j = len(cross_caches)
                x, kv = gate(x, image_tokens, None if cross_past is None else cross_past[j])
                cross_caches.append(kv)
            x, cache = block(x, mask, causal, rope, past=None if lm_past is None else lm_past[i],
                             use_cache=use_cache)
            lm_caches.append(cache)
        logits = self.text.lm_head(self.text.ln_f(x))
        return logits, ((tuple(lm_caches), tuple(cross_caches)) if use_cache else None)

    def forward(self, batch: dict) -> dict:
        logits, _ = self.decode(self.image_tokens(batch["pixel_values"]), batch["input_ids"],
                                batch["attention_mask"])
        loss = lm_loss(logits, batch["input_ids"], batch["attention_mask"])
        return {"loss": loss, "lm_loss": loss}

    def image_context(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_tokens(pixel_values)

    def decode_step(self, image_tokens, input_ids, past, use_cache):
        # The first step projects the image keys/values of every gated block once; later
        # steps find them in the cache.
        return self.decode(image_tokens if past is None else None, input_ids, None, past,
                           use_cache)


@FUSIONS.register("gated_captioner", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "decoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("decoder"),
    # Nonzero gates: at 0 only the gates would get gradient on the first step, and the
    # generated test checks that every parameter learns. Identity at 0 is tested apart.
    "gate_init": 0.5, "resampler_latents": 2, "resampler_depth": 1})
def gated_captioner(**kwargs) -> GatedCaptioner:
    return GatedCaptioner(**kwargs)
