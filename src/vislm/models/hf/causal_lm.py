"""A Hugging Face causal LM (GPT-2, Llama, Qwen, Phi, ...) as a vislm decoder.

Decoding goes through vislm.generation, whose step functions look like

    model_step(input_ids (B, t), past, use_cache) -> (logits (B, t, V), past)

`step_function` builds one on top of the model's own KV cache. transformers 5 keeps that
cache in a `Cache` object (DynamicCache) that the model grows in place; vislm's decoding
only passes it back, so the one thing to add is beam search's reordering, which
`reorder_cache` does with the Cache's own method (vislm's generic reorder walks tuples of
tensors and would leave a Cache untouched).

A step may start with a prefix of embeddings (image tokens, a left-padded chat prompt):
the attention mask and the position ids then come from the prefix's padding mask, so a
left-padded row computes exactly what it would alone.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Optional

import torch

from vislm.errors import ConfigError
from vislm.generation import decode
from vislm.models.hf import loading
from vislm.models.hf.text import check_text_options, fit_vocabulary
from vislm.models.hf.towers import HFTextTower
from vislm.registry import TEXT_MODELS


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only: 0 for the first real token of every row,
    whatever padding precedes it (transformers' own rule for left-padded generation)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def reorder_cache(cache, beam_idx: torch.Tensor):
    """vislm beam search's `reorder_past` for a transformers Cache (reordered in place)."""
    cache.reorder_cache(beam_idx)
    return cache


class HFCausalLM(HFTextTower):
    causal = True
    registry_name = "hf_causal_lm"

    def __init__(self, path: Optional[str] = None, config: Optional[dict] = None,
                 vocab_size: Optional[int] = None, pad_id: Optional[int] = None,
                 max_len: Optional[int] = None, cross_attention: bool = False,
                 freeze: bool = False, attn_impl: Optional[str] = None,
                 lora: Optional[dict] = None, **unknown):
        super().__init__()
        check_text_options(self.registry_name, cross_attention, unknown)
        self.model = loading.build("AutoModelForCausalLM", path, config, attn_impl,
                                   sub_config="text_config")
        fit_vocabulary(self.model, vocab_size)
        hf_config = self.model.config
        self.dim = hf_config.hidden_size
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.pad_id = pad_id if pad_id is not None else (hf_config.pad_token_id or 0)
        # GPT-2 says n_positions, others max_position_embeddings (the config maps both).
        self.max_positions = getattr(hf_config, "max_position_embeddings", None) or 2048
        self.max_len = max_len or self.max_positions
        self.attn_impl = attn_impl
        # transformers 5.x renamed past_key_values to cache (argument and output field);
        # take what this version has.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._set_training(freeze, lora)

    # -------------------------------------------------------------------------
    # The model's parts, for the bridges

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The list of decoder layers (GPT-2's transformer.h, Llama's model.layers, ...):
        the ModuleList as long as the config's layer count."""
        depth = self.model.config.num_hidden_layers
        for module in self.model.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
                return module
        raise ConfigError(f"hf_causal_lm: cannot find the {depth} decoder layers of a "
                          f"'{self.model.config.model_type}' model")

    # -------------------------------------------------------------------------
    # Running it

    def run(self, inputs_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.Tensor] = None, past=None, use_cache: bool = False):
        """Logits (B, T, V) for embeddings (B, T, C) following `past` (a Cache or None);
        attention_mask covers past and new positions. Returns (logits, cache or None)."""
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=use_cache,
                         **{self._cache_arg: past})
        return out.logits, (getattr(out, self._cache_arg) if use_cache else None)

    def forward(self, input_ids, attention_mask=None, image_tokens=None, past=None,
                use_cache=False, image_mask=None):
        """vislm's decoder interface: (logits, past); with `past`, input_ids are the new
        tokens and attention_mask (if any) covers past and new tokens."""
        if image_tokens is not None:
            raise ConfigError("hf_causal_lm has no cross-attention: it cannot take image "
                              "tokens (the hf_prefix_lm and hf_flamingo bridges add images)")
        seen = 0 if past is None else past.get_seq_length()
        if attention_mask is None:
            positions = torch.arange(seen, seen + input_ids.size(1), device=input_ids.device)
            positions = positions.expand(input_ids.size(0), -1)
        else:
            positions = positions_from_mask(attention_mask)[:, seen:]
        return self.run(self.embed(input_ids), attention_mask, positions, past, use_cache)

    def encode(self, input_ids, attention_mask=None, image_tokens=None, image_mask=None):
        """Final hidden states (B, T, dim), after the model's last norm."""
        if image_tokens is not None:
            raise ConfigError("hf_causal_lm has no cross-attention: it cannot take image tokens")
        return self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state

    def step_function(self, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                      scope: Callable = contextlib.nullcontext):
        """A vislm.generation step whose sequence starts with `prefix` (B, L, C) embeddings
        (padding marked 0 in prefix_mask (B, L)), then the decoded token ids. Each call to
        the model runs inside `scope()` (the gated bridge attaches the image there)."""
        B, L = prefix_mask.shape

        def step(input_ids, past, use_cache):
            x = self.embed(input_ids)
            if past is None:  # the first cached step, or any uncached one
                x = torch.cat([prefix.to(x.dtype), x], dim=1)
            seen = 0 if past is None else past.get_seq_length()
            mask = torch.cat([prefix_mask, prefix_mask.new_ones(B, seen + x.size(1) - L)], dim=1)
            with scope():
                return self.run(x, mask, positions_from_mask(mask)[:, seen:], past, use_cache)

        return step

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int,
                 pad_id: Optional[int] = None, use_cache: bool = True, **options):
        """Continue unpadded prompts (B, P) through vislm's decoding; `options` as
        `generate_with` (num_beams, do_sample, return_logits, ...)."""
        B = prompt_ids.size(0)
        empty = self.embed(prompt_ids[:, :0])
        return generate_with(self, lambda K: self.step_function(
            empty.repeat_interleave(K, 0), prompt_ids.new_ones(B * K, 0)), prompt_ids,
            max_new_tokens, eos_id, self.pad_id if pad_id is None else pad_id, use_cache,
            prefix_length=0, **options)


def generate_with(lm: HFCausalLM, make_step: Callable[[int], Callable], prompt_ids: torch.Tensor,
                  max_new_tokens: int, eos_id: int, pad_id: int, use_cache: bool = True,
                  prefix_length: int = 0, return_logits: bool = False, *, num_beams: int = 1,
                  length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                  do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, generator: Optional[torch.Generator] = None):
    """Pick the strategy as vislm's Captioner does (greedy; beam search when num_beams > 1
    or no_repeat_ngram_size > 0; sampling with do_sample) and decode.

    `make_step(K)` returns the step function with every per-row input repeated K times
    (beam j of row b at b * K + j, as beam search lays them out). New tokens are capped
    so that prefix + prompt + new fit the model's positions.
    """
    beam = num_beams > 1 or no_repeat_ngram_size > 0
    if do_sample and beam:
        raise ValueError("do_sample cannot be combined with num_beams > 1 or "
                         "no_repeat_ngram_size: beam sampling is not implemented")
    if return_logits and (beam or do_sample):
        raise ValueError("return_logits is only supported by greedy decoding")
    room = lm.max_positions - prefix_length - prompt_ids.size(1)
    options = dict(max_new_tokens=max(0, min(max_new_tokens, room)), eos_id=eos_id,
                   pad_id=pad_id, use_cache=use_cache)
    if do_sample:
        strategy = "sample"
        options.update(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    elif beam:
        strategy = "beam"
        options.update(num_beams=num_beams, length_penalty=length_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size, reorder_past=reorder_cache)
    else:
        strategy = "greedy"
        options.update(return_logits=return_logits)
    step = make_step(num_beams if beam else 1)
    return decode(step, prompt_ids, strategy, **options)


TINY_GPT2 = {"model_type": "gpt2", "n_embd": 16, "n_layer": 2, "n_head": 2, "vocab_size": 32,
             "n_positions": 64, "bos_token_id": 1, "eos_token_id": 2}


@TEXT_MODELS.register("hf_causal_lm", tiny={"config": TINY_GPT2})
def hf_causal_lm(**kwargs) -> HFCausalLM:
    return HFCausalLM(**kwargs)
