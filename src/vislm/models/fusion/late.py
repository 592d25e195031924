"""Late fusion for VQA: each tower encodes its modality alone and pools it to one vector;
the two vectors meet only in a small combiner before the answer classifier (the
"LSTM Q + norm I" baseline of Antol et al. 2015, "VQA: Visual Question Answering").

Combiners of a pooled image vector v and a pooled question vector t:
  concat    [v; t]                                   no parameters
  product   (W_v v) * (W_t t)                        Hadamard product in a shared space
  bilinear  z_k = v^T W_k t + b_k                    every image x text feature pair;
            rank=0: nn.Bilinear (dv * dt * hidden weights, which grows fast), rank=r:
            the low-rank factorisation P((U v) * (V t)) of Kim et al. 2017, "Hadamard
            Product for Low-rank Bilinear Pooling"
  gmu       the Gated Multimodal Unit (gmu.py)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.models.fusion.common import build_towers, default_pool, encode_pooled
from vislm.models.fusion.gmu import GatedMultimodalUnit
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS

COMBINES = ("concat", "product", "bilinear", "gmu")


class Concat(nn.Module):
    def __init__(self, image_dim: int, text_dim: int):
        super().__init__()
        self.out_dim = image_dim + text_dim

    def forward(self, image, text):
        return torch.cat([image, text], dim=-1)


class Product(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, hidden: int):
        super().__init__()
        self.out_dim = hidden
        self.image_proj = nn.Linear(image_dim, hidden)
        self.text_proj = nn.Linear(text_dim, hidden)

    def forward(self, image, text):
        return self.image_proj(image) * self.text_proj(text)


class LowRankBilinear(nn.Module):
    """z = P((U v) * (V t)): each output is a bilinear form of rank <= `rank`."""

    def __init__(self, image_dim: int, text_dim: int, hidden: int, rank: int):
        super().__init__()
        self.out_dim = hidden
        self.image_factor = nn.Linear(image_dim, rank, bias=False)
        self.text_factor = nn.Linear(text_dim, rank, bias=False)
        self.out = nn.Linear(rank, hidden)

    def forward(self, image, text):
        return self.out(self.image_factor(image) * self.text_factor(text))


class FullBilinear(nn.Bilinear):
    def __init__(self, image_dim: int, text_dim: int, hidden: int):
        super().__init__(image_dim, text_dim, hidden)
        self.out_dim = hidden


def make_combiner(combine: str, image_dim: int, text_dim: int, hidden: int,
                  rank: int = 0) -> nn.Module:
    if combine == "concat":
        return Concat(image_dim, text_dim)
    if combine == "product":
        return Product(image_dim, text_dim, hidden)
    if combine == "bilinear":
        if rank < 0:
            raise ConfigError(f"bilinear rank must be >= 0 (0 = full bilinear), got {rank}")
        if rank == 0:
            return FullBilinear(image_dim, text_dim, hidden)
        return LowRankBilinear(image_dim, text_dim, hidden, rank)
    if combine == "gmu":
        return GatedMultimodalUnit(image_dim, text_dim, hidden)
    raise ConfigError(f"combine must be one of {COMBINES}, got {combine!r}")


class LateFusionVQA(nn.Module):
    def __init__(self, num_answers: int, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None,
                 combine: str = "concat", hidden: Optional[int] = None, rank: int = 0,
                 text_pool: Optional[str] = None):
        super().__init__()
        self.num_answers = num_answers
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        self.text_pool = text_pool or default_pool(self.text)
        dim = self.text.dim
        self.combine = make_combiner(combine, self.vision.dim, dim, hidden or dim, rank)
        self.head = nn.Sequential(nn.Linear(self.combine.out_dim, 2 * dim),
                                  nn.LayerNorm(2 * dim), nn.GELU(),
                                  nn.Linear(2 * dim, num_answers))

    def features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor):
        """Pooled image (B, vision.dim) and question (B, text.dim), each from its tower alone."""
        image = self.vision(pixel_values).mean(dim=1)
        return image, encode_pooled(self.text, input_ids, attention_mask, self.text_pool)

    def predict(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, num_answers)."""
        return self.head(self.combine(*self.features(pixel_values, input_ids, attention_mask)))

    def forward(self, batch: dict) -> dict:
        logits = self.predict(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = vqa_soft_bce(logits, batch["answer_scores"])
        return {"loss": loss, "vqa_loss": loss, "logits": logits}


_TINY = {"vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
         "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"), "num_answers": 5}


@FUSIONS.register("late_vqa", tiny={**_TINY, "combine": "bilinear", "hidden": 8, "rank": 4})
def late_vqa(**kwargs) -> LateFusionVQA:
    return LateFusionVQA(**kwargs)


@FUSIONS.register("gmu_vqa", tiny={**_TINY, "hidden": 8})
def gmu_vqa(**kwargs) -> LateFusionVQA:
    if kwargs.setdefault("combine", "gmu") != "gmu":
        raise ConfigError(f"gmu_vqa combines with the GMU; got combine={kwargs['combine']!r}")
    return LateFusionVQA(**kwargs)
