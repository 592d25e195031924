"""Image captioner: image tokens feed the cross-attention of a causal text decoder,
trained with next-token prediction and decoded with a KV cache (greedy, beam search or
sampling)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.generation import decode, plan_decoding
from vislm.models.fusion.common import build_towers, projection
from vislm.models.kv_cache import StaticKV, reorder_static, static_cache
# The module, not its function: lm_head_loss imports vislm.models, which imports this file
# (a process may import either first).
from vislm.objectives import lm_head_loss
from vislm.objectives.lm import lm_loss
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


class Captioner(nn.Module):
    def __init__(self, vision: str = "cnn", vision_kwargs: Optional[dict] = None,
                 text: str = "decoder", text_kwargs: Optional[dict] = None):
        super().__init__()
        self.vision, self.text = build_towers(vision, vision_kwargs, text, text_kwargs, True)
        if not getattr(self.text, "causal", False):
            raise ConfigError(f"captioner needs a causal text model with an LM head; "
                              f"text model '{text}' is not one")
        self.image_proj = projection(self.vision.dim, self.text.dim)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.vision(pixel_values))

    def forward(self, batch: dict) -> dict:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        tokens = self.image_tokens(batch["pixel_values"])
        head = getattr(self.text, "lm_head", None)
        if isinstance(head, nn.Linear) and head.bias is None:
            # The same loss without the (B, T, V) logits: see objectives/lm_head_loss.py.
            loss = lm_head_loss.lm_loss_from_hidden(self.text.encode(ids, mask, tokens), head.weight,
                                                    ids, mask)
        else:
            logits, _ = self.text(ids, mask, tokens)
            loss = lm_loss(logits, ids, mask)
        return {"loss": loss, "lm_loss": loss}

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int, bos_id: int, eos_id: int,
                 pad_id: Optional[int] = None, use_cache: bool = True,
                 return_logits: bool = False, *, num_beams: int = 1,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, generator: Optional[torch.Generator] = None,
                 static_kv: bool = True):
        """Captions (B, S <= max_new_tokens), BOS excluded, EOS kept, pad after.

        Greedy by default; num_beams > 1 (or no_repeat_ngram_size > 0) runs beam search,
        do_sample=True samples (see vislm.generation for the options). return_logits is
        greedy only. S is also capped at the decoder's max_len: it never saw longer
        captions. static_kv=False grows the KV cache by concatenation instead of writing
        into pre-allocated buffers (same tokens; see vislm.models.kv_cache). Runs in
        whatever mode the model is in; call .eval() first.
        """
        strategy, options = plan_decoding(
            min(max_new_tokens, self.text.max_len), eos_id, self.text.pad_id if pad_id is None else pad_id,
            use_cache, return_logits, num_beams, length_penalty, no_repeat_ngram_size, do_sample,
            temperature, top_k, top_p, generator)
        tokens = self.image_tokens(pixel_values)
        if strategy == "beam":
            # Beam search runs B * num_beams rows, beam j of image b at row b*num_beams + j,
            # so every beam gets its image's tokens (the cross-attention cache then holds
            # each image's keys/values num_beams times).
            tokens = tokens.repeat_interleave(num_beams, dim=0)

            def reorder(past, beam_idx):
                if isinstance(past[0][0], StaticKV):
                    return reorder_static(past, beam_idx)
                # Beams never move to another image and all beams of an image hold the same
                # image keys/values: only the self-attention cache needs reordering.
                return tuple((k.index_select(0, beam_idx), v.index_select(0, beam_idx), ck, cv)
                             for k, v, ck, cv in past)

            options.update(reorder_past=reorder)

        prompt = torch.full((pixel_values.size(0), 1), bos_id, dtype=torch.long,
                            device=pixel_values.device)
        capacity = prompt.size(1) + options["max_new_tokens"]

        # Plain greedy decoding needs no logits, only their argmax: the steps return
        # hidden states and the text model picks tokens exactly without all the logits.
        hidden_only = (strategy == "greedy" and not return_logits
                       and hasattr(self.text, "greedy_tokens"))
        if hidden_only:
            options.update(choose=self.text.greedy_tokens)

        def step(input_ids, past, use_cache):
            if past is None and use_cache and static_kv:
                past = static_cache(len(self.text.blocks), capacity)
            # With a cache, cross-attention reuses the image keys/values it holds.
            run = self.text.hidden_states if hidden_only else self.text
            return run(input_ids, image_tokens=tokens, past=past, use_cache=use_cache)

        return decode(step, prompt, strategy, **options)


@FUSIONS.register("captioner", tiny={
    "vision": "cnn", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("cnn"),
    "text": "decoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("decoder")})
def captioner(**kwargs) -> Captioner:
    return Captioner(**kwargs)
