"""Text models: token embedding + positions + pre-norm blocks + final LayerNorm.

"encoder" attends bidirectionally (BERT-like); with cross_attention=True every block
also attends to image tokens, which makes it an ALBEF-style fusion encoder.
"decoder" is causal (GPT-like), with an LM head tied to the token embedding, and
supports a KV cache for decoding.

Both expose `encode(...) -> (B, T, dim)` hidden states, so a task model can pool either.
Padding masks are (B, S), 1 for real tokens; sequences are expected right-padded.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from vislm.models.argmax_head import ExactArgmaxHead
from vislm.models.kv_cache import cache_length
from vislm.models.layers import (Block, dropout, few_row_linear, init_transformer_weights,
                                 mask_at, self_attention_mask, settle)
from vislm.models.positions import is_additive, make_positions
from vislm.registry import TEXT_MODELS

# Per layer: (self_k, self_v, cross_k, cross_v), each (B, H, S, D); cross entries are
# None without cross-attention.
Past = Tuple[tuple, ...]


class TextTransformer(nn.Module):
    causal = False

    def __init__(self, vocab_size: int, dim: int = 256, depth: int = 4, heads: int = 4,
                 max_len: int = 64, position: str = "learned", attn_impl: str = "sdpa",
                 dropout: float = 0.0, cross_attention: bool = False, pad_id: int = 0,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_len = max_len
        self.pad_id = pad_id
        self.cross_attention = cross_attention
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.positions = make_positions(position, max_len, dim, heads)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout, attn_impl, cross_attention) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        init_transformer_weights(self, depth)

    def _hidden(self, input_ids, attention_mask=None, image_tokens=None, image_mask=None,
                past: Optional[Past] = None, use_cache: bool = False,
                at: Optional[torch.Tensor] = None):
        """Hidden states (B, T, dim) and the new cache (None unless use_cache).

        With `past`, input_ids are the new tokens only and attention_mask (if any) covers
        past and new tokens, (B, past_len + T). With `at` (B,) positions (no past, no
        cache), the hidden states at those positions only, (B, 1, dim): the last block
        runs for them alone (Block's `at`).
        """
        if image_tokens is not None and not self.cross_attention:
            raise ValueError("image_tokens given to a text model built without cross_attention")
        B, T = input_ids.shape
        start = 0 if past is None else cache_length(past)
        if attention_mask is not None and attention_mask.shape != (B, start + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                             f"expected {(B, start + T)} (past and new tokens)")
        x = self.tok_emb(input_ids)
        rope = None
        if is_additive(self.positions):
            x = x + self.positions(start, T)
        else:
            rope = self.positions(start, T)
        x = dropout(self.drop, x)
        mask, causal = self_attention_mask(attention_mask, T, start + T, self.causal)
        blocks = self.blocks if at is None else self.blocks[:-1]
        caches = []
        for i, block in enumerate(blocks):
            x, cache = block(x, mask, causal, rope, image_tokens, image_mask,
                             None if past is None else past[i], use_cache, defer=True)
            caches.append(cache)
        if at is not None:
            query_mask = mask_at(attention_mask, at, T, self.causal)
            x, _ = self.blocks[-1](x, query_mask, False, rope, image_tokens, image_mask, at=at)
        return self.ln_f(settle(x)), (tuple(caches) if use_cache else None)

    def encode(self, input_ids, attention_mask=None, image_tokens=None, image_mask=None):
        return self._hidden(input_ids, attention_mask, image_tokens, image_mask)[0]

    def encode_at(self, input_ids, positions, attention_mask=None, image_tokens=None,
                  image_mask=None):
        """`encode(...)` at one position per row, (B, dim), for a caller that pools a
        single token ([CLS] first, or the last real token): the same numbers, with the
        last block computed for those positions only."""
        B, T = input_ids.shape
        if positions.shape != (B,):
            raise ValueError(f"positions has shape {tuple(positions.shape)}, expected {(B,)}")
        if not self.blocks:
            return self.encode(input_ids, attention_mask, image_tokens, image_mask)[
                torch.arange(B, device=input_ids.device), positions]
        return self._hidden(input_ids, attention_mask, image_tokens, image_mask,
                            at=positions)[0][:, 0]


class TextEncoder(TextTransformer):
    causal = False

    def forward(self, input_ids, attention_mask=None, image_tokens=None, image_mask=None):
        return self.encode(input_ids, attention_mask, image_tokens, image_mask)


class TextDecoder(TextTransformer):
    causal = True

    def __init__(self, vocab_size: int, **kwargs):
        super().__init__(vocab_size, **kwargs)
        self.lm_head = nn.Linear(self.dim, vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): one matrix embeds tokens and scores them.
        self.lm_head.weight = self.tok_emb.weight
        self._argmax_head = ExactArgmaxHead()  # greedy decoding's choice; not a parameter
        # False: greedy decoding computes all float32 logits (same tokens, slower).
        self.screened_greedy = True

    def forward(self, input_ids, attention_mask=None, image_tokens=None, past=None,
                use_cache=False, image_mask=None):
        """Returns (logits (B, T, vocab), new_past or None).

        With `past`, image_tokens may be omitted: the cache holds their keys/values.
        """
        h, new_past = self.hidden_states(input_ids, attention_mask, image_tokens, past,
                                         use_cache, image_mask)
        return few_row_linear(h, self.lm_head.weight), new_past

    def hidden_states(self, input_ids, attention_mask=None, image_tokens=None, past=None,
                      use_cache=False, image_mask=None):
        """`forward` without the LM head: (final hidden states (B, T, dim), new_past)."""
        return self._hidden(input_ids, attention_mask, image_tokens, image_mask, past, use_cache)

    def greedy_tokens(self, hidden):
        """argmax of the LM head's logits for hidden states (B, dim), without computing
        them all in float32 (vislm.models.argmax_head)."""
        if not self.screened_greedy:
            return few_row_linear(hidden, self.lm_head.weight).argmax(dim=-1)
        return self._argmax_head(hidden, self.lm_head.weight)


_TINY_TEXT = {"vocab_size": 32, "dim": 16, "depth": 1, "heads": 2, "max_len": 16}


@TEXT_MODELS.register("encoder", tiny=_TINY_TEXT)
def encoder(**kwargs) -> TextEncoder:
    return TextEncoder(**kwargs)


@TEXT_MODELS.register("decoder", tiny=_TINY_TEXT)
def decoder(**kwargs) -> TextDecoder:
    return TextDecoder(**kwargs)
