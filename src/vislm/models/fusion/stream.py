"""Running a text model's own layers over a sequence that also holds image tokens.

Several fusions (single-stream early fusion, the projector prefix, Flamingo's gated
layers) reuse the text model's embedding, blocks and final norm, but cannot call its
`forward`: they put image tokens into the sequence or insert layers between its blocks.
These helpers do the steps of `TextTransformer._hidden` one at a time, so that such a
fusion runs exactly the same operations on the text as the bare text model does.

Position convention: image tokens already carry the vision encoder's own positions, so
they get none from the text model (no additive table, and the identity rotation under
rotary positions); text tokens keep positions 0, 1, ... whatever precedes them. A text
model pre-trained on text alone thus sees its text at the positions it was trained
with, and `max_len` bounds the text only, not image tokens plus text.

`CaptionGenerator` then gives every such captioner the `generate` of `Captioner`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.generation import decode, plan_decoding
from vislm.models.layers import causal_mask, padding_mask
from vislm.models.positions import is_additive


def text_layout(text: nn.Module) -> dict:
    """The heads, MLP ratio, dropout and attention kernel of a text model, so that layers a
    fusion adds next to it are built alike."""
    block = text.blocks[0]
    return {"heads": block.attn.heads, "mlp_ratio": block.mlp.fc.out_features / text.dim,
            "dropout": block.attn.dropout, "attn_impl": block.attn.attn_impl}


OWN_LAYERS = ("tok_emb", "positions", "drop", "blocks", "ln_f")


def require_own_layers(text: nn.Module, name: str, fusion: str) -> None:
    """Fail at build time, not at the first batch, for a text model without vislm's layers
    (a Hugging Face tower wraps its own, which these helpers cannot step through)."""
    missing = [part for part in OWN_LAYERS if not hasattr(text, part)]
    if missing:
        raise ConfigError(f"{fusion} runs the text model's own layers, and text model "
                          f"'{name}' has no {', '.join(missing)}; use text 'encoder' or "
                          f"'decoder' (Hugging Face models have their own bridges)")


def require_lm(text: nn.Module, name: str, fusion: str) -> None:
    require_own_layers(text, name, fusion)
    if not getattr(text, "causal", False) or not hasattr(text, "lm_head"):
        raise ConfigError(f"{fusion} needs a causal text model with an LM head; "
                          f"text model '{name}' is not one")


def text_embeddings(text: nn.Module, input_ids: torch.Tensor, start: int):
    """Token embeddings of positions start.. (additive positions included), and the rotary
    (cos, sin) for them or None: the first steps of `_hidden`, before dropout."""
    x = text.tok_emb(input_ids)
    if is_additive(text.positions):
        return x + text.positions(start, input_ids.size(1)), None
    return x, text.positions(start, input_ids.size(1))


def prepend_unrotated(rope, num_image: int):
    """Extend rotary tables with `num_image` leading positions rotated by angle 0 (cos 1,
    sin 0): an exact identity, so image tokens keep the vision encoder's positions."""
    if rope is None or num_image == 0:
        return rope
    cos, sin = rope
    return (torch.cat([cos.new_ones(num_image, cos.size(-1)), cos]),
            torch.cat([sin.new_zeros(num_image, sin.size(-1)), sin]))


def joint_key_mask(attention_mask: Optional[torch.Tensor], num_image: int):
    """(B, N + S) key mask: image tokens are never padding; None stays None."""
    if attention_mask is None:
        return None
    ones = attention_mask.new_ones(attention_mask.size(0), num_image)
    return torch.cat([ones, attention_mask], dim=1)


def prefix_lm_mask(num_prefix: int, num_queries: int, num_keys: int,
                   key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mask for the last `num_queries` of `num_keys` positions, the first `num_prefix` of
    which are image tokens: every query sees every image token and the text causally; an
    image query (which comes before any text) thus sees the image tokens only (UniLM's
    prefix-LM mask, as in SimVLM). Returns (1 | B, 1, T, S) booleans, True = may attend."""
    device = None if key_mask is None else key_mask.device
    visible = causal_mask(num_queries, num_keys, device)
    visible = visible | (torch.arange(num_keys, device=device) < num_prefix)[None, :]
    keys = padding_mask(key_mask)
    return visible[None, None] if keys is None else visible[None, None] & keys


def run_blocks(blocks, x, mask=None, causal=False, rope=None, past=None, use_cache=False):
    """The text model's blocks, self-attention only; returns (x, cache tuple or None)."""
    caches = []
    for i, block in enumerate(blocks):
        x, cache = block(x, mask, causal, rope, past=None if past is None else past[i],
                         use_cache=use_cache)
        caches.append(cache)
    return x, (tuple(caches) if use_cache else None)


class CaptionGenerator:
    """Mixin giving a captioning model the `generate` of `Captioner` (same arguments, same
    decoding strategies). The model supplies

        image_context(pixel_values) -> (B, N, C)   what decoding conditions on, computed once
        decode_step(context, input_ids, past, use_cache) -> (logits, past)

    and its cache must be nested tuples of tensors whose dim 0 is the batch (reordered
    by beam search with `vislm.generation.reorder_cache`).
    """

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int, bos_id: int,
                 eos_id: int, pad_id: Optional[int] = None, use_cache: bool = True,
                 return_logits: bool = False, *, num_beams: int = 1,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, generator: Optional[torch.Generator] = None):
        """Captions (B, S <= max_new_tokens), BOS excluded, EOS kept, pad after.

        Greedy by default; num_beams > 1 (or no_repeat_ngram_size > 0) runs beam search,
        do_sample=True samples (see vislm.generation). return_logits is greedy only. S is
        also capped at the text model's max_len (text positions start at 0 after any
        image tokens). Runs in whatever mode the model is in; call .eval() first.
        """
        strategy, options = plan_decoding(
            min(max_new_tokens, self.text.max_len), eos_id, self.text.pad_id if pad_id is None else pad_id,
            use_cache, return_logits, num_beams, length_penalty, no_repeat_ngram_size, do_sample,
            temperature, top_k, top_p, generator)
        context = self.image_context(pixel_values)
        if strategy == "beam":
            # Row b * num_beams + j is beam j of image b: every beam needs its image.
            context = context.repeat_interleave(num_beams, dim=0)

        def step(input_ids, past, use_cache):
            return self.decode_step(context, input_ids, past, use_cache)

        prompt = torch.full((pixel_values.size(0), 1), bos_id, dtype=torch.long,
                            device=pixel_values.device)
        return decode(step, prompt, strategy, **options)
