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
of the blue square?") can look at both objects. Two additions serve such questions:
- each glimpse reads its own summary of the question (attention over the question's
  tokens, as in MCAN), so one glimpse can take the words before "left of" and the other
  the words after, instead of both seeing one pooled vector;
- each glimpse reports where it looked, the attention-weighted mean of the token grid's
  coordinates, and the head sees those positions and their pairwise differences: "left
  of" becomes the sign of a difference rather than something to decode from features;
- optional relation layers before the attention (MCAN's self- and question-guided
  attention over the image): each image token attends to the other tokens and to the
  question's words, so the token of the red circle can learn where the asked-about blue
  square lies from it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from vislm.models.fusion.common import build_towers, default_pool, pool
from vislm.models.layers import Block, init_transformer_weights
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


class GuidedAttention(nn.Module):
    """softmax_i( w_g . GELU((W_v t_i) * (W_q q)) ) for each glimpse g: (B, N, G).

    The question is one vector (B, C) shared by all glimpses, or one per glimpse (B, G, C),
    each then scored by the same single logit."""

    def __init__(self, image_dim: int, question_dim: int, hidden: int, glimpses: int):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, hidden)
        self.question_proj = nn.Linear(question_dim, hidden)
        # No bias: a constant added to every token's logit cancels in the softmax.
        self.logits = nn.Linear(hidden, glimpses, bias=False)

    def forward(self, tokens: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        image = self.image_proj(tokens)  # (B, N, H)
        if question.dim() == 2:
            joint = image * self.question_proj(question)[:, None, :]
            return self.logits(nn.functional.gelu(joint)).softmax(dim=1)
        joint = image[:, None] * self.question_proj(question)[:, :, None]  # (B, G, N, H)
        return self.logits(nn.functional.gelu(joint)).squeeze(-1).transpose(1, 2).softmax(dim=1)


class QuestionGlimpses(nn.Module):
    """One attention-pooled summary of the question's tokens per glimpse: (B, G, C)."""

    def __init__(self, dim: int, hidden: int, glimpses: int):
        super().__init__()
        self.scores = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, glimpses))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.scores(hidden).float()  # (B, T, G)
        scores = scores.masked_fill(~attention_mask.bool()[:, :, None], float("-inf"))
        return torch.einsum("btg,btc->bgc", scores.softmax(dim=1).to(hidden.dtype), hidden)


def token_coordinates(num_tokens: int) -> torch.Tensor:
    """(N, 2) centres (x, y) in [-1, 1] of a square grid of image tokens in row-major order;
    a leading extra token (a ViT's CLS) sits at the centre, (0, 0). Other layouts have no grid."""
    side = math.isqrt(num_tokens)
    extra = num_tokens - side * side
    if extra not in (0, 1) or side == 0:
        raise ValueError(f"glimpse_positions needs a square grid of image tokens (plus at most one "
                         f"CLS token), got {num_tokens} tokens")
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([x.flatten(), y.flatten()], dim=1)
    return torch.cat([torch.zeros(extra, 2), grid]) if extra else grid


class AttentionVQA(nn.Module):
    def __init__(self, num_answers: int, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None,
                 text_pool: Optional[str] = None, hidden: int = 512, glimpses: int = 2,
                 question_glimpses: bool = False, glimpse_positions: bool = False,
                 relation_layers: int = 0, relation_heads: int = 4):
        super().__init__()
        self.num_answers = num_answers
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        self.text_pool = text_pool or default_pool(self.text)
        image_dim, question_dim = self.vision.dim, self.text.dim
        # The text tower's attention implementation (bf16 SDPA backward is slow on CPUs).
        attn_impl = (text_kwargs or {}).get("attn_impl", "sdpa")
        self.relation = nn.ModuleList(
            Block(image_dim, relation_heads, cross_attention=True, context_dim=question_dim, attn_impl=attn_impl)
            for _ in range(relation_layers))
        init_transformer_weights(self.relation, max(relation_layers, 1))
        self.glimpses = glimpses
        self.question_glimpses = QuestionGlimpses(question_dim, hidden, glimpses) if question_glimpses else None
        # With per-glimpse questions, each glimpse has its own attention map (one logit each).
        self.attention = GuidedAttention(image_dim, question_dim, hidden, 1 if question_glimpses else glimpses)
        self.glimpse_positions = glimpse_positions
        if glimpse_positions:
            self.register_buffer("coordinates", token_coordinates(self.vision.num_tokens()), persistent=False)
        pairs = glimpses * (glimpses - 1) // 2
        position_features = 2 * (glimpses + pairs) if glimpse_positions else 0
        self.image_joint = nn.Linear(glimpses * image_dim + position_features, hidden)
        self.question_joint = nn.Linear(question_dim, hidden)
        self.head = nn.Sequential(nn.GELU(), nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden),
                                  nn.GELU(), nn.Linear(2 * hidden, num_answers))

    def predict(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, num_answers)."""
        tokens = self.vision(pixel_values)  # (B, N, Dv)
        hidden = self.text.encode(input_ids, attention_mask)
        question = pool(hidden, attention_mask, self.text_pool)
        for block in self.relation:
            tokens, _ = block(tokens, context=hidden, context_mask=attention_mask)
        if self.question_glimpses is None:
            weights = self.attention(tokens, question)  # (B, N, G)
        else:
            weights = self.attention(tokens, self.question_glimpses(hidden, attention_mask))
        features = [torch.einsum("bng,bnd->bgd", weights, tokens).flatten(1)]  # (B, G * Dv)
        if self.glimpse_positions:
            features.append(self._where(weights))
        joint = self.image_joint(torch.cat(features, dim=1)) * self.question_joint(question)
        return self.head(joint)

    def _where(self, weights: torch.Tensor) -> torch.Tensor:
        """Each glimpse's attended (x, y) and the differences between glimpses: (B, 2 * (G + pairs))."""
        where = torch.einsum("bng,nc->bgc", weights.float(), self.coordinates)  # (B, G, 2)
        first, second = torch.triu_indices(self.glimpses, self.glimpses, offset=1, device=where.device)
        differences = where[:, first] - where[:, second]  # (B, pairs, 2)
        return torch.cat([where.flatten(1), differences.flatten(1)], dim=1).to(weights.dtype)

    def forward(self, batch: dict) -> dict:
        logits = self.predict(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = vqa_soft_bce(logits, batch["answer_scores"])
        return {"loss": loss, "vqa_loss": loss, "logits": logits}


@FUSIONS.register("attention_vqa", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"),
    "num_answers": 5, "hidden": 16, "glimpses": 2, "question_glimpses": True, "glimpse_positions": True,
    "relation_layers": 1, "relation_heads": 2})
def attention_vqa(**kwargs) -> AttentionVQA:
    return AttentionVQA(**kwargs)
