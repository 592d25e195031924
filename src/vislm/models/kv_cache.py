"""A pre-allocated ("static") KV cache for decoding.

The default cache grows by concatenation: every step allocates new (B, H, t, D) key and
value tensors and copies the whole past into them, so decoding S tokens copies O(S^2)
per layer. A static cache allocates (B, H, capacity, D) once, on the first step, and each
step writes only its new keys and values in place; attention reads the filled prefix as a
view. Same keys, same values, same tokens (tests/test_kv_cache.py).

Layout: the text models' cache is one tuple per layer, (k, v, cross_k, cross_v). A static
cache keeps that shape with the self-attention pair replaced by (StaticKV, None), so the
blocks tell the two apart by one isinstance check; cross-attention entries are filled on
the first step exactly as in the concatenating cache.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


class StaticKV:
    """One layer's self-attention keys and values, written in place into fixed buffers."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        # Allocated by the first append, which knows batch, heads, head dim, dtype, device.
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, t, D) after the cached ones; return all keys and values so far
        (views of the buffers, no copy)."""
        if self.k is None:
            B, H, _, D = k.shape
            self.k = k.new_empty(B, H, self.capacity, D)
            self.v = v.new_empty(B, H, self.capacity, D)
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"static KV cache holds {self.capacity} positions, "
                             f"asked to store {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i becomes old row rows[i] (the filled part only)."""
        if self.k is None:
            return
        filled = slice(0, self.length)
        self.k[:, :, filled] = self.k[:, :, filled].index_select(0, rows)
        self.v[:, :, filled] = self.v[:, :, filled].index_select(0, rows)


def static_cache(num_layers: int, capacity: int) -> tuple:
    """An empty static cache for a text model with `num_layers` blocks, room for
    `capacity` positions (prompt + generated tokens)."""
    return tuple((StaticKV(capacity), None, None, None) for _ in range(num_layers))


def cache_length(past) -> int:
    """Positions held by a cache of either kind (the offset of the next token)."""
    first = past[0][0]
    return first.length if isinstance(first, StaticKV) else first.size(2)


def reorder_static(past, rows: torch.Tensor):
    """reorder_past for beam search over a static cache: self-attention buffers in place;
    cross-attention entries are per image and identical across an image's beams."""
    for layer in past:
        layer[0].reorder(rows)
    return past
