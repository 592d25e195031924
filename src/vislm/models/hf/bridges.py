"""Vision into a Hugging Face causal LM, two ways.

hf_prefix_lm (LLaVA, Liu et al. 2023, "Visual Instruction Tuning"): image tokens pass a
    projector (linear, or LLaVA-1.5's MLP) into the LM's embedding space and sit in the
    sequence where the prompt's <image> placeholder was.
hf_flamingo (Alayrac et al. 2022, "Flamingo"): gated cross-attention blocks, tanh gates
    at 0, run before the LM's decoder layers (attached with forward pre-hooks, so the
    LM's modules and weights stay exactly as loaded), fed by an optional Perceiver
    resampler. At init the model computes the bare LM's logits exactly.

Both reuse vislm's pieces (make_projector, GatedCrossAttentionBlock, PerceiverResampler)
and take batches two ways:
  captioning  {pixel_values, input_ids, attention_mask}, ids = BOS caption EOS: the image
              comes first and the loss covers the caption (BOS is given), as in vislm's
              captioners; `generate(pixel_values, max_new_tokens, bos_id, eos_id)`.
  chat        `ChatTemplate.encode` adds labels (-100 but on the answer) and the image's
              position; `generate(pixel_values, prompt=..., tokenizer=...)`.
Decoding runs through vislm.generation (greedy, beam search, sampling).
"""

from __future__ import annotations

import contextlib
import functools
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vislm.errors import ConfigError
from vislm.models.fusion.common import projection
from vislm.models.fusion.gated import GatedCrossAttentionBlock
from vislm.models.fusion.prefix import make_projector
from vislm.models.fusion.resampler import PerceiverResampler
from vislm.models.hf.causal_lm import HFCausalLM, generate_with, positions_from_mask
from vislm.models.hf.chat import DEFAULT_TEMPLATE, ChatTemplate
from vislm.models.hf.lora import log_parameter_counts
from vislm.models.layers import init_transformer_weights
from vislm.objectives.lm import IGNORE
from vislm.registry import FUSIONS, TEXT_MODELS, VISION_ENCODERS


def insert_at(x: torch.Tensor, block: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Row b of the result is x[b, :p] ++ block[b] ++ x[b, p:] with p = position[b];
    x (B, T, ...) and block (B, N, ...) -> (B, T + N, ...). One gather, so gradients flow
    to both."""
    T, N = x.size(1), block.size(1)
    j = torch.arange(T + N, device=x.device)[None, :]
    p = position.to(x.device)[:, None]
    source = torch.where(j < p, j, torch.where(j < p + N, T + j - p, j - N))
    both = torch.cat([x, block.to(x.dtype)], dim=1)
    if both.dim() == 3:
        source = source[..., None].expand(-1, -1, both.size(-1))
    return both.gather(1, source)


class HFBridge(nn.Module):
    """A vision tower (any vislm vision encoder) and an hf_causal_lm; subclasses decide how
    image features reach the LM (`image_features`, `_layout`, `_scope`)."""

    fusion_name = "hf_bridge"

    def __init__(self, vision: str, vision_kwargs: Optional[dict], text: str,
                 text_kwargs: Optional[dict], freeze_vision: bool, freeze_lm: bool,
                 template: str):
        super().__init__()
        self.vision = VISION_ENCODERS.create(vision, **dict(vision_kwargs or {}))
        self.text = TEXT_MODELS.create(text, **dict(text_kwargs or {}))
        if not isinstance(self.text, HFCausalLM):
            raise ConfigError(f"{self.fusion_name} bridges into a Hugging Face causal LM; "
                              f"text model '{text}' is not hf_causal_lm")
        self.template = ChatTemplate(template)
        self._frozen = [name for name, frozen in (("vision", freeze_vision), ("text", freeze_lm))
                        if frozen]

    def _freeze_towers(self) -> None:
        """Called by subclasses once every module exists. A frozen tower keeps its LoRA
        adapters trainable: they are there to learn."""
        for name in self._frozen:
            for param_name, param in getattr(self, name).named_parameters():
                if "lora_" not in param_name:
                    param.requires_grad_(False)
        log_parameter_counts(self, self.fusion_name)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self._frozen:
            tower = getattr(self, name)
            if not getattr(tower, "lora", None):
                tower.eval()  # no dropout, no batch-norm drift in a tower that does not learn
        return self

    # -------------------------------------------------------------------------
    # What subclasses provide

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _layout(self, features, input_ids, attention_mask, labels, image_position):
        """(embeddings, attention mask, labels or None) of the sequence the LM reads."""
        raise NotImplementedError

    def _scope(self, features):
        """A context-manager factory every LM call runs in."""
        return contextlib.nullcontext

    # -------------------------------------------------------------------------
    # Training

    def forward(self, batch: dict) -> dict:
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = batch.get("labels")
        if labels is None:  # captioning: every real token after BOS
            labels = input_ids.masked_fill(mask == 0, IGNORE)
            labels[:, 0] = IGNORE
        position = batch.get("image_position")
        if position is None:
            position = torch.zeros(input_ids.size(0), dtype=torch.long, device=input_ids.device)
        features = self.image_features(batch["pixel_values"])
        embeds, mask, labels = self._layout(features, input_ids, mask, labels, position)
        with self._scope(features)():
            logits, _ = self.text.run(embeds, mask, positions_from_mask(mask))
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=IGNORE)
        return {"loss": loss, "lm_loss": loss}

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int = 32,
                 bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                 pad_id: Optional[int] = None, use_cache: bool = True,
                 return_logits: bool = False, *, prompt=None, tokenizer=None, **options):
        """Generated ids (B, S <= max_new_tokens), prompt excluded, EOS kept, pad after.

        Captioning (no prompt): the image then BOS, as in training. Chat: `prompt` (one
        string for every image, or one per image) in the model's template, tokenized with
        `tokenizer` (bos/eos/pad default to its own). `options` pick the strategy as in
        vislm's Captioner: num_beams, length_penalty, no_repeat_ngram_size, do_sample,
        temperature, top_k, top_p, generator. Call .eval() first.
        """
        B, device = pixel_values.size(0), pixel_values.device
        if prompt is not None:
            if tokenizer is None:
                raise ValueError("generate(prompt=...) needs the tokenizer to encode it")
            prompts = [prompt] * B if isinstance(prompt, str) else list(prompt)
            encoded = self.template.encode(tokenizer, prompts, padding_side="left")
            input_ids, mask, position = (encoded[k].to(device) for k in
                                         ("input_ids", "attention_mask", "image_position"))
            eos_id = tokenizer.eos_id if eos_id is None else eos_id
            pad_id = tokenizer.pad_id if pad_id is None else pad_id
        else:
            if bos_id is None or eos_id is None:
                raise ValueError("captioning needs bos_id and eos_id (or pass prompt= and "
                                 "tokenizer= for a chat prompt)")
            input_ids = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
            mask = torch.ones_like(input_ids)
            position = torch.zeros(B, dtype=torch.long, device=device)
        features = self.image_features(pixel_values)
        prefix, prefix_mask, _ = self._layout(features, input_ids, mask, None, position)

        def make_step(K: int):
            # Beam j of row b sits at b * K + j: repeat every per-row input K times.
            def rep(t):
                return t.repeat_interleave(K, dim=0)
            return self.text.step_function(rep(prefix), rep(prefix_mask),
                                           self._scope(rep(features)))

        # Everything given sits in the prefix; decoding starts from an empty prompt.
        return generate_with(self.text, make_step, input_ids[:, :0], max_new_tokens, eos_id,
                             self.text.pad_id if pad_id is None else pad_id, use_cache,
                             prefix_length=prefix.size(1), return_logits=return_logits,
                             **options)

    def chat(self, pixel_values: torch.Tensor, prompt, tokenizer, max_new_tokens: int = 32,
             **options) -> List[str]:
        """Answers as text: `generate` with a prompt, decoded."""
        ids = self.generate(pixel_values, max_new_tokens, prompt=prompt, tokenizer=tokenizer,
                            **options)
        return [tokenizer.decode(row) for row in ids.tolist()]


# -----------------------------------------------------------------------------
# LLaVA

class HFPrefixLM(HFBridge):
    fusion_name = "hf_prefix_lm"

    def __init__(self, vision: str = "hf_vision", vision_kwargs: Optional[dict] = None,
                 text: str = "hf_causal_lm", text_kwargs: Optional[dict] = None,
                 projector: str = "mlp", freeze_vision: bool = True, freeze_lm: bool = True,
                 template: str = DEFAULT_TEMPLATE):
        super().__init__(vision, vision_kwargs, text, text_kwargs, freeze_vision, freeze_lm,
                         template)
        self.projector = make_projector(projector, self.vision.dim, self.text.dim)
        self._freeze_towers()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision(pixel_values))

    def _layout(self, features, input_ids, attention_mask, labels, image_position):
        B, N = features.shape[:2]
        embeds = insert_at(self.text.embed(input_ids), features, image_position)
        mask = insert_at(attention_mask, attention_mask.new_ones(B, N), image_position)
        if labels is not None:
            labels = insert_at(labels, labels.new_full((B, N), IGNORE), image_position)
        return embeds, mask, labels


# -----------------------------------------------------------------------------
# Flamingo

class HFFlamingo(HFBridge):
    """The image reaches every text token through the gated blocks (one image per
    example, so there is no need for Flamingo's per-image masking); the <image>
    placeholder of a chat prompt is simply dropped from the text."""

    fusion_name = "hf_flamingo"

    def __init__(self, vision: str = "hf_vision", vision_kwargs: Optional[dict] = None,
                 text: str = "hf_causal_lm", text_kwargs: Optional[dict] = None,
                 cross_every: int = 1, resampler_latents: int = 0, resampler_depth: int = 2,
                 gate_init: float = 0.0, freeze_vision: bool = True, freeze_lm: bool = True,
                 template: str = DEFAULT_TEMPLATE):
        super().__init__(vision, vision_kwargs, text, text_kwargs, freeze_vision, freeze_lm,
                         template)
        if cross_every < 1:
            raise ConfigError(f"cross_every must be >= 1, got {cross_every}")
        dim = self.text.dim
        heads = self.text.model.config.num_attention_heads
        self.image_proj = projection(self.vision.dim, dim)
        self.resampler = None
        if resampler_latents > 0:
            self.resampler = PerceiverResampler(dim, resampler_latents, resampler_depth, heads)
        layers = self.text.decoder_layers()
        # Keyed by the index of the LM layer each block runs before.
        self.gated = nn.ModuleDict({
            str(i): GatedCrossAttentionBlock(dim, heads, gate_init=gate_init)
            for i in range(0, len(layers), cross_every)})
        for block in self.gated.values():
            init_transformer_weights(block, len(self.gated))
        self._media: Optional[torch.Tensor] = None  # image features while the LM runs
        for key in self.gated:
            # A partial of a bound method: deep copies of the model hook their own blocks.
            layers[int(key)].register_forward_pre_hook(functools.partial(self._gate, key),
                                                       with_kwargs=True)
        self._freeze_towers()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.image_proj(self.vision(pixel_values))
        return tokens if self.resampler is None else self.resampler(tokens)

    def _layout(self, features, input_ids, attention_mask, labels, image_position):
        return self.text.embed(input_ids), attention_mask, labels

    def _scope(self, features):
        return functools.partial(self._attached, features)

    @contextlib.contextmanager
    def _attached(self, features):
        self._media = features
        try:
            yield
        finally:
            self._media = None

    def _gate(self, key: str, layer, args, kwargs):
        """Forward pre-hook of LM layer `key`: its input hidden states pass the gated
        block first. Outside the bridge (no image attached) the LM runs untouched."""
        if self._media is None:
            return None
        block = self.gated[key]
        if args:
            return (block(args[0], self._media)[0],) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": block(kwargs["hidden_states"], self._media)[0]}


# -----------------------------------------------------------------------------
# Registration (tiny towers from vislm.models.hf.vision / causal_lm)

_TINY = {"vision": "hf_vision", "vision_kwargs": VISION_ENCODERS.tiny_kwargs("hf_vision"),
         "text": "hf_causal_lm", "text_kwargs": TEXT_MODELS.tiny_kwargs("hf_causal_lm")}


@FUSIONS.register("hf_prefix_lm", tiny={**_TINY, "projector": "mlp"})
def hf_prefix_lm(**kwargs) -> HFPrefixLM:
    return HFPrefixLM(**kwargs)


# Nonzero gates in the tiny model: at 0 only the gates get a gradient on the first step,
# and the generated registry tests check that every trainable parameter learns.
@FUSIONS.register("hf_flamingo", tiny={**_TINY, "gate_init": 0.5, "resampler_latents": 2,
                                       "resampler_depth": 1})
def hf_flamingo(**kwargs) -> HFFlamingo:
    return HFFlamingo(**kwargs)
