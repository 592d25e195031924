"""Projector prefix captioner (LLaVA, Liu et al. 2023, "Visual Instruction Tuning";
ClipCap, Mokady et al. 2021, "ClipCap: CLIP Prefix for Image Captioning").

Image features are mapped by a small projector into the LM's token-embedding space and
placed before the text; the causal LM then reads them like any other tokens. Two ways to
make the prefix:
  prefix_tokens=0   every image token is projected (LLaVA);
  prefix_tokens=k   the mean-pooled image vector is mapped to k tokens (ClipCap).
projector "linear" is LLaVA-1's; "mlp" is LLaVA-1.5's Linear-GELU-Linear.

The loss covers the text tokens only (the prefix is given, never predicted). With
`freeze_lm` the LM does not learn; the projector (and the vision encoder, unless frozen
by the caller) does, which is ClipCap's cheap setting and LLaVA's first stage.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.models.fusion.common import build_towers
from vislm.models.fusion.stream import (CaptionGenerator, joint_key_mask, prepend_unrotated,
                                        require_lm, run_blocks, text_embeddings)
from vislm.models.layers import self_attention_mask
from vislm.objectives.lm import lm_loss
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS

PROJECTORS = ("linear", "mlp")


def make_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ConfigError(f"projector must be one of {PROJECTORS}, got {kind!r}")


class PrefixCaptioner(CaptionGenerator, nn.Module):
    def __init__(self, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "decoder", text_kwargs: Optional[dict] = None,
                 projector: str = "mlp", prefix_tokens: int = 0, freeze_lm: bool = False):
        super().__init__()
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        require_lm(self.text, text, "prefix_captioner")
        if prefix_tokens < 0:
            raise ConfigError(f"prefix_tokens must be >= 0 (0 = one per image token), "
                              f"got {prefix_tokens}")
        self.prefix_tokens = prefix_tokens
        out_dim = self.text.dim * max(prefix_tokens, 1)
        self.projector = make_projector(projector, self.vision.dim, out_dim)
        if freeze_lm:
            self.text.requires_grad_(False)

    def prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, P, text.dim) prefix embeddings: P image tokens, or prefix_tokens."""
        tokens = self.vision(pixel_values)
        if self.prefix_tokens == 0:
            return self.projector(tokens)
        pooled = self.projector(tokens.mean(dim=1))
        return pooled.view(pooled.size(0), self.prefix_tokens, self.text.dim)

    def decode(self, prefix: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: Optional[torch.Tensor] = None, past=None, use_cache: bool = False):
        """Logits of the text positions (B, T, vocab), and the cache.

        Without `past` the sequence is [prefix; text], causal throughout. With `past`
        (which holds the prefix, processed once) input_ids are the new tokens only.
        """
        P, T = prefix.size(1), input_ids.size(1)
        seen = 0 if past is None else past[0][0].size(2) - P  # text positions in the cache
        x, rope = text_embeddings(self.text, input_ids, seen)
        if past is None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
            rope = prepend_unrotated(rope, P)
        keys = joint_key_mask(attention_mask, P)
        mask, causal = self_attention_mask(keys, x.size(1), P + seen + T, True)
        h, cache = run_blocks(self.text.blocks, self.text.drop(x), mask, causal, rope, past,
                              use_cache)
        return self.text.lm_head(self.text.ln_f(h[:, -T:])), cache

    def forward(self, batch: dict) -> dict:
        logits, _ = self.decode(self.prefix(batch["pixel_values"]), batch["input_ids"],
                                batch["attention_mask"])
        loss = lm_loss(logits, batch["input_ids"], batch["attention_mask"])
        return {"loss": loss, "lm_loss": loss}

    def image_context(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.prefix(pixel_values)

    def decode_step(self, prefix, input_ids, past, use_cache):
        return self.decode(prefix, input_ids, None, past, use_cache)


@FUSIONS.register("prefix_captioner", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "decoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("decoder"), "projector": "mlp"})
def prefix_captioner(**kwargs) -> PrefixCaptioner:
    return PrefixCaptioner(**kwargs)
