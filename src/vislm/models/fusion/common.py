"""What every task model needs: building the two towers from the registries, and
pooling a sequence of hidden states into one vector."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.registry import TEXT_MODELS, VISION_ENCODERS

POOLS = ("first", "mean", "last")


def build_towers(vision: str, vision_kwargs: Optional[dict], text: str,
                 text_kwargs: Optional[dict], cross_attention: bool):
    """Vision encoder and text model; the task decides whether text cross-attends."""
    text_kwargs = dict(text_kwargs or {})  # never mutate the caller's (or registry's) dict
    if text_kwargs.get("cross_attention", cross_attention) != cross_attention:
        raise ConfigError(f"text_kwargs.cross_attention={text_kwargs['cross_attention']} but this "
                          f"task needs cross_attention={cross_attention}")
    text_kwargs["cross_attention"] = cross_attention
    return (VISION_ENCODERS.create(vision, **dict(vision_kwargs or {})),
            TEXT_MODELS.create(text, **text_kwargs))


def projection(in_dim: int, out_dim: int) -> nn.Module:
    """Image tokens -> text width, only where the widths differ."""
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)


def default_pool(text_model: nn.Module) -> str:
    # In a causal model only the last token has seen the whole text (CLIP's EOT token);
    # in a bidirectional one the first (BOS/CLS) token has, as in BERT and ALBEF.
    return "last" if getattr(text_model, "causal", False) else "first"


def pool(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor], how: str) -> torch.Tensor:
    """(B, T, C) -> (B, C): the first token, the masked mean, or the last real token."""
    if how == "first":
        return hidden[:, 0]
    if how == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        weights = attention_mask.to(hidden.dtype)[:, :, None]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if how == "last":
        if attention_mask is None:
            return hidden[:, -1]
        T = hidden.size(1)
        # argmax of mask * (1..T) is the last real position, whatever the padding side.
        last = (attention_mask.long() * torch.arange(1, T + 1, device=hidden.device)).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ConfigError(f"pool must be one of {POOLS}, got {how!r}")
