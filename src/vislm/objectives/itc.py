"""Image-text contrastive loss: symmetric InfoNCE of CLIP (Radford et al. 2021, "Learning
Transferable Visual Models From Natural Language Supervision")."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def itc_targets(image_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) soft targets: row i spreads its mass uniformly over the captions whose
    image is the same as row i's, so two captions of one image are both positives."""
    same = (image_ids[:, None] == image_ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale,
             image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies.

    image_emb, text_emb: (B, E), L2-normalised, row i of each from the same example.
    logit_scale: the multiplier applied to cosine similarities (already exponentiated).
    image_ids: (B,) optional; without it only the diagonal pairs are positives.
    """
    logits = logit_scale * image_emb @ text_emb.t()  # (B images, B texts)
    if image_ids is None:
        targets = torch.arange(logits.size(0), device=logits.device)
    else:
        # The "same image" relation is symmetric, so one target matrix serves both ways.
        targets = itc_targets(image_ids.to(logits.device)).to(logits.dtype)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
