"""VQA as classification over a fixed answer vocabulary: the question runs through a
text encoder that cross-attends to image tokens (an ALBEF-style fusion encoder), and
an MLP scores every answer."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.models.fusion.common import build_towers, default_pool, encode_pooled, projection
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


class VQAClassifier(nn.Module):
    def __init__(self, num_answers: int, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None,
                 text_pool: Optional[str] = None):
        super().__init__()
        self.num_answers = num_answers
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, True)
        self.text_pool = text_pool or default_pool(self.text)
        self.image_proj = projection(self.vision.dim, self.text.dim)
        dim = self.text.dim
        # Classifier head of ViLT/ALBEF: widen, normalise, GELU, score.
        self.head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                  nn.Linear(2 * dim, num_answers))

    def predict(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, num_answers)."""
        image_tokens = self.image_proj(self.vision(pixel_values))
        return self.head(encode_pooled(self.text, input_ids, attention_mask, self.text_pool,
                                       image_tokens))

    def forward(self, batch: dict) -> dict:
        logits = self.predict(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = vqa_soft_bce(logits, batch["answer_scores"])
        return {"loss": loss, "vqa_loss": loss, "logits": logits}


@FUSIONS.register("vqa_classifier", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"), "num_answers": 5})
def vqa_classifier(**kwargs) -> VQAClassifier:
    return VQAClassifier(**kwargs)
