"""Vision encoders: images (B, 3, H, W) -> image tokens (B, N, dim).

Every encoder exposes `.dim`, `.image_size` and `.num_tokens(image_size)`, so the
fusion models can attach any of them to any text model.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislm.models import onednn_linear
from vislm.models.layers import Block, dropout, init_transformer_weights, settle
from vislm.registry import VISION_ENCODERS


# -----------------------------------------------------------------------------
# Small residual CNN

def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # GroupNorm does not depend on the batch, which matters for tiny or contrastive
        # batches; 8 groups (or fewer for narrow layers) is the usual choice.
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = _norm2d(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = _norm2d(norm, out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                _norm2d(norm, out_channels))

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Stem conv (stride 2), then stages of basic blocks; stages 1 and 2 halve the grid,
    so the output grid is image_size / 8 (8x8 at 64x64). The grid cells become tokens:
    a linear map to `dim` plus a learned position embedding per cell."""

    STRIDE = 8

    def __init__(self, image_size: int = 64, dim: int = 256, depth: int = 1,
                 widths: Sequence[int] = (32, 64, 128, 256), norm: str = "batch",
                 attn_impl: Optional[str] = None):
        super().__init__()
        # attn_impl is accepted (and unused) so one config can set it on every tower.
        del attn_impl
        if len(widths) < 3:
            raise ValueError(f"cnn needs at least 3 stage widths, got {list(widths)}")
        if image_size % self.STRIDE:
            raise ValueError(f"cnn image_size must be a multiple of {self.STRIDE}, got {image_size}")
        self.image_size = image_size
        self.dim = dim
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  _norm2d(norm, widths[0]), nn.ReLU())
        stages, channels = [], widths[0]
        for i, width in enumerate(widths):
            stride = 2 if i in (1, 2) else 1
            for j in range(depth):
                stages.append(BasicBlock(channels, width, stride if j == 0 else 1, norm))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.to_tokens = nn.Linear(channels, dim)
        self.pos = nn.Parameter(torch.randn(1, self.num_tokens(), dim) * 0.02)
        self.ln = nn.LayerNorm(dim)
        # On the CPU, run the convolutions on channels-last (NHWC) activations: oneDNN's
        # kernels work in that layout and, given NCHW, convert every layer's input and
        # output. Same sums; measured 7% (bf16) and 10% (float32) faster training steps
        # of the demo's VQA model. The weights stay NCHW (checkpoints unchanged).
        self.channels_last = True

    def num_tokens(self, image_size: Optional[int] = None) -> int:
        return ((image_size or self.image_size) // self.STRIDE) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.channels_last and pixel_values.device.type == "cpu":
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        grid = self.stages(self.stem(pixel_values))  # (B, C, g, g)
        # Channels-last, this is already the (B, g*g, C) token layout: no copy.
        tokens = self.to_tokens(grid.flatten(2).transpose(1, 2))
        return self.ln(tokens + self.pos)


# -----------------------------------------------------------------------------
# Vision Transformer

class ViTEncoder(nn.Module):
    """Patch embedding, optional CLS token, learned positions, pre-norm blocks
    (Dosovitskiy et al. 2021)."""

    def __init__(self, image_size: int = 64, patch_size: int = 8, dim: int = 192, depth: int = 4,
                 heads: int = 3, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_impl: str = "sdpa", cls_token: bool = True):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.patch = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, self.num_tokens(), dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout, attn_impl) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        init_transformer_weights(self, depth)

    def num_tokens(self, image_size: Optional[int] = None) -> int:
        patches = ((image_size or self.image_size) // self.patch_size) ** 2
        return patches + (self.cls is not None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self._tokens(pixel_values)
        for block in self.blocks:
            x, _ = block(x, defer=True)
        return self.ln_f(settle(x))

    def cls_embedding(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`forward(pixel_values)[:, 0]`, the CLS token's output (B, dim), with the last
        block computed for that token alone: the only output a CLS-pooled image embedding
        reads (Block's `at`)."""
        if self.cls is None:
            raise ValueError("cls_embedding needs a ViT built with cls_token=True")
        x = self._tokens(pixel_values)
        if not self.blocks:
            return self.ln_f(x[:, 0])
        for block in self.blocks[:-1]:
            x, _ = block(x, defer=True)
        first = torch.zeros(pixel_values.size(0), dtype=torch.long, device=pixel_values.device)
        x, _ = self.blocks[-1](x, at=first)
        return self.ln_f(x)[:, 0]

    def _tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embeddings with the CLS token in front and positions added: (B, N, dim)."""
        x = self._embed_patches(pixel_values)  # (B, N, dim)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1)
        return dropout(self.drop, x + self.pos)

    def _embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patch convolution (kernel = stride = patch) as the matmul it is: cut the
        image into patches, flatten each in (channel, row, column) order, project with
        the convolution's own weight. Same sums as the convolution, which on CPU ran
        fwd + bwd 1.5x slower than this matmul. Edge pixels that fill no whole patch
        are dropped, as the strided convolution drops them."""
        B, C, H, W = pixel_values.shape
        p = self.patch_size
        device = pixel_values.device.type
        if torch.is_autocast_enabled(device) and pixel_values.is_floating_point():
            # The matmul casts the patches to the autocast dtype anyway; casting first
            # makes the strided cut into patches move half the bytes. Same values.
            pixel_values = pixel_values.to(torch.get_autocast_dtype(device))
        rows, cols = H // p, W // p
        x = pixel_values[:, :, :rows * p, :cols * p]
        x = x.reshape(B, C, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(B, rows * cols, C * p * p)
        return onednn_linear.linear(x, self.patch.weight.flatten(1), self.patch.bias)


# -----------------------------------------------------------------------------
# Registration

@VISION_ENCODERS.register("cnn", tiny={"image_size": 16, "dim": 16, "widths": (8, 8, 16)})
def cnn(**kwargs) -> ResNetEncoder:
    return ResNetEncoder(**kwargs)


@VISION_ENCODERS.register("vit", tiny={"image_size": 16, "patch_size": 8, "dim": 16, "depth": 1,
                                       "heads": 2})
def vit(**kwargs) -> ViTEncoder:
    return ViTEncoder(**kwargs)
