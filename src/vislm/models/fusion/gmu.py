"""Gated Multimodal Unit (Arevalo et al. 2017, "Gated Multimodal Units for Information
Fusion"): each modality gets its own tanh feature, and a sigmoid gate computed from both
inputs decides, per feature, how much of each goes into the fused vector.

    h_v = tanh(W_v x_v)    h_t = tanh(W_t x_t)    z = sigmoid(W_z [x_v; x_t])
    h   = z * h_v + (1 - z) * h_t

Used as the `combine` of `LateFusionVQA` (registered as `gmu_vqa` in late.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class GatedMultimodalUnit(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, hidden: int):
        super().__init__()
        self.out_dim = hidden
        # No biases: the paper's equations have none.
        self.image_proj = nn.Linear(image_dim, hidden, bias=False)
        self.text_proj = nn.Linear(text_dim, hidden, bias=False)
        self.gate = nn.Linear(image_dim + text_dim, hidden, bias=False)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h_image = torch.tanh(self.image_proj(image))
        h_text = torch.tanh(self.text_proj(text))
        z = torch.sigmoid(self.gate(torch.cat([image, text], dim=-1)))
        # A convex combination per feature: the gate picks the modality, it cannot add.
        return z * h_image + (1 - z) * h_text
