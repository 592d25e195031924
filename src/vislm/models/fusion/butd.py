"""Question-guided attention with multiplicative fusion for VQA: the "top-down" half of
Anderson et al. 2018, "Bottom-Up and Top-Down Attention for Image Captioning and Visual
Question Answering" (with the tips of Teney et al. 2018), over a vision encoder's tokens.

Why multiplication: "is there a blue square?" is answered by whether what the question
asks for matches what the image holds. A sum of question and image features carries no
first-order signal for such a match, and models that only add (a plain fusion encoder
with a linear readout) can sit for epochs at the yes/no prior. The Hadamard product
(W_v v) * (W_q q) turns the match into a feature a linear layer reads directly, both in
the attention logits (which image token is the asked-for object) and in the joint vector.

Several glimpses attend independently, so a relation question ("is the red circle left
of the blue square?") can look at both objects; image tokens carry their positions.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.models.fusion.common import build_towers, default_pool, pool
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


class GuidedAttention(nn.Module):
    """softmax_i( w_g . GELU((W_v t_i) * (W_q q)) ) for each glimpse g: (B, N, G)."""

    def __init__(self, image_dim: int, question_dim: int, hidden: int, glimpses: int):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, hidden)
        self.question_proj = nn.Linear(question_dim, hidden)
        self.logits = nn.Linear(hidden, glimpses)

    def forward(self, tokens: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        joint = self.image_proj(tokens) * self.question_proj(question)[:, None, :]
        return self.logits(nn.functional.gelu(joint)).softmax(dim=1)


class AttentionVQA(nn.Module):
    def __init__(self, num_answers: int, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None,
                 text_pool: Optional[str] = None, hidden: int = 512, glimpses: int = 2):
        super().__init__()
        self.num_answers = num_answers
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        self.text_pool = text_pool or default_pool(self.text)
        image_dim, question_dim = self.vision.dim, self.text.dim
        self.attention = GuidedAttention(image_dim, question_dim, hidden, glimpses)
        self.image_joint = nn.Linear(glimpses * image_dim, hidden)
        self.question_joint = nn.Linear(question_dim, hidden)
        self.head = nn.Sequential(nn.GELU(), nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden),
                                  nn.GELU(), nn.Linear(2 * hidden, num_answers))

    def predict(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, num_answers)."""
        tokens = self.vision(pixel_values)  # (B, N, Dv)
        question = pool(self.text.encode(input_ids, attention_mask), attention_mask, self.text_pool)
        weights = self.attention(tokens, question)  # (B, N, G)
        glimpses = torch.einsum("bng,bnd->bgd", weights, tokens).flatten(1)  # (B, G * Dv)
        joint = self.image_joint(glimpses) * self.question_joint(question)
        return self.head(joint)

    def forward(self, batch: dict) -> dict:
        logits = self.predict(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = vqa_soft_bce(logits, batch["answer_scores"])
        return {"loss": loss, "vqa_loss": loss, "logits": logits}


@FUSIONS.register("attention_vqa", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"),
    "num_answers": 5, "hidden": 16, "glimpses": 2})
def attention_vqa(**kwargs) -> AttentionVQA:
    return AttentionVQA(**kwargs)
