"""Single-stream early fusion: projected image tokens and text embeddings, each tagged with
a modality-type embedding, form ONE sequence through ONE Transformer (VisualBERT, Li et
al. 2019, "VisualBERT: A Simple and Performant Baseline for Vision and Language"; ViLT,
Kim et al. 2021, "ViLT: Vision-and-Language Transformer Without Convolution or Region
Supervision").

The single Transformer is the text model's own stack (its embedding, blocks and final
norm), as VisualBERT starts from BERT. What differs between the variants is the mask:
`early_vqa` attends bidirectionally and classifies from the first text token ([CLS]);
`early_captioner` uses a prefix-LM mask (image tokens see each other, text sees every
image token and earlier text) and is trained and decoded like a GPT. The mask is set
here, whatever the text model's own `causal` flag, so either text model fits either one.

`EarlyFusion.joint` returns the text positions' hidden states, so the ITM head (at
[CLS]) and an MLM head (at every text position) of `vislm.objectives` attach to it too.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.models.fusion.common import build_towers, projection
from vislm.models.fusion.stream import (CaptionGenerator, joint_key_mask, prefix_lm_mask,
                                        prepend_unrotated, require_own_layers, run_blocks,
                                        text_embeddings)
from vislm.models.layers import padding_mask
from vislm.objectives.lm import lm_loss
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS

IMAGE, TEXT = 0, 1  # rows of the modality-type embedding


class EarlyFusion(nn.Module):
    def __init__(self, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "encoder", text_kwargs: Optional[dict] = None):
        super().__init__()
        # No cross-attention: the two modalities meet inside self-attention.
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, False)
        require_own_layers(self.text, text, "early fusion")
        self.image_proj = projection(self.vision.dim, self.text.dim)
        # Tells the shared layers which modality a token is; small like the token table.
        self.modality = nn.Embedding(2, self.text.dim)
        nn.init.normal_(self.modality.weight, std=0.02)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.vision(pixel_values)) + self.modality.weight[IMAGE]

    def joint(self, image_tokens: torch.Tensor, input_ids: torch.Tensor,
              attention_mask: Optional[torch.Tensor] = None, prefix_lm: bool = False,
              past=None, use_cache: bool = False):
        """Hidden states of the text positions (B, T, C), and the cache (None unless use_cache).

        Without `past` the sequence is [image tokens; text]. With `past` (which already
        holds the image tokens and earlier text) input_ids are the new text tokens only,
        and attention_mask, if given, covers the earlier and the new text.
        """
        N, T = image_tokens.size(1), input_ids.size(1)
        seen = 0 if past is None else past[0][0].size(2) - N  # text positions in the cache
        x, rope = text_embeddings(self.text, input_ids, seen)
        x = x + self.modality.weight[TEXT]
        if past is None:
            x = torch.cat([image_tokens, x], dim=1)
            rope = prepend_unrotated(rope, N)
        keys = joint_key_mask(attention_mask, N)
        if prefix_lm:
            mask = prefix_lm_mask(N, x.size(1), N + seen + T, keys)
        else:
            mask = padding_mask(keys)
        h, cache = run_blocks(self.text.blocks, self.text.drop(x), mask, False, rope, past,
                              use_cache)
        return self.text.ln_f(h)[:, -T:], cache


class EarlyFusionVQA(EarlyFusion):
    def __init__(self, num_answers: int, **kwargs):
        super().__init__(**kwargs)
        self.num_answers = num_answers
        dim = self.text.dim
        # The classifier head of ViLT/ALBEF, as in VQAClassifier.
        self.head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                  nn.Linear(2 * dim, num_answers))

    def predict(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer logits (B, num_answers), from the first text token (BOS = [CLS]), which
        has attended to every image and text token."""
        hidden, _ = self.joint(self.image_tokens(pixel_values), input_ids, attention_mask)
        return self.head(hidden[:, 0])

    def forward(self, batch: dict) -> dict:
        logits = self.predict(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = vqa_soft_bce(logits, batch["answer_scores"])
        return {"loss": loss, "vqa_loss": loss, "logits": logits}


class EarlyFusionCaptioner(CaptionGenerator, EarlyFusion):
    def __init__(self, text: str = "decoder", **kwargs):
        super().__init__(text=text, **kwargs)
        if not hasattr(self.text, "lm_head"):
            # A bidirectional text model (BERT-like) has no LM head; the prefix-LM mask
            # makes it generative, so give it one tied to its token embedding.
            self.lm_head = nn.Linear(self.text.dim, self.text.vocab_size, bias=False)
            self.lm_head.weight = self.text.tok_emb.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.text.lm_head if hasattr(self.text, "lm_head") else self.lm_head
        return head(hidden)

    def forward(self, batch: dict) -> dict:
        hidden, _ = self.joint(self.image_tokens(batch["pixel_values"]), batch["input_ids"],
                               batch["attention_mask"], prefix_lm=True)
        # Image positions predict nothing: the loss is over the text only.
        loss = lm_loss(self.logits(hidden), batch["input_ids"], batch["attention_mask"])
        return {"loss": loss, "lm_loss": loss}

    def image_context(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_tokens(pixel_values)

    def decode_step(self, image_tokens, input_ids, past, use_cache):
        # With a cache the first step has put the image tokens into `past`; later steps
        # only need to know how many there are.
        hidden, past = self.joint(image_tokens, input_ids, None, True, past, use_cache)
        return self.logits(hidden), past


@FUSIONS.register("early_vqa", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"), "num_answers": 5})
def early_vqa(**kwargs) -> EarlyFusionVQA:
    return EarlyFusionVQA(**kwargs)


@FUSIONS.register("early_captioner", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "decoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("decoder")})
def early_captioner(**kwargs) -> EarlyFusionCaptioner:
    return EarlyFusionCaptioner(**kwargs)
