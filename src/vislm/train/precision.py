"""Choices that depend on the training precision and change speed, never results.

bf16 attention: under bf16 autocast on CPU, the backward of PyTorch's fused attention
kernel (scaled_dot_product_attention) is several times slower than the plain
softmax(q k^T) v, whose matmuls run as bf16 GEMMs. Measured on the benchmark's dual
encoder (2-core AVX-512 CPU, batch 64): the whole bf16 training step went from 107 to
169 samples/s with "math" attention; in float32 the two were equal (57 vs 56). Both paths
compute the same attention (tests/test_precision.py bounds the difference), so the
trainer switches to "math" for a bf16 run and puts the model's own setting back after.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from vislm.models.layers import CrossAttention, SelfAttention

# The attention implementation each precision trains fastest with on CPU; None keeps the
# model's own setting.
FASTEST_ATTENTION = {"bf16": "math", "fp32": None}


@contextmanager
def attention_for_precision(model: torch.nn.Module, precision: str,
                            device_type: str = "cpu") -> Iterator[torch.nn.Module]:
    """Within the block, vislm attention layers of `model` use the implementation that
    trains fastest at `precision` (CPU only: CUDA's fused kernels are the fast ones there)."""
    impl = FASTEST_ATTENTION.get(precision) if device_type == "cpu" else None
    layers = [m for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))]
    saved = [layer.attn_impl for layer in layers]
    if impl is not None:
        for layer in layers:
            layer.attn_impl = impl
    try:
        yield model
    finally:
        for layer, previous in zip(layers, saved):
            layer.attn_impl = previous
