"""Configs that rebuild a model with Hugging Face towers from a vislm checkpoint alone.

A run names its towers by checkpoint (`path: openai/clip-vit-base-patch32`). Saved like
that, loading it again would need that checkpoint, only to overwrite its weights with
the trained ones. `export_config` writes instead each tower's architecture (the HF config
as a dict), its image preprocessing and its LoRA state into the vislm config, so

    save_pretrained(model, export_config(model, cfg), tokenizer, out)

gives a directory that `vislm.pretrained.load` rebuilds in a fresh process with nothing
else: the architecture from config.json, the weights from model.safetensors.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from vislm.config import Config


def export_config(model: nn.Module, cfg: Config) -> Config:
    """A copy of `cfg` whose vision/text kwargs describe `model`'s Hugging Face towers
    (other towers, and models without any, keep their kwargs)."""
    cfg = copy.deepcopy(cfg)
    vision, text = getattr(model, "vision", None), getattr(model, "text", None)
    if hasattr(vision, "export_kwargs"):
        cfg.model.vision_kwargs = vision.export_kwargs()
    if hasattr(text, "export_kwargs"):
        cfg.model.text_kwargs = text.export_kwargs()
    return cfg
