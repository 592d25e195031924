"""VQA loss: binary cross-entropy against VQAv2 soft answer scores (Anderson et al. 2018,
"Bottom-Up and Top-Down Attention for Image Captioning and Visual Question Answering")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vqa_soft_bce(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits per answer, summed over answers and averaged over the batch.

    logits, scores: (B, num_answers); scores in [0, 1] (min(#humans who gave it / 3, 1)).
    Summing over answers (rather than averaging) is the element mean scaled by
    num_answers, as in the paper's code; it keeps gradients from shrinking as the
    answer vocabulary grows.
    """
    return F.binary_cross_entropy_with_logits(logits, scores.to(logits.dtype)) * logits.size(1)
