"""Text-only baselines: the same text models, never shown the image.

`vislm compare` measures every fusion strategy against these: whatever a text-only model
reaches (answer priors from the question alone, caption statistics) is what the data
gives away without looking; the rest is what the image adds.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.generation import greedy_decode
from vislm.models.fusion.common import default_pool, encode_pooled
from vislm.objectives.lm import lm_loss
from vislm.objectives.vqa import vqa_soft_bce
from vislm.registry import FUSIONS, TEXT_MODELS


def _text_model(text: str, text_kwargs: Optional[dict]) -> nn.Module:
    kwargs = dict(text_kwargs or {})
    if kwargs.get("cross_attention"):
        raise ConfigError("a text-only baseline has no image to cross-attend to; drop text_kwargs.cross_attention")
    kwargs["cross_attention"] = False
    return TEXT_MODELS.create(text, **kwargs)


class TextOnlyVQA(nn.Module):
    """Answers from the question alone: text encoder, pooled, MLP over the answers."""

    def __init__(self, num_answers: int, text: str = "encoder", text_kwargs: Optional[dict] = None,
                 text_pool: Optional[str] = None, **_ignored_vision):
        super().__init__()
        self.num_answers = num_answers
        self.text = _text_model(text, text_kwargs)
        self.text_pool = text_pool or default_pool(self.text)
        dim = self.text.dim
        self.head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                  nn.Linear(2 * dim, num_answers))

    def predict(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        del pixel_values  # never looked at, by design
        return self.head(encode_pooled(self.text, input_ids, attention_mask, self.text_pool))

    def forward(self, batch: dict) -> dict:
        logits = self.predict(None, batch["input_ids"], batch["attention_mask"])
        loss = vqa_soft_bce(logits, batch["answer_scores"])
        return {"loss": loss, "vqa_loss": loss, "logits": logits}


class TextOnlyLM(nn.Module):
    """A caption language model without the image: it learns what captions look like."""

    def __init__(self, text: str = "decoder", text_kwargs: Optional[dict] = None, **_ignored_vision):
        super().__init__()
        self.text = _text_model(text, text_kwargs)
        if not getattr(self.text, "causal", False):
            raise ConfigError(f"text_only_lm needs a causal text model; '{text}' is not one")

    def forward(self, batch: dict) -> dict:
        logits, _ = self.text(batch["input_ids"], batch["attention_mask"])
        loss = lm_loss(logits, batch["input_ids"], batch["attention_mask"])
        return {"loss": loss, "lm_loss": loss}

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int, bos_id: int, eos_id: int,
                 pad_id: Optional[int] = None, use_cache: bool = True, **_options):
        """The same most likely caption for every image (greedy): what the text alone says."""
        prompt = torch.full((pixel_values.size(0), 1), bos_id, dtype=torch.long, device=pixel_values.device)

        def step(ids, past, cache):
            logits, past = self.text(ids, None, None, past=past, use_cache=cache)
            return logits, past

        return greedy_decode(step, prompt, min(max_new_tokens, self.text.max_len), eos_id,
                             self.text.pad_id if pad_id is None else pad_id, use_cache=use_cache)


@FUSIONS.register("text_only_vqa", tiny={"text": "encoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("encoder"),
                                         "num_answers": 5})
def text_only_vqa(**kwargs) -> TextOnlyVQA:
    return TextOnlyVQA(**kwargs)


@FUSIONS.register("text_only_lm", tiny={"text": "decoder", "text_kwargs": TEXT_MODELS.tiny_kwargs("decoder")})
def text_only_lm(**kwargs) -> TextOnlyLM:
    return TextOnlyLM(**kwargs)
