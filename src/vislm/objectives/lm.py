"""Language-modelling loss: next-token cross-entropy (Radford et al. 2018, "Improving
Language Understanding by Generative Pre-Training")."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE = -100


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean CE of predicting input_ids[:, t + 1] from logits[:, t] over real targets.

    logits (B, T, V); input_ids (B, T); attention_mask (B, T), 1 for real tokens: a
    target that is padding is ignored, so pad tokens never affect the loss.
    """
    targets = input_ids[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, IGNORE)
    V = logits.size(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), targets.reshape(-1),
                           ignore_index=IGNORE)
