"""Two-stream co-attention for VQA (ViLBERT, Lu et al. 2019, "ViLBERT: Pretraining
Task-Agnostic Visiolinguistic Representations for Vision-and-Language Tasks").

The question first runs through the text model alone; the image tokens, projected to the
text width, form the second stream. Each co-attention layer then lets the text stream
attend to the image stream and the image stream attend to the text stream, both from the
layer's inputs (the exchange is simultaneous), and follows with self-attention and an MLP
inside each stream. Answers are scored from the product of the two pooled streams, as in
ViLBERT's VQA head.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.models.fusion.common import build_towers, default_pool, pool, projection
from vislm.models.fusion.stream import text_layout
from vislm.models.layers import Block, CrossAttention, init_transformer_weights, padding_mask
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


class CoAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_impl: str = "sdpa"):
        super().__init__()
        self.ln_text = nn.LayerNorm(dim)
        self.ln_image = nn.LayerNorm(dim)
        self.text_to_image = CrossAttention(dim, heads, dropout, attn_impl)
        self.image_to_text = CrossAttention(dim, heads, dropout, attn_impl)
        self.text_block = Block(dim, heads, mlp_ratio, dropout, attn_impl)
        self.image_block = Block(dim, heads, mlp_ratio, dropout, attn_impl)

    def forward(self, text: torch.Tensor, image: torch.Tensor,
                text_mask: Optional[torch.Tensor] = None):
        t, v = self.ln_text(text), self.ln_image(image)
        # Both directions read the normalised inputs of this layer, so neither stream
        # sees the other's update of the same layer.
        text = text + self.text_to_image(t, v)[0]
        image = image + self.image_to_text(v, t, context_mask=text_mask)[0]
        text, _ = self.text_block(text, padding_mask(text_mask))
        image, _ = self.image_block(image)
        return text, image


class CoAttentionVQA(nn.Module):
    def __init__(self, num_answers: int, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None,
                 coattention_layers: int = 2, text_pool: Optional[str] = None):
        super().__init__()
        self.num_answers = num_answers
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        self.text_pool = text_pool or default_pool(self.text)
        dim = self.text.dim
        self.image_proj = projection(self.vision.dim, dim)
        self.layers = nn.ModuleList(CoAttentionLayer(dim, **text_layout(self.text))
                                    for _ in range(coattention_layers))
        init_transformer_weights(self.layers, coattention_layers)
        self.ln_text = nn.LayerNorm(dim)
        self.ln_image = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                  nn.Linear(2 * dim, num_answers))

    def streams(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor):
        """Final text (B, T, C) and image (B, N, C) streams."""
        text = self.text.encode(input_ids, attention_mask)
        image = self.image_proj(self.vision(pixel_values))
        for layer in self.layers:
            text, image = layer(text, image, attention_mask)
        return self.ln_text(text), self.ln_image(image)

    def predict(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, num_answers)."""
        text, image = self.streams(pixel_values, input_ids, attention_mask)
        fused = pool(text, attention_mask, self.text_pool) * image.mean(dim=1)
        return self.head(fused)

    def forward(self, batch: dict) -> dict:
        logits = self.predict(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = vqa_soft_bce(logits, batch["answer_scores"])
        return {"loss": loss, "vqa_loss": loss, "logits": logits}


@FUSIONS.register("coattention_vqa", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"), "num_answers": 5,
    "coattention_layers": 1})
def coattention_vqa(**kwargs) -> CoAttentionVQA:
    return CoAttentionVQA(**kwargs)
