"""Image captioner: image tokens feed the cross-attention of a causal text decoder,
trained with next-token prediction and decoded greedily with a KV cache."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.generation import greedy_decode
from vislm.models.fusion.common import build_towers, projection
from vislm.objectives.lm import lm_loss
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


class Captioner(nn.Module):
    def __init__(self, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "decoder", text_kwargs: Optional[dict] = None):
        super().__init__()
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, True)
        if not getattr(self.text, "causal", False):
            raise ConfigError(f"captioner needs a causal text model with an LM head; "
                              f"text model '{text}' is not one")
        self.image_proj = projection(self.vision.dim, self.text.dim)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.vision(pixel_values))

    def forward(self, batch: dict) -> dict:
        logits, _ = self.text(batch["input_ids"], batch["attention_mask"],
                              self.image_tokens(batch["pixel_values"]))
        loss = lm_loss(logits, batch["input_ids"], batch["attention_mask"])
        return {"loss": loss, "lm_loss": loss}

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int, bos_id: int, eos_id: int,
                 pad_id: Optional[int] = None, use_cache: bool = True,
                 return_logits: bool = False):
        """Greedy captions (B, S <= max_new_tokens), BOS excluded, EOS kept, pad after.

        S is also capped at the decoder's max_len: it never saw longer captions.
        Runs in whatever mode the model is in; call .eval() first.
        """
        tokens = self.image_tokens(pixel_values)

        def step(input_ids, past, use_cache):
            # With a cache, cross-attention reuses the image keys/values it holds.
            return self.text(input_ids, image_tokens=tokens, past=past, use_cache=use_cache)

        prompt = torch.full((pixel_values.size(0), 1), bos_id, dtype=torch.long,
                            device=pixel_values.device)
        return greedy_decode(step, prompt, min(max_new_tokens, self.text.max_len), eos_id,
                             self.text.pad_id if pad_id is None else pad_id, use_cache,
                             return_logits)


@FUSIONS.register("captioner", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "decoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("decoder")})
def captioner(**kwargs) -> Captioner:
    return Captioner(**kwargs)
