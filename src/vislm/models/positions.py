"""Position encodings for token sequences.

Two kinds: *additive* ones (sinusoidal, learned) return a (T, C) table that is added to
the token embeddings; *rotary* returns (cos, sin) that rotate queries and keys inside
attention, so attention scores depend only on relative position. All take a `start`
offset so that decoding with a KV cache continues at the right position.
"""

from __future__ import annotations

import torch
import torch.nn as nn

POSITIONS = ("sinusoidal", "learned", "rotary")


def _check_range(start: int, length: int, max_len: int) -> None:
    if start + length > max_len:
        raise ValueError(f"positions {start}..{start + length - 1} exceed max_len {max_len}")


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos table of Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/C)),
    PE[p, 2i+1] = cos(same angle)."""

    def __init__(self, max_len: int, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
        self.max_len = max_len
        angles = torch.arange(max_len)[:, None] / base ** (torch.arange(0, dim, 2) / dim)
        table = torch.empty(max_len, dim)
        table[:, 0::2] = torch.sin(angles)
        table[:, 1::2] = torch.cos(angles)
        # Not persistent: it is a function of the config, so checkpoints need not hold it.
        self.register_buffer("table", table, persistent=False)

    def forward(self, start: int, length: int) -> torch.Tensor:
        _check_range(start, length, self.max_len)
        return self.table[start:start + length]


class LearnedPositions(nn.Module):
    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.randn(max_len, dim) * 0.02)

    def forward(self, start: int, length: int) -> torch.Tensor:
        _check_range(start, length, self.max_len)
        return self.weight[start:start + length]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer), "rotate half" layout:
    channel i is paired with channel i + D/2 and rotated by angle p * base^(-2i/D)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim, got {head_dim}")
        self.max_len = max_len
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2) / head_dim)
        angles = torch.arange(max_len)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # (max_len, head_dim)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int):
        _check_range(start, length, self.max_len)
        return self.cos[start:start + length], self.sin[start:start + length]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, D) by the angles of its T positions."""
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


def make_positions(kind: str, max_len: int, dim: int, heads: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositions(max_len, dim)
    if kind == "learned":
        return LearnedPositions(max_len, dim)
    if kind == "rotary":
        return RotaryEmbedding(dim // heads, max_len)
    raise ValueError(f"position must be one of {POSITIONS}, got {kind!r}")


def is_additive(positions: nn.Module) -> bool:
    return not isinstance(positions, RotaryEmbedding)

