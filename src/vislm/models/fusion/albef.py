"""ALBEF pre-training (Li et al. 2021, "Align before Fuse: Vision and Language
Representation Learning with Momentum Distillation"), without momentum distillation.

A dual encoder (the CLIP model of dual_encoder.py, same parameter names) is aligned with
ITC; a fusion encoder, whose blocks cross-attend from the text encoder's hidden states to
the image tokens, is trained with ITM on hard negatives and with MLM:

    loss = w_itc * ITC + w_itm * ITM + w_mlm * MLM      (loss_weights, default all 1)

The "*_loss" terms returned are the weighted ones, so they always add up to "loss"; a
weight of 0 skips that objective entirely. ITC goes through `distributed_itc_loss`, so
under DDP it contrasts against the global batch (the hard negatives of ITM are drawn
within the local batch, as in ALBEF).

Fine-tuning: the towers are `vision.*` and `text.*` and the ITC heads are named as in
DualEncoder, so `DualEncoder.load_state_dict(state, strict=False)` takes every weight it
has (retrieval), and the task models built on the same towers take `vision.*` and the
self-attention part of `text.*`. The model also exposes `encode_image`/`encode_text`, so
the retrieval task evaluates it directly.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislm.errors import ConfigError
from vislm.models.fusion.common import pool
from vislm.models.fusion.dual_encoder import DualEncoder
from vislm.models.fusion.stream import text_layout
from vislm.models.layers import Block, init_transformer_weights, padding_mask
from vislm.objectives.itc import distributed_itc_loss
from vislm.objectives.itm import itm_loss
from vislm.objectives.mlm import mask_tokens, mlm_loss
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS

OBJECTIVE_NAMES = ("itc", "itm", "mlm")
# The ids vislm's own tokenizers give their special tokens ([PAD], [UNK], [BOS], [EOS],
# [MASK], in that order, see vislm.data.tokenizer); a pre-trained vocabulary passes its own.
MASK_ID = 4
SPECIAL_IDS = (0, 1, 2, 3, 4)


class FusionEncoder(nn.Module):
    """ALBEF's multimodal encoder: blocks with self-attention over the text, cross-attention
    to the image tokens (in the vision width, projected inside each block) and an MLP."""

    def __init__(self, dim: int, image_dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout, attn_impl, cross_attention=True,
                  context_dim=image_dim) for _ in range(depth))
        init_transformer_weights(self.blocks, depth)
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, text_hidden: torch.Tensor, attention_mask: Optional[torch.Tensor],
                image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) multimodal hidden states; position 0 is the multimodal [CLS]."""
        mask, x = padding_mask(attention_mask), text_hidden
        for block in self.blocks:
            x, _ = block(x, mask, context=image_tokens)
        return self.ln_f(x)


class MLMHead(nn.Module):
    """BERT's: dense, GELU, LayerNorm, then scores tied to the token embedding."""

    def __init__(self, dim: int, embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim)
        self.decoder = nn.Linear(dim, embedding.num_embeddings)
        self.decoder.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(F.gelu(self.dense(hidden))))


class ALBEFPretrain(DualEncoder):
    def __init__(self, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None,
                 embed_dim: int = 128, text_pool: Optional[str] = None,
                 temperature: float = 0.07, max_logit_scale: float = 100.0,
                 fusion_depth: int = 2, loss_weights: Optional[dict] = None,
                 mask_id: int = MASK_ID, special_ids: Sequence[int] = SPECIAL_IDS,
                 mask_prob: float = 0.15):
        super().__init__(vision, vision_kwargs, text, text_kwargs, embed_dim, text_pool,
                         temperature, max_logit_scale)
        if getattr(self.text, "causal", False):
            raise ConfigError(f"albef_pretrain needs a bidirectional text encoder for MLM; "
                              f"text model '{text}' is causal")
        unknown = set(loss_weights or {}) - set(OBJECTIVE_NAMES)
        if unknown:
            raise ConfigError(f"loss_weights has unknown keys {sorted(unknown)}; "
                              f"expected some of {OBJECTIVE_NAMES}")
        self.loss_weights = {name: 1.0 for name in OBJECTIVE_NAMES}
        self.loss_weights.update({k: float(v) for k, v in (loss_weights or {}).items()})
        if not any(self.loss_weights.values()):
            raise ConfigError("loss_weights are all 0: nothing to train")
        self.mask_id, self.special_ids, self.mask_prob = mask_id, tuple(special_ids), mask_prob
        dim = self.text.dim
        self.fusion = FusionEncoder(dim, self.vision.dim, fusion_depth, **text_layout(self.text))
        self.itm_head = nn.Linear(dim, 2)
        self.mlm_head = MLMHead(dim, self.text.tok_emb)

    def forward(self, batch: dict) -> dict:
        ids, mask, image_ids = batch["input_ids"], batch["attention_mask"], batch.get("image_ids")
        # One pass of each tower serves all three objectives.
        image_tokens = self.vision(batch["pixel_values"])
        text_hidden = self.text.encode(ids, mask)
        # As DualEncoder.encode_image / encode_text, from the hidden states above.
        image_emb = F.normalize(self.image_head(image_tokens.mean(dim=1)), dim=-1)
        text_emb = F.normalize(self.text_head(pool(text_hidden, mask, self.text_pool)), dim=-1)
        scale = self.scale()
        losses = {}
        if self.loss_weights["itc"]:
            losses["itc"] = distributed_itc_loss(image_emb, text_emb, scale, image_ids)
        if self.loss_weights["itm"]:
            def score_pairs(image_index, text_index):
                fused = self.fusion(text_hidden[text_index], mask[text_index],
                                    image_tokens[image_index])
                return self.itm_head(fused[:, 0])

            # Negatives are drawn from the same similarities ITC sees (no gradient).
            losses["itm"] = itm_loss(score_pairs, scale * image_emb @ text_emb.t(), image_ids)
        if self.loss_weights["mlm"]:
            corrupted, labels = mask_tokens(ids, mask, self.mask_id, self.text.vocab_size,
                                            self.special_ids, self.mask_prob)
            fused = self.fusion(self.text.encode(corrupted, mask), mask, image_tokens)
            losses["mlm"] = mlm_loss(self.mlm_head(fused), labels)
        out = {f"{name}_loss": self.loss_weights[name] * value for name, value in losses.items()}
        out["loss"] = sum(out.values())
        return out


@FUSIONS.register("albef_pretrain", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"), "embed_dim": 8,
    "fusion_depth": 1})
def albef_pretrain(**kwargs) -> ALBEFPretrain:
    return ALBEFPretrain(**kwargs)
