"""Any Hugging Face vision backbone as a vislm vision encoder: images -> tokens (B, N, dim).

Works with every model that takes `pixel_values` and returns hidden states: ViT, CLIP's
and SigLIP's vision towers (also cut out of a full CLIP/SigLIP checkpoint), DINOv2,
DeiT, BEiT, and convolutional nets (ConvNeXt, ResNet), whose feature map becomes one
token per cell.

    hf_vision(path="openai/clip-vit-large-patch14", layer=-2, drop_cls=True, freeze=True)

is LLaVA's vision tower. `layer=-1` takes the model's own output (after its final norm,
where it has one); other values index `hidden_states`, -2 being the penultimate layer
(the layers above it then run but get no gradient: freeze the tower or accept them idle).
`image_transform_settings()` tells vislm's ImageTransform how the model was trained to
see images.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vislm.errors import ConfigError
from vislm.models.hf import loading
from vislm.models.hf.towers import HFTower, freeze_unused
from vislm.registry import VISION_ENCODERS

# What no token output depends on (see freeze_unused): pooled-output heads, and the mask
# token of masked-image pre-training (BEiT, DINOv2).
_UNUSED = ("pooler.", "embeddings.mask_token")
_UNUSED_BY_TYPE = {"clip_vision_model": ("post_layernorm.",), "siglip_vision_model": ("head.",),
                   "convnext": ("layernorm.",), "convnextv2": ("layernorm.",)}


class HFVisionEncoder(HFTower):
    def __init__(self, path: Optional[str] = None, config: Optional[dict] = None,
                 layer: int = -1, drop_cls: bool = False, freeze: bool = False,
                 image_size: Optional[int] = None, attn_impl: Optional[str] = None,
                 lora: Optional[dict] = None, image_processor: Optional[dict] = None):
        super().__init__()
        self.model = loading.build("AutoModel", path, config, attn_impl, sub_config="vision_config")
        hf_config = self.model.config
        freeze_unused(self.model, _UNUSED + _UNUSED_BY_TYPE.get(hf_config.model_type, ()))

        self.layer = layer
        self.drop_cls = drop_cls
        self.attn_impl = attn_impl
        self.patch_size = _patch_size(hf_config)
        self.native_size = _native_size(hf_config)
        self.image_size = image_size or self.native_size
        if self.image_size is None:
            raise ConfigError(f"hf_vision: the '{hf_config.model_type}' config names no image "
                              f"size; pass image_size")
        self.dim = _width(hf_config)
        # Tokens per image size, learnt from forward passes: architectures differ in what
        # precedes the patches (CLS, distillation, register tokens, nothing).
        self._tokens: dict = {}
        if image_processor is None and path is not None:
            image_processor = loading.image_processor_settings(loading.resolve(path))
        self.image_processor = image_processor
        self._set_training(freeze, lora)

    # -------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = pixel_values.size(-1)
        kwargs = {}
        if self.patch_size is not None and size != self.native_size:
            # ViT, CLIP, SigLIP and DINOv2 interpolate their position table on request;
            # convnets take any size as it is.
            kwargs["interpolate_pos_encoding"] = True
        output = self.model(pixel_values=pixel_values, output_hidden_states=self.layer != -1,
                            **kwargs)
        hidden = output.last_hidden_state if self.layer == -1 else output.hidden_states[self.layer]
        if hidden.dim() == 4:  # a convolutional feature map (B, C, H, W): one token per cell
            hidden = hidden.flatten(2).transpose(1, 2)
        if self.drop_cls and self.patch_size is not None:
            # Whatever precedes the patch grid: CLS, distillation and register tokens.
            hidden = hidden[:, hidden.size(1) - (size // self.patch_size) ** 2:]
        self._tokens[size] = hidden.size(1)
        return hidden

    def num_tokens(self, image_size: Optional[int] = None) -> int:
        size = image_size or self.image_size
        if size not in self._tokens:
            # Run once in eval mode (a probe must not move batch-norm statistics), then put
            # every submodule back in the mode it was in.
            modes = [(module, module.training) for module in self.modules()]
            self.eval()
            with torch.no_grad():
                self.forward(torch.zeros(1, 3, size, size, device=_device(self)))
            for module, mode in modes:
                module.training = mode
        return self._tokens[size]

    # -------------------------------------------------------------------------
    def image_transform_settings(self) -> dict:
        """{size, mean, std, resize} for vislm.data.transforms.ImageTransform(**settings)."""
        return _transform_settings(self.image_processor, self.image_size)

    def export_kwargs(self) -> dict:
        """Kwargs that rebuild this tower without its original checkpoint directory: the
        architecture as a config dict (weights come from the vislm checkpoint)."""
        return {"config": loading.config_to_dict(self.model.config), "layer": self.layer,
                "drop_cls": self.drop_cls, "freeze": self.frozen, "image_size": self.image_size,
                "attn_impl": self.attn_impl, "lora": self.lora,
                "image_processor": self.image_processor}


def image_transform_settings(vision_kwargs: dict, image_size: int) -> dict:
    """What `HFVisionEncoder.image_transform_settings()` returns, from the tower's kwargs
    alone (no model is built), for code that makes its ImageTransform before its model."""
    processor = vision_kwargs.get("image_processor")
    if processor is None and vision_kwargs.get("path"):
        processor = loading.image_processor_settings(loading.resolve(vision_kwargs["path"]))
    return _transform_settings(processor, vision_kwargs.get("image_size") or image_size)


def _transform_settings(processor: Optional[dict], image_size: int) -> dict:
    # The model's own preprocessing where its checkpoint names it, else mean = std = 0.5
    # (the transformers default for ViT-style models); always at the size the tower runs.
    settings = dict(processor or {"mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"})
    settings["size"] = image_size
    return settings


def _width(hf_config) -> int:
    if getattr(hf_config, "hidden_size", None):
        return hf_config.hidden_size
    sizes = getattr(hf_config, "hidden_sizes", None)  # convnets: one width per stage
    if sizes:
        return sizes[-1]
    raise ConfigError(f"hf_vision: cannot tell the width of a '{hf_config.model_type}' model")


def _patch_size(hf_config) -> Optional[int]:
    size = getattr(hf_config, "patch_size", None)
    return size[0] if isinstance(size, (list, tuple)) else size


def _native_size(hf_config) -> Optional[int]:
    size = getattr(hf_config, "image_size", None)
    return size[0] if isinstance(size, (list, tuple)) else size


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# A ViT small enough for the generated registry tests, built from its config alone.
TINY_VIT = {"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "image_size": 16,
            "patch_size": 8}


@VISION_ENCODERS.register("hf_vision", tiny={"config": TINY_VIT})
def hf_vision(**kwargs) -> HFVisionEncoder:
    return HFVisionEncoder(**kwargs)
