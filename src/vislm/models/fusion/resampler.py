"""Perceiver resampler (Alayrac et al. 2022, "Flamingo: a Visual Language Model for
Few-Shot Learning"): a fixed number of learned latent queries cross-attend to the image
tokens, so any vision encoder, at any resolution, hands the language model the same
small number of tokens.

As in Flamingo, the keys and values of each layer come from the image tokens AND the
latents themselves, which lets the latents also exchange information with each other.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vislm.models.layers import MLP, CrossAttention, init_transformer_weights


class ResamplerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_impl: str = "sdpa"):
        super().__init__()
        self.ln_media = nn.LayerNorm(dim)
        self.ln_latents = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads, dropout, attn_impl)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(mlp_ratio * dim), dropout)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        q = self.ln_latents(latents)
        context = torch.cat([self.ln_media(media), q], dim=1)
        latents = latents + self.attn(q, context)[0]
        return latents + self.mlp(self.ln_mlp(latents))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, num_latents: int, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__()
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads, mlp_ratio, dropout, attn_impl)
                                    for _ in range(depth))
        init_transformer_weights(self.layers, depth)
        # Unit scale: the latents are layer-normalised before they are used as queries.
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) image tokens -> (B, num_latents, dim), whatever N is."""
        x = self.latents.expand(image_tokens.size(0), -1, -1).to(image_tokens.dtype)
        for layer in self.layers:
            x = layer(x, image_tokens)
        return self.ln_out(x)
