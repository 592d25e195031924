"""CLIP-style dual encoder (Radford et al. 2021): two towers, no cross-attention, trained
to put matching images and texts close together in a shared embedding space."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislm.errors import ConfigError
from vislm.models.frozen_cache import is_cached
from vislm.models.fusion.common import build_towers, default_pool, encode_pooled
from vislm.objectives.itc import distributed_itc_loss
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


# How an image becomes one vector: the mean of the vision tokens, or the ViT's CLS token
# (CLIP's choice).
IMAGE_POOLS = ("mean", "cls")


class DualEncoder(nn.Module):
    def __init__(self, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None,
                 embed_dim: int = 128, text_pool: Optional[str] = None,
                 temperature: float = 0.07, max_logit_scale: float = 100.0,
                 image_pool: str = "mean"):
        super().__init__()
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        self.text_pool = text_pool or default_pool(self.text)
        if image_pool not in IMAGE_POOLS:
            raise ConfigError(f"image_pool must be one of {IMAGE_POOLS}, got {image_pool!r}")
        if image_pool == "cls" and getattr(self.vision, "cls", None) is None:
            raise ConfigError(f"image_pool 'cls' needs a ViT with a CLS token; vision "
                              f"{vision!r} has none")
        self.image_pool = image_pool
        self.image_head = nn.Linear(self.vision.dim, embed_dim, bias=False)
        self.text_head = nn.Linear(self.text.dim, embed_dim, bias=False)
        # Learned in log space so it stays positive; clamped so logits cannot explode.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.max_logit_scale = max_logit_scale

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.image_pool == "cls" and is_cached(self.vision):
            pooled = self.vision(pixel_values)[:, 0]  # a frozen tower's cached tokens
        elif self.image_pool == "cls":
            # Only the CLS token is read: the ViT's last block runs for it alone.
            pooled = self.vision.cls_embedding(pixel_values)
        else:
            pooled = self.vision(pixel_values).mean(dim=1)
        return F.normalize(self.image_head(pooled), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = encode_pooled(self.text, input_ids, attention_mask, self.text_pool)
        return F.normalize(self.text_head(pooled), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, batch: dict) -> dict:
        image_emb = self.encode_image(batch["pixel_values"])
        text_emb = self.encode_text(batch["input_ids"], batch["attention_mask"])
        # Under DDP every process scores its rows against the texts and images of all of
        # them: the negatives of the global batch, not only of the local one. One process:
        # exactly itc_loss.
        loss = distributed_itc_loss(image_emb, text_emb, self.scale(), batch.get("image_ids"))
        return {"loss": loss, "itc_loss": loss}


@FUSIONS.register("dual_encoder", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"), "embed_dim": 8})
def dual_encoder(**kwargs) -> DualEncoder:
    return DualEncoder(**kwargs)
